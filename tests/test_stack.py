"""The team set-up on one machine: ``tuneloop stack up``, ``prefect deploy --all``, the trigger deployment
run by the worker through the loop to a canary, the service answering from the new version, and a clean
``stack down``; with the stack's overhead measured against the embedded default on the same tiny loop.

The stack (``stack_loop`` in conftest.py) is shared with tests/test_mlflow_ui.py in one session.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import time
import uuid
from datetime import datetime

import httpx
import pytest
from conftest import tiny_config
from mlflow import MlflowClient

from tuneloop.cli.stack import marked_pids, running_pid
from tuneloop.config import LoopConfig

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(1800)]
EXPERIMENT = "tuneloop-classification"


def _prefect_auth(run) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(run.env["PREFECT_API_AUTH_STRING"].encode()).decode()}


def _csrf(run) -> dict:
    """A CSRF token for this test's client, as Prefect's own client fetches one before a write."""
    if "csrf" not in run.facts:
        client = str(uuid.uuid4())
        token = (
            httpx.get(
                f"{run.env['PREFECT_API_URL']}/csrf-token",
                params={"client": client},
                headers=_prefect_auth(run),
                timeout=30,
            )
            .raise_for_status()
            .json()["token"]
        )
        run.facts["csrf"] = {"Prefect-Csrf-Token": token, "Prefect-Csrf-Client": client}
    return run.facts["csrf"]


def _api(run, path: str, body: dict | None = None):
    url, headers = run.env["PREFECT_API_URL"] + path, _prefect_auth(run)
    response = (
        httpx.post(url, json=body, timeout=30, headers={**headers, **_csrf(run)})
        if body is not None
        else httpx.get(url, timeout=30, headers=headers)
    )
    response.raise_for_status()
    return response.json()


def _when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_the_trigger_deployment_runs_the_loop_on_the_stack_to_a_canary(stack_loop, monkeypatch):
    run = stack_loop
    print(
        f"\nstack up -> every part healthy: {run.times['stack_up']:.1f} s; stack up again: "
        f"{run.times['stack_up_again']:.1f} s; prefect deploy --all: {run.times['deploy']:.1f} s; "
        f"trigger deployment run (submitted -> Completed): {run.times['trigger_run']:.1f} s"
    )

    # stack up twice: the second start nothing, every part keeps its process
    assert all(run.facts["pids"].values()), run.facts["pids"]
    assert run.facts["pids_again"] == run.facts["pids"]
    assert run.facts["up_again"].count("already running") == 4

    # prefect deploy --all created every deployment, on the pool, from the installed package
    deployments = {d["name"]: d for d in _api(run, "/deployments/filter", {})}
    assert set(deployments) == {
        f"{flow}-{kind}" for flow in ("loop", "trigger", "rollout") for kind in ("generation", "classification")
    } | {"search-worker"}
    assert deployments["search-worker"]["work_queue_name"] == "trials"
    trigger = deployments["trigger-classification"]
    assert trigger["work_pool_name"] == "tuneloop" and trigger["entrypoint"] == "tuneloop.flows.trigger:trigger"
    assert trigger["pull_steps"] == []
    assert [s["schedule"]["interval"] for s in trigger["schedules"]] == [900.0] and trigger["schedules"][0]["active"]
    assert trigger["global_concurrency_limit"]["limit"] == 1
    assert trigger["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"

    # the worker picked the run up and it completed
    flow_run = _api(run, f"/flow_runs/{run.facts['flow_run_id']}")
    assert flow_run["state_type"] == "COMPLETED", run.facts["trigger_output"][-5000:]
    assert flow_run["work_pool_name"] == "tuneloop" and flow_run["infrastructure_pid"]
    worker_log = (run.home / "stack" / "logs" / "worker-1.log").read_text(errors="replace")
    assert "Running the loop:" in worker_log

    # the loop ran in the MLflow server: artifacts served by it, the experiment opens on its runs
    client = MlflowClient(tracking_uri=run.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    loops = client.search_runs([experiment.experiment_id], "tags.`tuneloop.stage` = 'loop'")
    assert len(loops) == 1
    loop_run = loops[0]
    assert loop_run.info.status == "FINISHED" and loop_run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert loop_run.data.metrics["gate.passed"] == 1.0
    search_id = loop_run.data.tags["search_run_id"]
    assert client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{search_id}'")  # its trials
    assert any(a.path == "evaluate" for a in client.list_artifacts(loop_run.info.run_id))

    # a registered version, the challenger, at the canary share in the operations database
    version = client.get_model_version_by_alias(EXPERIMENT, "challenger")
    assert str(version.version) == "1" and version.run_id
    for key in ("TUNELOOP_FEEDBACK_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(key, run.env[key])
    config = LoopConfig(kind="classification")
    assert config.feedback_db.startswith("postgresql+psycopg://")
    from tuneloop.release.flags import challenger_percent
    from tuneloop.release.operations import events

    assert challenger_percent(config) == 10
    assert any("opened by loop run" in e["reason"] for e in events(config, "canary"))

    # alias moves against an MLflow server lock on the shared operations database, not a temp file
    from tuneloop.data.locks import registry_lock_url

    assert registry_lock_url(run.env["MLFLOW_TRACKING_URI"], config) == run.env["TUNELOOP_FEEDBACK_URL"]

    # the service (its own home: it shares no directory with the worker) answers from the new version
    base = f"http://127.0.0.1:{run.ports['service']}"
    deadline = time.monotonic() + 120
    while (
        httpx.get(f"{base}/readyz", timeout=10).status_code != 200
        or httpx.get(f"{base}/v1/routing", timeout=10).json()["served"].get("challenger") != "1"
    ):
        assert time.monotonic() < deadline, httpx.get(f"{base}/v1/routing", timeout=10).text
        time.sleep(1)
    assert httpx.get(f"{base}/v1/routing", timeout=10).json()["challenger_percent"] == 10
    requests = [
        {"user_id": f"user-{i}", "input": "where is my Orbit camera", "request_id": f"r{i}"} for i in range(100)
    ]
    answers = httpx.post(f"{base}/predict", json={"requests": requests}, timeout=300).json()
    on_challenger = [a for a in answers if a["variant"] == "challenger"]
    assert on_challenger and all(a["model_version"] == "1" for a in on_challenger)
    assert 2 <= len(on_challenger) <= 25, len(on_challenger)  # about 10 % of users, sticky by user id

    run.facts["timing"] = _stack_timing(run, client, loop_run)


def _stack_timing(run, client, loop_run) -> dict:
    """Where the stack run's time went, from Prefect's and MLflow's own timestamps."""
    trigger_run = _api(run, f"/flow_runs/{run.facts['flow_run_id']}")
    loops = _api(run, "/flow_runs/filter", {"flows": {"name": {"any_": ["tuneloop"]}}})
    loop_flow = loops[0]
    created, started, ended = (_when(trigger_run[k]) for k in ("created", "start_time", "end_time"))
    loop_started, loop_ended = _when(loop_flow["start_time"]), _when(loop_flow["end_time"])
    return {
        "submitted_to_completed": run.times["trigger_run"],
        "pickup_and_process_start": started - created,
        "trigger_run": ended - started,
        "before_loop": loop_started - started,  # decision, then importing torch & co. in the flow run's process
        "loop_flow": loop_ended - loop_started,
        "loop_mlflow_run": (loop_run.info.end_time - loop_run.info.start_time) / 1000,
        "stages": {k.removeprefix("seconds."): v for k, v in loop_run.data.metrics.items() if k.startswith("seconds.")},
    }


