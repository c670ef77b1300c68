"""Shared fixtures: an isolated home per test, Prefect's test server, tiny-model configs, Postgres."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="tuneloop-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("TUNELOOP_API_TOKEN", None)

from tuneloop.config import LoopConfig, TuneConfig, apply_environment  # noqa: E402

apply_environment(_SESSION_HOME)

import mlflow  # noqa: E402

TOKEN = "test-token"


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    """One temporary Prefect server (SQLite) for the whole session: real flow and task runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh tuneloop home: its own MLflow database, feedback store, Optuna storage and flag file."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield tmp_path
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", uri))


def tiny_config(home: Path, kind: str, **tune) -> LoopConfig:
    """Tiny random models with a search that learns within seconds."""
    settings = dict(n_trials=1, epochs=4, ranks=[16], lr_min=0.01, lr_max=0.05, first_trial={"rank": 16, "lr": 0.02},
                    evals_per_trial=2, max_eval_examples=8)
    settings.update(tune)
    return LoopConfig(kind=kind, home=home, tiny=True, tune=TuneConfig(**settings))


def constant_corrections(records: list[dict], answer: str) -> list[dict]:
    """Every correction the same: a target a 2-layer random model can learn in a few steps."""
    return [{**r, "correction": answer} if r.get("correction") else r for r in records]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A fresh database on the local PostgreSQL, or a clean skip when none is reachable."""
    psycopg = pytest.importorskip("psycopg")
    try:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3", autocommit=True) as conn:
            name = f"tuneloop_test_{os.getpid()}"
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as err:
        pytest.skip(f"PostgreSQL not reachable on 127.0.0.1:5432: {err}")
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
