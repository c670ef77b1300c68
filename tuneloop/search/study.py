"""The study behind the tune stage: its name, storage, sampler, pruner, and the claims of a safe worker loop.

Every worker (a thread of one flow run, another process, another machine) runs ``work``: Optuna's
ask-and-tell loop with what ``study.optimize`` lacks for a search that must survive kills and
scale out:

- **An exact budget.** ``optimize(n_trials=N)`` counts per worker, so several workers overshoot,
  and a rerun cannot tell a killed trial from a finished one. Here a worker claims a trial (a
  queued retry first, else a new one) only while the study holds fewer than ``n_trials`` complete,
  pruned or running trials, under a study-wide lock: concurrent workers never exceed, duplicate or
  lose a trial.
- **Resuming killed trials.** A running trial records a heartbeat (RDB storage) and its owner
  (host, PID namespace, PID). A trial whose owner process is gone from this machine is failed at
  once, so a rerun right after a SIGKILL does not wait; any other silent trial is failed after
  ``grace_period_s``. Either way ``RetryHeartbeatStaleTrialCallback`` queues a copy with the same
  parameters, user attributes (the MLflow run id) and intermediate scores; the objective resumes it
  from its checkpoint.
- **A finished study for everyone.** A worker with nothing to claim waits while trials still run
  elsewhere, so each worker returns only when the study is done (or its deadline passed).

Storage: SQLite (the default; a file lock beside the database serialises claims) for workers on one
machine; PostgreSQL for workers on several (``TUNELOOP_OPTUNA_URL=postgresql+psycopg://...``; claims
take a ``pg_advisory_lock``, which the server releases if the holder dies). Optuna's journal storage
is not used: it has no heartbeat (``BaseHeartbeat``), so a killed trial could not be told from a
slow one, and RDB storage already covers one machine and many.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from tuneloop.config import Kind, LoopConfig, TuneConfig
from tuneloop.data.datasets import DatasetRef
from tuneloop.data.locks import database_lock
from tuneloop.modeling.models import DEFAULT_TARGETS, BaseModelInfo
from tuneloop.search.owners import owner_dead, owner_id

log = logging.getLogger(__name__)

# ask() warns whenever heartbeats are on outside study.optimize; this loop records them itself.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

OWNER_ATTR = "tuneloop.owner"


def study_name(config: LoopConfig, ref: DatasetRef, base: BaseModelInfo) -> str:
    """The study's identity: the dataset, the base model, and the space and training settings (not the
    budget or the execution fields), so a rerun or a larger budget continues the same study."""
    space = json.dumps(
        [
            config.tune.model_dump(exclude=config.tune.STUDY_EXCLUDES),
            base.id,
            config.system_prompt,
            config.prompt_template if config.kind == "generation" else None,
        ],
        sort_keys=True,
    )
    return f"{config.model_name}-{ref.dataset_hash}-{hashlib.sha256(space.encode()).hexdigest()[:8]}"


def suggest(trial: optuna.Trial, tune: TuneConfig, kind: Kind, objectives: list[str] | None = None) -> dict:
    """The trial's hyper-parameters; a retried trial gets back the ones it had. ``objectives``: those
    the data allows (``usable_objectives``); the objective's beta is searched on its own range."""
    objective = trial.suggest_categorical("objective", objectives or ["sft"])
    beta = (
        {}
        if objective == "sft"
        else {
            "beta": trial.suggest_float(
                f"{objective}_beta",
                getattr(tune, f"{objective}_beta_min"),
                getattr(tune, f"{objective}_beta_max"),
                log=True,
            )
        }
    )
    return {
        "rank": int(trial.suggest_categorical("rank", tune.ranks)),
        "lr": trial.suggest_float("lr", tune.lr_min, tune.lr_max, log=True),
        "alpha_ratio": float(trial.suggest_categorical("alpha_ratio", tune.alpha_ratios)),
        "dropout": float(trial.suggest_categorical("dropout", tune.dropouts)),
        "target_modules": trial.suggest_categorical("target_modules", tune.target_modules or [DEFAULT_TARGETS[kind]]),
        "replay_ratio": float(trial.suggest_categorical("replay_ratio", tune.replay_ratios))
        if kind == "generation"
        else 0.0,
        "objective": objective,
        **beta,
    }


