"""What a loop and the service may spend, accept and keep: costs, input bounds, retention."""

from __future__ import annotations

from pydantic import BaseModel, Field


class CostConfig(BaseModel):
    """Prices that turn measured use into money (``tuneloop/costs/cost.py``), and the hosted alternative the
    crossover report compares with (``tuneloop/costs/economics.py``). Defaults are typical on-demand cloud
    list prices; set your own. A negative or implausibly large figure is refused, naming the field."""

    model_config = {"validate_assignment": True}

    cpu_hour: float = Field(
        0.04,
        ge=0,
        le=10,
        allow_inf_nan=False,
        description="USD per CPU core-hour: measured user+sys CPU seconds of the loop's processes are priced at this.",
    )
    gpu_hour: float = Field(
        2.5,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="USD per GPU-hour: wall seconds x GPUs in use while CUDA is in use are priced at this.",
    )
    storage_gb_month: float = Field(
        0.023,
        ge=0,
        le=10,
        allow_inf_nan=False,
        description="USD per GB-month of stored "
        "artifacts (datasets, adapters, checkpoints, MLflow artifacts a loop writes).",
    )
    storage_months: float = Field(
        1.0,
        ge=0,
        le=120,
        allow_inf_nan=False,
        description="Months of storage a loop's bytes "
        "are charged for in its cost (how long its artifacts are kept, for the estimate).",
    )
    instance_hour: float | None = Field(
        None,
        ge=0,
        le=1000,
        allow_inf_nan=False,
        description="USD per hour of one serving "
        "worker's share of the instance; None: its cores x cpu_hour (+ its GPU x gpu_hour).",
    )
    hosted_price_per_1k: float = Field(
        5.0,
        gt=0,
        le=10_000,
        allow_inf_nan=False,
        description="Crossover report: USD per 1,000 calls of the hosted model the fine-tuned one replaces.",
    )
    calls_per_month: int = Field(200_000, gt=0, le=10**12, description="Crossover report: calls served per month.")
    loops_per_month: float = Field(
        4,
        ge=0,
        le=10_000,
        allow_inf_nan=False,
        description="Crossover report: loops run per month (each costs the measured mean loop cost).",
    )
    trigger_runs_per_month: float = Field(
        2880,
        ge=0,
        le=10**6,
        allow_inf_nan=False,
        description="Crossover report: "
        "scheduled trigger runs per month (every 15 minutes: 2880), each costing the "
        "measured no-op trigger cost.",
    )


class LimitsConfig(BaseModel):
    """What one client may send the service: bounded so that no request, body or user can exhaust it."""

    max_predict_requests: int = Field(128, ge=1, le=100_000, description="Requests in one /predict call; more: 413.")
    max_body_bytes: int = Field(
        2 * 1024 * 1024,
        ge=1024,
        description="Bytes of any request body; a larger one gets 413 as soon as its "
        "Content-Length says so or its streamed bytes pass this, before the body is parsed.",
    )
    feedback_per_user: int = Field(
        60,
        ge=1,
        description="Feedback records one user id may send per feedback_window_s; more: 429 (one user must "
        "not be able to flood the training set or move the live guard alone).",
    )
    feedback_window_s: float = Field(3600, gt=0, description="The window of feedback_per_user, in seconds.")


class RetentionConfig(BaseModel):
    """How long operational records are kept; the trigger flow deletes older ones (None: kept for good)."""

    shadow_days: float | None = Field(30, gt=0, description="Shadow log rows (scrubbed live and shadow answers).")
    drift_days: float | None = Field(90, gt=0, description="Drift window results.")
    events_days: float | None = Field(365, gt=0, description="Rollout events (promotions, canaries, rollbacks).")
