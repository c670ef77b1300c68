"""When fine-tuning pays: the crossover of a hosted model's bill and the fine-tuned model's cost.

Fine-tuning costs a one-off amount ``F`` (the loops run so far: measured; or a budget you enter),
then each call costs the own serving cost ``s`` instead of the hosted price ``h``, and the loop
keeps running at ``L`` a month (its measured mean cost x loops a month, plus the scheduled
trigger's measured idle cost). At ``N`` calls a month the fine-tuned path catches up after

    months = F / (N (h - s) - L),   calls = months x N

which without a monthly loop cost is the familiar ``F / (h - s)`` calls: $2,500 / ($0.005 - $0.0005)
= 555,556 calls, 2.8 months at 200k calls a month. No crossover exists when ``h <= s`` or when the
loop's monthly cost eats the monthly saving; the report says so instead of dividing by zero.

Every figure says whether it was measured (MLflow loop runs' ``cost.total_usd``, the trigger's
``trigger_runs``, the service's measured serving cost) or entered.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tuneloop.config import LoopConfig

Source = Literal["measured", "entered"]

# (lower bound inclusive?, upper bound): beyond these a figure is a typo, not a price
LIMITS: dict[str, tuple[float, float, bool]] = {
    "fine_tune_cost": (0.0, 1e9, True),
    "hosted_price_per_1k": (0.0, 10_000.0, False),
    "serving_cost_per_1k": (0.0, 10_000.0, True),
    "calls_per_month": (0.0, 1e12, False),
    "monthly_loop_cost": (0.0, 1e9, True),
}


class EconomicsError(ValueError):
    """A figure the report cannot use; ``field`` names it (as the CLI option, without dashes)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def check_figure(name: str, value: float) -> float:
    """``value`` if it is a finite number within ``LIMITS[name]``; else EconomicsError naming ``name``."""
    low, high, inclusive = LIMITS[name]
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EconomicsError(name, f"must be a finite number, got {value!r}")
    if value < low or (value == low and not inclusive):
        raise EconomicsError(name, f"must be {'at least' if inclusive else 'more than'} {low:g}, got {value:g}")
    if value > high:
        raise EconomicsError(name, f"{value:g} is implausibly large (more than {high:g}): check the units")
    return float(value)


class Figure(BaseModel):
    value: float
    source: Source
    detail: str = Field("", description="Where a measured figure came from, or what an entered one means.")


class Crossover(BaseModel):
    """The break-even of fine-tuning against a hosted model, and the figures it came from."""

    fine_tune: Figure  # USD, one-off
    hosted_per_1k: Figure  # USD per 1,000 calls
    serving_per_1k: Figure  # USD per 1,000 calls
    calls_per_month: Figure
    monthly_loop: Figure  # USD a month
    saving_per_call: float
    monthly_saving: float  # calls x saving per call - monthly loop cost
    break_even_months: float | None
    break_even_calls: float | None
    no_crossover: str | None = Field(None, description="Why the fine-tuned path never catches up, when it does not.")

    def summary(self) -> str:
        if self.no_crossover:
            return f"No crossover: {self.no_crossover}"
        return (
            f"Break-even after {self.break_even_calls:,.0f} calls, month {self.break_even_months:.1f} "
            f"at {self.calls_per_month.value:,.0f} calls a month"
        )

    def lines(self) -> list[tuple[str, str, str]]:
        """(figure, value, source and detail) rows for a table."""
        return [
            (
                "fine-tuning cost (one-off)",
                f"${self.fine_tune.value:,.2f}",
                f"{self.fine_tune.source}: {self.fine_tune.detail}",
            ),
            (
                "hosted price per 1k calls",
                f"${self.hosted_per_1k.value:,.4f}",
                f"{self.hosted_per_1k.source}: {self.hosted_per_1k.detail}",
            ),
            (
                "own serving cost per 1k calls",
                f"${self.serving_per_1k.value:,.4f}",
                f"{self.serving_per_1k.source}: {self.serving_per_1k.detail}",
            ),
            (
                "calls per month",
                f"{self.calls_per_month.value:,.0f}",
                f"{self.calls_per_month.source}: {self.calls_per_month.detail}",
            ),
            (
                "loop cost per month",
                f"${self.monthly_loop.value:,.2f}",
                f"{self.monthly_loop.source}: {self.monthly_loop.detail}",
            ),
            ("saving per call", f"${self.saving_per_call:,.6f}", "hosted - own serving"),
            ("net saving per month", f"${self.monthly_saving:,.2f}", "calls x saving - loop cost"),
        ]

    def markdown(self) -> str:
        rows = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in self.lines())
        return (
            f"## When fine-tuning pays\n\n**{self.summary()}**\n\n| figure | value | source |\n|---|---|---|\n{rows}\n"
        )


