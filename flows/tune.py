"""Stage 2, tune: an Optuna search over LoRA adapters, then the winner trained on the whole split.

The study (``tuneloop/search/study.py``) is named after the dataset, the base model, the search space and the
training settings, so running the stage again on the same data continues it: completed trials are
never rerun, and a killed trial resumes from its checkpoint (``flows/trial.py``). ``n_workers``
workers claim trials from it, each in its own process (and on its own GPU when there are several);
more can join from other machines that share the Optuna storage, and with ``tune.worker_deployment``
the workers are flow runs on a Prefect work pool (``flows/search_workers.py``). When a trial's budget
(``tune.trial_steps``) showed it only part of the train split, the winner's configuration is then
trained on all of it. Only references cross the Prefect boundary: the dataset's ``DatasetRef`` in,
the adapter's artifact URI out.
"""

from __future__ import annotations

import time

import mlflow
import optuna
from optuna.trial import FrozenTrial, TrialState
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel

from tuneloop.config import LoopConfig
from tuneloop.data.datasets import DatasetRef
from tuneloop.flows.search_workers import dispatch
from tuneloop.flows.trial import retrains_with_validation, run_trial, schedule, train_final
from tuneloop.flows.trial_gate import feasible
from tuneloop.modeling.models import base_of, resolve_device, usable_cores
from tuneloop.search.owners import claim_flow_run
from tuneloop.search.study import (
    first_trial_of,
    make_pruner,
    open_study,
    origin,
    study_lock,
    study_name,
    usable_objectives,
    work,
)
from tuneloop.search.tracking import log_search, open_search_run


class TuneConfigError(ValueError):
    """A search setting that cannot work with this dataset; names it and what to set."""


class TrialResult(BaseModel):
    number: int
    params: dict[str, int | float | str]
    score: float  # validation score (the gate's held-out split is never seen by the search)
    adapter_uri: str  # the adapter in the artifact store
    mlflow_run_id: str


class TuneResult(BaseModel):
    study_name: str
    best: TrialResult  # the winning trial
    challenger: TrialResult  # what evaluate judges: the winner trained on the whole split, or the trial itself
    n_complete: int
    n_pruned: int
    search_run_id: str = ""  # the MLflow run holding the search; its trials are its children
    n_failed: int = 0  # killed or crashed attempts (each retried from its checkpoint)
    steps_trained: int = 0  # optimiser steps of all trials; a killed attempt's counted up to its last checkpoint


