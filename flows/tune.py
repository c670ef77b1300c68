"""Stage 2, tune: an Optuna search over LoRA adapters, one MLflow child run per trial.

The study is named after the dataset, the search space and the training settings, so running the
flow again on the same data continues the same study: completed trials are never rerun, and a trial
killed mid-way (SIGKILL, a lost spot machine) resumes from its last checkpoint with its original
hyper-parameters and in its original MLflow run. ``config.tune.n_workers`` trials run at once on a
Prefect thread task runner; more workers can join from other processes or machines sharing the
Optuna storage (see ``flows/tune_study.py`` for how claims stay exact).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import mlflow
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from eval_suites.suites import heldout_suite, score
from flows.curate import CuratedData
from flows.tune_study import make_pruner, open_study, origin, rung_steps, study_lock, suggest, work
from flows.tune_tracking import TrialRun, log_search, open_search_run, peak_memory, trial_label
from tuneloop.config import LoopConfig
from tuneloop.models import load_base, load_tokenizer, save_labels
from tuneloop.owners import claim_flow_run
from tuneloop.training import Pruned, add_adapter, encode, predict, train

_score_lock = threading.Lock()  # evaluate's metric modules keep per-call state: one scorer at a time


class TrialResult(BaseModel):
    number: int
    params: dict[str, int | float | str]
    score: float
    adapter_dir: Path
    mlflow_run_id: str


class TuneResult(BaseModel):
    study_name: str
    best: TrialResult
    n_complete: int
    n_pruned: int
    search_run_id: str = ""  # the MLflow run holding the search; its trials are its children
    n_failed: int = 0  # killed or crashed attempts (each retried from its checkpoint)
    steps_trained: int = 0  # optimiser steps of all trials; a killed attempt's counted up to its last checkpoint


def study_name(config: LoopConfig, data: CuratedData) -> str:
    space = json.dumps([config.tune.model_dump(exclude=config.tune.STUDY_EXCLUDES), config.tiny], sort_keys=True)
    return f"{config.model_name}-{data.dataset_hash}-{hashlib.sha256(space.encode()).hexdigest()[:8]}"


def schedule(config: LoopConfig, n_train: int) -> tuple[int, list[int]]:
    """Optimiser steps per trial and the steps after which the held-out score is reported: the
    pruner's rungs (a score reported past a rung wastes the steps between; one reported on it stops
    a trailing trial as early as the rung allows), and evenly spaced ones for the curves, less those
    a rung already stands in for."""
    tune = config.tune
    total = -(-n_train // tune.batch_size) * tune.epochs
    rungs, spacing = rung_steps(tune, total), total / tune.evals_per_trial
    evenly = {max(1, round(spacing * (i + 1))) for i in range(tune.evals_per_trial)}
    evenly = {s for s in evenly if s == total or all(abs(s - r) > spacing / 2 for r in rungs)}
    return total, sorted(evenly | set(rungs))


def heldout_score(config: LoopConfig, model, tokenizer, data: CuratedData) -> float:
    items = heldout_suite(data.heldout[: config.tune.max_eval_examples])
    outputs, confidences = predict(config.kind, model, tokenizer, [i.input for i in items], data.labels, config.max_new_tokens)
    with _score_lock:
        return score(config.kind, items, outputs, confidences, data.labels)[1]["score"]


def run_trial(trial: optuna.Trial, config: LoopConfig, data: CuratedData, search_run_id: str, name: str) -> float:
    """Train and score one adapter; a retried trial continues its first attempt's checkpoint and run."""
    tune = config.tune
    params = suggest(trial, tune, config.kind)
    key = origin(next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number))
    trial.set_user_attr("trial_key", key)
    checkpoint_dir = config.work_dir / "checkpoints" / name / f"trial-{key:03d}"
    model, tokenizer, encoded = _trial_model(config, data, params)
    total, eval_steps = schedule(config, len(encoded))
    run = TrialRun.open(search_run_id, name, key, {
        **params, "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "epochs": tune.epochs, "batch_size": tune.batch_size, "total_steps": total,
    }, tags={"dataset_hash": data.dataset_hash, "optuna.study": name})
    trial.set_user_attr("mlflow_run_id", run.run_id)
    run.client.set_tag(run.run_id, "optuna.trial", str(trial.number))  # the latest attempt's number
    run.fetch_checkpoint(checkpoint_dir)  # from the artifact store when this machine has none

    scores: dict[int, float] = {}
    every = tune.checkpoint_every or max(1, total // 4)
    steps_before = trial.user_attrs.get("steps_trained", 0)  # earlier attempts', counted at their checkpoints

    def on_step(step: int, loss: float) -> None:
        run.step_loss(step, loss)
        if step % every == 0:  # train() checkpoints right after: the losses and the count go first
            run.flush()
            trial.set_user_attr("steps_trained", steps_before + run.session_steps)

    def on_eval(step: int) -> None:
        scores[step] = heldout_score(config, model, tokenizer, data)
        run.flush()
        run.metrics({"heldout_score": scores[step]}, step)
        trial.report(scores[step], step)
        if step < total and trial.should_prune():  # a trial that reached its end is finished, not pruned
            raise Pruned

    with peak_memory() as memory:
        result = train(model, encoded, tokenizer.pad_token_id, lr=params["lr"], epochs=tune.epochs,
                       batch_size=tune.batch_size, seed=tune.seed, eval_steps=set(eval_steps), on_eval=on_eval,
                       on_step=on_step, checkpoint_dir=checkpoint_dir, checkpoint_every=every,
                       on_checkpoint=run.upload_checkpoint, progress=True)
        final = None if result.pruned else scores.get(total)
        if final is None and not result.pruned:
            final = heldout_score(config, model, tokenizer, data)
    trial.set_user_attr("steps_trained", steps_before + result.steps_run)
    run.metrics({
        "resumed_from_step": result.resumed_from_step,
        "steps_trained": result.steps_run,
        "wall_seconds": result.seconds,
        "tokens_per_second": result.tokens / result.seconds if result.seconds else 0.0,
        "peak_rss_mb": memory["peak_rss_mb"],
        **({"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20} if torch.cuda.is_available() else {}),
    }, step=result.resumed_from_step)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    run.drop_checkpoint()
    if result.pruned:
        run.finish("PRUNED", f"{trial_label(key, params)} pruned@{result.resumed_from_step + result.steps_run}")
        raise optuna.TrialPruned()
    adapter_dir = config.work_dir / "adapters" / name / f"trial-{key:03d}"
    model.save_pretrained(adapter_dir)
    if data.labels:
        save_labels(adapter_dir, data.labels)
    trial.set_user_attr("adapter_dir", str(adapter_dir))
    run.metrics({"final_heldout_score": final}, step=total)
    run.finish("COMPLETE", f"{trial_label(key, params)} -> {final:.3f}")
    return final


def _trial_model(config: LoopConfig, data: CuratedData, params: dict):
    """The base model with a fresh adapter for ``params``, its tokenizer, and the encoded training set."""
    tokenizer = load_tokenizer(config.kind)
    base = load_base(config.kind, config.tiny, data.labels or None)
    model = add_adapter(base, config.kind, params["rank"], config.tune.seed, alpha=params["alpha_ratio"] * params["rank"],
                        dropout=params["dropout"], target_modules=params["target_modules"])
    pairs = [(e.prompt, e.target) for e in data.train]
    return model, tokenizer, encode(config.kind, tokenizer, pairs, data.labels, config.tune.max_length)


def prepare(config: LoopConfig, data: CuratedData) -> str:
    """Create (or load) the study and queue the known-good first trial; returns the study's name."""
    name = study_name(config, data)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    open_study(config.optuna_db, name, config.tune, _pruner(config, data), config.tune.first_trial)
    return name


def _pruner(config: LoopConfig, data: CuratedData) -> optuna.pruners.BasePruner:
    total, _ = schedule(config, len(data.train))
    return make_pruner(config.tune, total)


def search_worker(config: LoopConfig, data: CuratedData, search_run_id: str, name: str, deadline: float | None) -> int:
    """One worker: claims and runs trials until the study is done; returns how many it ran."""
    study, storage = open_study(config.optuna_db, name, config.tune, _pruner(config, data))
    return work(study, storage, lambda t: run_trial(t, config, data, search_run_id, name), config.tune, deadline)


tune_worker = task(name="tune-worker", cache_policy=NO_CACHE)(search_worker)


def open_search(config: LoopConfig, data: CuratedData, loop_run_id: str) -> tuple[str, str]:
    """Create or continue the study and its MLflow search run (a child of the loop run); their name and id."""
    name = prepare(config, data)
    space = {"kind": config.kind, "tiny": config.tiny, **config.tune.model_dump(exclude=config.tune.STUDY_EXCLUDES)}
    with study_lock(config.optuna_db, name):  # workers starting together still make one search run
        return name, open_search_run(loop_run_id, name, space)


def summarise(config: LoopConfig, data: CuratedData, search_run_id: str, name: str, loop_run_id: str | None = None) -> TuneResult:
    """The study's best trial, tagged and plotted on the search run, and named on the loop run."""
    study, _ = open_study(config.optuna_db, name, config.tune, _pruner(config, data))
    trials = study.get_trials(deepcopy=False)
    final: dict[int, FrozenTrial] = {}
    for t in sorted(trials, key=lambda t: t.number):  # the last attempt of each trial speaks for it
        final[origin(t)] = t
    complete = [t for t in final.values() if t.state == TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"study {name}: every trial was pruned or failed; nothing to evaluate")
    best = max(complete, key=lambda t: t.value)
    run_ids = {key: t.user_attrs["mlflow_run_id"] for key, t in final.items() if "mlflow_run_id" in t.user_attrs}
    client = mlflow.MlflowClient()
    for run_id in dict.fromkeys(r for r in (search_run_id, loop_run_id) if r):
        client.set_tag(run_id, "best_trial", str(origin(best)))
        client.set_tag(run_id, "best_trial_run_id", best.user_attrs["mlflow_run_id"])
        client.set_tag(run_id, "study_name", name)
        client.log_metric(run_id, "best_trial_heldout_score", best.value)
    for k, v in best.params.items():  # tags on the search run: a continued search may find a new best
        client.set_tag(search_run_id, f"best.{k}", str(v))
    if loop_run_id:
        client.log_batch(loop_run_id, params=[mlflow.entities.Param(f"best_{k}", str(v)) for k, v in best.params.items()])
    client.set_tag(search_run_id, "n_trials", str(config.tune.n_trials))
    log_search(search_run_id, study, origin(best), final, run_ids)
    client.set_terminated(search_run_id, "FINISHED")
    return TuneResult(
        study_name=name, search_run_id=search_run_id,
        best=TrialResult(number=origin(best), params=best.params, score=best.value,
                         adapter_dir=Path(best.user_attrs["adapter_dir"]), mlflow_run_id=best.user_attrs["mlflow_run_id"]),
        n_complete=len(complete),
        n_pruned=sum(t.state == TrialState.PRUNED for t in final.values()),
        n_failed=sum(t.state == TrialState.FAIL for t in trials),
        steps_trained=sum(t.user_attrs.get("steps_trained", 0) for t in final.values()),
    )


@flow(name="tune")
def tune_flow(config: LoopConfig, data: CuratedData, parent_run_id: str) -> TuneResult:
    """Create or continue the study, run ``n_workers`` workers on the flow's task runner, summarise."""
    claim_flow_run()  # a killed earlier attempt's flow run shows as Crashed, not Running forever
    name, search_run_id = open_search(config, data, parent_run_id)
    deadline = time.time() + config.tune.timeout_s if config.tune.timeout_s else None
    futures = [tune_worker.submit(config, data, search_run_id, name, deadline) for _ in range(config.tune.n_workers)]
    wait(futures)
    for future in futures:
        future.result()  # the first worker error, if any, fails the flow
    return summarise(config, data, search_run_id, name, parent_run_id)


def tune(config: LoopConfig, data: CuratedData, parent_run_id: str) -> TuneResult:
    """Stage 2 as a Prefect (sub)flow whose thread pool runs ``config.tune.n_workers`` trials at once."""
    runner = ThreadPoolTaskRunner(max_workers=config.tune.n_workers)
    return tune_flow.with_options(task_runner=runner)(config, data, parent_run_id)