def usable_objectives(config: LoopConfig, ref: DatasetRef, warn: bool = False) -> list[str]:
    """``tune.objectives`` less those the dataset cannot feed (each with its reason logged when
    ``warn``); sft when none is left."""
    from tuneloop.modeling.objectives import usable

    kept, reasons = usable(
        config.tune.objectives, ref.counts.get("pairs_train", 0), ref.counts.get("unpaired_train", 0), config.kind
    )
    if not kept:
        reasons.append("no objective left: sft instead")
    for reason in reasons if warn else []:
        _run_logger().warning("objective left out of the search: %s", reason)
    return kept or ["sft"]


def first_trial_of(config: LoopConfig, ref: DatasetRef) -> dict | None:
    """``tune.first_trial`` as the study queues it: supervised when it names no objective and sft is
    searched (the known-good start is a plain fine-tune; the preference objectives get the later
    trials), and without an objective the data cannot feed (its beta too)."""
    first = dict(config.tune.first_trial or {})
    if not first:
        return None
    objectives = usable_objectives(config, ref)
    if "objective" not in first and len(objectives) > 1 and "sft" in objectives:
        first["objective"] = "sft"
    elif first.get("objective") not in (None, *objectives):
        _run_logger().warning("first trial's objective %s left out: the data cannot feed it", first["objective"])
        first.pop(f"{first.pop('objective')}_beta", None)
    return first


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run's logger when there is one (its UI shows it), else the module's."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001  outside a Prefect run
        return log


def origin(trial: FrozenTrial) -> int:
    """The number of the first trial in a retry chain: the key of its checkpoint and MLflow run."""
    first = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return trial.number if first is None else first


def make_storage(url: str, tune: TuneConfig) -> RDBStorage:
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    return RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=tune.heartbeat_interval_s,
        grace_period=tune.grace_period_s,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
            max_retry=tune.max_retry, inherit_intermediate_values=True
        ),
    )


def rung_steps(tune: TuneConfig, total_steps: int) -> list[int]:
    """Steps at which the pruner compares trials: the first rung, then every reduction_factor times
    further while at least half of the trial lies ahead (stopping a trial later saves little; the end
    is never a rung: a trial that reached its last step is finished, not pruned)."""
    if tune.pruner == "none":
        return []
    rungs, step = [], max(1, round(total_steps * tune.first_rung))
    while step <= total_steps / 2:
        rungs.append(step)
        step *= tune.reduction_factor
    return rungs


def make_pruner(tune: TuneConfig, total_steps: int) -> optuna.pruners.BasePruner:
    """Successive halving (or Hyperband's brackets of it) on the rungs above; scores are reported at each."""
    if tune.pruner == "none":
        return optuna.pruners.NopPruner()
    first = rung_steps(tune, total_steps)[:1] or [total_steps]
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=first[0], max_resource=total_steps, reduction_factor=tune.reduction_factor
        )
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=first[0], reduction_factor=tune.reduction_factor)


def make_sampler(tune: TuneConfig, trial_number: int) -> optuna.samplers.TPESampler:
    """TPE seeded per trial: reproducible with one worker, and no two processes (each starting its
    sampler afresh) draw the same "random" start. TPE keeps no state but its RNG, so a new sampler
    per trial samples exactly as a long-lived one would."""
    # constant liar: parallel workers do not all sample next to the same running trial
    return optuna.samplers.TPESampler(
        seed=tune.seed * 100_003 + trial_number, n_startup_trials=tune.startup_trials, constant_liar=True
    )  # constraints: each trial's own (Trial.set_constraint)


def open_study(
    url: str, name: str, tune: TuneConfig, pruner: optuna.pruners.BasePruner, first_trial: dict | None = None
) -> tuple[optuna.Study, RDBStorage]:
    """Create or load the study (and queue ``first_trial`` into an empty one) under the study lock.

    The lock also covers creating Optuna's tables: two processes doing that at once on an empty
    PostgreSQL database collide.
    """
    with study_lock(url, name):
        storage = make_storage(url, tune)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction="maximize",
            load_if_exists=True,
            pruner=pruner,
            sampler=make_sampler(tune, 0),
        )
        if first_trial and not study.get_trials(deepcopy=False):
            study.enqueue_trial(first_trial)
    return study, storage


def study_lock(url: str, name: str):
    """Mutual exclusion between every worker of one study: threads, processes and, on PostgreSQL, machines."""
    return database_lock(url, f"optuna-study:{name}")


