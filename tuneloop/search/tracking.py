"""MLflow for the tune stage: one run per search (the study), nested under the loop run that
started it, with one child run per trial; both are reopened when a killed search resumes, so a
search is one parent and its trials however many processes it took. Checkpoints and finished
adapters go to the artifact store (any machine can resume a trial or evaluate its adapter); the
search's plots and best-trial tags go on the search run.

Everything goes through ``MlflowClient`` with explicit run ids rather than the fluent API's
thread-local active run: trials run on Prefect worker threads, several at once.
"""

from __future__ import annotations

import logging
import resource
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # workers have no display

import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import optuna  # noqa: E402
from mlflow.entities import Metric, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from tuneloop.modeling.training import CHECKPOINT  # noqa: E402

log = logging.getLogger(__name__)

STUDY_TAG, TRIAL_TAG = "tuneloop.study", "tuneloop.trial"


def open_search_run(loop_run_id: str, study: str, space: dict) -> str:
    """The search's run: the existing one for ``study`` when continuing it, else a new child of the loop run."""
    client = mlflow.MlflowClient()
    loop = client.get_run(loop_run_id)
    found = client.search_runs(
        [loop.info.experiment_id], f"tags.`{STUDY_TAG}` = '{study}' and tags.`tuneloop.stage` = 'search'", max_results=1
    )
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(
            loop.info.experiment_id,
            run_name=f"search {study}",
            tags={
                MLFLOW_PARENT_RUN_ID: loop_run_id,
                STUDY_TAG: study,
                "tuneloop.stage": "search",
                **{k: v for k, v in loop.data.tags.items() if k in ("tuneloop.kind",)},
            },
        ).info.run_id
        # the space is the study's identity, so these never change for this run
        client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in space.items()])
        if loop.inputs and loop.inputs.dataset_inputs:
            client.log_inputs(run_id, datasets=list(loop.inputs.dataset_inputs))
    client.set_tag(loop_run_id, "search_run_id", run_id)
    return run_id


def trial_label(key: int | str, params: dict) -> str:
    """A run name that says what the trial is: its number (or "final") and its hyper-parameters."""
    return (
        f"{key if isinstance(key, str) else f'trial-{key:03d}'} r={params['rank']} lr={params['lr']:.1e} alpha={params['alpha_ratio']:g}r "
        f"drop={params['dropout']:g} {params['target_modules']}"
        + (f" {params['objective']} beta={params['beta']:.2g}" if params.get("objective", "sft") != "sft" else "")
    )


class TrialRun:
    """A trial's MLflow child run. Step losses are buffered and written before each checkpoint, at
    evaluations and at the end, so a resumed run's history has no gap before its checkpoint."""

    def __init__(self, run_id: str, resumed: bool):
        self.client = mlflow.MlflowClient()
        self.run_id = run_id
        self.resumed = resumed
        self._losses: list[Metric] = []
        self.session_steps = 0  # steps trained by this process

    @classmethod
    def open(cls, parent_run_id: str, study: str, key: int | str, params: dict, tags: dict[str, str]) -> TrialRun:
        """The trial's run: the existing one for (study, key) when resuming, else a new child of the parent
        (``key`` is the trial's first attempt's number, or "final" for the winner's training on the full split)."""
        client = mlflow.MlflowClient()
        parent = client.get_run(parent_run_id)
        experiment_id = parent.info.experiment_id
        found = client.search_runs(
            [experiment_id], f"tags.`{STUDY_TAG}` = '{study}' and tags.`{TRIAL_TAG}` = '{key}'", max_results=1
        )
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return cls(found[0].info.run_id, resumed=True)
        # tags go in with the run, atomically: a kill right after still leaves a run this lookup finds
        run = client.create_run(
            experiment_id,
            run_name=trial_label(key, params),
            tags={
                MLFLOW_PARENT_RUN_ID: parent_run_id,
                STUDY_TAG: study,
                TRIAL_TAG: str(key),
                "tuneloop.stage": "tune",
                **tags,
            },
        )
        client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()])
        if parent.inputs and parent.inputs.dataset_inputs:  # the curated dataset, linked on every trial too
            client.log_inputs(run.info.run_id, datasets=list(parent.inputs.dataset_inputs))
        return cls(run.info.run_id, resumed=False)

    def step_loss(self, step: int, loss: float) -> None:
        self._losses.append(Metric("train_loss", loss, int(time.time() * 1000), step))
        self.session_steps += 1

    def flush(self) -> None:
        for i in range(0, len(self._losses), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=self._losses[i : i + 1000])
        self._losses.clear()

    def metrics(self, values: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def tags(self, values: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in values.items()])

    def upload_checkpoint(self, path: Path, step: int) -> None:
        """The checkpoint into the artifact store: a later run on any machine can resume from it."""
        self.client.log_artifact(self.run_id, str(path), "checkpoint")

    def fetch_checkpoint(self, directory: Path) -> bool:
        """Bring the run's last checkpoint into ``directory`` unless one is already there."""
        if (directory / CHECKPOINT).exists():
            return True
        if not self.resumed or not self.client.list_artifacts(self.run_id, "checkpoint"):
            return False
        staging = directory.parent / f"{directory.name}.download"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            local = self.client.download_artifacts(self.run_id, f"checkpoint/{CHECKPOINT}", str(staging))
            directory.mkdir(parents=True, exist_ok=True)
            Path(local).replace(directory / CHECKPOINT)  # whole, or not at all
        except (MlflowException, OSError) as err:
            log.warning("checkpoint of run %s not fetched, the trial starts over: %s", self.run_id, err)
            return False
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return True

    def drop_checkpoint(self) -> None:
        """A finished trial needs no checkpoint; its adapter is what counts (best effort)."""
        try:
            get_artifact_repository(self.client.get_run(self.run_id).info.artifact_uri).delete_artifacts("checkpoint")
        # MLflow's artifact repositories that cannot delete raise NotImplementedError: a library
        # exception, caught here like the others (the checkpoint is then just kept)
        except (MlflowException, OSError, NotImplementedError) as err:
            log.info("checkpoint of run %s kept: %s", self.run_id, err)

    def upload_adapter(self, adapter_dir: Path) -> str:
        """The finished adapter into the artifact store; its URI, for evaluate and register on any machine."""
        self.client.log_artifacts(self.run_id, str(adapter_dir), "adapter")
        return f"runs:/{self.run_id}/adapter"

    def finish(self, state: str, label: str) -> None:
        self.flush()
        self.client.set_tag(self.run_id, "optuna.state", state)
        self.client.set_tag(self.run_id, MLFLOW_RUN_NAME, label)
        self.client.set_terminated(self.run_id, "FINISHED")


