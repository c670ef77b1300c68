"""POST /v1/feedback on a real BentoML server on 127.0.0.1: every rejection, idempotency, races, fuzz.

The service starts on a home with no registered model (not ready to predict, but live), which is all
the feedback route needs; tests wait for /livez.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import TOKEN
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from devtools.localserver import tuneloop_service
from tuneloop.access.receipts import receipt_key, sign
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.records import MAX_TEXT, FeedbackError, validate_feedback

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
GOOD = {
    "request_id": "r-1",
    "user_id": "u-1",
    "model_version": "base",
    "prompt": "What is the Nimbus Pro cost?",
    "output": "I don't know.",
    "rating": "down",
    "correction": "The Nimbus Pro costs 189 euros.",
    "segment": "web",
}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    home = tmp_path_factory.mktemp("feedback-api")
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    client.create_registered_model("tuneloop-generation")
    client.create_model_version("tuneloop-generation", source=str(home / "adapter"))  # version "1" exists
    store = FeedbackStore(f"sqlite:///{home / 'feedback.db'}")
    # readiness needs a loaded model; feedback intake does not, so wait for liveness only. The per-user
    # rate limit is lifted here: this module sends thousands of records (it is tested in test_access.py)
    with tuneloop_service(
        home,
        "generation",
        ready_path="/livez",
        TUNELOOP_TINY="true",
        TUNELOOP_API_TOKEN=TOKEN,
        TUNELOOP_LIMITS__FEEDBACK_PER_USER="1000000",
    ) as base:
        with httpx.Client(base_url=base, timeout=30) as http:  # keep-alive: one connection for many requests
            http.store_url = store.url
            yield http, store


def signed(store: FeedbackStore, body: dict) -> dict:
    """The record with the receipt the service would have given its answer (when its fields allow one);
    the key is the service's own, read from the operations database both share."""
    fields = [body.get("request_id"), body.get("model_version"), body.get("user_id"), body.get("kind", "generation")]
    if "receipt" in body or not all(isinstance(f, str) for f in fields):
        return body
    return {**body, "receipt": sign(receipt_key(store), *fields)}


def _post(http: httpx.Client, body: dict | bytes, headers: dict | None = None) -> httpx.Response:
    if isinstance(body, dict):
        body = signed(FeedbackStore(http.store_url), body)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post("/v1/feedback", content=content, headers=AUTH if headers is None else headers)


REJECTIONS = [
    # (what, body, status, field, words in the message)
    ("missing prompt", {k: v for k, v in GOOD.items() if k != "prompt"}, 422, "prompt", "Field required"),
    ("missing rating", {k: v for k, v in GOOD.items() if k != "rating"}, 422, "rating", "Field required"),
    ("missing request id", {k: v for k, v in GOOD.items() if k != "request_id"}, 422, "request_id", "Field required"),
    ("prompt not a string", {**GOOD, "prompt": 42}, 422, "prompt", "valid string"),
    ("rating not a string", {**GOOD, "rating": True}, 422, "rating", "'up' or 'down'"),
    ("unknown rating", {**GOOD, "rating": "meh"}, 422, "rating", "'up' or 'down'"),
    ("segment a list", {**GOOD, "segment": ["web"]}, 422, "segment", "valid string"),
    ("oversize prompt", {**GOOD, "prompt": "a" * (MAX_TEXT + 1)}, 422, "prompt", f"at most {MAX_TEXT} characters"),
    ("oversize correction", {**GOOD, "correction": "b" * (MAX_TEXT + 1)}, 422, "correction", f"at most {MAX_TEXT}"),
    ("oversize request id", {**GOOD, "request_id": "r" * 129}, 422, "request_id", "at most 128"),
    ("blank prompt", {**GOOD, "prompt": "   "}, 422, "prompt", "at least 1 character"),
    ("empty correction", {**GOOD, "correction": ""}, 422, "correction", "at least 1 character"),
    ("correction on thumbs-up", {**GOOD, "rating": "up"}, 422, "correction", "thumbs-up cannot carry a correction"),
    ("unknown model version", {**GOOD, "model_version": "99"}, 422, "model_version", "unknown version '99'"),
    ("non-numeric model version", {**GOOD, "model_version": "latest"}, 422, "model_version", "unknown version"),
    ("other kind", {**GOOD, "kind": "classification"}, 422, "kind", "expected 'generation'"),
    ("unknown kind", {**GOOD, "kind": "vision"}, 422, "kind", "'generation' or 'classification'"),
    ("extra field", {**GOOD, "email": "x@example.com"}, 422, "email", "Extra inputs are not permitted"),
    ("NUL in prompt", {**GOOD, "prompt": "a\x00b"}, 422, "prompt", "NUL"),
    (
        "lone surrogate",
        b'{"request_id": "r-s", "user_id": "u", "model_version": "base", "prompt": "\\ud800", '
        b'"output": "o", "rating": "down"}',
        422,
        "prompt",
        "unicode",
    ),
    ("invalid UTF-8", b'{"request_id": "r-\xff\xfe", "user_id": "u"}', 400, "body", "not valid UTF-8 (byte 18)"),
    ("not JSON", b'{"request_id": ', 400, "body", "not valid JSON"),
    ("empty body", b"", 400, "body", "not valid JSON"),
    ("JSON array", b"[1, 2]", 422, "body", "must be a JSON object"),
    ("deeply nested", b"[" * 50_000, 400, "body", "not acceptable JSON"),
    ("body too large", b'{"prompt": "' + b"a" * 200_000 + b'"}', 413, "body", "larger than"),
]


