"""The stack's credentials: every server ``tuneloop stack up`` starts requires them.

Generated on the first ``stack up`` (or the team's own, from ``TUNELOOP_STACK_*`` variables), kept
in ``HOME/stack/secrets/`` (a 0700 directory of 0600 files) and handed to each part through its
environment, never on a command line, where ``ps`` would show them to every user of the machine:

* Prefect: the server requires ``PREFECT_SERVER_API_AUTH_STRING`` (clients send it as
  ``PREFECT_API_AUTH_STRING``), with Prefect's CSRF protection on and CORS limited to its own UI.
* MLflow: ``mlflow server --app-name basic-auth`` with its users in its own database
  (``secrets/mlflow-auth.db``): ``admin`` (user management only), the service account ``tuneloop``
  (loops, workers, services) and ``reviewer``; every user may read (``default_permission = READ``),
  only a resource's creator (or an admin) may change it, and an anonymous request gets 401.
* PostgreSQL: a role named after the database prefix, not a superuser, owns the stack's databases;
  its password reaches libpq (psycopg, asyncpg) through ``PGPASSFILE``, so no database URL carries a
  password. The superuser URL given to ``stack up --postgres`` only creates the role and databases.
"""

from __future__ import annotations

import os
import secrets
import shlex
from dataclasses import dataclass
from pathlib import Path

from tuneloop.credentials import ensure_secret, read_secret, secret_dir, write_secret

MLFLOW_ADMIN, MLFLOW_SERVICE, MLFLOW_REVIEWER = "admin", "tuneloop", "reviewer"
PREFECT_USER = "tuneloop"
# file name -> the variable a team sets to use its own instead of a generated one
FILES = {
    "prefect_auth": ("prefect-auth-string", "TUNELOOP_STACK_PREFECT_AUTH_STRING"),
    "mlflow_admin": ("mlflow-admin-password", "TUNELOOP_STACK_MLFLOW_ADMIN_PASSWORD"),
    "mlflow_service": ("mlflow-password", "TUNELOOP_STACK_MLFLOW_PASSWORD"),
    "mlflow_reviewer": ("mlflow-reviewer-password", "TUNELOOP_STACK_MLFLOW_REVIEWER_PASSWORD"),
    "flask_key": ("mlflow-flask-secret-key", "TUNELOOP_STACK_MLFLOW_FLASK_SECRET_KEY"),
    "db_password": ("postgres-password", "TUNELOOP_STACK_DB_PASSWORD"),
}
PGPASS = "pgpass"
AUTH_INI, AUTH_DB = "mlflow-auth.ini", "mlflow-auth.db"
# basic-auth checks a password with scrypt (~0.1 s of CPU); a loop makes hundreds of requests, so
# successful checks are cached per worker process this long (MLflow's own opt-in; a rotation
# restarts the server, see the README)
AUTH_CACHE_TTL_S = 300


@dataclass(frozen=True)
class Credentials:
    dir: Path
    prefect_auth: str
    mlflow_admin: str
    mlflow_service: str
    mlflow_reviewer: str
    flask_key: str
    db_password: str

    @classmethod
    def ensure(cls, directory: Path) -> Credentials:
        """Each secret from its file, the team's variable or a new random one; all stored 0600."""
        secret_dir(directory)
        values = {}
        for key, (name, variable) in FILES.items():
            given = os.environ.get(variable)
            if not given and key == "prefect_auth" and not (directory / name).exists():
                given = f"{PREFECT_USER}:{secrets.token_urlsafe(32)}"  # Prefect's UI asks for user:password
            values[key] = ensure_secret(directory / name, given)
        return cls(dir=directory, **values)

    @staticmethod
    def changes(directory: Path) -> list[str]:
        """The secrets ``ensure`` would make or replace: files missing, or a team variable that differs."""
        found = []
        for name, variable in FILES.values():
            given, path = os.environ.get(variable), directory / name
            if not path.exists() or (given and read_secret(path) != given):
                found.append(name)
        return found

    @classmethod
    def load(cls, directory: Path) -> Credentials | None:
        """The stored secrets, or None when ``stack up`` has not made them yet."""
        if not all((directory / name).exists() for name, _ in FILES.values()):
            return None
        return cls(dir=directory, **{key: read_secret(directory / name) for key, (name, _) in FILES.items()})

    def path(self, key: str) -> Path:
        return self.dir / FILES[key][0]

    @property
    def pgpass(self) -> Path:
        return self.dir / PGPASS

    def all(self) -> list[str]:
        """Every secret value (tests look for them where they must not be)."""
        return [
            self.prefect_auth,
            self.prefect_auth.split(":", 1)[-1],
            self.mlflow_admin,
            self.mlflow_service,
            self.mlflow_reviewer,
            self.flask_key,
            self.db_password,
        ]


# --- what each process gets ---------------------------------------------------------------------


