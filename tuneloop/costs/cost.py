"""What a loop costs, measured: CPU, GPU and wall seconds of each stage, bytes stored, priced by ``cost.*``.

A stage is metered, not estimated: the CPU seconds are the user+sys time the operating system
charged to this process and its children (``os.times``) while the stage ran, the GPU seconds are
the stage's wall time x the GPUs in use when CUDA was in use, and the stored bytes are the growth of
the folders the loop writes to. Prices come from ``LoopConfig.cost`` (``CostConfig``).

- ``meter(stage)`` / ``LoopMeter.run(stage, fn, ...)``: measure a block or a stage.
- ``log_costs(run_id, usages, prices)``: ``cost.<stage>.cpu_s``, ``cost.<stage>.usd``, ..., ``cost.total_usd`` on an MLflow run.
- ``tag_version_cost(config, version)``: the cost of a registered version (rule in its docstring).
- ``cost_per_1k(...)`` / ``cost_per_1k_from_throughput(...)``: serving cost per 1,000 inferences.

Light on purpose (stdlib and pydantic): the scheduled trigger meters its no-op runs with it, and
torch is looked at only when something else already imported it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar

from tuneloop.config import CostConfig, LoopConfig

T = TypeVar("T")
HOUR = 3600.0
GB = 1e9  # cloud storage is priced per decimal gigabyte


@dataclass
class Usage:
    """What one stage used: measured seconds and bytes (never prices: those are applied by ``usd``)."""

    stage: str
    wall_s: float = 0.0
    cpu_s: float = 0.0
    gpu_s: float = 0.0
    gpus: int = 0
    stored_bytes: int = 0

    def usd(self, prices: CostConfig) -> float:
        """The stage's cost: CPU core-hours + GPU-hours + the bytes it stored for ``storage_months``."""
        return (
            self.cpu_s / HOUR * prices.cpu_hour
            + self.gpu_s / HOUR * prices.gpu_hour
            + self.stored_bytes / GB * prices.storage_gb_month * prices.storage_months
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_seconds() -> float:
    # user + system of this process (process_time: nanoseconds, where os.times() counts 10 ms ticks and
    # a no-op trigger decision could read 0), plus those of its children that have exited and been
    # waited for (Prefect process-pool trial workers, subprocesses): a child still running is counted when it ends
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


def gpus_in_use() -> int:
    """GPUs this process holds: the visible CUDA devices once CUDA is initialised, else 0.

    torch is only looked at if something already imported it, so metering never loads it. A
    process that initialised CUDA holds (and is billed for) the devices it sees, whether or not
    every kernel ran on all of them; restrict them with CUDA_VISIBLE_DEVICES.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    try:
        return torch.cuda.device_count() if torch.cuda.is_initialized() else 0
    except Exception:  # noqa: BLE001  a broken CUDA set-up must not break metering
        return 0


def process_start_wall() -> float:
    """Seconds since this process started (from /proc when there is one, else since this module loaded)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start)
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _LOADED


_LOADED = time.monotonic()


