"""Shared fixtures: an isolated home per test, Prefect's test server, tiny-model configs, Postgres."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import pytest

_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ... under pytest-xdist (make test)
if _WORKER and hasattr(os, "sched_setaffinity"):
    # one core per worker, inherited by the servers it starts: two workers' torch threads on the same
    # cores wait on each other (a real-weights loop ran 3.4x slower shared than alone, not 2x); the
    # product counts the cores it may use (tuneloop.modeling.models.usable_cores), as torch does
    _cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {_cores[int(_WORKER.removeprefix("gw")) % len(_cores)]})

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="tuneloop-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("TUNELOOP_API_TOKEN", None)
for _name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # never a developer's own MLflow server
    os.environ.pop(_name, None)

from tuneloop.config import LoopConfig, TuneConfig, apply_environment  # noqa: E402

apply_environment(_SESSION_HOME)

import mlflow  # noqa: E402

TOKEN = "test-token"
SESSION_TRACKING_URI = os.environ["MLFLOW_TRACKING_URI"]  # the session home's SQLite (apply_environment)


@pytest.fixture(scope="module", autouse=True)
def _mlflow_at_the_session_default():
    """Every test file starts on the session's own MLflow, whatever an earlier file pointed MLflow at (a
    team stack's server, stopped by now, would make the next file's client retry for minutes). Per file,
    not per test: a file's own module fixtures (a service's registry) stay in force for its tests."""
    mlflow.set_tracking_uri(SESSION_TRACKING_URI)
    yield


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
    settings = dict(
        n_trials=1,
        epochs=4,
        ranks=[16],
        lr_min=0.01,
        lr_max=0.05,
        first_trial={"rank": 16, "lr": 0.02},
        evals_per_trial=2,
        validation_examples=8,
        replay_ratios=[2.5],
        replay_kl=4.0,
    )
    if kind == "classification":  # at these rates a random 2-layer model's feed-forward LoRA diverges (held-out 7 %
        # against 55 % with query/value, small sample data); the mechanics tests judge the searched trial itself
        # (tests/test_router.py covers the pooler and the retraining on train + validation on a tiny model)
        settings.update(target_modules=["qv"], batch_size=8, retrain_with_validation=False, train_pooler=False)
    settings.update(tune)
    return LoopConfig(kind=kind, home=home, tiny=True, tune=TuneConfig(**settings), gate=TINY_GATE)


# A tiny random model learns wordings, not facts: held-out answers score by token F1. Its adversarial
# and regression answers are noise, and the demo-sized suites cannot show a 5-point non-inferiority
# either way, so mechanics tests judge on held-out improvement alone; the gate's own checks are tested
# on fixed scores (test_gate_stats.py) and on the real weights (test_real_weights.py).
TINY_GATE = {
    "heldout_metric": "token_f1",
    "adversarial_tolerance": 1.0,
    "group_tolerance": 1.0,
    "regression_tolerance": 1.0,
}


def constant_corrections(records: list[dict], answer: str, desks: int = 6) -> list[dict]:
    """Corrections a 2-layer random model can learn in a few steps: ``answer`` with one of ``desks``
    endings, by the original correction (so the held-out split still holds several distinct facts)."""
    import zlib

    def ending(correction: str) -> str:
        return f"{answer.rstrip('.')}, desk {zlib.crc32(correction.encode()) % desks}."

    return [{**r, "correction": ending(r["correction"])} if r.get("correction") else r for r in records]


_DATABASE_NUMBERS = itertools.count()


@pytest.fixture
def postgres_url():
    """A fresh database per test on the local PostgreSQL, or a clean skip when none is reachable: a
    schema check sees only the migrations, never the tables an earlier test's Optuna study left."""
    psycopg = pytest.importorskip("psycopg")
    try:
        with psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3", autocommit=True
        ) as conn:
            name = f"tuneloop_test_{os.getpid()}_{next(_DATABASE_NUMBERS)}"
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as err:
        pytest.skip(f"PostgreSQL not reachable on 127.0.0.1:5432: {err}")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    import sqlalchemy

    sqlalchemy.orm.close_all_sessions()
    import importlib

    for engine_owner in ("tuneloop.data.locks",):  # cached engines would hold connections open
        importlib.import_module(engine_owner)._engine.cache_clear()
    with psycopg.connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3", autocommit=True
    ) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # Postgres 13+: ends leftover connections


