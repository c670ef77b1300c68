"""The team stack's stores on PostgreSQL: its role and databases, and the schemas made once before the parts start."""

from __future__ import annotations

from tuneloop.cli import stack_auth
from tuneloop.cli.stack_auth import Credentials
from tuneloop.cli.stack_parts import DATABASES, StackSettings


def _superuser(settings: StackSettings):
    """A connection to the server's ``postgres`` database with the URL given to ``stack up --postgres``
    (a redacted password is left to libpq's PGPASSFILE / PGPASSWORD)."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(settings.postgres)
    password = url.password if url.password != "***" else None
    conninfo = dict(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=password,
        dbname="postgres",
        connect_timeout=5,
    )
    return psycopg.connect(**{k: v for k, v in conninfo.items() if v is not None}, autocommit=True)


def ensure_databases(settings: StackSettings, creds: Credentials) -> list[str]:
    """The stack's role with its password and libpq's password file for it; the databases that are
    missing, owned by the role; returns the databases created."""
    from psycopg import sql
    from sqlalchemy.engine import make_url

    if importlib_missing("asyncpg"):
        raise RuntimeError("asyncpg is not installed: the Prefect server needs it for PostgreSQL (pip install asyncpg)")
    url = make_url(settings.postgres)
    stack_auth.write_pgpass(creds, url.host or "127.0.0.1", url.port or 5432, settings.role)
    created = []
    with _superuser(settings) as conn:
        stack_auth.ensure_role(conn, settings.role, creds.db_password)
        for part in DATABASES:
            name = sql.Identifier(settings.database(part))
            if (
                conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings.database(part),)).fetchone()
                is None
            ):
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(name, sql.Identifier(settings.role)))
                created.append(settings.database(part))
            else:
                conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(name, sql.Identifier(settings.role)))
    return created


def drop_stack_databases(settings: StackSettings) -> None:
    """Drop the stack's databases and its role."""
    from psycopg import sql

    with _superuser(settings) as conn:
        for part in DATABASES:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(settings.database(part)))
            )
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(settings.role)))


def importlib_missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def prepare_stores(settings: StackSettings) -> None:
    """Schema of the operations database and the Optuna storage, made once here, so that the parts
    (and the lead's trial workers) never race to create the same tables."""
    from tuneloop.data.feedback import FeedbackStore

    FeedbackStore(settings.url("ops", "postgresql+psycopg"))
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.storages.RDBStorage(settings.url("optuna", "postgresql+psycopg"))