def prefect_server_env(creds: Credentials, ui_origin: str) -> dict[str, str]:
    origins = {ui_origin, ui_origin.replace("127.0.0.1", "localhost")}
    return {
        "PREFECT_SERVER_API_AUTH_STRING": creds.prefect_auth,
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": ",".join(sorted(origins)),
        "PGPASSFILE": str(creds.pgpass),
    }


def mlflow_server_env(creds: Credentials, backend_uri: str) -> dict[str, str]:
    return {
        "MLFLOW_BACKEND_STORE_URI": backend_uri,
        "MLFLOW_AUTH_CONFIG_PATH": str(creds.dir / AUTH_INI),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": creds.flask_key,
        "MLFLOW_AUTH_ADMIN_USERNAME": MLFLOW_ADMIN,
        "PGPASSFILE": str(creds.pgpass),
    }


def client_env(creds: Credentials) -> dict[str, str]:
    """What a client process (worker, flow run, service, the CLI) needs to authenticate."""
    return {
        "PREFECT_API_AUTH_STRING": creds.prefect_auth,
        "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "true",
        "MLFLOW_TRACKING_USERNAME": MLFLOW_SERVICE,
        "MLFLOW_TRACKING_PASSWORD": creds.mlflow_service,
        "PGPASSFILE": str(creds.pgpass),
    }


def shell_lines(creds: Credentials) -> list[str]:
    """The same for a shell, reading each secret from its file when evaluated: the block itself
    (printed, pasted, kept in a terminal's scroll-back) holds paths, not secrets."""

    def read(key: str) -> str:
        return f'"$(cat {shlex.quote(str(creds.path(key)))})"'

    return [
        f"export PREFECT_API_AUTH_STRING={read('prefect_auth')}",
        "export PREFECT_CLIENT_CSRF_SUPPORT_ENABLED=true",
        f"export MLFLOW_TRACKING_USERNAME={MLFLOW_SERVICE}",
        f"export MLFLOW_TRACKING_PASSWORD={read('mlflow_service')}",
        f"export PGPASSFILE={shlex.quote(str(creds.pgpass))}",
    ]


# --- PostgreSQL -----------------------------------------------------------------------------------


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def write_pgpass(creds: Credentials, host: str, port: int, role: str) -> None:
    """libpq's password file (0600, else libpq ignores it) for the stack's role on its server."""
    line = ":".join(_pgpass_field(v) for v in (host, str(port), "*", role, creds.db_password))
    write_secret(creds.pgpass, line + "\n")


def ensure_role(conn, role: str, password: str) -> None:
    """The stack's login role (no superuser, no CREATEDB/CREATEROLE) with ``password``, sent as a
    SCRAM verifier made by libpq here, so the clear password never reaches the server or its log."""
    from psycopg import sql

    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None
    statement = (
        "ALTER ROLE {} WITH LOGIN PASSWORD {}"
        if exists
        else "CREATE ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}"
    )
    conn.execute(sql.SQL(statement).format(sql.Identifier(role), sql.Literal(verifier)))


# --- MLflow's basic-auth app -----------------------------------------------------------------------


def write_auth_config(creds: Credentials) -> Path:
    """The basic-auth app's configuration (no secret in it: the admin's name only, its users'
    database beside it, every authenticated user may read)."""
    path = creds.dir / AUTH_INI
    write_secret(
        path,
        "\n".join(
            [
                "[mlflow]",
                "default_permission = READ",
                f"database_uri = sqlite:///{creds.dir / AUTH_DB}",
                f"admin_username = {MLFLOW_ADMIN}",
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
                "grant_default_workspace_access = false",
                f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}",
                "",
            ]
        ),
    )
    return path


def ensure_mlflow_users(creds: Credentials) -> list[str]:
    """Create the admin, the service account and the reviewer in the basic-auth database, or set
    their passwords to the stored ones (a rotated file takes effect here); returns what changed.
    Done through MLflow's own auth store before the server starts, so the server never runs
    without its users, and a lost admin password can be replaced like any other."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    write_auth_config(creds)
    store = SqlAlchemyStore()
    store.init_db(f"sqlite:///{creds.dir / AUTH_DB}")
    changed = []
    try:
        for name, password, admin in (
            (MLFLOW_ADMIN, creds.mlflow_admin, True),
            (MLFLOW_SERVICE, creds.mlflow_service, False),
            (MLFLOW_REVIEWER, creds.mlflow_reviewer, False),
        ):
            if not store.has_user(name, use_primary=True):
                store.create_user(name, password, is_admin=admin)
                changed.append(f"created MLflow user {name}")
            elif not store.authenticate_user(name, password, use_primary=True):
                store.update_user(name, password=password)
                changed.append(f"set MLflow user {name}'s password")
    finally:
        store.engine.dispose()
    os.chmod(creds.dir / AUTH_DB, 0o600)
    return changed
