"""Feedback: the store it lands in (the record itself and its validation: ``tuneloop.data.records``).

The store keeps every acknowledged record exactly as received (raw JSON) and never mutates it (the
database refuses UPDATEs of feedback rows); curation parses, quarantines and derives datasets from
it, recording what it used in ``curation_runs`` and what it refused in ``quarantine``. SQLite by
default, any SQLAlchemy URL (Postgres included) by setting ``TUNELOOP_FEEDBACK_URL``. The schema is
kept by the Alembic migrations in ``tuneloop/data/migrations``, applied when a store is opened.
"""

from __future__ import annotations

import atexit
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    case,
    cast,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tuneloop.data.records import FeedbackError, FeedbackRecord

# optional fields carry their length limits inside: on the Optional they would count items, not characters


# --- the store -------------------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class FeedbackRow(Base):
    """One acknowledged record, as received. Rows are never updated (a database trigger refuses it)."""

    __tablename__ = "feedback"
    __table_args__ = (
        Index("ix_feedback_kind_id", "kind", "id"),
        Index("ix_feedback_user_received", "user_id", "received_at"),
        UniqueConstraint("kind", "request_id", name="uq_feedback_kind_request_id"),
    )  # the last: migration 0005

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)

    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=lambda: datetime.now(UTC))
    payload: Mapped[str] = mapped_column(Text, doc="The record exactly as received (JSON).")
    source: Mapped[str | None] = mapped_column(String(16), nullable=True, doc="api, import or raw (migration 0004).")
    user_id: Mapped[str | None] = mapped_column(String(128), nullable=True, doc="For the per-user rate limit.")


