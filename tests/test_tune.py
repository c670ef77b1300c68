"""The tune stage for real: SIGKILLed searches resume, concurrent workers share one study, budgets and plots.

Searches run as separate processes (real SIGKILL, real concurrency) against the session's Prefect
test server, one MLflow SQLite database per test, and Optuna on SQLite or PostgreSQL.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from conftest import tiny_config
from mlflow import MlflowClient
from optuna.trial import TrialState

from tuneloop.config import LoopConfig
from tuneloop.data.datasets import DatasetRef, load_examples, load_labels
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.sample_data import sample_feedback
from tuneloop.flows.curate import build_dataset, log_dataset
from tuneloop.flows.tune import tune
from tuneloop.modeling.batches import encode
from tuneloop.modeling.models import base_of, load_base, load_tokenizer, resolve_base
from tuneloop.modeling.training import add_adapter, train
from tuneloop.registry.tracking import use_experiment
from tuneloop.search.owners import OWNER_TAG
from tuneloop.search.study import OWNER_ATTR, origin, study_name

ROOT = Path(__file__).resolve().parent.parent

# One search process: the config and dataset as JSON files, the parent run id; prints the result.
DRIVER = """
import json, sys
from pathlib import Path
from tuneloop.data.datasets import DatasetRef
from tuneloop.flows.tune import tune
from tuneloop.config import LoopConfig
if __name__ == "__main__":  # worker processes (n_workers > 1) import this module again
    config = LoopConfig.model_validate_json(Path(sys.argv[1]).read_text())
    data = DatasetRef.model_validate_json(Path(sys.argv[2]).read_text())
    print("RESULT " + tune(config, data, sys.argv[3]).model_dump_json(), flush=True)
"""


def _search_config(home: Path, **overrides) -> LoopConfig:
    """Tiny classification trials of a few hundred steps, checkpointed often, with quick heartbeats."""
    settings = dict(
        n_trials=4,
        epochs=12,
        ranks=[4, 8],
        lr_min=0.005,
        lr_max=0.05,
        first_trial={"rank": 8, "lr": 0.02},
        evals_per_trial=2,
        validation_examples=8,
        checkpoint_every=8,
        heartbeat_interval_s=1,
        grace_period_s=10,
    )
    settings.update(overrides)
    return tiny_config(home, "classification", **settings)


def _dataset(config: LoopConfig) -> DatasetRef:
    store = FeedbackStore(config.feedback_db)
    if not store.rows(config.kind):
        store.add_many_raw(sample_feedback("classification", small=True), config.kind)
    return build_dataset(store, config)


def _parent_run(config: LoopConfig) -> str:
    experiment_id = use_experiment(config)
    return MlflowClient().create_run(experiment_id, run_name=f"test-search-{config.kind}").info.run_id


def _spawn(home: Path, config: LoopConfig, data: DatasetRef, parent: str, tag: str) -> subprocess.Popen:
    from prefect.settings import PREFECT_API_URL

    (home / "driver.py").write_text(DRIVER)
    (home / f"config-{tag}.json").write_text(config.model_dump_json())
    (home / "data.json").write_text(data.model_dump_json())
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
        "TUNELOOP_HOME": str(home),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }  # 2 cores, several processes
    return subprocess.Popen(
        [sys.executable, str(home / "driver.py"), str(home / f"config-{tag}.json"), str(home / "data.json"), parent],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(home / f"stderr-{tag}.log", "w"),
        text=True,
    )


def _result(proc: subprocess.Popen, home: Path, tag: str, timeout: float = 240) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (home / f"stderr-{tag}.log").read_text()[-3000:]
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])


def _children(parent: str) -> list:
    return mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent}'", search_all_experiments=True, output_format="list"
    )


def _search_run(config: LoopConfig, data: DatasetRef):
    """The study's one MLflow search run (however many processes or loop runs the search took)."""
    found = mlflow.search_runs(
        filter_string=f"tags.`tuneloop.study` = '{study_name(config, data, base_of(config))}' and "
        "tags.`tuneloop.stage` = 'search'",
        search_all_experiments=True,
        output_format="list",
    )
    assert len(found) == 1, [r.info.run_name for r in found]
    return found[0]


