"""The trigger: run the loop when enough new feedback arrived, or when live inputs drifted, at most
once per interval; record what each run decided and what deciding cost.

Scheduled every 15 minutes (``prefect.yaml``), so it must be cheap when there is nothing to do: it
reads the last curation's high-water mark, counts usable corrections that arrived after it, reads
the newest drift windows the service logged, and returns. torch and transformers are imported only
on the path that runs the loop. Every run is a row in ``trigger_runs`` with its measured CPU and
wall seconds and their price (the idle cost of the schedule); when the process was started for
this flow run alone (a deployment's run), its start-up counts too.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from typing import Literal

from prefect import flow
from pydantic import BaseModel, Field

from tuneloop.config import LoopConfig
from tuneloop.costs.cost import Usage, meter
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.forget import apply_retention
from tuneloop.data.records import FeedbackError, validate_feedback
from tuneloop.release.drift import drift_evidence


class Decision(BaseModel):
    run: bool
    reason: str
    new_corrections: int | None = Field(
        description="Usable corrections after the last curation's high-water mark (None: not counted)."
    )
    since_feedback_id: int = Field(description="The last curation's high-water mark (0 before the first run).")
    last_run_at: datetime | None = None
    because: Literal["corrections", "drift"] | None = Field(None, description="What started the loop, when it runs.")
    drift: str | None = Field(
        None, description="The drift evidence (the last drift.consecutive windows all drifted), if any."
    )
    loop_run_id: str | None = Field(None, description="MLflow run id of the loop, when one ran.")
    cost_usd: float | None = Field(None, description="Measured cost of deciding (CPU x cost.cpu_hour).")


def count_new_corrections(store: FeedbackStore, kind: str, after_id: int) -> int:
    """Valid thumbs-down records with a correction, newer than ``after_id``: what a new loop would learn from."""
    count = 0
    for row in store.rows(kind, after_id=after_id):
        try:
            record = validate_feedback(json.loads(row.payload), kind)
        except (FeedbackError, ValueError):
            continue
        count += record.rating == "down" and record.correction is not None
    return count


def last_drift_run(config: LoopConfig) -> datetime | None:
    """When the trigger last started a loop because of drift (None: never)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from tuneloop.data.ops_tables import TriggerRunRow

    with Session(FeedbackStore(config.feedback_db).engine) as session:
        at = session.scalar(
            select(TriggerRunRow.at)
            .where(TriggerRunRow.kind == config.kind, TriggerRunRow.ran.is_(True), TriggerRunRow.reason.like("drift%"))
            .order_by(TriggerRunRow.id.desc())
            .limit(1)
        )
    return _aware(at) if at else None


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)  # SQLite drops the zone


def decide(config: LoopConfig, now: datetime | None = None) -> Decision:
    """Whether to run the loop now: enough new corrections; or significant input drift with at least
    ``drift.min_new_corrections`` and its own ``drift.min_interval_minutes``; never within
    ``min_interval_minutes`` of the last run."""
    now = now or datetime.now(UTC)
    store = FeedbackStore(config.feedback_db)
    last = store.last_curation(config.kind)
    since = last.high_water_id if last else 0
    last_at = last.created_at if last else None
    if last and now - last.created_at < timedelta(minutes=config.min_interval_minutes):
        wait = last.created_at + timedelta(minutes=config.min_interval_minutes) - now
        # counting is skipped too: inside the interval the answer is no whatever arrived
        return Decision(
            run=False,
            reason=f"last run {last.created_at:%Y-%m-%d %H:%M:%S} UTC is within the "
            f"{config.min_interval_minutes:g}-minute interval (next in {wait.total_seconds() / 60:.1f} min)",
            new_corrections=None,
            since_feedback_id=since,
            last_run_at=last_at,
        )
    new = count_new_corrections(store, config.kind, since)
    common = dict(new_corrections=new, since_feedback_id=since, last_run_at=last_at)
    if new >= config.min_new_corrections:
        return Decision(
            run=True,
            because="corrections",
            reason=f"{new} new usable corrections since feedback id {since} (>= {config.min_new_corrections})",
            **common,
        )
    no = f"{new} new usable corrections since feedback id {since}; {config.min_new_corrections} needed"
    drift = drift_evidence(config, since=_naive_utc(last_at, store)) if config.drift.enabled else None
    if drift is None:
        return Decision(run=False, reason=no, **common)
    previous = last_drift_run(config)
    if previous and now - previous < timedelta(minutes=config.drift.min_interval_minutes):
        return Decision(
            run=False,
            drift=drift,
            reason=f"{no}; {drift}, but the last drift-started loop "
            f"({previous:%Y-%m-%d %H:%M} UTC) is within drift.min_interval_minutes "
            f"({config.drift.min_interval_minutes:g})",
            **common,
        )
    if new < config.drift.min_new_corrections:
        return Decision(
            run=False,
            drift=drift,
            reason=f"{no}; {drift}, but a drift-started loop needs "
            f"{config.drift.min_new_corrections} new corrections to learn from",
            **common,
        )
    return Decision(
        run=True,
        because="drift",
        drift=drift,
        reason=f"drift: {drift}; {new} new usable corrections "
        f"(>= drift.min_new_corrections {config.drift.min_new_corrections})",
        **common,
    )


def _naive_utc(at: datetime | None, store: FeedbackStore) -> datetime | None:
    # SQLite stores the timestamps without their zone: compare like with like
    if at is None or store.engine.dialect.name != "sqlite":
        return at
    return at.astimezone(UTC).replace(tzinfo=None)


def record_run(config: LoopConfig, decision: Decision, usage: Usage) -> float:
    """One ``trigger_runs`` row: what was decided and what deciding cost (USD, returned)."""
    from sqlalchemy.orm import Session

    from tuneloop.data.ops_tables import TriggerRunRow

    usd = usage.usd(config.cost)
    with Session(FeedbackStore(config.feedback_db).engine) as session, session.begin():
        session.add(
            TriggerRunRow(
                kind=config.kind,
                ran=decision.run,
                reason=decision.reason,
                cpu_seconds=usage.cpu_s,
                wall_seconds=usage.wall_s,
                cost_usd=usd,
            )
        )
    return usd


def _own_process() -> bool:
    """True when this process was started for this flow run alone (a deployment's run): then its
    start-up (interpreter, imports, connecting to Prefect) is part of the trigger's cost."""
    from prefect.runtime import flow_run

    return bool(os.environ.get("PREFECT__FLOW_RUN_ID")) and os.environ["PREFECT__FLOW_RUN_ID"] == str(flow_run.id)


@flow(name="tuneloop-trigger", log_prints=True)
def trigger(config: LoopConfig | None = None) -> Decision:
    """Decide, record the decision and its cost, and run the loop when the decision is yes."""
    config = config or LoopConfig()  # a deployment's run: built once, here, from its environment
    with meter("trigger", since_process_start=_own_process(), gpus=0) as usage:
        pruned = apply_retention(config)  # operational records older than the retention settings
        decision = decide(config)
    if any(pruned.values()):
        print("Retention: deleted " + ", ".join(f"{n} {table} rows" for table, n in pruned.items() if n))
    decision.cost_usd = record_run(config, decision, usage)
    print(
        ("Running the loop: " if decision.run else "Nothing to do: ")
        + decision.reason
        + f" (deciding cost {usage.cpu_s:.2f} CPU s, {usage.wall_s:.2f} s, ${decision.cost_usd:.6f})"
    )
    if decision.run:
        from tuneloop.flows.loop import loop  # lazily: torch and transformers load only when there is work

        decision.loop_run_id = loop(config).run_id
    return decision
