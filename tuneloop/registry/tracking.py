"""MLflow plumbing shared by the stages: the experiment and re-entering the loop's parent run."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow

from tuneloop.config import LoopConfig

# The experiment kind tag that MLflow's UI reads (values: server/js .../experimentKind enum in the
# installed mlflow): "custom_model_development" is the UI's "Machine learning" kind, whose experiment
# page opens on the runs table; without it MLflow 3 treats an experiment as a GenAI app (traces first).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow 3.17's UI decides the landing page by its GenAI / Model training switch (URL parameter
# ``workflowType``, else the browser's remembered choice, GenAI by default), so links that tuneloop
# prints carry the "Model training" side explicitly.
UI_WORKFLOW = "workflowType=machine_learning"


def use_experiment(config: LoopConfig) -> str:
    """The kind's experiment, with artifacts kept in the home (not ./mlruns) when tracking locally,
    tagged as a model-training experiment so that MLflow's UI opens it on its runs."""
    name = config.model_name
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        uri = mlflow.get_tracking_uri()
        location = (
            (config.home.resolve() / "mlartifacts").as_uri()
            if uri.startswith(("sqlite:", "file:")) or "://" not in uri
            else None
        )
        experiment_id = mlflow.create_experiment(
            name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
    else:
        experiment_id = experiment.experiment_id
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # made by an earlier tuneloop: tag it now
            mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def experiment_url(ui: str, experiment_id: str | None = None) -> str:
    """A link into MLflow's UI at ``ui`` (e.g. http://127.0.0.1:5000) that opens on the runs table:
    the experiment's runs, or the experiment list when ``experiment_id`` is None."""
    ui = ui.rstrip("/")
    if experiment_id is None:
        return f"{ui}/#/experiments?{UI_WORKFLOW}"
    return f"{ui}/#/experiments/{experiment_id}/runs?{UI_WORKFLOW}"


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
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("GIT_SHA", "unknown")


def run_url(ui: str, experiment_id: str, run_id: str) -> str:
    """A link into MLflow's UI at ``ui`` that opens one run's page (its description, parameters, metrics)."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{UI_WORKFLOW}"


def model_version_url(ui: str, name: str, version: str) -> str:
    """A link into MLflow's UI at ``ui`` that opens a registered model version's page."""
    return f"{ui.rstrip('/')}/#/models/{name}/versions/{version}"
