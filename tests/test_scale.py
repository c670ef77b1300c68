"""The loop at the sizes real users have: 20,000 generated feedback records of each kind, end to end on
tiny models, with everything Prefect stores per run staying small (data moves by reference)."""

from __future__ import annotations

import json
from datetime import UTC

import pytest
from conftest import tiny_config

from devtools import synthetic
from tuneloop.data.feedback import FeedbackStore
from tuneloop.flows.loop import loop

LIMIT = 16 * 1024  # bytes of flow-run parameters, whatever the data size (Prefect refuses 512 KB)


def _flow_runs_since(started) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)))


@pytest.mark.parametrize("kind", ["classification", "generation"])
def test_twenty_thousand_records_run_end_to_end_and_prefect_stores_only_references(kind, home):
    from datetime import datetime

    config = tiny_config(
        home,
        kind,
        epochs=1,
        batch_size=64,
        trial_steps=12,
        n_trials=2,
        ranks=[8],
        first_trial={"rank": 8, "lr": 0.02},
        evals_per_trial=1,
        validation_examples=32,
    )
    config = config.model_copy(
        update={"max_new_tokens": 6, "gate": config.gate.model_copy(update={"max_heldout_examples": 200})}
    )
    store = FeedbackStore(config.feedback_db)
    records = list(synthetic.feedback(kind, 20_000, seed=1))
    assert store.add_many(r for r in _valid(records, kind))[0] > 19_000

    started = datetime.now(UTC)
    result = loop(config)
    assert result.data.sizes["train"] > 5_000 and sum(result.data.sizes.values()) > 10_000
    assert result.tuned.n_complete >= 1 and result.report.challenger["heldout"].metrics  # every stage ran on it
    # the winner saw part of the split in its trial, then trained on all of it
    assert result.tuned.challenger.mlflow_run_id != result.tuned.best.mlflow_run_id

    runs = _flow_runs_since(started)
    names = {run.flow_id for run in runs}
    assert len(runs) >= 2 and len(names) >= 2  # the loop and its tune subflow
    for run in runs:
        size = len(json.dumps(run.parameters, default=str).encode())
        assert size < LIMIT, f"flow run {run.name} has {size:,} bytes of parameters"
    assert len(result.model_dump_json().encode()) < LIMIT  # the loop's own result, too


def _valid(records: list[dict], kind: str):
    from tuneloop.data.records import FeedbackError, validate_feedback

    for record in records:
        try:
            yield validate_feedback(record, kind)
        except FeedbackError:
            continue
