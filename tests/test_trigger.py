"""The trigger flow: runs the loop only with enough new corrections, at most once per interval, cheaply otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from prefect.settings import PREFECT_API_URL

from conftest import tiny_config
from flows.trigger import count_new_corrections, decide, trigger
from tuneloop.feedback import FeedbackStore
from tuneloop.sample_data import sample_feedback

ROOT = Path(__file__).resolve().parent.parent


def _corrections(start: int, n: int) -> list[dict]:
    return [{"request_id": f"new-{i}", "user_id": "u", "model_version": "base", "kind": "classification",
             "prompt": f"where is parcel number {i}", "output": "billing", "rating": "down", "correction": "shipping_status"}
            for i in range(start, start + n)]


def test_too_few_corrections_exits_in_seconds_without_loading_torch(home):
    config = tiny_config(home, "classification")
    store = FeedbackStore(config.feedback_db)
    store.add_many_raw(_corrections(0, 5) + [{**_corrections(99, 1)[0], "rating": "up"}], "classification")
    # the scheduled deployment's path, in a fresh interpreter against the same Prefect server
    script = ("import sys, time; t = time.perf_counter(); from flows.trigger import trigger; from tuneloop.config import LoopConfig; "
              f"d = trigger(LoopConfig(kind='classification', home={str(home)!r}, min_new_corrections=10)); "
              "import json; print('RESULT' + json.dumps({'decision': d.model_dump(mode='json'), 'seconds': time.perf_counter() - t, "
              "'heavy': sorted(m for m in ('torch', 'transformers', 'peft', 'optuna') if m in sys.modules)}))")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "TUNELOOP_HOME": str(home)}
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - began
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT"))
    result = json.loads(line.removeprefix("RESULT"))
    decision, seconds, heavy = result["decision"], result["seconds"], result["heavy"]
    assert decision["run"] is False and decision["new_corrections"] == 5 and "10 needed" in decision["reason"]
    assert heavy == [], f"the no-op path imported {heavy}"
    assert float(seconds) < 15 and wall < 30, (seconds, wall)
    assert store.last_curation("classification") is None  # nothing ran, nothing recorded


def test_enough_corrections_run_the_loop_then_the_interval_and_the_mark_hold_it(home):
    config = tiny_config(home, "classification", epochs=2)
    config.min_new_corrections, config.min_interval_minutes = 40, 30
    store = FeedbackStore(config.feedback_db)
    store.add_many_raw(sample_feedback("classification"), "classification")

    decision = trigger(config)
    assert decision.run and decision.new_corrections >= 40 and decision.since_feedback_id == 0
    assert decision.loop_run_id
    last = store.last_curation("classification")
    assert last.high_water_id == store.high_water("classification") and last.mlflow_run_id == decision.loop_run_id

    # new corrections arrive, but the last run is within the interval: no
    store.add_many_raw(_corrections(0, 60), "classification")
    held = trigger(config)
    assert not held.run and held.loop_run_id is None and "interval" in held.reason
    # the interval has passed (seen from later): the 60 corrections after the mark say yes
    later = decide(config, now=last.created_at + timedelta(minutes=31))
    assert later.run and later.new_corrections == 60 and later.since_feedback_id == last.high_water_id
    # only what arrived after the mark counts
    assert count_new_corrections(store, "classification", last.high_water_id) == 60
    config.min_new_corrections = 61
    assert not decide(config, now=last.created_at + timedelta(minutes=31)).run


def test_the_trigger_is_a_scheduled_deployment():
    import yaml
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    deployments = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    for kind in ("generation", "classification"):
        deployment = deployments[f"trigger-{kind}"]
        assert isinstance(load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"])), Flow)
        assert deployment["parameters"]["config"]["kind"] == kind
        assert deployment["schedules"] == [{"interval": 900}]  # every 15 minutes
        assert deployment["concurrency_limit"]["limit"] == 1