FOREIGN = "http://attacker.example"


def _preflight(url: str) -> httpx.Response:
    return httpx.options(
        url,
        headers={
            "Origin": FOREIGN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=30,
    )


def test_every_server_of_the_stack_refuses_anonymous_writes_and_foreign_origins(stack_loop):
    """The loop above ran through authenticated clients (worker, flow runs, service); here what anyone
    else on the machine, or a web page in a developer's browser, gets."""
    import psycopg
    from sqlalchemy.engine import make_url

    run = stack_loop
    run.ensure_up()
    prefect, mlflow_uri = run.env["PREFECT_API_URL"], run.env["MLFLOW_TRACKING_URI"]

    # Prefect: the auth string, then a CSRF token for every write; CORS only for its own UI
    assert httpx.post(f"{prefect}/flows/", json={"name": "intruder"}, timeout=30).status_code in (401, 403)
    assert httpx.get(f"{prefect}/csrf-token", params={"client": str(uuid.uuid4())}, timeout=30).status_code == 401
    assert (
        httpx.get(f"{prefect}/deployments/name/tuneloop-trigger/trigger-classification", timeout=30).status_code == 401
    )
    no_csrf = httpx.post(f"{prefect}/flows/", json={"name": "intruder"}, headers=_prefect_auth(run), timeout=30)
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
    assert httpx.get(f"{prefect}/health", timeout=30).status_code == 200  # probes stay open
    preflight = _preflight(f"{prefect}/flows/")
    assert preflight.status_code >= 400 and preflight.headers.get("access-control-allow-origin") not in ("*", FOREIGN)

    # MLflow: basic auth; every user reads, only the service account (their creator) changes the loop's models
    api = f"{mlflow_uri}/api/2.0/mlflow"
    create = f"{api}/registered-models/create"
    assert httpx.post(create, json={"name": "intruder"}, timeout=30).status_code == 401
    assert (
        httpx.post(
            f"{api}/registered-models/alias", json={"name": EXPERIMENT, "alias": "champion", "version": "1"}, timeout=30
        ).status_code
        == 401
    )
    creds = run.credentials()
    reviewer = ("reviewer", creds.mlflow_reviewer)
    assert (
        httpx.post(
            f"{api}/registered-models/alias",
            json={"name": EXPERIMENT, "alias": "champion", "version": "1"},
            auth=reviewer,
            timeout=30,
        ).status_code
        == 403
    )
    assert (
        httpx.post(create, json={"name": "intruder"}, auth=("reviewer", "a-wrong-password"), timeout=30).status_code
        == 401
    )
    read = httpx.get(
        f"{mlflow_uri}/api/2.0/mlflow/registered-models/get", params={"name": EXPERIMENT}, auth=reviewer, timeout=30
    )
    assert read.status_code == 200, read.text
    preflight = _preflight(create)
    assert preflight.headers.get("access-control-allow-origin") not in ("*", FOREIGN)

    # the secrets: a directory only its owner enters, files only its owner reads
    assert stat.S_IMODE(creds.dir.stat().st_mode) == 0o700
    files = [p for p in creds.dir.iterdir()]
    assert len(files) >= 9 and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), {
        p.name: oct(p.stat().st_mode) for p in files
    }

    # PostgreSQL: the stack's own role, no superuser, owns its databases and is the only one connected to them
    settings = run.settings()
    url = make_url(run.postgres)
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname="postgres") as conn:
        assert conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = %s", (settings.role,)
        ).fetchone() == (False, False, False)
        owners = dict(
            conn.execute(
                "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname LIKE %s",
                (settings.db_prefix + "\\_%",),
            ).fetchall()
        )
        users = {
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname LIKE %s "
                "AND backend_type = 'client backend'",
                (settings.db_prefix + "\\_%",),
            )
        }
    assert owners == {settings.database(p): settings.role for p in ("prefect", "mlflow", "ops", "optuna")}
    assert users == {settings.role}, users


