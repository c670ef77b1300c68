"""Who may do what on a real service on 127.0.0.1: scoped tokens, feedback bound to served answers by
receipts, the per-user feedback rate, and bodies bounded before they are parsed."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time

import httpx
import pytest

from devtools.localserver import tuneloop_service
from tuneloop.access import tokens
from tuneloop.config import LoopConfig
from tuneloop.data.feedback import FeedbackStore
from tuneloop.release.operations import events

FEEDBACK_PER_USER, MAX_REQUESTS = 5, 16


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A generation service on the tiny base model (nothing registered), with one token of each scope."""
    home = tmp_path_factory.mktemp("access")
    config = LoopConfig(kind="generation", home=home, tiny=True)
    issued = {"app": tokens.create(config, "app", "feedback"), "ops": tokens.create(config, "ops", "admin")}
    with tuneloop_service(
        home,
        "generation",
        TUNELOOP_TINY="true",
        TUNELOOP_DEPLOY__SERVE_WORKERS="1",
        TUNELOOP_MAX_NEW_TOKENS="4",
        TUNELOOP_LIMITS__FEEDBACK_PER_USER=str(FEEDBACK_PER_USER),
        TUNELOOP_LIMITS__MAX_PREDICT_REQUESTS=str(MAX_REQUESTS),
    ) as base:
        with httpx.Client(base_url=base, timeout=60) as http:
            yield http, config, issued


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def answer(http: httpx.Client, user: str, request_id: str) -> dict:
    r = http.post(
        "/predict",
        json={"requests": [{"user_id": user, "input": "What is the Nimbus Pro cost?", "request_id": request_id}]},
    )
    assert r.status_code == 200, r.text
    return r.json()[0]


def feedback_on(a: dict, user: str, **change) -> dict:
    return {
        "request_id": a["request_id"],
        "user_id": user,
        "model_version": a["model_version"],
        "receipt": a["receipt"],
        "prompt": "What is the Nimbus Pro cost?",
        "output": a["output"],
        "rating": "down",
        "correction": "The Nimbus Pro costs 189 euros.",
        **change,
    }


ADMIN = [
    ("/v1/admin/rollback", None),
    ("/v1/admin/canary", {"percent": 10}),
    ("/v1/admin/promote", {"expected_version": "2"}),
]


def test_a_feedback_token_is_refused_on_every_admin_endpoint(service):
    http, config, issued = service
    for path, body in ADMIN:
        assert http.post(path, json=body).status_code == 401, path
        assert http.post(path, json=body, headers=bearer("tl_" + secrets.token_urlsafe(32))).status_code == 401, path
        refused = http.post(path, json=body, headers=bearer(issued["app"]))
        assert refused.status_code == 403 and "'feedback'" in refused.json()["detail"], (path, refused.text)
    assert events(config) == []  # nothing moved

    assert http.post("/v1/admin/canary", json={"percent": 0}, headers=bearer(issued["ops"])).status_code == 200
    assert events(config, action="canary")[0]["actor"] == "token:ops"  # the operations log names who acted
    nothing = http.post("/v1/admin/promote", json={"expected_version": "2"}, headers=bearer(issued["ops"]))
    assert nothing.status_code == 409 and "expected_version" in nothing.json()["detail"]  # nothing registered: no 500


def test_tokens_are_stored_hashed_listed_without_secrets_and_revocable(service):
    http, config, issued = service
    db = sqlite3.connect(config.home / "feedback.db")
    stored = " ".join(str(v) for row in db.execute("SELECT * FROM api_tokens") for v in row)
    assert tokens.digest(issued["app"]) in stored and issued["app"] not in stored and issued["ops"] not in stored
    assert "api_token" not in {k for (k,) in db.execute("SELECT key FROM settings")}  # no plain-text token anywhere
    listed = {t["name"]: t for t in tokens.listing(config)}
    assert listed["app"]["scope"] == "feedback" and listed["ops"]["scope"] == "admin"
    assert not any(
        issued["app"] in json.dumps(t) or tokens.digest(issued["app"]) in json.dumps(t) for t in listed.values()
    )

    temp = tokens.create(config, "temp", "feedback")
    a = answer(http, "user-rev", "r-rev-1")
    assert http.post("/v1/feedback", json=feedback_on(a, "user-rev"), headers=bearer(temp)).status_code == 201
    assert tokens.listing(config)[[t["name"] for t in tokens.listing(config)].index("temp")]["last_used_at"] is not None
    tokens.revoke(config, "temp")
    b = answer(http, "user-rev", "r-rev-2")
    assert http.post("/v1/feedback", json=feedback_on(b, "user-rev"), headers=bearer(temp)).status_code == 401
    with pytest.raises(tokens.TokenError, match="scope"):
        tokens.create(config, "x", "root")
    with pytest.raises(tokens.TokenError, match="exists"):
        tokens.create(config, "app", "feedback")


