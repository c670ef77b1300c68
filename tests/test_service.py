"""The BentoML service as a real server on 127.0.0.1: routing, attribution, feedback, rollback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import TOKEN, tiny_config
from flows.loop import loop
from tuneloop.feedback import FeedbackStore
from tuneloop.flags import set_challenger_percent
from tuneloop.registry import log_adapter, move_alias, promote
from tuneloop.sample_data import sample_feedback

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def service(home):
    """Champion v1 and challenger v2 registered for classification, then the service started on them."""
    config = tiny_config(home, "classification", epochs=6)
    FeedbackStore(config.feedback_db).add_many_raw(sample_feedback("classification"), config.kind)
    result = loop(config)
    promote(config.model_name)
    v2 = log_adapter(config, result.tuned.best.adapter_dir, {"note": "second version for routing tests"})
    move_alias(config.model_name, "challenger", str(v2.version), "test")
    set_challenger_percent(config.flag_file, config.flag_key, 50)

    port = _free_port()
    env = {**os.environ, "TUNELOOP_HOME": str(home), "TUNELOOP_KIND": "classification", "TUNELOOP_TINY": "true",
           "TUNELOOP_API_TOKEN": TOKEN, "TUNELOOP_REGISTRY_POLL_S": "0.5", "BENTOML_HOME": str(home / "bentoml")}
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "serving.service:Tuneloop", "--host", "127.0.0.1",
                             "--port", str(port), "--working-dir", str(ROOT)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=open(home / "service.log", "w"), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (home / "service.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "service not ready in 120 s"
            time.sleep(0.5)
        yield base, config
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _predict(base: str, user: str) -> dict:
    r = httpx.post(f"{base}/predict", json={"user_id": user, "input": "where is my Orbit camera", "request_id": f"r-{user}"}, timeout=30)
    r.raise_for_status()
    return r.json()


def test_routes_sticky_canary_and_rolls_back_without_restart(service):
    base, config = service
    answers = {f"user-{i}": _predict(base, f"user-{i}") for i in range(40)}
    versions = {a["model_version"] for a in answers.values()}
    assert versions == {"1", "2"}
    for user, answer in answers.items():
        assert answer["request_id"] == f"r-{user}"
        assert answer["variant"] == ("champion" if answer["model_version"] == "1" else "challenger")
        assert _predict(base, user)["model_version"] == answer["model_version"]  # sticky

    assert httpx.post(f"{base}/v1/admin/rollback", timeout=10).status_code == 401
    began = time.monotonic()
    assert httpx.post(f"{base}/v1/admin/rollback", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).status_code == 200
    challengers = [u for u, a in answers.items() if a["model_version"] == "2"]
    while any(_predict(base, u)["model_version"] == "2" for u in challengers):
        assert time.monotonic() - began < 5, "rollback not effective within 5 s"
        time.sleep(0.05)
    assert all(_predict(base, u)["model_version"] == "1" for u in answers)


def test_feedback_needs_token_validates_and_is_idempotent(service):
    base, config = service
    answer = _predict(base, "user-x")
    record = {"request_id": answer["request_id"], "user_id": "user-x", "model_version": answer["model_version"],
              "kind": "classification", "prompt": "where is my Orbit camera", "output": answer["output"],
              "rating": "down", "correction": "shipping_status"}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(f"{base}/v1/feedback", json=record, timeout=10).status_code == 401
    assert httpx.post(f"{base}/v1/feedback", json=record, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401

    first = httpx.post(f"{base}/v1/feedback", json=record, headers=auth, timeout=10)
    assert first.status_code == 201 and first.json()["created"] is True
    retry = httpx.post(f"{base}/v1/feedback", json=record, headers=auth, timeout=10)
    assert retry.json() == {**first.json(), "created": False}
    store = FeedbackStore(config.feedback_db)
    assert store.get(answer["request_id"])["correction"] == "shipping_status"

    bad = httpx.post(f"{base}/v1/feedback", json={**record, "request_id": "r-bad", "rating": "meh"}, headers=auth, timeout=10)
    assert bad.status_code == 422 and "rating" in bad.text
    unknown = httpx.post(f"{base}/v1/feedback", json={**record, "request_id": "r-unk", "model_version": "99"}, headers=auth, timeout=10)
    assert unknown.status_code == 422 and "model_version" in unknown.text
    assert store.get("r-bad") is None and store.get("r-unk") is None