FAN_OUT = """
import json, sys
from mlflow import MlflowClient
from tuneloop.config import LoopConfig
from tuneloop.data.feedback import FeedbackStore
from tuneloop.flows.curate import build_dataset
from tuneloop.flows.tune import tune
from tuneloop.registry.tracking import use_experiment
config = LoopConfig(kind="classification", tune=json.loads(sys.argv[1]))
ref = build_dataset(FeedbackStore(config.feedback_db), config)
parent = MlflowClient().create_run(use_experiment(config), run_name="fan-out").info.run_id
print("RESULT" + tune(config, ref, parent).model_dump_json(), flush=True)
"""


def test_trials_fan_out_to_trial_workers_and_a_killed_ones_trial_resumes_on_the_other(stack_loop, tmp_path):
    """The tune stage queues two flow runs of the search-worker deployment; two trial workers (own homes,
    one flow run each) share the study on PostgreSQL. The worker whose flow run first checkpoints a trial
    is SIGKILLed with its flow run (a lost machine); the other fails the silent trial, retries it with
    its parameters and MLflow run from the checkpoint in the artifact store, and the study completes:
    no trial lost, none trained twice, nothing trained by the loop's own process."""
    import subprocess
    import sys

    import optuna
    import psutil
    from optuna.trial import TrialState
    from sqlalchemy.engine import make_url

    from tuneloop.search.study import OWNER_ATTR, origin

    run = stack_loop
    run.ensure_up()
    run.stack("up", "--trial-workers", "2", timeout=300)
    settings = run.settings()
    homes = {n: settings.dir / f"trial-worker-{n}" for n in (1, 2)}
    tune_settings = {
        **tiny_config(run.home, "classification").tune.model_dump(mode="json"),
        "n_trials": 4,
        "epochs": 30,
        "ranks": [4, 8],
        "lr_min": 0.005,
        "lr_max": 0.05,
        "pruner": "none",
        "first_trial": {"rank": 8, "lr": 0.02},
        "evals_per_trial": 2,
        "validation_examples": 8,
        "checkpoint_every": 8,
        "heartbeat_interval_s": 1,
        "grace_period_s": 4,
        "n_workers": 2,
        "worker_deployment": "search-worker/search-worker",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "TUNELOOP_"))}
    env.update({**run.env, "TUNELOOP_HOME": str(tmp_path / "loop-home"), "PREFECT_HOME": str(tmp_path / "prefect")})
    # the loop's stores as a team may give them, the password in the URL: the search workers' flow-run
    # parameters must carry them redacted, and the workers take the password from their own environment
    for key in ("TUNELOOP_FEEDBACK_URL", "TUNELOOP_OPTUNA_URL"):
        env[key] = make_url(env[key]).set(password=run.credentials().db_password).render_as_string(hide_password=False)
    began = time.monotonic()
    loop = subprocess.Popen(
        [sys.executable, "-c", FAN_OUT, json.dumps(tune_settings)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "loop.log", "w"),
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (found := [n for n, h in homes.items() if list(h.rglob("ckpt.pt"))]):
            assert time.monotonic() < deadline and loop.poll() is None, (tmp_path / "loop.log").read_text()[-3000:]
            time.sleep(0.05)
        victim = found[0]
        [killed_dir] = {p.parent for p in homes[victim].rglob("ckpt.pt")}
        _wait_for_uploaded_checkpoint(run, int(killed_dir.name.removeprefix("trial-")), deadline)
        worker = psutil.Process(running_pid(settings, f"trial-worker-{victim}"))
        machine = [worker, *worker.children(recursive=True)]
        killed_pids = {p.pid for p in machine}
        for process in machine:  # the whole machine: the worker and the flow run it started
            process.kill()
        out, _ = loop.communicate(timeout=600)
    finally:
        if loop.poll() is None:
            loop.kill()
    seconds = time.monotonic() - began
    assert loop.returncode == 0, (tmp_path / "loop.log").read_text()[-4000:]
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[6:])
    print(f"\nfan-out search of 4 tiny trials on 2 trial workers, one killed mid-trial: {seconds:.1f} s")

    study = optuna.load_study(study_name=result["study_name"], storage=run.env["TUNELOOP_OPTUNA_URL"])
    chains: dict[int, list] = {}
    for t in sorted(study.trials, key=lambda t: t.number):
        chains.setdefault(origin(t), []).append(t)
    assert (
        len(chains) == 4 and sum(c[-1].state in (TrialState.COMPLETE, TrialState.PRUNED) for c in chains.values()) == 4
    )
    killed = int(killed_dir.name.removeprefix("trial-"))
    assert [t.state for t in chains[killed]] == [TrialState.FAIL, TrialState.COMPLETE]
    assert all(len(chain) == 1 for key, chain in chains.items() if key != killed)  # none trained twice
    owners = [int(t.user_attrs[OWNER_ATTR]["id"].rsplit("|", 1)[1]) for t in chains[killed]]
    assert owners[0] in killed_pids and owners[1] not in killed_pids and owners[1] != loop.pid
    assert all(int(t.user_attrs[OWNER_ATTR]["id"].rsplit("|", 1)[1]) != loop.pid for t in study.trials)
    client = MlflowClient(tracking_uri=run.env["MLFLOW_TRACKING_URI"])
    trial_runs = {
        int(r.data.tags["tuneloop.trial"]): r
        for r in client.search_runs(
            [client.get_experiment_by_name(EXPERIMENT).experiment_id],
            f"tags.mlflow.parentRunId = '{result['search_run_id']}'",
        )
    }
    assert set(trial_runs) == set(chains)  # one MLflow run per trial, the retry continued the killed one's
    assert trial_runs[killed].data.metrics["resumed_from_step"] > 0  # from the artifact store: the homes share nothing
    assert not list(homes[3 - victim].rglob(f"{killed_dir.name}/ckpt.pt"))
    assert not list((tmp_path / "loop-home").rglob("ckpt.pt")) and result["n_failed"] == 1
    flow_runs = _api(run, "/flow_runs/filter", {"flows": {"name": {"any_": ["search-worker"]}}})
    assert len(flow_runs) == 2 and {r["work_queue_name"] for r in flow_runs} == {"trials"}
    states = sorted(r["state_type"] for r in flow_runs)
    assert states[0] == "COMPLETED", states  # the survivor's; the killed one's is left as Prefect last heard
    assert all(":***@" in r["parameters"]["config"]["optuna_url"] for r in flow_runs)
    run.stack("up", "--trial-workers", "0", timeout=120)


