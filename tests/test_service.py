"""The BentoML service as a real server on 127.0.0.1: routing, attribution, feedback, rollback,
hot swap under load, the live guard, metrics and shadow mode."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import mlflow
import pytest
from conftest import TOKEN, tiny_config

from devtools.localserver import tuneloop_service
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.records import FeedbackRecord
from tuneloop.data.sample_data import sample_feedback
from tuneloop.flows.loop import loop
from tuneloop.registry.versions import alias_version, log_adapter, move_alias, promote
from tuneloop.release.flags import set_challenger_percent
from tuneloop.release.operations import events
from tuneloop.search.tracking import fetch_adapter

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextmanager
def running_service(home: Path, kind: str, **env_extra: str):
    with tuneloop_service(
        home, kind, TUNELOOP_TINY="true", TUNELOOP_API_TOKEN=TOKEN, TUNELOOP_REGISTRY_POLL_S="0.5", **env_extra
    ) as base:
        yield base


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Champion v1 and challenger v2 (same adapter, separate versions) for the tiny classifier."""
    home = tmp_path_factory.mktemp("service-home")
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    config = tiny_config(home, "classification", epochs=10)
    FeedbackStore(config.feedback_db).add_many_raw(sample_feedback("classification", small=True), config.kind)
    result = loop(config)
    promote(config.model_name, config=config)
    adapter = fetch_adapter(result.tuned.challenger.adapter_uri, config.work_dir / "adapters")
    v2 = log_adapter(config, adapter, {"note": "second version for routing tests"})
    move_alias(config.model_name, "challenger", str(v2.version), "test", config=config)
    yield home, config, result
    mlflow.set_tracking_uri(previous_uri)


@pytest.fixture(scope="module")
def service(registered):
    home, config, _ = registered
    with running_service(
        home, "classification", TUNELOOP_DEPLOY__GUARD_INTERVAL_S="0.5", TUNELOOP_DEPLOY__MIN_SAMPLES="20"
    ) as base:
        yield base, config


def _predict(base: str, user: str, client: httpx.Client | None = None) -> dict:
    payload = {"requests": [{"user_id": user, "input": "where is my Orbit camera", "request_id": f"r-{user}"}]}
    r = (client or httpx).post(f"{base}/predict", json=payload, timeout=60)
    r.raise_for_status()
    return r.json()[0]


def _wait_until(condition, seconds: float, message: str) -> float:
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < seconds, message
        time.sleep(0.05)
    return time.monotonic() - began


def _guard_last_looked(config) -> float:
    """When the service's guard last published its figures (it writes the serving cost at every look)."""
    import json
    from datetime import datetime

    from sqlalchemy.orm import Session

    from tuneloop.data.ops_tables import SettingRow

    with Session(FeedbackStore(config.feedback_db).engine) as session:
        row = session.get(SettingRow, f"serving_cost:{config.model_name}")
    return datetime.fromisoformat(json.loads(row.value)["at"]).timestamp() if row else 0.0


def test_routes_a_sticky_canary_and_rolls_back_without_restart(service):
    base, config = service
    set_challenger_percent(config, 50)
    # every worker mirrors the flag on its own: wait until ten reads in a row (any worker's) show the new share
    seen: list[int] = []
    _wait_until(
        lambda: (
            seen.append(httpx.get(f"{base}/v1/routing", timeout=10).json()["challenger_percent"])
            or seen[-10:] == [50] * 10
        ),
        30,
        "the canary share did not reach the service",
    )
    answers = {f"user-{i}": _predict(base, f"user-{i}") for i in range(40)}
    assert {a["model_version"] for a in answers.values()} == {"1", "2"}
    for user, answer in answers.items():
        assert answer["request_id"] == f"r-{user}"
        assert answer["variant"] == ("champion" if answer["model_version"] == "1" else "challenger")
        assert _predict(base, user)["model_version"] == answer["model_version"]  # sticky

    assert httpx.post(f"{base}/v1/admin/rollback", timeout=10).status_code == 401
    assert httpx.post(f"{base}/v1/admin/rollback", headers=AUTH, timeout=10).status_code == 200
    challengers = [u for u, a in answers.items() if a["model_version"] == "2"]
    _wait_until(
        lambda: all(_predict(base, u)["model_version"] == "1" for u in challengers), 10, "rollback not effective"
    )  # its latency is measured in bench/serve.py, not timed here