class CurationRunRow(Base):
    """One curation: which records it used (ids up to ``high_water_id``) and what it made of them."""

    __tablename__ = "curation_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=lambda: datetime.now(UTC))
    high_water_id: Mapped[int] = mapped_column(Integer, comment="Newest feedback id this curation used.")
    dataset_hash: Mapped[str] = mapped_column(String(64))
    counts: Mapped[str] = mapped_column(Text)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class QuarantineRow(Base):
    """A raw record curation refused, and why (kept and countable; the raw row itself stays as it was)."""

    __tablename__ = "quarantine"

    feedback_id: Mapped[int] = mapped_column(ForeignKey("feedback.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    reason: Mapped[str] = mapped_column(Text)
    curation_run_id: Mapped[int] = mapped_column(ForeignKey("curation_runs.id"))


@dataclass(frozen=True)
class CurationRun:
    id: int
    kind: str
    created_at: datetime
    high_water_id: int
    dataset_hash: str
    counts: dict[str, int]
    mlflow_run_id: str | None


class RequestIdConflict(FeedbackError):
    def __init__(self, request_id: str):
        super().__init__("request_id", f"{request_id!r} was already used for a different record", 409)


def make_engine(url: str) -> Engine:
    """An engine for the store. SQLite gets WAL (readers never block the writer), a full fsync per
    commit (an acknowledged record survives a power cut) and a long lock wait (concurrent writers queue)."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=16)
    # ?timeout=S in the URL shortens the lock wait: past it a write fails (503, nothing acknowledged)
    timeout = float(make_url(url).query.get("timeout", 30))
    engine = create_engine(url, connect_args={"timeout": timeout})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        if ":memory:" not in url and url.rstrip("/") != "sqlite:":
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


_ENGINES: OrderedDict[str, tuple[Engine, Any]] = OrderedDict()
_ENGINES_LOCK = threading.Lock()
MAX_ENGINES = 16  # distinct store URLs one process keeps open (tests open many; a service one or two)


def _engine_for(url: str) -> tuple[Engine, Any]:
    """One migrated engine (and SQLite write lock) per URL per process: opening a store is then free,
    so that per-request callers (/v1/routing, the flag follower, operations) never build an engine."""
    from tuneloop.data.migrations import upgrade

    with _ENGINES_LOCK:
        if url in _ENGINES:
            _ENGINES.move_to_end(url)
            return _ENGINES[url]
        engine = make_engine(url)
        upgrade(engine)
        # SQLite has one writer at a time and its busy handler sleeps in growing steps (up to 100 ms)
        # while waiting: queueing this process's writers on a lock instead keeps the latency flat
        entry = (engine, threading.Lock() if engine.dialect.name == "sqlite" else nullcontext())
        _ENGINES[url] = entry
        while len(_ENGINES) > MAX_ENGINES:
            _ENGINES.popitem(last=False)[1][0].dispose()  # closes its idle connections; still usable if held
        return entry


def forget_engines() -> None:
    """Drop every cached engine (after a schema downgrade: the next open migrates again)."""
    with _ENGINES_LOCK:
        entries = list(_ENGINES.values())
        _ENGINES.clear()
    for engine, _ in entries:
        engine.dispose()


atexit.register(forget_engines)  # pooled connections closed at exit, not left for the server to time out


class FeedbackStore:
    """Append-only store of raw feedback, plus the derived bookkeeping of curation."""

    def __init__(self, url: str):
        self.url = url
        self.engine, self._write_lock = _engine_for(url)

    # -- intake

    def add(self, record: FeedbackRecord, source: str = "api") -> tuple[int, bool]:
        """Store a validated record durably; returns (id, created). A retry with the same request id
        is not duplicated; the same request id with different content raises RequestIdConflict."""
        payload = record.model_dump(mode="json")
        feedback_id, created = self.add_raw(payload, kind=record.kind, source=source)
        if not created and self.get(record.request_id, record.kind) != payload:
            raise RequestIdConflict(record.request_id)
        return feedback_id, created

    def add_raw(self, payload: dict[str, Any], kind: str, source: str = "raw") -> tuple[int, bool]:
        """Store a record as received, valid or not (legacy data, the demo's seed); curation judges it later.

        ``source`` says how it came: ``api`` (its receipt verified), ``import`` (an operator's import) or ``raw``."""
        request_id = payload.get("request_id") if isinstance(payload.get("request_id"), str) else None
        user_id = payload.get("user_id") if isinstance(payload.get("user_id"), str) else None
        row = FeedbackRow(
            request_id=request_id,
            kind=kind,
            payload=json.dumps(payload, ensure_ascii=False),
            source=source,
            user_id=user_id[:128] if user_id else None,
        )
        with self._write_lock, Session(self.engine) as session:
            session.add(row)
            try:
                session.commit()  # returns only once the database has it durably
                return row.id, True
            except IntegrityError:
                # the request id is already stored, perhaps by a concurrent retry that won the race
                session.rollback()
                existing = session.scalar(
                    select(FeedbackRow.id).where(FeedbackRow.kind == kind, FeedbackRow.request_id == request_id)
                )
                if existing is None:
                    raise
                return existing, False

    def add_many(
        self, records: Iterable[FeedbackRecord], batch: int = 500, source: str = "import"
    ) -> tuple[int, int, list[str]]:
        """Store validated records in batched transactions (an operator's import by default); returns
        (created, already stored as they are, request ids already stored with different content)."""
        created = seen = 0
        conflicts: list[str] = []
        chunk: list[FeedbackRecord] = []
        for record in [*records, None]:
            if record is not None:
                chunk.append(record)
            if chunk and (record is None or len(chunk) >= batch):
                n = self._insert_ignoring_duplicates(chunk, source)
                changed = self._changed(chunk)
                created, seen, chunk = created + n, seen + len(chunk) - n - len(changed), []
                conflicts += changed
        return created, seen, conflicts

    def _changed(self, records: list[FeedbackRecord]) -> list[str]:
        """Request ids among ``records`` whose stored record (same kind) is not this one."""
        ids = {r.request_id for r in records}
        stored: dict[tuple[str, str], Any] = {}
        with self.engine.connect() as conn:
            for kind in {r.kind for r in records}:
                rows = conn.execute(
                    select(FeedbackRow.request_id, FeedbackRow.payload).where(
                        FeedbackRow.kind == kind, FeedbackRow.request_id.in_(ids)
                    )
                )
                stored.update({(kind, rid): payload for rid, payload in rows})
        return [
            r.request_id
            for r in records
            if json.loads(stored.get((r.kind, r.request_id), "null")) != r.model_dump(mode="json")
        ]

    def _insert_ignoring_duplicates(self, records: list[FeedbackRecord], source: str) -> int:
        dialect = self.engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            return sum(self.add_raw(r.model_dump(mode="json"), r.kind, source)[1] for r in records)
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        now = datetime.now(UTC)
        values = [
            {
                "request_id": r.request_id,
                "kind": r.kind,
                "received_at": now,
                "source": source,
                "user_id": r.user_id,
                "payload": json.dumps(r.model_dump(mode="json"), ensure_ascii=False),
            }
            for r in records
        ]
        with self._write_lock, self.engine.begin() as conn:
            result = conn.execute(
                insert(FeedbackRow).on_conflict_do_nothing(index_elements=["kind", "request_id"]), values
            )
            return max(result.rowcount, 0)

    def add_many_raw(self, payloads: Iterable[dict[str, Any]], kind: str) -> int:
        return sum(self.add_raw(p, kind)[1] for p in payloads)

    # -- reading

    def recent_by_user(self, user_id: str, since: datetime) -> int:
        """Records this user id sent since ``since`` (the per-user rate limit; indexed)."""
        query = (
            select(func.count())
            .select_from(FeedbackRow)
            .where(FeedbackRow.user_id == user_id, FeedbackRow.received_at >= since)
        )
        with self.engine.connect() as conn:
            return int(conn.scalar(query) or 0)

    def rows(self, kind: str, after_id: int = 0, upto_id: int | None = None) -> list[Any]:
        """(id, payload) rows of a kind in arrival order, optionally bounded to ``(after_id, upto_id]``."""
        query = select(FeedbackRow.id, FeedbackRow.payload).where(FeedbackRow.kind == kind, FeedbackRow.id > after_id)
        if upto_id is not None:
            query = query.where(FeedbackRow.id <= upto_id)
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(FeedbackRow.id)))

    def iter_rows(
        self, kind: str, upto_id: int | None = None, after_id: int = 0, chunk: int = 5000
    ) -> Iterable[list[Any]]:
        """(id, payload, source) rows of a kind in arrival order, ``chunk`` at a time (keyset pages: memory stays
        bounded however large the store, on SQLite and Postgres alike)."""
        while True:
            query = select(FeedbackRow.id, FeedbackRow.payload, FeedbackRow.source).where(
                FeedbackRow.kind == kind, FeedbackRow.id > after_id
            )
            if upto_id is not None:
                query = query.where(FeedbackRow.id <= upto_id)
            with self.engine.connect() as conn:
                page = list(conn.execute(query.order_by(FeedbackRow.id).limit(chunk)))
            if not page:
                return
            yield page
            after_id = page[-1].id

    def rating_counts(self, kind: str, versions: Iterable[str]) -> dict[str, tuple[int, int]]:
        """(rated, thumbs-down) records per model version, counted by the database: the live guard
        asks every few seconds, and parsing every payload in Python would grow with the store."""
        version, rating = self._json_text("model_version"), self._json_text("rating")
        query = (
            select(version, func.count(), func.sum(case((rating == "down", 1), else_=0)))
            .where(FeedbackRow.kind == kind, rating.in_(["up", "down"]), version.in_(list(versions)))
            .group_by(version)
        )
        with self.engine.connect() as conn:
            return {str(v): (int(n), int(down)) for v, n, down in conn.execute(query)}

    def rating_counts_by_segment(
        self, kind: str, versions: Iterable[str]
    ) -> dict[tuple[str, str | None], tuple[int, int]]:
        """(rated, thumbs-down) records per (model version, segment), counted by the database; records
        without a segment are under ``None``. Feeds the live guard's per-segment tests and /metrics."""
        version, rating, segment = (
            self._json_text("model_version"),
            self._json_text("rating"),
            self._json_text("segment"),
        )
        query = (
            select(version, segment, func.count(), func.sum(case((rating == "down", 1), else_=0)))
            .where(FeedbackRow.kind == kind, rating.in_(["up", "down"]), version.in_(list(versions)))
            .group_by(version, segment)
        )
        with self.engine.connect() as conn:
            return {
                (str(v), None if s is None else str(s)): (int(n), int(down)) for v, s, n, down in conn.execute(query)
            }

    def _json_text(self, key: str):
        """A top-level payload field as text, in this database's JSON dialect."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return cast(FeedbackRow.payload, JSONB)[key].astext
        return cast(func.json_extract(FeedbackRow.payload, f"$.{key}"), String)  # SQLite (JSON1 is built in)

    def high_water(self, kind: str) -> int:
        """The newest record id of a kind (0 when none): what a curation starting now would use."""
        with self.engine.connect() as conn:
            return conn.scalar(select(func.max(FeedbackRow.id)).where(FeedbackRow.kind == kind)) or 0

    def count(self, kind: str | None = None) -> int:
        with Session(self.engine) as session:
            query = select(func.count(FeedbackRow.id))
            if kind:
                query = query.where(FeedbackRow.kind == kind)
            return session.scalar(query) or 0

    def get(self, request_id: str, kind: str | None = None) -> dict[str, Any] | None:
        """The stored record with this request id (of ``kind``; request ids are unique per kind)."""
        query = select(FeedbackRow).where(FeedbackRow.request_id == request_id)
        if kind:
            query = query.where(FeedbackRow.kind == kind)
        with Session(self.engine) as session:
            row = session.scalars(query.order_by(FeedbackRow.id).limit(1)).first()
            return json.loads(row.payload) if row else None

    # -- curation bookkeeping (derived; never touches the raw rows)

    def record_curation(
        self,
        kind: str,
        high_water_id: int,
        dataset_hash: str,
        counts: dict[str, int],
        quarantine: Iterable[dict[str, Any]],
        mlflow_run_id: str | None = None,
        batch: int = 5000,
    ) -> int:
        """Remember a curation and add its newly quarantined records (streamed in batches); the run's id."""
        with Session(self.engine) as session, session.begin():
            run = CurationRunRow(
                kind=kind,
                high_water_id=high_water_id,
                dataset_hash=dataset_hash,
                counts=json.dumps(counts),
                mlflow_run_id=mlflow_run_id,
            )
            session.add(run)
            session.flush()
            already = set(session.scalars(select(QuarantineRow.feedback_id).where(QuarantineRow.kind == kind)))
            pending: list[QuarantineRow] = []
            for q in quarantine:
                if q["feedback_id"] not in already:
                    pending.append(
                        QuarantineRow(
                            feedback_id=q["feedback_id"], kind=kind, reason=q["reason"], curation_run_id=run.id
                        )
                    )
                if len(pending) >= batch:
                    session.add_all(pending)
                    session.flush()
                    pending = []
            session.add_all(pending)
            return run.id

    def last_curation(self, kind: str) -> CurationRun | None:
        with Session(self.engine) as session:
            row = session.scalar(
                select(CurationRunRow).where(CurationRunRow.kind == kind).order_by(CurationRunRow.id.desc()).limit(1)
            )
            if row is None:
                return None
            created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)  # SQLite drops tz
            return CurationRun(
                row.id,
                row.kind,
                created,
                row.high_water_id,
                row.dataset_hash,
                json.loads(row.counts),
                row.mlflow_run_id,
            )

    def quarantined(self, kind: str) -> list[dict[str, Any]]:
        """Every quarantined record of a kind: feedback id, reason, and the curation that found it."""
        with Session(self.engine) as session:
            rows = session.scalars(
                select(QuarantineRow).where(QuarantineRow.kind == kind).order_by(QuarantineRow.feedback_id)
            )
            return [
                {"feedback_id": r.feedback_id, "reason": r.reason, "curation_run_id": r.curation_run_id} for r in rows
            ]