def test_feedback_needs_the_receipt_of_an_answer_the_service_gave(service):
    http, config, issued = service
    store = FeedbackStore(config.feedback_db)
    a = answer(http, "user-r", "r-receipt")
    assert len(a["receipt"]) == 64
    before = store.count()
    refusals = {
        "missing": ({"receipt": None}, 422),
        "forged": ({"receipt": secrets.token_hex(32)}, 403),
        "another user": ({"user_id": "user-other"}, 403),
        "another version": ({"model_version": "1"}, 403),
        "another request": ({"request_id": "r-never-served"}, 403),
    }
    for what, (change, status) in refusals.items():
        r = http.post("/v1/feedback", json=feedback_on(a, "user-r", **change), headers=bearer(issued["app"]))
        assert r.status_code == status and r.json()["field"] == "receipt", (what, r.text)
    assert store.count() == before

    ok = http.post("/v1/feedback", json=feedback_on(a, "user-r"), headers=bearer(issued["app"]))
    assert ok.status_code == 201, ok.text
    assert store.get("r-receipt")["receipt"] == a["receipt"]


def test_one_user_cannot_flood_feedback(service):
    http, config, issued = service
    sent = []
    for n in range(FEEDBACK_PER_USER):
        a = answer(http, "user-flood", f"r-flood-{n}")
        sent.append(feedback_on(a, "user-flood"))
        assert http.post("/v1/feedback", json=sent[-1], headers=bearer(issued["app"])).status_code == 201
    extra = feedback_on(answer(http, "user-flood", "r-flood-extra"), "user-flood")
    refused = http.post("/v1/feedback", json=extra, headers=bearer(issued["app"]))
    assert refused.status_code == 429 and "limits.feedback_per_user" in refused.json()["detail"], refused.text
    assert FeedbackStore(config.feedback_db).get("r-flood-extra") is None
    # a retry of an acknowledged record is still answered as one; another user is not held back
    assert http.post("/v1/feedback", json=sent[0], headers=bearer(issued["app"])).status_code == 200
    other = feedback_on(answer(http, "user-calm", "r-calm"), "user-calm")
    assert http.post("/v1/feedback", json=other, headers=bearer(issued["app"])).status_code == 201


def test_oversized_bodies_are_refused_before_parsing(service):
    http, config, _ = service
    many = {"requests": [{"user_id": f"u{i}", "input": "hi"} for i in range(10_000)]}
    began = time.perf_counter()
    r = http.post("/predict", json=many)
    took = time.perf_counter() - began
    assert r.status_code == 413 and r.json()["field"] == "requests" and f"at most {MAX_REQUESTS}" in r.json()["detail"]
    assert took < 1.0, f"a 10,000-request body took {took:.2f} s to refuse"

    limit = config.limits.max_body_bytes
    big = b'{"requests": [{"user_id": "u", "input": "' + b"a" * (limit + 10) + b'"}]}'
    r = http.post("/predict", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"

    def stream():  # no Content-Length: the streamed bytes are counted
        yield b'{"requests": [{"user_id": "u", "input": "'
        for _ in range(limit // 65536 + 2):
            yield b"a" * 65536

    r = http.post("/predict", content=stream(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"
    assert answer(http, "user-after", "r-after")["output"] is not None  # the service still answers


def test_routing_is_answered_without_a_database_engine_per_call(service):
    http, config, _ = service
    assert FeedbackStore(config.feedback_db).engine is FeedbackStore(config.feedback_db).engine  # one per URL
    http.get("/v1/routing")
    began = time.perf_counter()
    for _ in range(50):
        assert http.get("/v1/routing").status_code == 200
    per_call = (time.perf_counter() - began) / 50
    assert per_call < 0.05, f"/v1/routing took {per_call * 1000:.1f} ms a call"


def test_the_token_cli_creates_lists_and_revokes_without_showing_secrets(home):
    from typer.testing import CliRunner

    from tuneloop.cli.main import app

    cli = CliRunner()
    created = cli.invoke(app, ["token", "create", "--name", "ci-app", "--scope", "feedback", "--home", str(home)])
    assert created.exit_code == 0, created.output
    token = created.output.strip().splitlines()[-1]
    assert token.startswith("tl_") and len(token) > 40
    listed = cli.invoke(app, ["token", "list", "--home", str(home)])
    assert "ci-app" in listed.output and "feedback" in listed.output and token not in listed.output
    wrong = cli.invoke(app, ["token", "create", "--name", "x", "--scope", "everything", "--home", str(home)])
    assert wrong.exit_code == 1 and "scope" in wrong.output
    assert cli.invoke(app, ["token", "revoke", "ci-app", "--home", str(home)]).exit_code == 0
    gone = cli.invoke(app, ["token", "revoke", "ci-app", "--home", str(home)])
    assert gone.exit_code == 1 and "no token named 'ci-app'" in gone.output
    unscoped = cli.invoke(app, ["promote", "--home", str(home)])  # promote names the version it means
    assert unscoped.exit_code == 2 and "expected-version" in unscoped.output


def test_a_plain_text_token_of_an_older_store_becomes_the_hashed_admin_token_legacy(tmp_path):
    from sqlalchemy import create_engine, text

    from tuneloop.data import migrations

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    migrations.upgrade(engine, "0003")  # what the previous release made, with its token in plain text
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO settings (key, value) VALUES ('api_token', 'old-plain-token')"))
    store = FeedbackStore(url)  # opening migrates
    assert tokens.authenticate(store, "Bearer old-plain-token") == tokens.Caller("legacy", "admin")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM settings WHERE key = 'api_token'")).scalar() == 0
        assert "old-plain-token" not in " ".join(
            str(v) for row in conn.execute(text("SELECT * FROM api_tokens")) for v in row
        )