def test_feedback_needs_token_validates_and_is_idempotent(service):
    base, config = service
    answer = _predict(base, "user-x")
    record = {
        "request_id": answer["request_id"],
        "user_id": "user-x",
        "model_version": answer["model_version"],
        "kind": "classification",
        "prompt": "where is my Orbit camera",
        "output": answer["output"],
        "rating": "down",
        "correction": "shipping_status",
        "receipt": answer["receipt"],
    }
    assert httpx.post(f"{base}/v1/feedback", json=record, timeout=10).status_code == 401
    assert (
        httpx.post(
            f"{base}/v1/feedback", json=record, headers={"Authorization": "Bearer wrong"}, timeout=10
        ).status_code
        == 401
    )

    first = httpx.post(f"{base}/v1/feedback", json=record, headers=AUTH, timeout=10)
    assert first.status_code == 201 and first.json()["created"] is True
    retry = httpx.post(f"{base}/v1/feedback", json=record, headers=AUTH, timeout=10)
    assert retry.json() == {**first.json(), "created": False}
    store = FeedbackStore(config.feedback_db)
    assert store.get(answer["request_id"])["correction"] == "shipping_status"

    bad = httpx.post(
        f"{base}/v1/feedback", json={**record, "request_id": "r-bad", "rating": "meh"}, headers=AUTH, timeout=10
    )
    assert bad.status_code == 422 and "rating" in bad.text
    unknown = httpx.post(
        f"{base}/v1/feedback", json={**record, "request_id": "r-unk", "model_version": "99"}, headers=AUTH, timeout=10
    )
    assert unknown.status_code == 403 and "receipt" in unknown.text  # never served: its receipt cannot match
    assert store.get("r-bad") is None and store.get("r-unk") is None


def test_admin_endpoints_refuse_requests_without_the_token(service):
    base, _ = service
    for path, body in (
        ("/v1/admin/rollback", None),
        ("/v1/admin/canary", {"percent": 10}),
        ("/v1/admin/promote", {"expected_version": "2"}),
    ):
        assert httpx.post(f"{base}{path}", json=body, timeout=10).status_code == 401
    assert httpx.post(f"{base}/v1/admin/canary", json={"percent": 101}, headers=AUTH, timeout=10).status_code == 422
    assert (
        httpx.post(f"{base}/v1/admin/promote", json={}, headers=AUTH, timeout=10).status_code == 422
    )  # which version?


def test_hot_swap_and_rollback_under_concurrent_load_lose_no_request(service, registered):
    base, config = service
    _, _, result = registered
    set_challenger_percent(config, 50)
    adapter = fetch_adapter(result.tuned.challenger.adapter_uri, config.work_dir / "adapters")
    v3 = str(log_adapter(config, adapter, {"note": "hot swap"}).version)
    failures, seen, answered, stop = [], set(), [], False

    def hammer(worker: int) -> int:
        sent = 0
        with httpx.Client() as client:
            while not stop:
                try:
                    seen.add(_predict(base, f"load-{worker}-{sent % 10}", client)["model_version"])
                    answered.append(worker)
                except Exception as err:  # any failure is the bug this test looks for
                    failures.append(repr(err))
                sent += 1
        return sent

    def under_load(more: int) -> None:  # every change happens while requests are in flight
        target = len(answered) + more
        _wait_until(lambda: len(answered) >= target, 30, "the load stopped being answered")

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(hammer, w) for w in range(8)]
        try:
            under_load(16)
            move_alias(config.model_name, "challenger", v3, "hot swap under load", config=config)
            set_challenger_percent(config, 50, version=v3)  # what deploy does: the share names the new version
            _wait_until(lambda: "3" in seen, 15, "new challenger not picked up without a restart")
            httpx.post(f"{base}/v1/admin/rollback", headers=AUTH, timeout=10)
            under_load(16)
        finally:  # a failed wait must stop the load, or the pool's exit waits on it until the suite's timeout
            stop = True
        sent = sum(f.result() for f in futures)
    assert failures == [] and sent > 50
    assert httpx.get(f"{base}/v1/routing", timeout=10).json()["served"]["challenger"] == v3


def test_a_new_challenger_gets_no_share_until_deploy_and_never_more_than_the_canary(service, registered):
    """Registering v(n+1) while v(n) holds 50 %: the new version serves nobody until deploy gives it its
    canary share, and never more than that, while the service keeps answering."""
    base, config = service
    _, _, result = registered
    old = alias_version(config.model_name, "challenger")
    set_challenger_percent(config, 50, version=old)
    users = [f"race-{i}" for i in range(100)]
    _wait_until(
        lambda: 20 < sum(a["model_version"] == old for a in _predict_many(base, users)) < 80,
        10,
        "the old challenger's 50 % not picked up",
    )
    adapter = fetch_adapter(result.tuned.challenger.adapter_uri, config.work_dir / "adapters")
    new = str(log_adapter(config, adapter, {"note": "registered during a ramp"}).version)
    move_alias(config.model_name, "challenger", new, "passed the gate", config=config)  # what register does
    shares = []
    deadline = time.monotonic() + 3  # several registry polls (0.5 s): the service has picked the new alias up
    while time.monotonic() < deadline:
        shares.append(sum(a["model_version"] == new for a in _predict_many(base, users)))
    assert max(shares) == 0, shares  # 0 % until deploy, not the predecessor's 50 %
    assert alias_version(config.model_name, "challenger") == new

    set_challenger_percent(config, config.deploy.canary_percent, version=new)  # what deploy does
    _wait_until(lambda: sum(a["model_version"] == new for a in _predict_many(base, users)) > 0, 10, "canary not opened")
    shares = [sum(a["model_version"] == new for a in _predict_many(base, users)) for _ in range(5)]
    assert max(shares) <= config.deploy.canary_percent + 8, shares  # the sticky split of 100 users: about 10
    set_challenger_percent(config, 0)


