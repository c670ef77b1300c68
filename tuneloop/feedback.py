"""Feedback: the record schema and the store it lands in.

The store keeps every acknowledged record exactly as received (raw JSON) and never mutates it;
curation parses, quarantines and derives datasets from it. SQLite by default, any SQLAlchemy URL
(Postgres included) by setting ``TUNELOOP_FEEDBACK_URL``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import DateTime, Integer, String, Text, create_engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tuneloop.config import Kind

MAX_TEXT = 8000  # characters; longer inputs are refused, not truncated


class FeedbackRecord(BaseModel):
    """One user's verdict on one model answer."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    request_id: str = Field(min_length=1, max_length=128, description="Id of the answered request; retries reuse it.")
    user_id: str = Field(min_length=1, max_length=128)
    model_version: str = Field(min_length=1, max_length=64, description="Version that produced the answer ('base' for none).")
    kind: Kind = "generation"
    prompt: str = Field(min_length=1, max_length=MAX_TEXT, description="What the user asked (or the utterance).")
    output: str = Field(max_length=MAX_TEXT, description="What the model answered (or the predicted label).")
    rating: Literal["up", "down"]
    correction: str | None = Field(None, max_length=MAX_TEXT, description="What it should have said (or the right label).")
    segment: str | None = Field(None, max_length=64, description="Optional tag for per-segment evaluation.")

    @model_validator(mode="after")
    def _correction_only_on_thumbs_down(self) -> "FeedbackRecord":
        if self.correction is not None and self.rating == "up":
            raise ValueError("correction: a thumbs-up cannot carry a correction")
        if self.correction is not None and not self.correction:
            raise ValueError("correction: must not be empty when given")
        return self


class _Base(DeclarativeBase):
    pass


class FeedbackRow(_Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=lambda: datetime.now(timezone.utc))
    payload: Mapped[str] = mapped_column(Text, doc="The record exactly as received (JSON).")


class FeedbackStore:
    """Append-only store of raw feedback."""

    def __init__(self, url: str):
        self.url = url
        self.engine = create_engine(url, pool_pre_ping=True)
        _Base.metadata.create_all(self.engine)

    def add(self, record: FeedbackRecord) -> tuple[int, bool]:
        """Store a validated record durably; returns (id, created). A retried request id is not duplicated."""
        return self.add_raw(record.model_dump(mode="json"), kind=record.kind)

    def add_raw(self, payload: dict[str, Any], kind: str) -> tuple[int, bool]:
        """Store a record as received, valid or not (imports, legacy data); curation judges it later."""
        request_id = payload.get("request_id") if isinstance(payload.get("request_id"), str) else None
        row = FeedbackRow(request_id=request_id, kind=kind, payload=json.dumps(payload, ensure_ascii=False))
        with Session(self.engine) as session:
            session.add(row)
            try:
                session.commit()
                return row.id, True
            except IntegrityError:
                session.rollback()
                existing = session.scalar(select(FeedbackRow.id).where(FeedbackRow.request_id == request_id))
                if existing is None:
                    raise
                return existing, False

    def add_many_raw(self, payloads: Iterable[dict[str, Any]], kind: str) -> int:
        return sum(self.add_raw(p, kind)[1] for p in payloads)

    def rows(self, kind: str, after_id: int = 0) -> list[FeedbackRow]:
        with Session(self.engine) as session:
            query = select(FeedbackRow).where(FeedbackRow.kind == kind, FeedbackRow.id > after_id).order_by(FeedbackRow.id)
            return list(session.scalars(query))

    def count(self, kind: str | None = None) -> int:
        with Session(self.engine) as session:
            query = select(func.count(FeedbackRow.id))
            if kind:
                query = query.where(FeedbackRow.kind == kind)
            return session.scalar(query) or 0

    def get(self, request_id: str) -> dict[str, Any] | None:
        with Session(self.engine) as session:
            row = session.scalar(select(FeedbackRow).where(FeedbackRow.request_id == request_id))
            return json.loads(row.payload) if row else None
