"""Traffic operations, each in one place: promote, roll back, set the canary; their event log; the API token.

The CLI, the service's admin API, the rollout flow and the live guard all call these, so "promote,
then close the canary" or "roll back and say why" mean the same thing whoever does it. Events go
to the ``rollout_events`` table of the operations database, shared by every machine.
"""

from __future__ import annotations

import getpass
import os
import secrets
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tuneloop.config import LoopConfig
from tuneloop.feedback import FeedbackStore
from tuneloop.flags import challenger_percent, set_challenger_percent
from tuneloop.ops_tables import RolloutEventRow, SettingRow


def record_event(config: LoopConfig, version: str, action: str, reason: str, segment: str | None = None) -> None:
    with Session(FeedbackStore(config.feedback_db).engine) as session, session.begin():
        session.add(RolloutEventRow(model=config.model_name, version=version, action=action, reason=reason, segment=segment))


def events(config: LoopConfig, action: str | None = None, limit: int = 100) -> list[dict]:
    """The newest rollout events of this kind's model, newest first."""
    query = select(RolloutEventRow).where(RolloutEventRow.model == config.model_name)
    if action:
        query = query.where(RolloutEventRow.action == action)
    with Session(FeedbackStore(config.feedback_db).engine) as session:
        rows = session.scalars(query.order_by(RolloutEventRow.id.desc()).limit(limit))
        return [{"at": r.at.isoformat(), "version": r.version, "action": r.action, "reason": r.reason,
                 "segment": r.segment} for r in rows]


def set_canary(config: LoopConfig, percent: int, reason: str = "set by operator") -> int:
    """The challenger's sticky share; refused (ValueError) above 0 % when there is no challenger."""
    from tuneloop.registry import alias_version

    challenger = alias_version(config.model_name, "challenger")
    if percent and challenger is None:
        raise ValueError(f"percent: {config.model_name} has no challenger to route {percent} % of users to")
    set_challenger_percent(config, percent, by=getpass.getuser())
    record_event(config, challenger or "-", "canary", f"{percent} %: {reason}")
    return percent


def promote(config: LoopConfig, reason: str) -> str:
    """challenger -> champion (the old champion kept as ``previous``), then the canary closes. The new champion."""
    from tuneloop.registry import promote as promote_alias

    version = promote_alias(config.model_name, reason=reason)
    set_challenger_percent(config, 0, by=getpass.getuser())  # the challenger alias is gone: nobody to route to
    record_event(config, version, "promote", reason)
    return version


def roll_back(config: LoopConfig, reason: str, version: str | None = None, restore_champion: bool = False,
              segment: str | None = None) -> str | None:
    """Every user to the champion now (share 0 %); the challenger version is tagged with why.

    ``restore_champion`` also puts the previous champion back. Returns the champion version after.
    """
    from mlflow import MlflowClient

    from tuneloop.registry import alias_version, restore_previous

    set_challenger_percent(config, 0, by=getpass.getuser())
    version = version or alias_version(config.model_name, "challenger")
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if version:
        MlflowClient().set_model_version_tag(config.model_name, version, "rolled_back", f"{stamp} {reason}")
        record_event(config, version, "rollback", reason, segment)
    if restore_champion:
        champion = restore_previous(config.model_name, reason=reason)
        record_event(config, champion, "restore", reason)
        return champion
    return alias_version(config.model_name, "champion")


def api_token(config: LoopConfig) -> str:
    """``TUNELOOP_API_TOKEN``, else the token in the operations database (created on first use), so every
    replica of the service and the CLI agree on it wherever they run."""
    if os.environ.get("TUNELOOP_API_TOKEN"):
        return os.environ["TUNELOOP_API_TOKEN"]
    store = FeedbackStore(config.feedback_db)
    with Session(store.engine) as session:
        row = session.get(SettingRow, "api_token")
        if row:
            return row.value
        session.add(SettingRow(key="api_token", value=secrets.token_urlsafe(24)))
        try:
            session.commit()
        except IntegrityError:  # another replica created it first: use theirs
            session.rollback()
        return session.get(SettingRow, "api_token").value


__all__ = ["api_token", "challenger_percent", "events", "promote", "record_event", "roll_back", "set_canary"]
