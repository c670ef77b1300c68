"""Traffic operations, each in one place: promote, roll back, set the canary; their event log.

The CLI, the service's admin API, the rollout flow and the live guard all call these, so "promote,
then close the canary" or "roll back and say why" mean the same thing whoever does it. Events go
to the ``rollout_events`` table of the operations database, shared by every machine, with who acted
(a named API token, a CLI user, a flow or the live guard).
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneloop.config import LoopConfig
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.ops_tables import RolloutEventRow
from tuneloop.release.flags import challenger_percent, set_challenger_percent


def cli_actor() -> str:
    return f"cli:{getpass.getuser()}"


def record_event(
    config: LoopConfig, version: str, action: str, reason: str, segment: str | None = None, actor: str | None = None
) -> None:
    with Session(FeedbackStore(config.feedback_db).engine) as session, session.begin():
        session.add(
            RolloutEventRow(
                model=config.model_name,
                version=version,
                action=action,
                reason=reason,
                segment=segment,
                actor=(actor or cli_actor())[:128],
            )
        )


def events(config: LoopConfig, action: str | None = None, limit: int = 100) -> list[dict]:
    """The newest rollout events of this kind's model, newest first."""
    query = select(RolloutEventRow).where(RolloutEventRow.model == config.model_name)
    if action:
        query = query.where(RolloutEventRow.action == action)
    with Session(FeedbackStore(config.feedback_db).engine) as session:
        rows = session.scalars(query.order_by(RolloutEventRow.id.desc()).limit(limit))
        return [
            {
                "at": r.at.isoformat(),
                "version": r.version,
                "action": r.action,
                "reason": r.reason,
                "segment": r.segment,
                "actor": r.actor,
            }
            for r in rows
        ]


def set_canary(config: LoopConfig, percent: int, reason: str = "set by operator", actor: str | None = None) -> int:
    """The challenger's sticky share; refused (ValueError) above 0 % when there is no challenger."""
    from tuneloop.registry.versions import alias_version

    challenger = alias_version(config.model_name, "challenger")
    if percent and challenger is None:
        raise ValueError(f"percent: {config.model_name} has no challenger to route {percent} % of users to")
    set_challenger_percent(config, percent, by=actor or cli_actor(), version=challenger)
    record_event(config, challenger or "-", "canary", f"{percent} %: {reason}", actor=actor)
    return percent


def promote(config: LoopConfig, expected: str, reason: str, actor: str | None = None) -> str:
    """challenger -> champion (the old champion kept as ``previous``), then the canary closes. The new champion.

    ``expected`` is the challenger version the caller decided to promote; when the challenger is another
    version by now (a newer loop registered one), nothing moves (ValueError naming both)."""
    from tuneloop.registry.versions import promote as promote_alias

    version = promote_alias(config.model_name, reason=reason, expected=str(expected), config=config)
    set_challenger_percent(config, 0, by=actor or cli_actor())  # the challenger alias is gone: nobody to route to
    record_event(config, version, "promote", reason, actor=actor)
    return version


def roll_back(
    config: LoopConfig,
    reason: str,
    version: str | None = None,
    restore_champion: bool = False,
    segment: str | None = None,
    actor: str | None = None,
    champion_known: bool = False,
) -> str | None:
    """Every user to the champion now (share 0 %); the challenger version is tagged with why.

    The share is what routes users and lives in the operations database, so it is set first and the
    registry is only bookkeeping after it: with MLflow unreachable the rollback still holds (the tag
    is skipped and the event says so). ``restore_champion`` also puts the previous champion back.
    Returns the champion version after (None when unknown, or not asked for: ``champion_known``).
    """
    from mlflow import MlflowClient

    from tuneloop.registry.versions import alias_version, restore_previous

    set_challenger_percent(config, 0, by=actor or cli_actor())
    version = version or alias_version(config.model_name, "challenger")
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    if version:
        try:
            MlflowClient().set_model_version_tag(config.model_name, version, "rolled_back", f"{stamp} {reason}")
        except Exception as err:  # noqa: BLE001  the share is already 0 %; say the tag is missing, do not fail
            reason = f"{reason} (registry unreachable, version not tagged: {type(err).__name__})"
        record_event(config, version, "rollback", reason, segment, actor=actor)
    if restore_champion:
        champion = restore_previous(config.model_name, reason=reason, config=config)
        record_event(config, champion, "restore", reason, actor=actor)
        return champion
    return None if champion_known else alias_version(config.model_name, "champion")


__all__ = ["challenger_percent", "cli_actor", "events", "promote", "record_event", "roll_back", "set_canary"]