def crossover(
    fine_tune: Figure | float,
    hosted_per_1k: Figure | float,
    serving_per_1k: Figure | float,
    calls_per_month: Figure | float,
    monthly_loop: Figure | float = 0.0,
) -> Crossover:
    """The break-even month and call count (plain numbers count as entered figures).

    Invalid figures (negative, zero volume, non-finite, implausibly large) raise EconomicsError naming
    the figure; a hosted price at or below the own serving cost, or a loop cost that eats the
    saving, is a valid input with no crossover (``no_crossover`` says why).
    """

    def figure(value: Figure | float, name: str) -> Figure:
        fig = (
            value if isinstance(value, Figure) else Figure(value=value, source="entered") if _is_number(value) else None
        )
        if fig is None:
            raise EconomicsError(name, f"must be a finite number, got {value!r}")
        check_figure(name, fig.value)
        return fig

    f = figure(fine_tune, "fine_tune_cost")
    h = figure(hosted_per_1k, "hosted_price_per_1k")
    s = figure(serving_per_1k, "serving_cost_per_1k")
    n = figure(calls_per_month, "calls_per_month")
    loop = figure(monthly_loop, "monthly_loop_cost")
    saving = (h.value - s.value) / 1000
    monthly = n.value * saving - loop.value
    reason = None
    if saving <= 0:
        reason = (
            f"the hosted price (${h.value:g} per 1k calls) is at or below the own serving cost "
            f"(${s.value:g} per 1k): every call costs more fine-tuned, so fine-tuning never pays back"
        )
    elif monthly <= 0:
        reason = (
            f"the loop's monthly cost (${loop.value:,.2f}) is at least the monthly saving "
            f"(${n.value * saving:,.2f} at {n.value:,.0f} calls a month): the gap never closes"
        )
    months = None if reason else f.value / monthly
    return Crossover(
        fine_tune=f,
        hosted_per_1k=h,
        serving_per_1k=s,
        calls_per_month=n,
        monthly_loop=loop,
        saving_per_call=saving,
        monthly_saving=monthly,
        break_even_months=months,
        break_even_calls=None if months is None else months * n.value,
        no_crossover=reason,
    )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def cumulative(
    c: Crossover, months: float | None = None, points: int = 121
) -> tuple[list[float], list[float], list[float]]:
    """(month, hosted cumulative USD, fine-tuned cumulative USD) from month 0 to ``months`` (default:
    twice the break-even, at least 12)."""
    horizon = months or max(12.0, 2 * (c.break_even_months or 6.0))
    xs = [horizon * i / (points - 1) for i in range(points)]
    calls = c.calls_per_month.value
    hosted = [m * calls * c.hosted_per_1k.value / 1000 for m in xs]
    tuned = [c.fine_tune.value + m * (calls * c.serving_per_1k.value / 1000 + c.monthly_loop.value) for m in xs]
    return xs, hosted, tuned


