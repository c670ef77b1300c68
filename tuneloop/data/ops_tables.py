"""Rows of the operations tables (migration 0003) that live beside the feedback in one database, so
that the CLI, the flows, workers and services on different machines share them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Boolean, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tuneloop.data.feedback import Base


def _now() -> datetime:
    return datetime.now(UTC)


class FlagRow(Base):
    """One flagd flag definition (JSON); services mirror these into their local flag file."""

    __tablename__ = "flags"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    definition: Mapped[str] = mapped_column(Text, comment="The flagd flag definition (JSON).")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class SettingRow(Base):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class RolloutEventRow(Base):
    __tablename__ = "rollout_events"
    __table_args__ = (Index("ix_rollout_events_model", "model", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    model: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    segment: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str | None] = mapped_column(String(128), nullable=True, doc="Named token, user or flow that acted.")


class ApiTokenRow(Base):
    """A named API token: its scope and SHA-256 digest (migration 0004); the token itself is never stored."""

    __tablename__ = "api_tokens"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, comment="SHA-256 of the token; never the token.")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ShadowRow(Base):
    __tablename__ = "shadow_log"
    __table_args__ = (Index("ix_shadow_log_kind", "kind", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    kind: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[str] = mapped_column(String(128))
    user_hash: Mapped[str] = mapped_column(String(64), comment="Salted hash of the user id, never the id.")
    input: Mapped[str] = mapped_column(Text, comment="Scrubbed of personal data.")
    live_version: Mapped[str] = mapped_column(String(64))
    live_output: Mapped[str] = mapped_column(Text)
    shadow_version: Mapped[str] = mapped_column(String(64))
    shadow_output: Mapped[str] = mapped_column(Text)
    agree: Mapped[bool] = mapped_column(Boolean)


class DriftWindowRow(Base):
    __tablename__ = "drift_windows"
    __table_args__ = (Index("ix_drift_windows_kind", "kind", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    kind: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(64))
    n: Mapped[int] = mapped_column(Integer)
    statistic: Mapped[float] = mapped_column(Float)
    p_value: Mapped[float] = mapped_column(Float)
    drifted: Mapped[bool] = mapped_column(Boolean)


class TriggerRunRow(Base):
    __tablename__ = "trigger_runs"
    __table_args__ = (Index("ix_trigger_runs_kind", "kind", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    kind: Mapped[str] = mapped_column(String(32))
    ran: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)
    cpu_seconds: Mapped[float] = mapped_column(Float)
    wall_seconds: Mapped[float] = mapped_column(Float)
    cost_usd: Mapped[float] = mapped_column(Float)
