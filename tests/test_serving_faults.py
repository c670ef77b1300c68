"""The service through faults behind it: MLflow stopped, a version that cannot load.

Real servers on 127.0.0.1: ``mlflow server`` (SQLite backend, proxied artifacts) and the BentoML
service, stopped and started as an operator's supervisor would.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import mlflow
from conftest import TOKEN, tiny_config
from peft import LoraConfig, get_peft_model

from devtools.localserver import free_port, server_process, tuneloop_service
from tuneloop.modeling.adapters import write_meta
from tuneloop.modeling.models import base_of, load_base, lora_targets, save_labels
from tuneloop.registry.versions import log_adapter, move_alias
from tuneloop.release.flags import challenger_percent, set_challenger_percent
from tuneloop.release.operations import events

AUTH = {"Authorization": f"Bearer {TOKEN}"}
LABELS = ["order_status", "lost_card", "refund"]
SERVICE_ENV = dict(
    TUNELOOP_TINY="true",
    TUNELOOP_API_TOKEN=TOKEN,
    TUNELOOP_REGISTRY_POLL_S="0.5",
    TUNELOOP_DEPLOY__SERVE_WORKERS="1",
    TUNELOOP_DEPLOY__GUARD_INTERVAL_S="60",
)


def _tiny_adapter(config, folder: Path, seed: int) -> Path:
    """A real LoRA adapter on the tiny classifier (untrained: these tests are about serving it)."""
    import torch

    torch.manual_seed(seed)
    info = base_of(config)
    model = load_base(info, "classification", LABELS)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=lora_targets(model, "qv"), init_lora_weights=False))
    peft.save_pretrained(folder)
    write_meta(folder, config, info)
    save_labels(folder, LABELS)
    return folder


def _register(config, folder: Path) -> str:
    return str(log_adapter(config, folder, {"note": "serving faults test"}).version)


@contextmanager
def _mlflow_server(home: Path, port: int):
    args = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{home / 'mlflow-server.db'}",
        "--artifacts-destination",
        str(home / "mlflow-artifacts"),
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with server_process(args, env, f"http://127.0.0.1:{port}/health", home / f"mlflow-{time.time_ns()}.log"):
        yield f"http://127.0.0.1:{port}"


def _predict(base: str, user: str = "u1") -> dict:
    r = httpx.post(
        f"{base}/predict", json={"requests": [{"user_id": user, "input": "my card has not arrived"}]}, timeout=60
    )
    r.raise_for_status()
    return r.json()[0]


def _wait_until(condition, seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def test_service_starts_and_answers_with_mlflow_stopped_then_catches_up(home):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    config = tiny_config(home, "classification")
    env = {**SERVICE_ENV, "MLFLOW_TRACKING_URI": uri}
    with _mlflow_server(home, port):
        mlflow.set_tracking_uri(uri)
        v1 = _register(config, _tiny_adapter(config, home / "a1", 1))
        move_alias(config.model_name, "champion", v1, "test", config=config)
        with tuneloop_service(home, "classification", **env) as base:  # one run with MLflow up
            assert _predict(base)["model_version"] == v1
            assert httpx.get(f"{base}/readyz", timeout=10).json()["stale_since"] is None
    # MLflow is stopped; the service restarts (a deploy, a crash) and must still serve v1
    with tuneloop_service(home, "classification", **env) as base:
        assert _predict(base)["model_version"] == v1
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["stale_since"] and "stale since" in ready.json()["detail"]
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        stale = [line for line in metrics.splitlines() if line.startswith("tuneloop_registry_stale_since_seconds")]
        assert stale and float(stale[0].split()[-1]) > 0
        began = time.monotonic()
        rollback = httpx.post(f"{base}/v1/admin/rollback", headers=AUTH, timeout=10)
        assert rollback.status_code == 200 and time.monotonic() - began < 1.0
        with _mlflow_server(home, port):  # back: the service catches up by itself
            _wait_until(
                lambda: httpx.get(f"{base}/readyz", timeout=10).json()["stale_since"] is None,
                60,
                "the service did not catch up with the registry",
            )
            assert _predict(base)["model_version"] == v1


def test_a_corrupt_challenger_does_not_stop_a_champion_change(home):
    config = tiny_config(home, "classification")
    v1 = _register(config, _tiny_adapter(config, home / "a1", 1))
    broken = _tiny_adapter(config, home / "broken", 2)
    (broken / "adapter_model.safetensors").write_bytes(b"\x00not safetensors" * 64)
    v2 = _register(config, broken)
    v3 = _register(config, _tiny_adapter(config, home / "a3", 3))
    move_alias(config.model_name, "champion", v1, "test", config=config)
    move_alias(config.model_name, "challenger", v2, "test", config=config)
    set_challenger_percent(config, 50, version=v2)
    with tuneloop_service(home, "classification", **SERVICE_ENV) as base:
        routing = httpx.get(f"{base}/v1/routing", timeout=10).json()
        assert routing["served"] == {"champion": v1}  # the challenger was skipped, the champion serves
        _wait_until(lambda: challenger_percent(config, v2) == 0, 20, "the broken challenger's canary stayed open")
        assert any(e["action"] == "canary" and "cannot be loaded" in e["reason"] for e in events(config))
        move_alias(
            config.model_name, "champion", v3, "test", config=config
        )  # the challenger is still the broken version
        _wait_until(
            lambda: httpx.get(f"{base}/v1/routing", timeout=10).json()["served"].get("champion") == v3,
            30,
            "a broken challenger held up the champion change",
        )
        assert {_predict(base, f"user-{i}")["model_version"] for i in range(10)} == {v3}
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert f'tuneloop_adapter_load_failures_total{{alias="challenger",version="{v2}"}}' in metrics


def test_a_locked_store_gives_503_and_acknowledges_nothing(home):
    import sqlite3

    from tuneloop.data.feedback import FeedbackStore

    config = tiny_config(home, "classification")
    move_alias(
        config.model_name, "champion", _register(config, _tiny_adapter(config, home / "a1", 1)), "test", config=config
    )
    url = f"sqlite:///{home / 'ops.db'}?timeout=1"  # the lock wait, shortened from 30 s for the test
    with tuneloop_service(home, "classification", **SERVICE_ENV, TUNELOOP_FEEDBACK_URL=url) as base:
        answer = _predict(base, "locked-user")
        record = {
            "request_id": answer["request_id"],
            "user_id": "locked-user",
            "model_version": answer["model_version"],
            "kind": "classification",
            "prompt": "my card has not arrived",
            "output": answer["output"],
            "rating": "up",
            "receipt": answer["receipt"],
        }
        holder = sqlite3.connect(home / "ops.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another writer holds the database past the service's wait
        try:
            refused = httpx.post(f"{base}/v1/feedback", json=record, headers=AUTH, timeout=30)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert refused.status_code == 503 and refused.json()["field"] == "store"
        assert FeedbackStore(url).get(record["request_id"], "classification") is None
        retried = httpx.post(f"{base}/v1/feedback", json=record, headers=AUTH, timeout=30)
        assert retried.status_code == 201 and FeedbackStore(url).get(record["request_id"], "classification")