def directory_bytes(paths: Iterable[Path]) -> int:
    """Total size of the files under ``paths`` (missing paths count 0; links are not followed)."""
    total = 0
    for root in paths:
        root = Path(root)
        if root.is_file():
            total += root.stat().st_size
            continue
        for dirpath, _, files in os.walk(root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:  # removed while we walked: a temporary file
                    pass
    return total


@contextmanager
def meter(
    stage: str, watch: Iterable[Path] = (), since_process_start: bool = False, gpus: int | None = None
) -> Iterator[Usage]:
    """Measure the block: ``with meter("tune", watch=[home]) as usage: ...``; ``usage`` is filled on exit.

    ``watch``: folders whose growth counts as the stage's stored bytes. ``since_process_start``:
    count from the process's start (CPU and wall), for a process that exists only for this work
    (a scheduled run), so its start-up (imports, connecting) is in its cost too. ``gpus``: override
    the GPU count (default: ``gpus_in_use()`` at the end of the block). The process's other threads
    are counted too: meter stages that run one at a time.
    """
    watch = list(watch)
    usage = Usage(stage)
    cpu0 = 0.0 if since_process_start else _cpu_seconds()
    wall0 = time.perf_counter() - (process_start_wall() if since_process_start else 0.0)
    bytes0 = directory_bytes(watch) if watch else 0
    try:
        yield usage
    finally:
        usage.wall_s = time.perf_counter() - wall0
        usage.cpu_s = max(0.0, _cpu_seconds() - cpu0)
        usage.gpus = gpus_in_use() if gpus is None else gpus
        usage.gpu_s = usage.wall_s * usage.gpus
        usage.stored_bytes = max(0, directory_bytes(watch) - bytes0) if watch else 0


@dataclass
class LoopMeter:
    """Meters a loop's stages one after another and logs them together.

    ``watch``: the folders a loop writes to (by default the home's MLflow artifacts and the kind's
    work folder, see ``for_loop``).
    """

    prices: CostConfig
    watch: list[Path] = field(default_factory=list)
    usages: list[Usage] = field(default_factory=list)

    @classmethod
    def for_loop(cls, config: LoopConfig) -> LoopMeter:
        home = config.home.resolve()
        return cls(config.cost, [home / "mlartifacts", config.work_dir])

    def run(self, stage: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, metered as ``stage`` (recorded even when it raises)."""
        with meter(stage, self.watch) as usage:
            try:
                return fn(*args, **kwargs)
            finally:
                self.usages.append(usage)

    @property
    def seconds(self) -> dict[str, float]:
        return {u.stage: u.wall_s for u in self.usages}

    def total_usd(self) -> float:
        return sum(u.usd(self.prices) for u in self.usages)

    def log(self, run_id: str, client: Any = None) -> dict[str, float]:
        return log_costs(run_id, self.usages, self.prices, client)


def cost_metrics(usages: Iterable[Usage], prices: CostConfig) -> dict[str, float]:
    """The MLflow metrics of a loop's usages: per stage cpu_s, gpu_s, wall_s, stored_bytes, usd; and totals."""
    metrics: dict[str, float] = {}
    totals = Usage("total")
    for u in usages:
        metrics.update(
            {
                f"cost.{u.stage}.cpu_s": u.cpu_s,
                f"cost.{u.stage}.gpu_s": u.gpu_s,
                f"cost.{u.stage}.wall_s": u.wall_s,
                f"cost.{u.stage}.stored_bytes": float(u.stored_bytes),
                f"cost.{u.stage}.usd": u.usd(prices),
            }
        )
        totals.cpu_s += u.cpu_s
        totals.gpu_s += u.gpu_s
        totals.wall_s += u.wall_s
        totals.stored_bytes += u.stored_bytes
    metrics.update(
        {
            "cost.total_cpu_s": totals.cpu_s,
            "cost.total_gpu_s": totals.gpu_s,
            "cost.total_stored_bytes": float(totals.stored_bytes),
            "cost.total_usd": totals.usd(prices),
        }
    )
    return metrics


def log_costs(run_id: str, usages: Iterable[Usage], prices: CostConfig, client: Any = None) -> dict[str, float]:
    """Log the usages' cost metrics on ``run_id`` (and the prices used as tags); returns the metrics.

    Tags, not params, hold the prices: a rerun that reopens the run may log other prices.
    """
    import json

    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    client = client or MlflowClient()
    metrics = cost_metrics(usages, prices)
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        tags=[RunTag("cost.prices", json.dumps(prices.model_dump(mode="json"))), RunTag("cost.measured", "true")],
    )
    return metrics


# --- the cost of a registered version ------------------------------------------------------------------


def loop_runs(config: LoopConfig, client: Any = None) -> list[Any]:
    """The kind's loop runs (MLflow runs tagged ``tuneloop.stage = loop``), oldest first."""
    from mlflow import MlflowClient

    client = client or MlflowClient()
    experiment = client.get_experiment_by_name(config.model_name)
    if experiment is None:
        return []
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`tuneloop.stage` = 'loop'",
        max_results=50_000,
        order_by=["attributes.start_time ASC"],
    )
    return list(runs)


def trigger_costs(config: LoopConfig, after_ms: int | None = None, before_ms: int | None = None) -> tuple[int, float]:
    """(runs, USD) of this kind's trigger runs that did not start a loop, optionally within a time window."""
    from datetime import datetime

    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from tuneloop.data.feedback import FeedbackStore
    from tuneloop.data.ops_tables import TriggerRunRow

    query = select(func.count(), func.coalesce(func.sum(TriggerRunRow.cost_usd), 0.0)).where(
        TriggerRunRow.kind == config.kind, TriggerRunRow.ran.is_(False)
    )
    if after_ms is not None:
        query = query.where(TriggerRunRow.at > datetime.fromtimestamp(after_ms / 1000, UTC))
    if before_ms is not None:
        query = query.where(TriggerRunRow.at <= datetime.fromtimestamp(before_ms / 1000, UTC))
    with Session(FeedbackStore(config.feedback_db).engine) as session:
        n, usd = session.execute(query).one()
    return int(n), float(usd)