def check_budget(config: LoopConfig, ref: DatasetRef) -> None:
    """Refuse a trial budget that no longer fits the train split, before any training starts."""
    tune, n_train = config.tune, ref.sizes["train"]
    if tune.trial_steps is None or n_train == 0:
        return
    seen = tune.trial_steps * tune.batch_size * tune.grad_accum_steps
    if seen < tune.min_trial_coverage * n_train:
        needed = -(-int(tune.min_trial_coverage * n_train) // (tune.batch_size * tune.grad_accum_steps))
        raise TuneConfigError(
            f"a trial of tune.trial_steps={tune.trial_steps} steps x batch {tune.batch_size * tune.grad_accum_steps} sees "
            f"{seen:,} of the {n_train:,} training examples ({seen / n_train:.1%}), under tune.min_trial_coverage="
            f"{tune.min_trial_coverage:.0%}: its ranking would not carry over. Set TUNELOOP_TUNE__TRIAL_STEPS to at least "
            f"{needed} (or lower TUNELOOP_TUNE__MIN_TRIAL_COVERAGE)."
        )
    if schedule(config, n_train)[0] < 2 * len(schedule(config, n_train)[1]):
        raise TuneConfigError(
            f"tune.trial_steps={tune.trial_steps} leaves too few steps between the pruner's rungs and "
            "the evaluations; raise TUNELOOP_TUNE__TRIAL_STEPS or lower TUNELOOP_TUNE__EVALS_PER_TRIAL."
        )


def _pruner(config: LoopConfig, ref: DatasetRef) -> optuna.pruners.BasePruner:
    return make_pruner(config.tune, schedule(config, ref.sizes["train"])[0])


def open_search(config: LoopConfig, ref: DatasetRef, loop_run_id: str) -> tuple[str, str]:
    """Create or continue the study (with the known-good first trial queued) and its MLflow search run."""
    base = base_of(config)
    name = study_name(config, ref, base)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    open_study(config.optuna_db, name, config.tune, _pruner(config, ref), first_trial_of(config, ref))
    space = {
        "kind": config.kind,
        **base.tags(),
        "system_prompt": config.system_prompt,
        **config.tune.model_dump(exclude=config.tune.STUDY_EXCLUDES),
        "objectives_searched": usable_objectives(config, ref, warn=True),
    }
    with study_lock(config.optuna_db, name):  # workers starting together still make one search run
        return name, open_search_run(loop_run_id, name, space)


def search_worker(
    config: LoopConfig, ref: DatasetRef, search_run_id: str, name: str, deadline: float | None, index: int = 0
) -> int:
    """One worker: claims and runs trials until the study is done; returns how many it ran."""
    import torch

    if config.tune.n_workers > 1:  # workers split the cores between them
        torch.set_num_threads(max(1, usable_cores() // config.tune.n_workers))
    device = resolve_device(config.device, index)  # one GPU per worker when there are several
    study, storage = open_study(config.optuna_db, name, config.tune, _pruner(config, ref))
    return work(study, storage, lambda t: run_trial(t, config, ref, search_run_id, name, device), config.tune, deadline)


tune_worker = task(name="tune-worker", cache_policy=NO_CACHE)(search_worker)


def _summary(study: optuna.Study) -> tuple[dict[int, FrozenTrial], list[FrozenTrial]]:
    final: dict[int, FrozenTrial] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):  # a trial's last attempt speaks for it
        final[origin(t)] = t
    return final, [t for t in final.values() if t.state == TrialState.COMPLETE]


def summarise(
    config: LoopConfig, ref: DatasetRef, search_run_id: str, name: str, loop_run_id: str | None = None
) -> TuneResult:
    """The study's best trial (then trained on the whole split if it saw part of it), tagged and
    plotted on the search run, and named on the loop run."""
    study, _ = open_study(config.optuna_db, name, config.tune, _pruner(config, ref))
    final, complete = _summary(study)
    if not complete:
        raise RuntimeError(f"study {name}: every trial was pruned or failed; nothing to evaluate")
    best = _best(complete)
    winner = _trial_result(best)
    challenger = winner
    if _trains_final(config, ref):  # the winner on the whole split (and validation's retraining half)
        uri, score, run_id = train_final(config, ref, best.params, search_run_id, name, origin(best))
        challenger = winner.model_copy(update={"adapter_uri": uri, "score": score, "mlflow_run_id": run_id})
    client = mlflow.MlflowClient()
    _tag_best(client, search_run_id, loop_run_id, name, best, winner, challenger)
    client.set_tag(search_run_id, "n_trials", str(config.tune.trial_budget))
    run_ids = {key: t.user_attrs["mlflow_run_id"] for key, t in final.items() if "mlflow_run_id" in t.user_attrs}
    log_search(search_run_id, study, origin(best), final, run_ids)
    client.set_terminated(search_run_id, "FINISHED")
    return TuneResult(
        study_name=name,
        search_run_id=search_run_id,
        best=winner,
        challenger=challenger,
        n_complete=len(complete),
        n_pruned=sum(t.state == TrialState.PRUNED for t in final.values()),
        n_failed=sum(t.state == TrialState.FAIL for t in study.get_trials(deepcopy=False)),
        steps_trained=sum(t.user_attrs.get("steps_trained", 0) for t in final.values()),
    )


def _best(complete: list[FrozenTrial]) -> FrozenTrial:
    """The best completed trial within the gate's tolerances, or the best of all when none is within them."""
    within = [t for t in complete if feasible(t)]
    return max(within or complete, key=lambda t: t.value)


def _trial_result(trial: FrozenTrial) -> TrialResult:
    """A completed trial as the stage reports it: its score and where its adapter and MLflow run are."""
    return TrialResult(
        number=origin(trial),
        params=trial.params,
        score=trial.value,
        adapter_uri=trial.user_attrs["adapter_uri"],
        mlflow_run_id=trial.user_attrs["mlflow_run_id"],
    )


def _trains_final(config: LoopConfig, ref: DatasetRef) -> bool:
    """Whether the winner's configuration is trained again: when a trial's budget showed it only part of the
    train split, or when the final training adds the validation split's retraining half."""
    partial = (
        config.tune.trial_steps
        and schedule(config, ref.sizes["train"])[0] < schedule(config, ref.sizes["train"], full=True)[0]
    )
    return bool(partial or retrains_with_validation(config))


def _tag_best(
    client: mlflow.MlflowClient,
    search_run_id: str,
    loop_run_id: str | None,
    name: str,
    best: FrozenTrial,
    winner: TrialResult,
    challenger: TrialResult,
) -> None:
    """Name the best trial, its run and the challenger's run on the search run and the loop run; the best
    parameters as tags of the search run (a continued search may find a new best) and params of the loop run."""
    for run_id in dict.fromkeys(r for r in (search_run_id, loop_run_id) if r):
        client.set_tag(run_id, "best_trial", str(origin(best)))
        client.set_tag(run_id, "best_trial_run_id", winner.mlflow_run_id)
        client.set_tag(run_id, "challenger_run_id", challenger.mlflow_run_id)
        client.set_tag(run_id, "study_name", name)
        client.log_metric(run_id, "best_trial_validation_score", best.value)
        client.set_tag(run_id, "best_trial_within_gate_tolerances", str(feasible(best)).lower())
    for k, v in best.params.items():
        client.set_tag(search_run_id, f"best.{k}", str(v))
    if loop_run_id:
        client.log_batch(
            loop_run_id, params=[mlflow.entities.Param(f"best_{k}", str(v)) for k, v in best.params.items()]
        )


# Classification without a trial count or time budget: trials while their passes over the data fit this many
# examples (a trial on the demo's ~450 utterances x 3 epochs is cheap: 3 of them; BANKING77's 8,700: 2).
CLASSIFICATION_SEARCH_EXAMPLES = 5_000
MAX_SIZED_TRIALS = 8


def sized_to_data(config: LoopConfig, ref: DatasetRef) -> LoopConfig:
    """The trial count sized to the data for classification (more trials where a trial is cheap), unless set."""
    tune = config.tune
    if config.kind != "classification" or tune.n_trials is not None or tune.timeout_s:
        return config
    passes = schedule(config, ref.sizes["train"])[0] * tune.batch_size * tune.grad_accum_steps
    n = min(MAX_SIZED_TRIALS, max(tune.DEFAULT_TRIALS, CLASSIFICATION_SEARCH_EXAMPLES // max(1, passes)))
    return config.model_copy(update={"tune": tune.model_copy(update={"n_trials": n})})


@flow(name="tune")
def tune_flow(config: LoopConfig, ref: DatasetRef, parent_run_id: str) -> TuneResult:
    """Create or continue the study, run ``n_workers`` workers, summarise."""
    claim_flow_run()  # a killed earlier attempt's flow run shows as Crashed, not Running forever
    config = sized_to_data(config, ref)
    check_budget(config, ref)
    name, search_run_id = open_search(config, ref, parent_run_id)
    deadline = time.time() + config.tune.timeout_s if config.tune.timeout_s else None
    if config.tune.worker_deployment:  # flow runs on a work pool, wherever its workers are
        dispatch(config, ref, search_run_id, name, deadline)
    elif config.tune.n_workers == 1:  # no pool to start: the worker runs right here
        search_worker(config, ref, search_run_id, name, deadline)
    else:
        futures = [
            tune_worker.submit(config, ref, search_run_id, name, deadline, i) for i in range(config.tune.n_workers)
        ]
        wait(futures)
        for future in futures:
            future.result()  # the first worker error, if any, fails the flow
    return summarise(config, ref, search_run_id, name, parent_run_id)


def tune(config: LoopConfig, ref: DatasetRef, parent_run_id: str) -> TuneResult:
    """Stage 2 as a Prefect (sub)flow; several workers run in a process pool (isolated random state, a GPU each)."""
    pool = config.tune.n_workers > 1 and not config.tune.worker_deployment
    runner = ProcessPoolTaskRunner(max_workers=config.tune.n_workers) if pool else ThreadPoolTaskRunner(1)
    return tune_flow.with_options(task_runner=runner)(config, ref, parent_run_id)
