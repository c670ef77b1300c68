"""The team stack's parts: its settings (ports, databases, workers) and the programs each part runs."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.cli import stack_auth
from tuneloop.cli.stack_auth import Credentials
from tuneloop.credentials import redact_text

ROOT = Path(__file__).resolve().parent.parent
POOL = "tuneloop"
MARKER = "TUNELOOP_STACK"  # every part (and every process it starts) carries this in its environment
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432"
DATABASES = ("prefect", "mlflow", "ops", "optuna")
KINDS = ("generation", "classification")


# --- settings and state ---------------------------------------------------------------------------


@dataclass
class StackSettings:
    home: Path
    postgres: str = DEFAULT_POSTGRES
    db_prefix: str = "tuneloop"
    prefect_port: int = 4200
    mlflow_port: int = 5000
    service_port: int = 3000
    worker_port: int = 8380  # workers' health check servers: this port and the next ones
    kinds: list[str] = field(default_factory=lambda: ["generation"])
    workers: int = 1
    trial_workers: int = 0
    serve_workers: int = 1
    mlflow_workers: int = 1
    tiny: bool = False

    @property
    def dir(self) -> Path:
        return self.home / "stack"

    def database(self, part: str) -> str:
        return f"{self.db_prefix}_{part}"

    @property
    def role(self) -> str:
        """The PostgreSQL role that owns the stack's databases (not the superuser that created them)."""
        return self.db_prefix

    def url(self, part: str, driver: str) -> str:
        """The stack role's URL of a database, without a password: libpq reads it from PGPASSFILE."""
        from sqlalchemy.engine import make_url

        url = make_url(self.postgres).set(drivername=driver, database=self.database(part), username=self.role)
        return url._replace(password=None).render_as_string(hide_password=False)  # set() takes None as 'keep'

    @property
    def secrets(self) -> Path:
        return self.dir / "secrets"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def service_url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.service_port + self.kinds.index(kind)}"

    def client_env(self) -> dict[str, str]:
        """What every client of the stack needs besides its credentials: the shell, prefect deploy, the
        CLI, the workers, the services."""
        return {
            "PREFECT_API_URL": self.prefect_api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "TUNELOOP_FEEDBACK_URL": self.url("ops", "postgresql+psycopg"),
            "TUNELOOP_OPTUNA_URL": self.url("optuna", "postgresql+psycopg"),
            "TUNELOOP_HOME": str(self.home),
            "TUNELOOP_TINY": str(self.tiny).lower(),
        }

    def public(self) -> dict:
        """The settings as stored and compared: the superuser URL's password redacted (it is used only
        while ``stack up`` creates the role and databases, and kept nowhere)."""
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        return {**data, "postgres": redact_text(self.postgres)}

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "settings.json").write_text(json.dumps(self.public(), indent=2))

    @classmethod
    def load(cls, home: Path) -> StackSettings | None:
        path = home / "stack" / "settings.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        data["home"] = Path(data["home"])
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Part:
    name: str
    args: list[str]
    env: dict[str, str]
    health_url: str
    ready_url: str | None = None  # services: /readyz (a classification service is ready once a version exists)
    after: tuple[str, ...] = ()  # parts that must answer before this one starts


TRIAL_QUEUE = "trials"
TRIAL_PORT_OFFSET = 50  # trial workers' health check ports: worker_port + 50 and on


def _stack_id(settings: StackSettings) -> str:
    return str(settings.dir.resolve())


