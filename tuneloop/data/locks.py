"""One lock held across threads, processes and (on PostgreSQL) machines, named after a database.

Used where a read-modify-write spans several calls that the database cannot put in one
transaction for us: an Optuna study's trial claims, and MLflow alias moves with their history.
"""

from __future__ import annotations

import atexit
import hashlib
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy
from filelock import FileLock

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()

if TYPE_CHECKING:
    from tuneloop.config import LoopConfig


@cache
def _engine(url: str) -> sqlalchemy.Engine:
    """One small pool per lock database per process (a lock holds one connection while held)."""
    engine = sqlalchemy.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=8)
    atexit.register(engine.dispose)
    return engine


DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb", "mssql", "oracle")


def registry_lock_url(tracking_uri: str, config: LoopConfig | None = None) -> str:
    """The database that serialises alias moves of the MLflow registry at ``tracking_uri``.

    ``config.lock_url`` (``TUNELOOP_LOCK_URL``) when set; else the tracking database itself when MLflow
    tracks into one (SQLite: a file lock beside it; PostgreSQL: an advisory lock); else, for an MLflow
    server over HTTP (which offers no lock), the operations database that every part of the set-up
    shares, so the lock holds across machines once that is PostgreSQL (``TUNELOOP_FEEDBACK_URL``).
    The configuration is the caller's (built once per entry point), never read again here.
    """
    if config is not None and config.lock_url:
        return config.lock_url
    if tracking_uri.split(":", 1)[0].split("+", 1)[0] in DATABASE_SCHEMES:
        return tracking_uri
    if config is None:
        raise ValueError(
            f"the MLflow registry at {tracking_uri} is not a database, so alias moves need the "
            "configuration's lock database: pass config (TUNELOOP_LOCK_URL or TUNELOOP_FEEDBACK_URL)"
        )
    return config.feedback_db


@contextmanager
def database_lock(url: str, name: str) -> Iterator[None]:
    """Mutual exclusion for everyone using ``name`` on the database at ``url``.

    PostgreSQL: a ``pg_advisory_lock`` (the server releases it if the holder dies), so it holds
    across machines. SQLite: a file lock beside the database file. Anything else (an MLflow server
    over HTTP, say): a file lock in the temp folder, which is correct for one machine only.
    """
    digest = hashlib.sha256(f"{url}|{name}".encode()).digest()
    with _thread_locks_guard:
        local = _thread_locks.setdefault(f"{url}|{name}", threading.Lock())
    with local:
        if url.startswith("postgresql"):
            key = int.from_bytes(digest[:8], "big", signed=True)
            with _engine(url).connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
            return
        database = sqlalchemy.engine.make_url(url).database if url.startswith("sqlite") else None
        if database and database != ":memory:":
            path = Path(database).with_name(Path(database).name + f".{digest[:6].hex()}.lock")
        else:
            path = Path(tempfile.gettempdir()) / f"tuneloop-{digest[:12].hex()}.lock"
        with FileLock(str(path)):
            yield