def plot(c: Crossover, path: Path) -> Path:
    """PNG of cumulative cost, hosted vs fine-tuned (fine-tuning + serving + monthly loop cost), with the crossover marked."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    xs, hosted, tuned = cumulative(c)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(xs, hosted, label=f"hosted (${c.hosted_per_1k.value:g} per 1k calls, {c.hosted_per_1k.source})")
    ax.plot(
        xs,
        tuned,
        label=f"fine-tuned (${c.fine_tune.value:,.0f} + ${c.serving_per_1k.value:g} per 1k + "
        f"${c.monthly_loop.value:,.0f}/month)",
    )
    if c.break_even_months is not None:
        y = c.fine_tune.value + c.break_even_months * (
            c.calls_per_month.value * c.serving_per_1k.value / 1000 + c.monthly_loop.value
        )
        ax.axvline(c.break_even_months, color="grey", linestyle=":")
        ax.annotate(
            f"break-even: month {c.break_even_months:.1f}\n{c.break_even_calls:,.0f} calls",
            (c.break_even_months, y),
            textcoords="offset points",
            xytext=(8, -30),
        )
    ax.set_xlabel("months")
    ax.set_ylabel("cumulative cost (USD)")
    ax.set_title(c.summary() if c.no_crossover is None else "No crossover", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# --- measured figures --------------------------------------------------------------------------------


class Measured(BaseModel):
    """What the stores know: loop costs (MLflow), idle trigger cost (trigger_runs), serving cost (the service)."""

    loops: int = 0
    metered_loops: int = 0
    loops_usd: float = 0.0
    mean_loop_usd: float | None = None
    trigger_noop_runs: int = 0
    mean_trigger_usd: float | None = None
    serving_per_1k: float | None = None
    serving_detail: str = ""


def measured(config: LoopConfig) -> Measured:
    """Read the measured costs of this kind (missing stores or runs leave figures empty)."""
    from tuneloop.costs.cost import loop_runs, trigger_costs

    out = Measured()
    try:
        runs = loop_runs(config)
    except Exception:  # noqa: BLE001  no tracking store yet: nothing measured
        runs = []
    costs = [float(r.data.metrics["cost.total_usd"]) for r in runs if "cost.total_usd" in r.data.metrics]
    out.loops, out.metered_loops, out.loops_usd = len(runs), len(costs), sum(costs)
    out.mean_loop_usd = sum(costs) / len(costs) if costs else None
    n, usd = trigger_costs(config)
    out.trigger_noop_runs, out.mean_trigger_usd = n, (usd / n if n else None)
    out.serving_per_1k, out.serving_detail = _serving_measured(config)
    return out


def _serving_measured(config: LoopConfig) -> tuple[float | None, str]:
    """The service's measured cost per 1k answers of the version that answered most (settings table)."""
    from sqlalchemy.orm import Session

    from tuneloop.data.feedback import FeedbackStore
    from tuneloop.data.ops_tables import SettingRow

    with Session(FeedbackStore(config.feedback_db).engine) as session:
        row = session.get(SettingRow, f"serving_cost:{config.model_name}")
    if row is None:
        return None, ""
    data = json.loads(row.value)
    versions = data.get("versions") or {}
    if not versions:
        return None, ""
    version, figures = max(versions.items(), key=lambda kv: kv[1]["requests"])
    return (
        float(figures["usd_per_1k"]),
        f"the service, v{version}: {figures['requests']:.0f} answers, "
        f"{figures['busy_s']:.1f} s model time at ${figures['worker_usd_per_hour']:g}/h per worker ({data.get('at')})",
    )


def report(
    config: LoopConfig,
    hosted_price_per_1k: float | None = None,
    calls_per_month: float | None = None,
    fine_tune_cost: float | None = None,
    serving_cost_per_1k: float | None = None,
    monthly_loop_cost: float | None = None,
) -> Crossover:
    """The crossover from measured figures wherever a figure is not entered (None); the hosted price and
    call volume default to ``cost.hosted_price_per_1k`` and ``cost.calls_per_month`` (entered, in the config).

    EconomicsError when a figure is invalid, or is neither entered nor measured yet.
    """
    m = measured(config)
    prices = config.cost
    hosted = Figure(
        value=prices.hosted_price_per_1k if hosted_price_per_1k is None else hosted_price_per_1k,
        source="entered",
        detail="--hosted-price-per-1k" if hosted_price_per_1k is not None else "cost.hosted_price_per_1k",
    )
    calls = Figure(
        value=prices.calls_per_month if calls_per_month is None else calls_per_month,
        source="entered",
        detail="--calls-per-month" if calls_per_month is not None else "cost.calls_per_month",
    )
    if fine_tune_cost is not None:
        fine = Figure(value=fine_tune_cost, source="entered", detail="--fine-tune-cost")
    elif m.metered_loops:
        fine = Figure(
            value=m.loops_usd,
            source="measured",
            detail=f"{m.metered_loops} metered loop runs' cost.total_usd "
            f"(compute only{'; ' + str(m.loops - m.metered_loops) + ' unmetered' if m.loops > m.metered_loops else ''})",
        )
    else:
        raise EconomicsError(
            "fine_tune_cost", "no loop run with a measured cost yet: run a loop, or enter --fine-tune-cost"
        )
    if serving_cost_per_1k is not None:
        serving = Figure(value=serving_cost_per_1k, source="entered", detail="--serving-cost-per-1k")
    elif m.serving_per_1k is not None:
        serving = Figure(value=m.serving_per_1k, source="measured", detail=m.serving_detail)
    else:
        raise EconomicsError(
            "serving_cost_per_1k",
            "no measured serving cost yet (the service publishes it once it has "
            "answered): serve some traffic, or enter --serving-cost-per-1k",
        )
    if monthly_loop_cost is not None:
        loop = Figure(value=monthly_loop_cost, source="entered", detail="--monthly-loop-cost")
    elif m.mean_loop_usd is not None:
        idle = (m.mean_trigger_usd or 0.0) * prices.trigger_runs_per_month
        loop = Figure(
            value=m.mean_loop_usd * prices.loops_per_month + idle,
            source="measured",
            detail=f"mean loop ${m.mean_loop_usd:.4f} x {prices.loops_per_month:g} loops a month (entered)"
            + (
                f" + mean no-op trigger ${m.mean_trigger_usd:.6f} x {prices.trigger_runs_per_month:g} runs"
                if m.mean_trigger_usd is not None
                else " (no trigger runs measured yet)"
            ),
        )
    else:
        loop = Figure(value=0.0, source="entered", detail="no loop measured yet and none entered: 0")
    return crossover(fine, hosted, serving, calls, loop)