def _tune_flow_run_states(pids: list[int]) -> list[str]:
    """States of the Prefect 'tune' flow runs owned by these processes."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["tune"])))
    owned = [run for run in runs if any(t.startswith(OWNER_TAG) and int(t.rsplit("|", 1)[1]) in pids for t in run.tags)]
    return [run.state.type.name for run in owned]


def _lineages(study: optuna.Study) -> dict[int, list[optuna.trial.FrozenTrial]]:
    chains: dict[int, list] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        chains.setdefault(origin(t), []).append(t)
    return chains


def _check_study(config: LoopConfig, data: DatasetRef) -> tuple[optuna.Study, dict, dict]:
    """Every invariant of a finished search; returns the study, its retry chains and the trial runs by key."""
    study = optuna.load_study(study_name=study_name(config, data, base_of(config)), storage=config.optuna_db)
    chains = _lineages(study)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == config.tune.n_trials == len(chains)  # none lost, none extra
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for chain in chains.values():
        # a chain is killed attempts then one finished attempt, all with the same parameters (an attempt
        # killed between being claimed and drawing them has none, or some, of them)
        assert [t.state for t in chain[:-1]] == [TrialState.FAIL] * (len(chain) - 1)
        assert chain[-1].state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert all(t.params.items() <= chain[-1].params.items() for t in chain)
    search = _search_run(config, data).info.run_id
    runs = {int(r.data.tags["tuneloop.trial"]): r for r in _children(search)}
    assert len(_children(search)) == len(runs) == len(chains) and set(runs) == set(chains)  # one run per trial
    client = MlflowClient()
    for key, chain in chains.items():
        run = runs[key]
        assert run.info.run_id == chain[-1].user_attrs["mlflow_run_id"]
        assert run.data.tags["optuna.state"] == chain[-1].state.name and run.info.status == "FINISHED"
        assert run.data.params["lr"] == str(chain[-1].params["lr"])
        if chain[-1].state == TrialState.COMPLETE:
            # trained once: one final score, and no more logged steps than a schedule plus what kills made it redo
            assert len(client.get_metric_history(run.info.run_id, "final_validation_score")) == 1
            losses = client.get_metric_history(run.info.run_id, "train_loss")
            total = int(run.data.metrics["total_steps"])
            assert {m.step for m in losses} == set(range(1, total + 1)), (
                key,
                len(chain),
                set(range(1, total + 1)) - {m.step for m in losses},
                total,
            )
            assert len(losses) <= total + config.tune.checkpoint_every * (len(chain) - 1)
    return study, chains, runs


def test_sigkilled_search_resumes_from_checkpoints_without_retraining(home):
    config = _search_config(home)
    data, parent = _dataset(config), _parent_run(config)
    rng = random.Random(4)
    checkpoints = config.work_dir / "checkpoints"
    kills = 0
    pids = []
    for attempt in range(3):
        proc = _spawn(home, config, data, parent, f"kill{attempt}")
        pids.append(proc.pid)
        seen = set(checkpoints.rglob("ckpt.pt"))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            fresh = set(checkpoints.rglob("ckpt.pt")) - seen
            if fresh:  # a trial is training: the first kill right after its checkpoint, later ones at random
                time.sleep(0 if attempt == 0 else rng.uniform(0, 1.5))
                break
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2
    rerun = _parent_run(config)  # the loop run again: a new run of the loop continues the same search
    final = _spawn(home, config, data, rerun, "final")
    pids.append(final.pid)
    result = _result(final, home, "final")

    study, chains, runs = _check_study(config, data)
    search = _search_run(config, data)
    assert search.data.tags["mlflow.parentRunId"] == parent and search.info.status == "FINISHED"
    assert mlflow.get_run(rerun).data.tags["search_run_id"] == search.info.run_id == result["search_run_id"]
    states = _tune_flow_run_states(pids)
    assert "RUNNING" not in states and states.count("CRASHED") == kills, states  # killed runs are shown as such
    assert result["n_failed"] == sum(len(c) - 1 for c in chains.values()) >= 1
    resumed = [key for key, run in runs.items() if run.data.metrics.get("resumed_from_step", 0) > 0]
    assert resumed, "no trial continued from its checkpoint"
    for key in resumed:
        assert len(chains[key]) > 1  # only a killed trial resumes
    best = max((c[-1] for c in chains.values() if c[-1].state == TrialState.COMPLETE), key=lambda t: t.value)
    assert (
        result["best"]["number"] == origin(best) and result["best"]["mlflow_run_id"] == runs[origin(best)].info.run_id
    )
    assert runs[origin(best)].data.tags.get("best_trial") == "true"
    assert sum(r.data.tags.get("best_trial") == "true" for r in runs.values()) == 1
    assert not list(checkpoints.rglob("ckpt.pt"))  # finished trials leave no checkpoint behind


def test_a_rerun_on_another_machine_resumes_from_the_checkpoint_in_the_artifact_store(home, monkeypatch):
    """The first attempt dies right after uploading its second checkpoint; the rerun finds no local
    checkpoint (another machine), fetches the uploaded one and continues from its step."""
    from tuneloop.search.tracking import TrialRun

    config = _search_config(home, n_trials=1)
    data, parent = _dataset(config), _parent_run(config)
    uploaded, upload = [], TrialRun.upload_checkpoint

    class MachineLost(Exception):
        pass

    def upload_then_die(self, path, step):
        upload(self, path, step)
        uploaded.append(step)
        if len(uploaded) == 2:
            raise MachineLost

    monkeypatch.setattr(TrialRun, "upload_checkpoint", upload_then_die)
    with pytest.raises(MachineLost):
        tune(config, data, parent)
    monkeypatch.undo()
    shutil.rmtree(config.work_dir / "checkpoints")
    result = tune(config, data, _parent_run(config))

    study, chains, runs = _check_study(config, data)
    assert [t.state for t in chains[0]] == [TrialState.FAIL, TrialState.COMPLETE]
    assert runs[0].data.metrics["resumed_from_step"] == uploaded[1] == 2 * config.tune.checkpoint_every
    assert result.best.mlflow_run_id == runs[0].info.run_id and result.n_failed == 1


@pytest.mark.postgres
def test_two_processes_share_one_study_without_losing_or_duplicating_trials(home, postgres_url):
    config = _search_config(home, n_trials=6, epochs=60, pruner="none").model_copy(update={"optuna_url": postgres_url})
    data, parent = _dataset(config), _parent_run(config)
    # a single-worker process, and once it trains, a process with a pool of two worker processes (slower to start)
    procs = {"a": _spawn(home, config, data, parent, "a")}
    deadline = time.monotonic() + 180
    while not _running_trials(config, data):
        assert time.monotonic() < deadline and procs["a"].poll() is None, (home / "stderr-a.log").read_text()[-2000:]
        time.sleep(0.5)
    procs["b"] = _spawn(
        home, config.model_copy(update={"tune": config.tune.model_copy(update={"n_workers": 2})}), data, parent, "b"
    )
    results = {tag: _result(proc, home, tag) for tag, proc in procs.items()}

    study, chains, _ = _check_study(config, data)
    assert all(len(chain) == 1 for chain in chains.values())  # nothing was killed, so nothing was retried
    pids = {int(t.user_attrs[OWNER_ATTR]["id"].rsplit("|", 1)[1]) for t in study.trials}
    assert procs["a"].pid in pids and procs["b"].pid not in pids  # "b" trains only through its pool's processes
    assert len(pids) >= 2, pids
    assert results["a"]["best"] == results["b"]["best"]  # each returns only once the whole study is done


@pytest.mark.postgres
def test_a_worker_killed_mid_trial_is_resumed_by_the_other_worker_from_the_artifact_store(home, postgres_url):
    """Two workers as two machines: their own homes (no shared disk), one study on PostgreSQL, one
    MLflow store. Worker "a" is SIGKILLed right after a trial's checkpoint; worker "b" finds the
    trial silent past the grace period, fails it, retries it with the same parameters, fetches its
    checkpoint from the artifact store and completes the study: no trial lost, none trained twice."""
    config = _search_config(home, n_trials=4, epochs=30, pruner="none", grace_period_s=4).model_copy(
        update={"optuna_url": postgres_url}
    )
    other = config.model_copy(update={"home": home / "machine-b"})
    data, parent = _dataset(config), _parent_run(config)
    checkpoints = config.work_dir / "checkpoints"
    procs = {"a": _spawn(home, config, data, parent, "a")}
    deadline = time.monotonic() + 180
    while not list(checkpoints.rglob("ckpt.pt")):
        assert time.monotonic() < deadline and procs["a"].poll() is None, (home / "stderr-a.log").read_text()[-2000:]
        time.sleep(0.02)
    [killed_dir] = {p.parent for p in checkpoints.rglob("ckpt.pt")}
    _wait_for_uploaded_checkpoint()  # uploaded right after it is written: kill only once it is there
    procs["a"].send_signal(signal.SIGKILL)
    procs["a"].wait()
    procs["b"] = _spawn(home, other, data, parent, "b")
    result = _result(procs["b"], home, "b")

    study, chains, runs = _check_study(config, data)
    killed = int(killed_dir.name.removeprefix("trial-"))
    assert [t.state for t in chains[killed]] == [TrialState.FAIL, TrialState.COMPLETE]
    owners = [int(t.user_attrs[OWNER_ATTR]["id"].rsplit("|", 1)[1]) for t in chains[killed]]
    assert owners == [procs["a"].pid, procs["b"].pid]  # killed on "a", finished on "b"
    # from a's checkpoint: b's home (other.work_dir) never held it, so it came from the artifact store
    assert other.work_dir != config.work_dir and runs[killed].data.metrics["resumed_from_step"] > 0
    assert all(len(chain) == 1 for key, chain in chains.items() if key != killed)
    assert result["n_failed"] == 1


def _wait_for_uploaded_checkpoint(seconds: float = 120) -> None:
    """Until some trial run holds a checkpoint in the artifact store (polled, with a deadline)."""
    deadline = time.monotonic() + seconds
    while not any(
        MlflowClient().list_artifacts(run.info.run_id, "checkpoint")
        for run in mlflow.search_runs(search_all_experiments=True, output_format="list")
    ):
        assert time.monotonic() < deadline, "no checkpoint reached the artifact store"
        time.sleep(0.1)


def _running_trials(config: LoopConfig, data: DatasetRef) -> list:
    try:
        study = optuna.load_study(study_name=study_name(config, data, base_of(config)), storage=config.optuna_db)
    except KeyError:  # not created yet
        return []
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def test_wall_time_budget_stops_starting_trials(home):
    config = _search_config(home, n_trials=50, epochs=4, timeout_s=4)
    data, parent = _dataset(config), _parent_run(config)
    result = tune(config, data, parent)
    finished = result.n_complete + result.n_pruned
    assert 1 <= finished < 50
    study = optuna.load_study(study_name=result.study_name, storage=config.optuna_db)
    assert len(study.trials) == finished  # nothing left queued or running
    # the deadline (set before the first trial started) stops new trials; the running one finishes
    starts = [t.datetime_start.timestamp() for t in study.trials]
    assert max(starts) - min(starts) < 4


def test_search_logs_plots_and_tags_on_its_search_run(home):
    config = _search_config(home, n_trials=3, epochs=3, pruner="none", checkpoint_every=None)
    data, parent = _dataset(config), _parent_run(config)
    with mlflow.start_run(run_id=parent):
        log_dataset(data)  # as the loop's curate stage does
    result = tune(config, data, parent)
    assert result.n_complete == 3
    search = mlflow.get_run(result.search_run_id)
    assert (
        search.data.tags["mlflow.parentRunId"] == parent
        and search.data.tags["best_trial_run_id"] == result.best.mlflow_run_id
    )
    assert search.data.params["pruner"] == "none" and search.data.tags["best.rank"] == str(result.best.params["rank"])
    assert search.inputs.dataset_inputs[0].dataset.digest == data.dataset_hash
    assert {r.info.run_id for r in _children(result.search_run_id)} >= {result.best.mlflow_run_id}
    plots = {a.path for a in MlflowClient().list_artifacts(result.search_run_id, "tune")}
    assert {
        f"tune/{name}.png"
        for name in (
            "optimization_history",
            "intermediate_values",
            "timeline",
            "param_importances",
            "parallel_coordinate",
            "loss_curves",
        )
    } <= plots
    run = mlflow.get_run(parent)
    assert run.data.tags["best_trial_run_id"] == result.best.mlflow_run_id
    assert search.data.metrics["tune.n_complete"] == 3 and search.data.metrics["tune.steps_trained"] > 0
    assert run.data.params["best_rank"] == str(result.best.params["rank"])
    child = mlflow.get_run(result.best.mlflow_run_id)
    assert child.info.run_name.startswith(f"trial-{result.best.number:03d} r=") and "->" in child.info.run_name
    assert {"rank", "lr", "alpha_ratio", "dropout", "target_modules"} <= set(child.data.params)
    assert {
        "trainable_params",
        "tokens_per_second",
        "peak_rss_mb",
        "wall_seconds",
        "validation_score",
        "final_validation_score",
        "padding_share",
    } <= set(child.data.metrics)
    assert child.data.tags["dataset_hash"] == data.dataset_hash
    assert child.inputs.dataset_inputs[0].dataset.digest == data.dataset_hash


def test_resumed_training_matches_an_uninterrupted_run(home):
    """The checkpoint holds everything: stopping after a checkpoint and resuming gives the same adapter."""
    config = _search_config(home)
    data = _dataset(config)
    base, labels = resolve_base("classification", None, tiny=True), load_labels(data, config.work_dir)
    tokenizer = load_tokenizer(base)
    encoded = encode(
        "classification",
        tokenizer,
        [(e.prompt, e.target) for e in load_examples(data, "train", config.work_dir)],
        labels,
        96,
    )

    def fresh():
        return add_adapter(
            load_base(base, "classification", labels),
            "classification",
            8,
            seed=0,
            targets=["query", "value"],
            dropout=0.1,
        )

    args = dict(lr=0.02, epochs=2, batch_size=8, seed=0)
    reference = fresh()
    train(reference, encoded, tokenizer.pad_token_id, **args)

    class Killed(Exception):
        pass

    def die_at_step_11(step: int, loss: float) -> None:
        if step == 11:
            raise Killed

    interrupted = fresh()
    with pytest.raises(Killed):
        train(
            interrupted,
            encoded,
            tokenizer.pad_token_id,
            **args,
            checkpoint_dir=home / "ckpt",
            checkpoint_every=5,
            on_step=die_at_step_11,
        )
    torch.manual_seed(123)  # elsewhere in the stream: only the checkpoint can bring the dropout stream back to step 10
    resumed = fresh()
    result = train(resumed, encoded, tokenizer.pad_token_id, **args, checkpoint_dir=home / "ckpt", checkpoint_every=5)
    assert result.resumed_from_step == 10 and result.steps_run == result.steps - 10
    for (name, a), b in zip(reference.named_parameters(), resumed.parameters()):
        if a.requires_grad:
            assert torch.allclose(a, b, atol=1e-6), name


def test_silent_trial_of_another_machine_is_retried_after_the_grace_period(tmp_path):
    """The heartbeat path (a worker elsewhere went silent), without the same-machine shortcut."""
    from tuneloop.search.study import claim, open_study

    tune = tiny_config(
        tmp_path, "classification", n_trials=2, ranks=[4, 8], first_trial=None, heartbeat_interval_s=1, grace_period_s=2
    ).tune
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study, storage = open_study(url, "silent", tune, optuna.pruners.NopPruner())
    trial, _ = claim(study, storage, tune, tune.n_trials)
    params = {
        "rank": trial.suggest_categorical("rank", tune.ranks),
        "lr": trial.suggest_float("lr", 0.01, 0.05, log=True),
    }
    trial.set_user_attr(OWNER_ATTR, {"id": "elsewhere|1|1", "trial": trial.number})  # another machine's worker

    again, _ = claim(study, storage, tune, tune.n_trials)  # within the grace period: a new trial, the silent one kept
    assert again.number == 1 and study.trials[0].state == TrialState.RUNNING
    study.tell(again, 0.5)
    assert claim(study, storage, tune, tune.n_trials) is None  # budget taken while trial 0 may still be alive

    deadline = time.monotonic() + 30  # once past the grace period: failed, and its retry (same parameters) is claimed
    while (claimed := claim(study, storage, tune, tune.n_trials)) is None:
        assert time.monotonic() < deadline, "the silent trial was never retried"
        time.sleep(0.1)
    retry, _ = claimed
    assert study.trials[0].state == TrialState.FAIL
    assert origin(study.trials[retry.number]) == 0 and study.trials[retry.number].params == params


def test_scores_are_reported_on_the_pruners_rungs_and_trailing_trials_stop_there(home):
    """Rungs at 1/9 and 1/3 of a trial (factor 3), each one a reporting step; a trial trailing the
    leaders at the first rung is stopped right there, and the last step is never a rung."""
    from tuneloop.flows.trial import pruner_step, schedule
    from tuneloop.search.study import make_pruner, rung_steps

    config = tiny_config(home, "classification", epochs=3, batch_size=4, evals_per_trial=3, reduction_factor=3)
    total, evals = schedule(config, n_train=100)  # 25 steps per epoch
    assert total == 75 and rung_steps(config.tune, total) == [8, 24]  # 75/9 -> 8, then x3 (72 is too near the end)
    assert evals == [8, 24, 50, 75]  # the rungs, and evenly spaced ones (25 is the rung at 24's)
    assert rung_steps(config.tune.model_copy(update={"pruner": "none"}), total) == []
    assert schedule(config.model_copy(update={"tune": config.tune.model_copy(update={"pruner": "none"})}), 100)[1] == [
        25,
        50,
        75,
    ]
    # a trial with two rehearsal pairs per pair: the rungs at the same shares of its 3x longer schedule (past
    # its warm-up), reported to the pruner in the split's steps, where a trial without rehearsal reports them
    assert schedule(config, n_train=100, n_pairs=300) == (225, [24, 72, 150, 225])
    assert [pruner_step(config, 100, 300, s) for s in (24, 72, 225)] == [8, 24, 75]
    assert [pruner_step(config, 100, 100, s) for s in (8, 24, 75)] == [8, 24, 75]

    study = optuna.create_study(direction="maximize", pruner=make_pruner(config.tune, total))
    for value in (0.9, 0.8, 0.7):  # three trials lead at the first rung and finish
        trial = study.ask()
        trial.report(value, 8)
        assert not trial.should_prune() or value < 0.9
        study.tell(trial, value, state=TrialState.COMPLETE)
    trailing = study.ask()
    trailing.report(0.1, 8)
    assert trailing.should_prune()


def test_a_time_budget_starts_only_trials_expected_to_finish_within_it():
    import datetime as dt

    from optuna.distributions import FloatDistribution

    from tuneloop.search.study import expected_seconds, fits

    study = optuna.create_study(direction="maximize")
    assert fits(study, None) and fits(study, time.time() + 1)  # nothing measured yet: the first trial always starts
    assert not fits(study, time.time() - 1)
    start = dt.datetime(2026, 1, 1)
    for minutes, state in ((10, TrialState.COMPLETE), (20, TrialState.COMPLETE), (1, TrialState.PRUNED)):
        study.add_trial(
            optuna.trial.FrozenTrial(
                number=0,
                trial_id=0,
                state=state,
                value=0.5 if state == TrialState.COMPLETE else None,
                values=None,
                datetime_start=start,
                datetime_complete=start + dt.timedelta(minutes=minutes),
                params={"lr": 0.01},
                distributions={"lr": FloatDistribution(1e-3, 1e-1)},
                user_attrs={},
                system_attrs={},
                intermediate_values={},
            )
        )
    assert expected_seconds(study) == 15 * 60  # completed trials only: a pruned one says little of a full trial's time
    assert fits(study, time.time() + 16 * 60)
    assert not fits(study, time.time() + 14 * 60)  # 14 minutes left: a 15-minute trial would overrun the budget


def test_the_trial_count_follows_the_time_budget_unless_set():
    from tuneloop.config import TuneConfig

    assert TuneConfig().trial_budget == TuneConfig.DEFAULT_TRIALS
    assert TuneConfig(timeout_s=3600).trial_budget == TuneConfig.MAX_TRIALS  # the budget, not a count, ends it
    assert TuneConfig(timeout_s=3600, n_trials=5).trial_budget == 5
