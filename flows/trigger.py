"""The trigger: run the loop only when enough new feedback arrived, at most once per interval.

Scheduled every 15 minutes (``prefect.yaml``), so it must be cheap when there is nothing to do: it
reads the last curation's high-water mark, counts usable corrections that arrived after it, and
returns. torch and transformers are imported only on the path that runs the loop.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from prefect import flow
from pydantic import BaseModel, Field

from tuneloop.config import LoopConfig
from tuneloop.feedback import FeedbackError, FeedbackStore, validate_feedback


class Decision(BaseModel):
    run: bool
    reason: str
    new_corrections: int | None = Field(description="Usable corrections after the last curation's high-water mark (None: not counted).")
    since_feedback_id: int = Field(description="The last curation's high-water mark (0 before the first run).")
    last_run_at: datetime | None = None
    loop_run_id: str | None = Field(None, description="MLflow run id of the loop, when one ran.")


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


def decide(config: LoopConfig, now: datetime | None = None) -> Decision:
    """Whether to run the loop now: enough new corrections, and the interval since the last run has passed."""
    now = now or datetime.now(timezone.utc)
    store = FeedbackStore(config.feedback_db)
    last = store.last_curation(config.kind)
    since = last.high_water_id if last else 0
    if last and now - last.created_at < timedelta(minutes=config.min_interval_minutes):
        wait = last.created_at + timedelta(minutes=config.min_interval_minutes) - now
        # counting is skipped too: inside the interval the answer is no whatever arrived
        return Decision(run=False, reason=f"last run {last.created_at:%Y-%m-%d %H:%M:%S} UTC is within the "
                        f"{config.min_interval_minutes:g}-minute interval (next in {wait.total_seconds() / 60:.1f} min)",
                        new_corrections=None, since_feedback_id=since, last_run_at=last.created_at)
    new = count_new_corrections(store, config.kind, since)
    if new < config.min_new_corrections:
        return Decision(run=False, reason=f"{new} new usable corrections since feedback id {since}; "
                        f"{config.min_new_corrections} needed", new_corrections=new, since_feedback_id=since,
                        last_run_at=last.created_at if last else None)
    return Decision(run=True, reason=f"{new} new usable corrections since feedback id {since} "
                    f"(>= {config.min_new_corrections})", new_corrections=new, since_feedback_id=since,
                    last_run_at=last.created_at if last else None)


@flow(name="tuneloop-trigger", log_prints=True)
def trigger(config: LoopConfig = LoopConfig()) -> Decision:
    """Decide, and run the loop when the decision is yes."""
    decision = decide(config)
    print(("Running the loop: " if decision.run else "Nothing to do: ") + decision.reason)
    if decision.run:
        from flows.loop import loop  # lazily: torch and transformers load only when there is work

        decision.loop_run_id = loop(config).run_id
    return decision