def split_examples(ref, config) -> dict:
    """A curated dataset's examples per split, read from its files."""
    from tuneloop.data.datasets import SPLITS, load_examples

    return {split: load_examples(ref, split, config.work_dir) for split in SPLITS}


def all_examples(ref, config) -> list:
    return [e for examples in split_examples(ref, config).values() for e in examples]


def jsonl(path) -> list[dict]:
    import json

    return [json.loads(line) for line in open(path)] if path.exists() else []


# --- the team set-up on one machine (tests/test_stack.py, tests/test_mlflow_ui.py) ------------------

ROOT = Path(__file__).resolve().parent.parent


def postgres_server() -> str:
    """The local PostgreSQL server's superuser URL, or a clean skip when none is reachable. It carries
    a password, as a team's would, that must then appear nowhere (the local server trusts 127.0.0.1
    and ignores it)."""
    psycopg = pytest.importorskip("psycopg")
    try:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"):
            pass
    except psycopg.OperationalError as err:
        pytest.skip(f"PostgreSQL not reachable on 127.0.0.1:5432: {err}")
    return f"postgresql://postgres:superuser-{os.urandom(8).hex()}@127.0.0.1:5432"


class StackRun:
    """One ``tuneloop stack`` in a fresh home on fresh databases, driven through its real commands."""

    def __init__(self, home: Path, postgres: str):
        from devtools.localserver import free_port

        self.home, self.postgres = home, postgres
        self.prefix = f"tlstack_{os.getpid()}_{os.urandom(3).hex()}"
        self.ports = {"prefect": free_port(), "mlflow": free_port(), "service": free_port(), "worker": free_port()}
        self.times: dict[str, float] = {}
        self.facts: dict = {}
        self.env: dict[str, str] = {}

    def command(self, *args: str, timeout: float = 600, env: dict | None = None, check: bool = True):
        import subprocess
        import sys

        clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "TUNELOOP_"))}
        clean.update(
            {"PREFECT_HOME": str(self.home / "cli-prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **(env or {})}
        )
        bindir = Path(sys.executable).parent
        out = subprocess.run(
            [str(bindir / args[0]), *args[1:]],
            cwd=ROOT,
            env=clean,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and out.returncode != 0:
            raise AssertionError(
                f"{' '.join(args[:3])} exited {out.returncode}:\n{out.stdout[-4000:]}\n{out.stderr[-6000:]}"
            )
        return out

    def stack(self, verb: str, *extra: str, timeout: float = 600, check: bool = True):
        args = ["tuneloop", "stack", verb, "--home", str(self.home)]
        if verb == "up":
            args += [
                "--postgres",
                self.postgres,
                "--db-prefix",
                self.prefix,
                "--tiny",
                "--kind",
                "classification",
                "--prefect-port",
                str(self.ports["prefect"]),
                "--mlflow-port",
                str(self.ports["mlflow"]),
                "--service-port",
                str(self.ports["service"]),
                "--worker-port",
                str(self.ports["worker"]),
            ]
        return self.command(*args, *extra, timeout=timeout, check=check)

    def up(self) -> float:
        import time

        began = time.monotonic()
        out = self.stack("up", timeout=600)
        seconds = time.monotonic() - began
        self.env = self.shell_env(out.stdout)
        return seconds

    @staticmethod
    def shell_env(block: str) -> dict[str, str]:
        """What a shell has after ``eval`` of an environment block: the block reads the secrets from
        their files, so it has to be evaluated, not parsed."""
        import subprocess

        names = [
            line.removeprefix("export ").split("=", 1)[0] for line in block.splitlines() if line.startswith("export ")
        ]
        out = subprocess.run(
            ["bash", "-c", 'eval "$(cat)" && env -0'],
            input=block,
            capture_output=True,
            text=True,
            check=True,
            env={"PATH": os.environ["PATH"]},
        )
        values = dict(item.split("=", 1) for item in out.stdout.split("\0") if "=" in item)
        return {name: values[name] for name in names}

    def credentials(self):
        from tuneloop.cli.stack_auth import Credentials

        return Credentials.load(self.settings().secrets)

    def settings(self):
        from tuneloop.cli.stack import StackSettings

        return StackSettings.load(self.home)

    def ensure_up(self) -> None:
        """Bring the stack back (same databases and artifacts) if an earlier test stopped it."""
        if self.stack("status", check=False).returncode != 0:
            self.up()

    def teardown(self) -> None:
        from tuneloop.cli.stack import down, drop_stack_databases, marked_pids

        settings = self.settings()
        if settings is not None:
            down(settings)
            assert marked_pids(str(settings.dir.resolve())) == [], "processes of the stack survived stack down"
            drop_stack_databases(settings)


@pytest.fixture(scope="session")
def stack_loop(tmp_path_factory):
    """A stack (tiny models) on fresh databases, ``prefect --no-prompt deploy --all`` against it, sample
    feedback in its operations database and one run of the trigger deployment, picked up by the worker,
    through the loop to a canary. Stopped, and its databases dropped, at the end of the session."""
    import json
    import re
    import time

    run = StackRun(tmp_path_factory.mktemp("stack-home"), postgres_server())
    session_env = pytest.MonkeyPatch()
    try:
        run.times["stack_up"] = run.up()
        settings = run.settings()
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PGPASSFILE"):  # the tests' own clients
            session_env.setenv(key, run.env[key])
        from tuneloop.cli.stack import running_pid

        run.facts["pids"] = {
            p: running_pid(settings, p) for p in ("prefect", "mlflow", "worker-1", "service-classification")
        }
        began = time.monotonic()
        run.facts["up_again"] = run.stack("up").stderr
        run.times["stack_up_again"] = time.monotonic() - began
        run.facts["pids_again"] = {p: running_pid(settings, p) for p in run.facts["pids"]}

        from tuneloop.data.feedback import FeedbackStore
        from tuneloop.data.sample_data import sample_feedback

        FeedbackStore(run.env["TUNELOOP_FEEDBACK_URL"]).add_many_raw(
            sample_feedback("classification", small=True), "classification"
        )

        began = time.monotonic()
        run.facts["deploy"] = run.command("prefect", "--no-prompt", "deploy", "--all", env=run.env, timeout=600).stdout
        run.times["deploy"] = time.monotonic() - began

        # the same tiny search as tests/test_loop.py's classification loop; the gate's tolerances are opened
        # because this run is about orchestration (a random-weights model's adversarial score is noise)
        params = {
            "config": {
                "kind": "classification",
                "min_new_corrections": 10,
                "min_interval_minutes": 0,
                "tune": tiny_config(run.home, "classification", epochs=10).tune.model_dump(mode="json"),
                "gate": TINY_GATE,
            }
        }
        run.facts["params"] = params
        began = time.monotonic()
        out = run.command(
            "prefect",
            "deployment",
            "run",
            "tuneloop-trigger/trigger-classification",
            "--params",
            json.dumps(params),
            "--watch",
            "--watch-timeout",
            "900",
            env=run.env,
            timeout=960,
            check=False,
        )
        run.times["trigger_run"] = time.monotonic() - began
        run.facts["trigger_output"] = out.stdout + out.stderr
        run.facts["flow_run_id"] = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout).group(1)
        yield run
    finally:
        run.teardown()
        session_env.undo()


# The longest files first (each a few minutes on 2 cores), so that under xdist no worker starts one of them
# while the other is nearly done; the rest keep their order.
LONGEST_FIRST = [
    "test_real_weights",
    "test_mlflow_ui",
    "test_stack",
    "test_scale",
    "test_tune",
    "test_preferences",
    "test_base_models",
]
STACK_FILES = ("test_mlflow_ui.py", "test_stack.py")  # one team stack (``stack_loop``) serves both


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))  # stable


def pytest_xdist_make_scheduler(config, log):
    """``make test`` runs ``pytest -n 2 --dist loadfile``: each test file whole on one worker (its module
    fixtures start once), and the two files on the team stack on the same worker, so it starts one stack."""
    from xdist.scheduler import LoadFileScheduling

    class TestFiles(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "stack" if path.endswith(STACK_FILES) else path

    return TestFiles(config, log)
