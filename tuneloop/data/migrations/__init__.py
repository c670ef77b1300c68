"""Alembic migrations of the feedback store, shipped inside the package and applied on store open.

``upgrade(engine)`` brings any database (SQLite, Postgres, ...) to the newest schema; it is a cheap
no-op when already there. Developers add a revision with
``alembic -c tuneloop/data/migrations/alembic.ini revision -m "what"`` and write its upgrade/downgrade.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

HERE = Path(__file__).resolve().parent
# Not Alembic's default "alembic_version": Optuna keeps its own schema version there, and users point
# the feedback store and the Optuna storage at the same database.
VERSION_TABLE = "tuneloop_feedback_version"
_PG_LOCK = 0x7475_6E65  # arbitrary advisory-lock key: one migrator at a time on Postgres


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    return config


def head() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate ``engine``'s database to ``revision``; safe when several processes open it at once."""
    target = head() if revision == "head" else revision
    if current(engine) == target:
        return
    config = alembic_config()
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                _sqlite_exclusive(conn)
            elif conn.dialect.name == "postgresql":
                # Postgres DDL is transactional: the second migrator waits here, then finds nothing to do
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
            config.attributes["connection"] = conn
            try:
                command.upgrade(config, revision)
                conn.commit()
            finally:
                if conn.dialect.name == "sqlite":
                    conn.rollback()  # no-op after the commit; ends a failed one before the pragma below
                    conn.exec_driver_sql("PRAGMA foreign_keys=ON")
    except DBAPIError:
        # a concurrent opener may have migrated first
        if current(engine) != target:
            raise


def _sqlite_exclusive(conn) -> None:
    """The whole upgrade as one SQLite transaction, taken before any read: a migrator killed mid-way
    leaves the database as it was (the next open redoes all of it), and concurrent openers queue.
    Foreign keys are off while it runs, as SQLite asks for table rebuilds (a parent table rebuilt with
    them on would cascade into its children); they are back on for the connection afterwards."""
    conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # outside a transaction: inside one SQLite ignores it
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def downgrade(engine: Engine, revision: str) -> None:
    from tuneloop.data.feedback import forget_engines

    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)
    forget_engines()  # stores cache migrated engines: the next open must migrate again
