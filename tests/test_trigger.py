"""The trigger flow: runs the loop only with enough new corrections, at most once per interval, cheaply otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import tiny_config
from prefect.settings import PREFECT_API_URL

from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.sample_data import sample_feedback
from tuneloop.flows.trigger import count_new_corrections, decide, trigger

ROOT = Path(__file__).resolve().parent.parent


def _corrections(start: int, n: int) -> list[dict]:
    return [
        {
            "request_id": f"new-{i}",
            "user_id": "u",
            "model_version": "base",
            "kind": "classification",
            "prompt": f"where is parcel number {i}",
            "output": "billing",
            "rating": "down",
            "correction": "shipping_status",
        }
        for i in range(start, start + n)
    ]


def test_too_few_corrections_exits_in_seconds_without_loading_torch(home):
    config = tiny_config(home, "classification")
    store = FeedbackStore(config.feedback_db)
    store.add_many_raw(_corrections(0, 5) + [{**_corrections(99, 1)[0], "rating": "up"}], "classification")
    # the scheduled deployment's path, in a fresh interpreter against the same Prefect server
    script = (
        "import sys, time; t = time.perf_counter(); from tuneloop.flows.trigger import trigger; from tuneloop.config import LoopConfig; "
        f"d = trigger(LoopConfig(kind='classification', home={str(home)!r}, min_new_corrections=10)); "
        "import json; print('RESULT' + json.dumps({'decision': d.model_dump(mode='json'), 'seconds': time.perf_counter() - t, "
        "'heavy': sorted(m for m in ('torch', 'transformers', 'peft', 'optuna') if m in sys.modules)}))"
    )
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "TUNELOOP_HOME": str(home)}
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - began
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(row for row in out.stdout.splitlines() if row.startswith("RESULT"))
    result = json.loads(line.removeprefix("RESULT"))
    decision, seconds, heavy = result["decision"], result["seconds"], result["heavy"]
    assert decision["run"] is False and decision["new_corrections"] == 5 and "10 needed" in decision["reason"]
    assert heavy == [], f"the no-op path imported {heavy}"
    assert float(seconds) < 15 and wall < 30, (seconds, wall)
    assert store.last_curation("classification") is None  # nothing ran, no curation recorded
    [row] = _trigger_rows(config)  # but the decision and its measured cost are
    assert row.ran is False and row.cpu_seconds > 0 and row.cost_usd > 0


def test_enough_corrections_run_the_loop_then_the_interval_and_the_mark_hold_it(home):
    config = tiny_config(home, "classification", epochs=2)
    config.min_new_corrections, config.min_interval_minutes = 40, 30
    store = FeedbackStore(config.feedback_db)
    store.add_many_raw(sample_feedback("classification", small=True), "classification")

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
        assert isinstance(load_flow_from_entrypoint(deployment["entrypoint"]), Flow)  # a module path into the package
        assert deployment["parameters"]["config"]["kind"] == kind
        assert deployment["schedules"] == [{"interval": 900}]  # every 15 minutes
        assert deployment["concurrency_limit"]["limit"] == 1


# --- what deciding costs, and drift as a reason -----------------------------------------------------------


def _trigger_rows(config) -> list:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from tuneloop.data.ops_tables import TriggerRunRow

    with Session(FeedbackStore(config.feedback_db).engine) as session:
        return list(
            session.scalars(select(TriggerRunRow).where(TriggerRunRow.kind == config.kind).order_by(TriggerRunRow.id))
        )


def test_a_no_op_run_records_what_deciding_cost(home):
    config = tiny_config(home, "classification")
    config.cost.cpu_hour = 3.6  # $0.001 per CPU second: the figure is the CPU time in thousandths
    FeedbackStore(config.feedback_db).add_many_raw(_corrections(0, 3), "classification")
    decision = trigger(config)
    assert not decision.run and decision.loop_run_id is None
    [row] = _trigger_rows(config)
    assert row.ran is False and row.reason == decision.reason and row.cpu_seconds > 0 and row.wall_seconds > 0
    assert row.cost_usd == pytest.approx(row.cpu_seconds * 0.001) and decision.cost_usd == pytest.approx(row.cost_usd)


def _drift_windows(config, pattern: list[bool], version: str = "1") -> None:
    from sqlalchemy.orm import Session

    from tuneloop.data.ops_tables import DriftWindowRow

    with Session(FeedbackStore(config.feedback_db).engine) as session, session.begin():
        for drifted in pattern:
            session.add(
                DriftWindowRow(
                    kind=config.kind,
                    version=version,
                    n=200,
                    statistic=0.1 if drifted else 0.0,
                    p_value=0.005 if drifted else 0.6,
                    drifted=drifted,
                )
            )


def test_drift_is_a_reason_with_its_own_bar_and_interval(home):
    from tuneloop.costs.cost import Usage
    from tuneloop.flows.trigger import record_run

    config = tiny_config(home, "classification")
    config.min_new_corrections, config.drift.min_new_corrections, config.drift.consecutive = 50, 10, 3
    store = FeedbackStore(config.feedback_db)
    store.add_many_raw(_corrections(0, 12), "classification")  # too few for the corrections bar, enough for drift's
    assert not decide(config).run and decide(config).drift is None
    _drift_windows(config, [True, True, False])  # the newest window is not drifted: a run of 3 is needed
    assert decide(config).drift is None
    _drift_windows(config, [True, True])
    assert decide(config).drift is None  # two in a row
    _drift_windows(config, [True])
    decision = decide(config)
    assert decision.run and decision.because == "drift" and decision.reason.startswith("drift: input drift")
    assert "v1's training prompts" in decision.drift

    record_run(config, decision, Usage("trigger"))  # a drift-started loop ran: the drift interval holds the next
    later = decide(config, now=datetime.now(UTC) + timedelta(minutes=30))
    assert not later.run and "drift.min_interval_minutes" in later.reason
    after = decide(config, now=datetime.now(UTC) + timedelta(minutes=config.drift.min_interval_minutes + 1))
    assert after.run and after.because == "drift"

    config.drift.min_new_corrections = 13  # drift without enough to learn from: no loop, and why
    held = decide(config, now=datetime.now(UTC) + timedelta(minutes=config.drift.min_interval_minutes + 1))
    assert not held.run and held.drift and "needs 13 new corrections" in held.reason
    config.drift.enabled = False
    assert decide(config).drift is None