def test_promote_with_a_stale_expected_version_is_refused(service):
    base, config = service
    from tuneloop.release import operations

    challenger, champion = alias_version(config.model_name, "challenger"), alias_version(config.model_name, "champion")
    stale = str(int(challenger) - 1)
    with pytest.raises(ValueError, match="expected_version"):
        operations.promote(config, stale, reason="decided about an older challenger")
    r = httpx.post(f"{base}/v1/admin/promote", json={"expected_version": stale}, headers=AUTH, timeout=10)
    assert r.status_code == 409 and "expected_version" in r.json()["detail"]
    assert alias_version(config.model_name, "champion") == champion  # nothing moved
    assert alias_version(config.model_name, "challenger") == challenger


def _predict_many(base: str, users: list[str]) -> list[dict]:
    payload = {"requests": [{"user_id": u, "input": "where is my Orbit camera"} for u in users]}
    r = httpx.post(f"{base}/predict", json=payload, timeout=60)
    r.raise_for_status()
    return r.json()


def test_live_guard_rolls_back_a_clearly_worse_canary_and_says_why(service):
    base, config = service
    challenger = alias_version(config.model_name, "challenger")
    champion = alias_version(config.model_name, "champion")
    set_challenger_percent(config, 10)
    # the service must see the canary before the guard can take it back (an earlier test left it at 0)
    _wait_until(
        lambda: httpx.get(f"{base}/v1/routing", timeout=10).json()["challenger_percent"] == 10,
        10,
        "canary not picked up",
    )
    store = FeedbackStore(config.feedback_db)
    for n in range(40):
        for version, rating in (
            (champion, "down" if n % 10 == 0 else "up"),
            (challenger, "down" if n % 10 < 7 else "up"),
        ):
            store.add(
                FeedbackRecord(
                    request_id=f"guard-{version}-{n}",
                    user_id=f"u{n}",
                    model_version=version,
                    kind="classification",
                    prompt="where is my hub",
                    output="shipping_status",
                    rating=rating,
                )
            )
    _wait_until(
        lambda: httpx.get(f"{base}/v1/routing", timeout=10).json()["challenger_percent"] == 0,
        10,
        "live guard did not roll back",
    )
    tag = mlflow.MlflowClient().get_model_version(config.model_name, challenger).tags["rolled_back"]
    assert "live guard" in tag and "significantly worse" in tag

    # one guard per service, however many workers serve: the rollback is recorded once, still after the
    # guard has looked again for two seconds (a second guard in another worker would look as often)
    rolled_back = time.time()
    _wait_until(lambda: _guard_last_looked(config) >= rolled_back + 2, 30, "the guard stopped looking")
    rollbacks = events(config, action="rollback")
    assert [r["version"] for r in rollbacks if r["reason"].startswith("live guard")] == [challenger]
    _predict(base, "metrics-user")  # answered requests are counted (whichever worker answers)
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert "tuneloop_requests_total" in metrics and "tuneloop_negative_feedback_rate" in metrics


def test_shadow_mode_never_returns_the_shadow_answer(registered):
    home, config, _ = registered
    set_challenger_percent(config, 100)  # even a full share is ignored in shadow mode
    with running_service(home, "classification", TUNELOOP_DEPLOY__SHADOW="true") as base:
        champion = alias_version(config.model_name, "champion")
        challenger = alias_version(config.model_name, "challenger")
        answers = [_predict(base, f"shadow-{i}") for i in range(12)]
        assert {a["model_version"] for a in answers} == {champion}
        from tuneloop.serving.live import shadow_log  # scrubbed records in the shadow_log table (tests/test_shadow.py)

        _wait_until(lambda: len(shadow_log(config)) >= 12, 20, "shadow answers not logged")
        lines = shadow_log(config)
        assert {line["shadow_version"] for line in lines} == {challenger}
        assert {a["request_id"] for a in answers} <= {line["request_id"] for line in lines}
    set_challenger_percent(config, 0)


def test_a_router_service_with_no_trained_version_tells_the_app_to_use_its_own_router(tmp_path):
    """Before any loop has registered a version, the classification service answers every request with
    the fallback label, confidence 0 and the ``existing_router`` variant (docs/router.md), never a label
    from the base's untrained head."""
    with running_service(tmp_path, "classification") as base:
        payload = {
            "requests": [
                {"user_id": f"u{i}", "input": text, "request_id": f"first-{i}"}
                for i, text in enumerate(["where is my Orbit camera", "tell me a joke about penguins"])
            ]
        }
        answers = httpx.post(f"{base}/predict", json=payload, timeout=60).raise_for_status().json()
    assert [(a["output"], a["variant"], a["model_version"]) for a in answers] == [
        ("out_of_scope", "existing_router", "base")
    ] * 2
    assert all(a["confidence"] == 0.0 for a in answers)


def test_free_ports_lie_below_the_ephemeral_range_and_differ():
    """A port the kernel may hand to the server's own bind(0) would collide (BentoML's arbiter did)."""
    from pathlib import Path

    from devtools.localserver import free_port

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20 and all(10_000 <= p < low for p in ports)