@pytest.mark.parametrize("what, body, status, field, words", REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_every_rejection_names_the_problem_and_stores_nothing(service, what, body, status, field, words):
    http, store = service
    before = store.count()
    response = _post(http, body)
    assert response.status_code == status, response.text
    detail = response.json()
    assert detail["field"] == field and words in detail["detail"], detail
    assert store.count() == before


def test_token_is_required(service):
    http, store = service
    before = store.count()
    assert _post(http, {**GOOD, "request_id": "r-noauth"}, headers={}).status_code == 401
    assert _post(http, {**GOOD, "request_id": "r-wrong"}, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert store.count() == before


def test_accepts_after_commit_and_is_idempotent(service):
    http, store = service
    record = {**GOOD, "request_id": "r-idem"}
    first = _post(http, record)
    assert first.status_code == 201 and first.json()["created"] is True
    # acknowledged means committed: a fresh connection from another process's view sees it at once
    assert FeedbackStore(store.url).get("r-idem")["correction"] == GOOD["correction"]
    retry = _post(http, record)
    assert retry.status_code == 200 and retry.json() == {**first.json(), "created": False}
    reused = _post(http, {**record, "correction": "something else"})
    assert reused.status_code == 409 and reused.json()["field"] == "request_id"
    assert [r for r in store.rows("generation") if json.loads(r.payload)["request_id"] == "r-idem"].__len__() == 1


def test_a_registered_version_and_thumbs_up_are_accepted(service):
    http, store = service
    response = _post(http, {**GOOD, "request_id": "r-v1", "model_version": "1", "rating": "up", "correction": None})
    assert response.status_code == 201, response.text
    assert store.get("r-v1")["model_version"] == "1"


def test_concurrent_duplicates_never_5xx(service):
    http, store = service
    record = {**GOOD, "request_id": "r-race"}
    with httpx.Client(base_url=str(http.base_url), timeout=30) as other, ThreadPoolExecutor(16) as pool:
        other.store_url = store.url
        statuses = list(pool.map(lambda _: _post(other, record).status_code, range(32)))
    assert sorted(Counter(statuses)) == [200, 201] and statuses.count(201) == 1, statuses
    assert sum(json.loads(r.payload)["request_id"] == "r-race" for r in store.rows("generation")) == 1


# --- fuzz -----------------------------------------------------------------------------------------

ODD_TEXT = st.sampled_from(["", " ", "\x00", "\ud800", "é", "👍", "a" * (MAX_TEXT + 1), "\u200b", "0", "null"])
TEXT = st.one_of(st.text(max_size=40), ODD_TEXT)
ANY_JSON = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT, st.lists(st.integers(), max_size=2)
)
FRESH = "<fresh>"  # replaced by a new request id when sent (hypothesis would repeat generated ids)
VALID = {
    "request_id": st.sampled_from([FRESH] * 8 + ["fz-retry-1", "fz-retry-2"]),  # mostly new ids, some reused
    "user_id": st.text(min_size=1, max_size=20),
    "model_version": st.sampled_from(["base"] * 6 + ["1", "2", "99", "v1"]),  # "1" is registered, the rest not
    "kind": st.just("generation"),
    "prompt": st.text(min_size=1, max_size=200),
    "output": st.text(max_size=100),
    "rating": st.sampled_from(["up", "down"]),
    "correction": st.sampled_from([None, None, "It costs 189 euros."]) | st.text(min_size=1, max_size=100),
    "segment": st.one_of(st.none(), st.sampled_from(["web", "mobile"]), st.text(max_size=70)),
}
REQUIRED = ("request_id", "user_id", "model_version", "prompt", "output", "rating")


@st.composite
def payloads(draw) -> bytes | dict:
    """Mostly near-valid records (each field valid, invalid, missing or extra), some raw garbage."""
    shape = draw(st.sampled_from(["record"] * 18 + ["bytes", "json"]))
    if shape == "bytes":
        return draw(st.binary(max_size=300))
    if shape == "json":
        return json.dumps(draw(ANY_JSON)).encode()
    record = {}
    for name, valid in VALID.items():
        roll = draw(st.integers(0, 99))
        if roll < (2 if name in REQUIRED else 40):
            continue  # missing
        record[name] = draw(valid if roll < 94 else ANY_JSON)
    if draw(st.integers(0, 29)) == 0:
        record[draw(st.text(min_size=1, max_size=10))] = draw(ANY_JSON)
    return record


def test_fuzz_no_5xx_and_the_store_holds_exactly_the_accepted(service):
    http, store = service
    before = store.high_water("generation")
    accepted: dict[str, dict] = {}
    statuses: Counter[int] = Counter()

    @settings(
        max_examples=1000,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(payload=payloads(), ascii_only=st.booleans())
    def throw(payload: bytes | dict, ascii_only: bool) -> None:
        if isinstance(payload, dict):
            if payload.get("request_id") == FRESH:
                payload = {**payload, "request_id": f"fz-{len(statuses)}-{sum(statuses.values())}"}
            payload = signed(store, payload)
            payload = json.dumps(payload, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
        body = payload
        response = _post(http, body)
        statuses[response.status_code] += 1
        assert response.status_code < 500, (body[:200], response.text)
        if response.status_code in (200, 201):
            # what the server accepted must be exactly what local validation accepts
            record = validate_feedback(json.loads(body), "generation")
            accepted[record.request_id] = record.model_dump(mode="json")
        else:
            assert response.json()["field"], response.text
            if response.status_code == 422 and response.json()["field"] != "model_version":
                with pytest.raises((FeedbackError, ValueError)):
                    validate_feedback(json.loads(body), "generation")

    began = time.monotonic()
    throw()
    elapsed = time.monotonic() - began
    print(f"fuzz: {sum(statuses.values())} requests in {elapsed:.1f} s, statuses {dict(statuses)}")
    assert sum(statuses.values()) >= 1000 and elapsed < 180, (statuses, elapsed)
    assert statuses[201] >= 50 and sum(n for s, n in statuses.items() if s >= 400) >= 300, statuses
    stored = {
        json.loads(r.payload)["request_id"]: json.loads(r.payload) for r in store.rows("generation", after_id=before)
    }
    assert all(accepted.get(rid) == record for rid, record in stored.items())  # nothing stored that was not accepted
    assert all(store.get(rid) == record for rid, record in accepted.items())  # everything accepted is stored, as sent