def version_cost(config: LoopConfig, version: str, client: Any = None) -> dict[str, float]:
    """What registered ``version`` cost, by this rule:

    its own loop's ``cost.total_usd`` (the loop run named by its ``loop_run_id`` tag), plus every
    loop run of the kind that started after the loop of the previous version carrying a
    ``loop_run_id`` and before this one's (loops whose challenger the gate refused, or that
    failed: what it took to get here), plus the trigger's no-op runs in that window (idle cost).
    Versions registered without a loop (by hand) cost nothing here. Loops without cost metrics
    (logged before metering) count 0 and are counted in ``unmetered_loops``.
    """
    from mlflow import MlflowClient

    client = client or MlflowClient()
    versions = client.search_model_versions(f"name = '{config.model_name}'")
    own = {str(v.version): v.tags.get("loop_run_id") for v in versions}
    loop_id = own.get(str(version))
    if not loop_id:
        return {
            "cost.total_usd": 0.0,
            "cost.loop_usd": 0.0,
            "cost.refused_loops": 0.0,
            "cost.refused_loops_usd": 0.0,
            "cost.idle_usd": 0.0,
            "cost.unmetered_loops": 0.0,
        }
    runs = {r.info.run_id: r for r in loop_runs(config, client)}
    this = runs.get(loop_id) or client.get_run(loop_id)
    earlier = [
        int(v) for v, run_id in own.items() if run_id and v.isdigit() and int(v) < int(version) and run_id in runs
    ]
    after_ms = runs[own[str(max(earlier))]].info.start_time if earlier else None
    between = [
        r
        for r in runs.values()
        if r.info.run_id != loop_id
        and r.info.start_time < this.info.start_time
        and (after_ms is None or r.info.start_time > after_ms)
    ]

    def usd(run) -> float:
        return float(run.data.metrics.get("cost.total_usd", 0.0))

    idle_runs, idle_usd = trigger_costs(config, after_ms, this.info.start_time)
    refused = sum(usd(r) for r in between)
    total = usd(this) + refused + idle_usd
    return {
        "cost.total_usd": total,
        "cost.loop_usd": usd(this),
        "cost.refused_loops": float(len(between)),
        "cost.refused_loops_usd": refused,
        "cost.idle_runs": float(idle_runs),
        "cost.idle_usd": idle_usd,
        "cost.unmetered_loops": float(sum("cost.total_usd" not in r.data.metrics for r in [this, *between])),
    }


def tag_version_cost(config: LoopConfig, version: str, client: Any = None) -> dict[str, float]:
    """Compute ``version_cost`` and set it as tags on the model version (``cost.total_usd``, ...)."""
    from mlflow import MlflowClient

    client = client or MlflowClient()
    cost = version_cost(config, version, client)
    for key, value in cost.items():
        client.set_model_version_tag(
            config.model_name, str(version), key, f"{value:.6f}" if "usd" in key else f"{value:g}"
        )
    return cost


# --- serving ----------------------------------------------------------------------------------------


def worker_price_per_hour(prices: CostConfig, cores: float, gpus: int = 0) -> float:
    """USD per hour of what one serving worker holds: ``instance_hour`` when set, else cores x
    ``cpu_hour`` + GPUs x ``gpu_hour``."""
    if prices.instance_hour is not None:
        return prices.instance_hour
    return cores * prices.cpu_hour + gpus * prices.gpu_hour


def cost_per_1k(busy_s: float, requests: int, price_per_hour: float) -> float | None:
    """USD per 1,000 inferences from measured model busy time: a worker that is busy ``busy_s`` for
    ``requests`` answers costs this much per 1,000 when it is kept busy (idle capacity is extra).
    None before any request."""
    if requests <= 0:
        return None
    return busy_s / requests * price_per_hour / HOUR * 1000


def cost_per_1k_from_throughput(throughput_rps: float, price_per_hour: float) -> float | None:
    """USD per 1,000 inferences of an instance costing ``price_per_hour`` that sustains ``throughput_rps``
    (a benchmark's measured throughput at saturation). None for a throughput of 0."""
    if throughput_rps <= 0:
        return None
    return price_per_hour / HOUR / throughput_rps * 1000


def machine_price_per_hour(prices: CostConfig, cores: int | None = None, gpus: int = 0) -> float:
    """USD per hour of this whole machine (``instance_hour`` when set, else all its cores and ``gpus``)."""
    if prices.instance_hour is not None:
        return prices.instance_hour
    return (cores or os.cpu_count() or 1) * prices.cpu_hour + gpus * prices.gpu_hour


def describe_config_error(err: Exception) -> str:
    """One line per bad field of a pydantic ValidationError, e.g. 'cost.cpu_hour = -1: ...'."""
    errors = getattr(err, "errors", None)
    if not callable(errors):
        return str(err)
    lines = []
    for e in errors():
        where = ".".join(str(p) for p in e.get("loc", ()))
        lines.append(f"{where} = {e.get('input')!r}: {e.get('msg')}")
    return "; ".join(lines)