def log_to_mlflow(c: Crossover, png: Path, run_id: str | None = None, config: LoopConfig | None = None) -> str:
    """Log the report (``economics/crossover.{json,md,png}``, break-even metrics) to ``run_id``, or to a new run
    ``economics-<kind>`` in the kind's experiment; returns the run id."""
    import mlflow

    from tuneloop.registry.tracking import use_experiment, within_run

    if run_id is None:
        if config is not None:
            use_experiment(config)
        with mlflow.start_run(run_name=f"economics-{config.kind if config else 'report'}") as run:
            mlflow.set_tag("tuneloop.stage", "economics")
            run_id = run.info.run_id
    with within_run(run_id):
        mlflow.log_dict(c.model_dump(mode="json"), "economics/crossover.json")
        mlflow.log_text(c.markdown(), "economics/crossover.md")
        with tempfile.TemporaryDirectory() as tmp:  # one name in every run, whatever the local file is called
            shutil.copyfile(png, Path(tmp) / "crossover.png")
            mlflow.log_artifact(str(Path(tmp) / "crossover.png"), "economics")
        metrics = {"economics.saving_per_call": c.saving_per_call, "economics.monthly_saving": c.monthly_saving}
        if c.break_even_months is not None:
            metrics.update(
                {"economics.break_even_months": c.break_even_months, "economics.break_even_calls": c.break_even_calls}
            )
        mlflow.log_metrics(metrics)
    return run_id


def crossover_artifact(config: LoopConfig, loop_run_id: str) -> str:
    """After a loop (call inside the loop flow, once its costs are logged): the crossover from the
    measured figures and the config's hosted price and volume, as a Prefect markdown artifact
    (key ``crossover-<kind>``) and in the loop's MLflow run (PNG included). Returns the markdown.
    Never fails the loop: a figure that is missing yet is said in the artifact instead."""
    from prefect.artifacts import create_markdown_artifact

    try:
        c = report(config)
        png = plot(c, config.work_dir / "economics" / f"crossover-{loop_run_id}.png")
        log_to_mlflow(c, png, loop_run_id)
        text = c.markdown() + "\n(hosted price and volume from `cost.hosted_price_per_1k` and `cost.calls_per_month`)\n"
    except EconomicsError as err:
        text = f"## When fine-tuning pays\n\nNot computed yet: {err}\n"
    create_markdown_artifact(key=f"crossover-{config.kind}", markdown=text, description="tuneloop crossover report")
    return text


def bench_cost_per_1k(kind_results: dict, prices, cores: int | None = None, gpus: int = 0) -> dict:
    """For ``bench/serve.py``: USD per 1,000 answers of the service at each measured load level, priced
    at the whole machine (``cost.instance_hour``, else its cores x cpu_hour + GPUs x gpu_hour)."""
    from tuneloop.costs.cost import cost_per_1k_from_throughput, machine_price_per_hour

    price = machine_price_per_hour(prices, cores, gpus)
    out = {"machine_usd_per_hour": price, "levels": []}
    for level in kind_results.get("levels", []):
        rps = level["service"]["throughput_rps"]
        out["levels"].append(
            {"clients": level["clients"], "throughput_rps": rps, "usd_per_1k": cost_per_1k_from_throughput(rps, price)}
        )
    best = [lvl["usd_per_1k"] for lvl in out["levels"] if lvl["usd_per_1k"] is not None]
    out["usd_per_1k_at_best_throughput"] = min(best) if best else None
    return out