def parts(settings: StackSettings, creds: Credentials) -> list[Part]:
    """Every part of the stack, with the command line and environment it runs with (secrets in the
    environment only: a command line is visible to every user of the machine)."""
    s, bindir = settings, Path(sys.executable).parent
    # nothing of the caller's own servers or credentials (a superuser's PGPASSWORD, say) reaches a part
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "TUNELOOP_", "PG"))}
    base.update(
        {
            MARKER: _stack_id(s),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "PREFECT_HOME": str(s.dir / "prefect-home"),
        }
    )
    client = {**base, **s.client_env(), **stack_auth.client_env(creds)}
    out = [
        Part(
            "prefect",
            [
                str(bindir / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(s.prefect_port),
                "--no-background",
            ],
            {
                **base,
                "PREFECT_API_DATABASE_CONNECTION_URL": s.url("prefect", "postgresql+asyncpg"),
                "PREFECT_HOME": str(s.dir / "prefect-server"),
                "PREFECT_SERVER_API_HOST": "127.0.0.1",
                "PREFECT_UI_API_URL": s.prefect_api,
                **stack_auth.prefect_server_env(creds, s.prefect_api[:-4]),
            },
            f"{s.prefect_api}/health",
        ),
        Part(
            "mlflow",
            [
                str(bindir / "mlflow"),
                "server",
                "--app-name",
                "basic-auth",
                "--serve-artifacts",
                "--artifacts-destination",
                str(s.home / "mlartifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(s.mlflow_port),
                "--workers",
                str(s.mlflow_workers),
            ],
            # no job runner: its seven huey consumers serve GenAI judges and scorers, which tuneloop does not use
            {
                **base,
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                **stack_auth.mlflow_server_env(creds, s.url("mlflow", "postgresql+psycopg")),
            },
            f"{s.mlflow_uri}/health",
        ),
    ]
    for n in range(1, s.workers + 1):
        port = s.worker_port + n - 1
        out.append(
            Part(
                f"worker-{n}",
                [
                    str(bindir / "prefect"),
                    "worker",
                    "start",
                    "--pool",
                    POOL,
                    "--type",
                    "process",
                    "--work-queue",
                    "default",
                    "--name",
                    f"{POOL}-worker-{n}",
                    "--with-healthcheck",
                ],
                {
                    **client,
                    "TUNELOOP_HOME": str(s.dir / f"worker-{n}"),
                    "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
                    "PREFECT_WORKER_WEBSERVER_PORT": str(port),
                    "PREFECT_WORKER_QUERY_SECONDS": "5",
                },
                f"http://127.0.0.1:{port}/health",
                after=("prefect", "mlflow") if n == 1 else ("worker-1",),
            )
        )  # the first one creates the pool
    for n in range(1, s.trial_workers + 1):
        port = s.worker_port + TRIAL_PORT_OFFSET + n - 1
        out.append(
            Part(
                f"trial-worker-{n}",
                [
                    str(bindir / "prefect"),
                    "worker",
                    "start",
                    "--pool",
                    POOL,
                    "--type",
                    "process",
                    "--work-queue",
                    TRIAL_QUEUE,
                    "--limit",
                    "1",
                    "--name",
                    f"{POOL}-trial-worker-{n}",
                    "--with-healthcheck",
                ],
                {
                    **client,
                    "TUNELOOP_HOME": str(s.dir / f"trial-worker-{n}"),
                    "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
                    "PREFECT_WORKER_WEBSERVER_PORT": str(port),
                    "PREFECT_WORKER_QUERY_SECONDS": "2",
                },
                f"http://127.0.0.1:{port}/health",
                after=("worker-1",),
            )
        )
    for kind in s.kinds:
        url = s.service_url(kind)
        port = url.rsplit(":", 1)[1]
        out.append(
            Part(
                f"service-{kind}",
                [
                    sys.executable,
                    "-m",
                    "bentoml",
                    "serve",
                    "tuneloop.serving.service:Tuneloop",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    port,
                    "--working-dir",
                    str(ROOT),
                ],
                {
                    **client,
                    "TUNELOOP_HOME": str(s.dir / f"service-{kind}"),
                    "TUNELOOP_KIND": kind,
                    "BENTOML_HOME": str(s.dir / "bentoml"),
                    "TUNELOOP_DEPLOY__SERVE_WORKERS": str(s.serve_workers),
                },
                f"{url}/healthz",
                ready_url=f"{url}/readyz",
                after=("mlflow",),
            )
        )
    return out


# --- processes ------------------------------------------------------------------------------------