def _wait_for_uploaded_checkpoint(run, trial: int, deadline: float) -> None:
    """The trial's checkpoint is in the artifact store (uploaded right after it is written to disk)."""
    client = MlflowClient(tracking_uri=run.env["MLFLOW_TRACKING_URI"])
    while True:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        runs = (
            client.search_runs([experiment.experiment_id], f"tags.`tuneloop.trial` = '{trial}'") if experiment else []
        )
        if any(client.list_artifacts(r.info.run_id, "checkpoint") for r in runs):
            return
        assert time.monotonic() < deadline, f"trial {trial}'s checkpoint never reached the artifact store"
        time.sleep(0.1)


def test_no_secret_on_a_command_line_or_in_a_stack_file_log_artifact_or_parameter(stack_loop):
    """After the loop, the fan-out search (its stores given with the password in their URLs) and a
    superuser URL with a password given to stack up: none of the stack's secrets, nor that password,
    in any process's command line, any file under the home (logs, settings, MLflow artifacts, the
    parts' homes), any Prefect flow-run parameter or log, or any MLflow run's parameters and tags."""
    from mlflow import MlflowClient
    from sqlalchemy.engine import make_url

    from tuneloop.cli.stack import marked_pids

    run = stack_loop
    run.ensure_up()
    creds = run.credentials()
    secrets = {s.encode() for s in creds.all() + [make_url(run.postgres).password]}
    assert all(len(s) >= 16 for s in secrets)

    block = run.stack("env").stdout  # what a terminal shows: paths to the secrets, which eval reads
    assert "PREFECT_API_AUTH_STRING" in block and not [s for s in secrets if s in block.encode()]
    assert run.shell_env(block)["MLFLOW_TRACKING_PASSWORD"] == creds.mlflow_service

    pids = marked_pids(str(run.settings().dir.resolve()))
    assert len(pids) >= 4
    for pid in pids:
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue  # ended meanwhile
        assert not [s for s in secrets if s in cmdline], cmdline.replace(b"\0", b" ")[:300]

    scanned = 0
    for path in run.home.rglob("*"):
        if path.is_file() and creds.dir not in path.parents:
            data = path.read_bytes()
            assert not [s for s in secrets if s in data], path
            scanned += 1
    assert scanned > 50 and any((run.home / "mlartifacts").rglob("config.json"))

    flow_runs = _api(run, "/flow_runs/filter", {"limit": 200})
    logs = _api(run, "/logs/filter", {"limit": 200, "sort": "TIMESTAMP_DESC"})
    published = json.dumps(flow_runs + logs).encode()
    assert len(flow_runs) >= 4 and not [s for s in secrets if s in published]

    client = MlflowClient(tracking_uri=run.env["MLFLOW_TRACKING_URI"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=1000)
    tracked = json.dumps([[r.data.params, r.data.tags] for r in runs]).encode()
    assert runs and not [s for s in secrets if s in tracked]


def test_stack_down_stops_every_process_and_is_idempotent(stack_loop):
    run = stack_loop
    settings = run.settings()
    before = marked_pids(str(settings.dir.resolve()))
    assert len(before) >= 4
    began = time.monotonic()
    out = run.stack("down", timeout=300)
    print(f"\nstack down: {time.monotonic() - began:.1f} s for {len(before)} processes ({out.stderr.strip()})")
    assert marked_pids(str(settings.dir.resolve())) == []
    for pid in before:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z", pid
    assert all(running_pid(settings, p) is None for p in run.facts["pids"])
    again = run.stack("down", timeout=120)
    assert "nothing was running" in again.stderr
    assert run.stack("status", check=False).returncode == 1


EMBEDDED = """
import json, sys, time
began = time.perf_counter()
from tuneloop.config import LoopConfig, apply_environment
apply_environment(sys.argv[1])
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.sample_data import sample_feedback
config = LoopConfig(**json.loads(sys.argv[2])["config"])
FeedbackStore(config.feedback_db).add_many_raw(sample_feedback("classification", small=True), "classification")
from tuneloop.flows.trigger import trigger
decision = trigger(config)
import mlflow
loop_run = mlflow.get_run(decision.loop_run_id)
print("RESULT" + json.dumps({"passed": loop_run.data.metrics.get("gate.passed"),
      "loop_mlflow_run": (loop_run.info.end_time - loop_run.info.start_time) / 1000,
      "stages": {k[8:]: v for k, v in loop_run.data.metrics.items() if k.startswith("seconds.")},
      "in_process": time.perf_counter() - began}))
"""


def test_overhead_of_the_stack_against_the_embedded_default(stack_loop, tmp_path):
    """The same tiny loop as `make demo` runs it (temporary Prefect server, SQLite MLflow and stores, one
    process), after the stack is down so that both had the machine to themselves."""
    run = stack_loop
    stack = run.facts.get("timing")
    if stack is None:
        pytest.skip("the stack's loop did not complete (see the first test)")
    began = time.monotonic()
    out = run.command(
        "python",
        "-c",
        EMBEDDED,
        str(tmp_path / "home"),
        json.dumps(run.facts["params"]),
        env={"TUNELOOP_TINY": "true", "PREFECT_HOME": str(tmp_path / "home" / "prefect")},
        timeout=1200,
    )
    wall = time.monotonic() - began
    embedded = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))[6:])
    assert embedded["passed"] == 1.0

    stack_over = stack["submitted_to_completed"] - stack["loop_mlflow_run"]
    embedded_over = wall - embedded["loop_mlflow_run"]
    lines = [
        "loop on the stack vs embedded (same tiny classification loop; seconds)",
        f"  whole: stack {stack['submitted_to_completed']:.1f} (deployment run -> Completed) vs embedded {wall:.1f} (process)",
        f"  the loop itself (its MLflow run): stack {stack['loop_mlflow_run']:.1f} vs embedded {embedded['loop_mlflow_run']:.1f} "
        f"({(stack['loop_mlflow_run'] / embedded['loop_mlflow_run'] - 1):+.1%}: tracking over HTTP + PostgreSQL)",
        f"  around the loop: stack {stack_over:.1f} ({stack_over / stack['loop_mlflow_run']:.1%} of its loop) vs embedded "
        f"{embedded_over:.1f} ({embedded_over / embedded['loop_mlflow_run']:.1%})",
        f"  stack, around the loop: worker pickup + flow-run process start {stack['pickup_and_process_start']:.1f}, "
        f"decision + imports before the loop {stack['before_loop']:.1f}, "
        f"after the loop {stack['trigger_run'] - stack['before_loop'] - stack['loop_flow']:.1f}, "
        f"CLI watch and the rest {stack['submitted_to_completed'] - stack['pickup_and_process_start'] - stack['trigger_run']:.1f}",
        "  stages (stack / embedded): "
        + ", ".join(f"{k} {stack['stages'].get(k, 0):.1f}/{v:.1f}" for k, v in embedded["stages"].items()),
        f"  stack overhead over the embedded default: {(stack['submitted_to_completed'] / wall - 1):+.1%} of the whole",
    ]
    print("\n" + "\n".join(lines))
    (run.home / "overhead.json").write_text(
        json.dumps({"stack": stack, "embedded": {**embedded, "wall": wall}}, indent=2)
    )
    # a generous bound (the machine is shared): the stack must not cost a multiple of the loop
    assert stack["submitted_to_completed"] < 2.5 * wall
