"""Trials on a work pool: the tune stage's search workers as flow runs of a Prefect deployment.

With ``tune.worker_deployment`` set (e.g. ``search-worker/search-worker`` from prefect.yaml), the
tune stage does not train: it starts ``n_workers`` flow runs of that deployment, and whichever
Prefect workers poll its pool and queue (one per machine or GPU, ``--limit 1``) run them. Each
flow run is an ordinary search worker (``flows/tune.py``): it claims trials from the study on the
shared Optuna database until the study is done, each trial in its own MLflow run with its
checkpoints in the artifact store. So a worker machine that dies mid-trial loses nothing: another
worker fails the silent trial, retries it with its parameters and MLflow run, and resumes it from
the last uploaded checkpoint. The stage waits for the study, not for the flow runs: a flow run on a
lost machine stays "Running" in Prefect until Prefect notices, but its trial is already done
elsewhere.

Workers share nothing on disk with the loop: each uses its own ``TUNELOOP_HOME`` and reaches the
dataset, checkpoints and adapters through the tracking server and the databases.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState
from prefect import flow
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.states import StateType

from tuneloop.config import LoopConfig
from tuneloop.credentials import redact_text
from tuneloop.data.datasets import DatasetRef
from tuneloop.search.study import fail_stale, fits, make_storage, study_lock

log = logging.getLogger(__name__)
POLL_S = 2.0
STALL_S = 60.0  # least time queued work may stay unclaimed by started workers before one is replaced


class SearchWorkersError(RuntimeError):
    """The search cannot finish on the work pool; says what happened to its flow runs."""


@flow(name="search-worker")
def search_worker_flow(
    config: LoopConfig, ref: DatasetRef, search_run_id: str, name: str, deadline: float | None = None, index: int = 0
) -> int:
    """One search worker as a flow run on a work pool: claims and runs trials of study ``name`` until
    it is done; returns how many it ran. Uses this machine's ``TUNELOOP_HOME`` for its scratch files."""
    from tuneloop.flows.tune import search_worker  # flows/tune.py imports this module

    if os.environ.get("TUNELOOP_HOME"):
        config = config.model_copy(update={"home": Path(os.environ["TUNELOOP_HOME"])})
    storage = make_storage(config.optuna_db, config.tune)
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        raise SearchWorkersError(
            f"study {name} is not in this worker's Optuna storage ({redact_text(config.optuna_db)}): a search worker "
            "needs the database of the loop that started it; set TUNELOOP_OPTUNA_URL to one every worker reaches "
            "(PostgreSQL)"
        ) from None
    return search_worker(config, ref, search_run_id, name, deadline, index)


def shared(config: LoopConfig) -> LoopConfig:
    """The config a worker elsewhere needs: the stores as URLs, not as paths under this loop's home.
    As a flow run's parameters they carry no password: the worker takes it from its own environment."""
    return config.model_copy(update={"optuna_url": config.optuna_db, "feedback_url": config.feedback_db})


def study_done(study: optuna.Study, n_trials: int, deadline: float | None) -> bool:
    """No trial running or queued, and the budget reached (or the deadline passed)."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
        return False
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    return finished >= n_trials or not fits(study, deadline)


def _start(config: LoopConfig, parameters: dict, name: str, index: int) -> FlowRun:
    return run_deployment(
        config.tune.worker_deployment,
        parameters={**parameters, "index": index},
        flow_run_name=f"search-worker-{index}-{name[-17:]}",
        timeout=0,
    )


def _states(flow_runs: list[FlowRun]) -> dict:
    """Each flow run's state type (None where it has none yet), read in one request."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        read = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in flow_runs])))
    types = {r.id: r.state.type if r.state else None for r in read}
    return {r.id: types.get(r.id) for r in flow_runs}


def dispatch(
    config: LoopConfig, ref: DatasetRef, search_run_id: str, name: str, deadline: float | None
) -> list[FlowRun]:
    """Start ``n_workers`` flow runs of ``tune.worker_deployment`` on study ``name`` and wait until the
    study is done. A flow run that ends while work remains, or queued work that started workers leave
    unclaimed for a minute (or twice the grace period; their machines are gone), is replaced by a new flow run, at most ``max_retry``
    times; then the stage fails, naming the flow runs' states. Returns every flow run it started."""
    tune, config = config.tune, shared(config)
    parameters = {
        "config": config.model_dump(mode="json"),
        "ref": ref.model_dump(mode="json"),
        "search_run_id": search_run_id,
        "name": name,
        "deadline": deadline,
    }
    runs = [_start(config, parameters, name, i) for i in range(tune.n_workers)]
    log.warning(
        "tune: %d search workers queued on deployment %s: %s",
        len(runs),
        tune.worker_deployment,
        ", ".join(r.name for r in runs),
    )
    storage = make_storage(config.optuna_db, tune)
    study = optuna.load_study(study_name=name, storage=storage)
    replacements, unclaimed_since = 0, None
    while not study_done(study, tune.trial_budget, deadline):
        time.sleep(POLL_S)
        with study_lock(storage.url, name):
            fail_stale(study, storage, tune)  # a trial whose worker is gone is queued again for the others
        states = _states(runs)
        live = [
            r
            for r in runs
            if states[r.id]
            not in (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED, StateType.CANCELLING)
        ]
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        # work nobody claims although every live worker has started (not still queued or starting up): a
        # started worker claims within a second, so its machine is gone while Prefect still says Running
        started = all(states[r.id] == StateType.RUNNING for r in live)
        unclaimed_since = (unclaimed_since or time.time()) if waiting and not running and started else None
        stalled = unclaimed_since is not None and time.time() - unclaimed_since > max(2 * tune.grace_period_s, STALL_S)
        if (live and not stalled) or study_done(study, tune.trial_budget, deadline):
            continue
        if replacements >= tune.max_retry:
            raise SearchWorkersError(
                f"study {name} is unfinished and no search worker is left to finish it after {replacements} "
                f"replacements: "
                + ", ".join(f"{r.name} {states[r.id].value if states[r.id] else '?'}" for r in runs)
                + f". Is a worker polling the pool of deployment {tune.worker_deployment}?"
            )
        replacements, unclaimed_since = replacements + 1, None
        runs.append(_start(config, parameters, name, len(runs)))
        log.warning(
            "tune: search workers %s; started %s to finish the study", "stalled" if stalled else "ended", runs[-1].name
        )
    return runs