def fetch_adapter(uri: str, cache: Path) -> Path:
    """A logged adapter (``runs:/<id>/adapter``) as a local folder, downloaded once into ``cache``."""
    target = cache / uri.removeprefix("runs:/").replace("/", "-")
    if (target / "adapter_config.json").exists():
        return target
    staging = target.with_name(target.name + ".download")
    shutil.rmtree(staging, ignore_errors=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging)))
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    local.replace(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux); elsewhere its peak so far."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def peak_memory(device=None) -> Iterator[dict[str, float]]:
    """Peak resident memory (MB) of this process while the block runs, sampled every 50 ms, and the
    peak GPU memory allocated on ``device`` when it is a CUDA device.

    ``ru_maxrss`` alone cannot say: it is the process's all-time peak, so the second trial of a
    process would inherit the first one's.
    """
    import torch

    out = {"peak_rss_mb": 0.0}
    cuda = device is not None and getattr(device, "type", "") == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    stop = threading.Event()

    def sample() -> None:
        while True:
            out["peak_rss_mb"] = max(out["peak_rss_mb"], current_rss_mb())
            if stop.wait(0.05):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["peak_rss_mb"] = max(out["peak_rss_mb"], current_rss_mb())
        if cuda:
            out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20


def log_search(
    search_run_id: str, study: optuna.Study, best_key: int, final: dict[int, FrozenTrial], run_ids: dict[int, str]
) -> None:
    """On the search run: the summary, its plots, and ``best_trial`` on exactly one trial run.

    ``final`` maps each trial's key (its first attempt's number) to its last attempt.
    """
    client = mlflow.MlflowClient()
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    client.log_batch(
        search_run_id,
        metrics=[Metric(f"tune.n_{name}", n, int(time.time() * 1000), 0) for name, n in counts.items()]
        + [
            Metric(
                "tune.steps_trained",
                sum(t.user_attrs.get("steps_trained", 0) for t in final.values()),
                int(time.time() * 1000),
                0,
            )
        ],
    )
    for key, run_id in run_ids.items():
        if key == best_key:
            client.set_tag(run_id, "best_trial", "true")
        elif client.get_run(run_id).data.tags.get("best_trial"):
            client.delete_tag(run_id, "best_trial")  # an earlier search's best, beaten now
    for name, figure in search_plots(study, final, run_ids).items():
        client.log_figure(search_run_id, figure, f"tune/{name}.png")
        plt.close(figure)


def search_plots(study: optuna.Study, final: dict[int, FrozenTrial], run_ids: dict[int, str]) -> dict[str, plt.Figure]:
    """Optimisation history, intermediate values, timeline, parameter importances and parallel
    coordinates (when at least two complete trials differ in a parameter), and loss curves."""
    from optuna.visualization import matplotlib as ov

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varying = sorted(
        name
        for name in {k for t in complete for k in t.params}
        if len({repr(t.params.get(name)) for t in complete}) > 1
    )
    plots = {
        "optimization_history": lambda: ov.plot_optimization_history(study),
        "intermediate_values": lambda: ov.plot_intermediate_values(study),
        "timeline": lambda: ov.plot_timeline(study),
    }
    if len(complete) >= 2 and varying:
        plots["param_importances"] = lambda: ov.plot_param_importances(study, params=varying)
        plots["parallel_coordinate"] = lambda: ov.plot_parallel_coordinate(study, params=varying)
    figures = {}
    for name, plot in plots.items():
        try:
            ax = plot()
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. importances with no variance
            log.warning("plot %s skipped: %s", name, err)
            continue
        figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        figures[name] = figure
    figures["loss_curves"] = loss_curves(study.study_name, final, run_ids)
    return figures


def loss_curves(title: str, final: dict[int, FrozenTrial], run_ids: dict[int, str]) -> plt.Figure:
    """Every trial's training loss per step; pruned trials dashed."""
    client = mlflow.MlflowClient()
    figure, ax = plt.subplots(figsize=(9, 5))
    for key, run_id in sorted(run_ids.items()):
        history = sorted(client.get_metric_history(run_id, "train_loss"), key=lambda m: (m.step, m.timestamp))
        if not history:
            continue
        by_step = {m.step: m.value for m in history}  # a resumed trial re-ran some steps: keep the latest
        style = "--" if final[key].state == TrialState.PRUNED else "-"
        ax.plot(list(by_step), list(by_step.values()), style, label=f"trial-{key:03d}", linewidth=1)
    ax.set(xlabel="step", ylabel="train loss", title=f"Training loss per trial ({title})")
    if run_ids:
        ax.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    return figure
