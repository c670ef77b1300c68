"""MLflow plumbing shared by the stages: the experiment and re-entering the loop's parent run."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow

from tuneloop.config import LoopConfig


def use_experiment(config: LoopConfig) -> str:
    """The kind's experiment, with artifacts kept in the home (not ./mlruns) when tracking locally."""
    name = config.model_name
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        uri = mlflow.get_tracking_uri()
        location = (config.home.resolve() / "mlartifacts").as_uri() if uri.startswith(("sqlite:", "file:")) or "://" not in uri else None
        experiment_id = mlflow.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@contextmanager
def within_run(run_id: str) -> Iterator[mlflow.ActiveRun]:
    """Log into ``run_id`` whether or not this thread already has it active (Prefect may switch threads)."""
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield active
        return
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def git_sha() -> str:
    """The code version recorded with every model version ('unknown' outside a git checkout)."""
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("GIT_SHA", "unknown")
