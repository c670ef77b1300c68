"""A user's data: deleted on request (``tuneloop forget``), and operational records kept only so long.

``forget`` deletes every feedback record a user id sent (of every kind, quarantined ones too, whatever
their source) and the shadow log rows of that user (found by the salted hash the log keeps instead
of the id), and reports what was already trained on those records: the dataset versions whose
curation used them (a curation uses every valid record up to its high-water mark, except bare
thumbs-down) and the registered model versions whose ``dataset_hash`` tag names one of those
datasets. Those files and versions are immutable lineage: retrain without the user, then retire them.

``apply_retention`` deletes shadow log rows, drift windows and rollout events older than the
``retention`` settings; the trigger flow runs it every time it runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from tuneloop.config import LoopConfig
from tuneloop.data.feedback import CurationRunRow, FeedbackRow, FeedbackStore, QuarantineRow
from tuneloop.data.records import FeedbackError, validate_feedback


@dataclass
class ForgetReport:
    feedback_rows: int = 0
    quarantined_rows: int = 0
    shadow_rows: int = 0
    datasets: list[str] = field(default_factory=list)
    model_versions: list[str] = field(default_factory=list)  # "tuneloop-generation/3"


def _trained_on(payload: str, kind: str) -> bool:
    """Whether curation turns this record into a training example (valid and not a bare thumbs-down)."""
    try:
        record = validate_feedback(json.loads(payload), kind)
    except (FeedbackError, ValueError):
        return False
    return not (record.rating == "down" and record.correction is None)


def _model_versions(kinds: set[str], datasets: set[str]) -> list[str]:
    from mlflow import MlflowClient

    client, out = MlflowClient(), []
    for kind in sorted(kinds):
        name = f"tuneloop-{kind}"
        for mv in client.search_model_versions(f"name = '{name}'"):
            if mv.tags.get("dataset_hash") in datasets:
                out.append(f"{name}/{mv.version}")
    return sorted(out, key=lambda s: (s.split("/")[0], int(s.split("/")[1])))


def forget(config: LoopConfig, user_id: str) -> ForgetReport:
    """Delete ``user_id``'s feedback and shadow rows; report the datasets and versions trained on them."""
    from tuneloop.data.ops_tables import ShadowRow
    from tuneloop.data.pseudonyms import shadow_salt, user_hash

    if not user_id or not user_id.strip():
        raise ValueError("user_id: must not be empty")
    store = FeedbackStore(config.feedback_db)
    mine = or_(FeedbackRow.user_id == user_id, store._json_text("user_id") == user_id)
    report = ForgetReport()
    with Session(store.engine) as session:
        rows = list(session.execute(select(FeedbackRow.id, FeedbackRow.kind, FeedbackRow.payload).where(mine)))
        ids = [r.id for r in rows]
        datasets: set[str] = set()
        for kind in {r.kind for r in rows}:
            used = [r.id for r in rows if r.kind == kind and _trained_on(r.payload, kind)]
            if used:
                runs = session.scalars(
                    select(CurationRunRow.dataset_hash).where(
                        CurationRunRow.kind == kind, CurationRunRow.high_water_id >= min(used)
                    )
                )
                datasets |= set(runs)
    report.datasets = sorted(datasets)
    # looked up before anything is deleted: a registry that cannot answer leaves the user's rows in place
    report.model_versions = _model_versions({r.kind for r in rows}, datasets) if datasets else []
    hashed = user_hash(shadow_salt(config), user_id)
    with Session(store.engine) as session, session.begin():
        for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
            report.quarantined_rows += session.execute(
                delete(QuarantineRow).where(QuarantineRow.feedback_id.in_(chunk))
            ).rowcount
            report.feedback_rows += session.execute(delete(FeedbackRow).where(FeedbackRow.id.in_(chunk))).rowcount
        report.shadow_rows = session.execute(delete(ShadowRow).where(ShadowRow.user_hash == hashed)).rowcount
    return report


def apply_retention(config: LoopConfig, now: datetime | None = None) -> dict[str, int]:
    """Delete operational rows older than the ``retention`` settings; rows deleted per table."""
    from tuneloop.data.ops_tables import DriftWindowRow, RolloutEventRow, ShadowRow

    now = now or datetime.now(UTC)
    keep = config.retention
    deleted: dict[str, int] = {}
    with Session(FeedbackStore(config.feedback_db).engine) as session, session.begin():
        for table, row, days in (
            ("shadow_log", ShadowRow, keep.shadow_days),
            ("drift_windows", DriftWindowRow, keep.drift_days),
            ("rollout_events", RolloutEventRow, keep.events_days),
        ):
            if days is not None:
                deleted[table] = session.execute(delete(row).where(row.at < now - timedelta(days=days))).rowcount
    return deleted