def fail_stale(study: optuna.Study, storage: RDBStorage, tune: TuneConfig) -> None:
    """Fail running trials whose worker is gone, queueing each for a retry (call under the study lock)."""
    optuna.storages.fail_stale_trials(study)  # heartbeats older than the grace period
    study_id = storage.get_study_id_from_name(study.study_name)
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get(OWNER_ATTR) or {}
        if owner.get("trial") == trial.number:
            stale = owner_dead(owner["id"])
        else:  # popped, but its claimer died before recording itself (or a heartbeat)
            stale = trial.datetime_start is not None and now - trial.datetime_start.timestamp() > tune.grace_period_s
        if not stale:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        log.warning("trial %d: its worker is gone; queued for a retry from its checkpoint", trial.number)
        storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(trial_id))


def claim(study: optuna.Study, storage: RDBStorage, tune: TuneConfig, n_trials: int) -> tuple[optuna.Trial, int] | None:
    """A trial to run now (a queued retry first) and its storage id, or None when the budget is taken."""
    with study_lock(storage.url, study.study_name):
        fail_stale(study, storage, tune)
        taken = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        if len(taken) >= n_trials:
            return None
        study.sampler = make_sampler(tune, len(study.get_trials(deepcopy=False)))  # the new trial's number
        trial = study.ask()
        trial.set_user_attr(OWNER_ATTR, {"id": owner_id(), "trial": trial.number})
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study.study_name), trial.number
        )
        storage.record_heartbeat(trial_id)
        return trial, trial_id


@contextmanager
def heartbeat(storage: RDBStorage, trial_id: int, interval: float) -> Iterator[None]:
    """Record the trial's heartbeat every ``interval`` seconds while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except sqlalchemy.exc.SQLAlchemyError as err:  # a busy database: the next beat will do
                log.warning("heartbeat of trial id %d failed: %s", trial_id, err)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def expected_seconds(study: optuna.Study) -> float | None:
    """How long a new trial is expected to take: the mean of the study's completed ones (None before
    the first completes). Pruned trials are left out: a new trial may well run to its end."""
    done = [
        t.duration.total_seconds()
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.duration is not None
    ]
    return sum(done) / len(done) if done else None


def fits(study: optuna.Study, deadline: float | None) -> bool:
    """Whether a new trial may start: before ``deadline`` (epoch s), with time left for the trial it
    is expected to take, so a time budget is spent on trials that finish rather than cut short."""
    if deadline is None:
        return True
    left = deadline - time.time()
    expected = expected_seconds(study)
    return left > 0 and (expected is None or expected <= left)


def work(
    study: optuna.Study,
    storage: RDBStorage,
    objective: Callable[[optuna.Trial], float],
    tune: TuneConfig,
    deadline: float | None = None,
) -> int:
    """Run trials until the study holds ``tune.trial_budget`` finished ones or ``deadline`` (epoch s) leaves
    too little time for one more (``fits``).

    Returns the number of trials this worker ran. A trial that raises is failed and queued for a
    retry (so it resumes from its checkpoint next time), then the error propagates.
    """
    ran = 0
    while fits(study, deadline):
        claimed = claim(study, storage, tune, tune.trial_budget)
        if claimed is None:
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                return ran
            time.sleep(
                min(1.0, tune.heartbeat_interval_s)
            )  # others are still running: wait for them, or their staleness
            continue
        trial, trial_id = claimed
        ran += 1
        with heartbeat(storage, trial_id, tune.heartbeat_interval_s):
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                _tell(study, storage, trial, trial_id, state=TrialState.PRUNED)
            except BaseException:
                if _tell(study, storage, trial, trial_id, state=TrialState.FAIL):
                    storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(trial_id))
                raise
            else:
                _tell(study, storage, trial, trial_id, values=value)
    return ran


def _tell(study: optuna.Study, storage: RDBStorage, trial: optuna.Trial, trial_id: int, **outcome) -> bool:
    """Finish the trial, unless another worker already failed it as stale (heartbeats starved for
    longer than the grace period); its retry then runs again, so say so loudly."""
    if storage.get_trial(trial_id).state.is_finished():
        log.warning("trial %d was failed as stale while it ran; raise grace_period_s", trial.number)
        return False
    study.tell(trial, **outcome)
    return True
