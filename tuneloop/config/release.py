"""When a challenger may replace the champion, and how it is rolled out and watched."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class GateConfig(BaseModel):
    """When a challenger may replace the champion."""

    margin: float = Field(0.0, description="Held-out mean must improve by more than this.")
    adversarial_tolerance: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Non-inferiority margin of the whole adversarial suite. A suite must hold "
        "ceil(-ln(0.025)/tolerance) items for the check to conclude (74 at 0.05), else 'not enough evidence'.",
    )
    group_tolerance: float = Field(
        0.10,
        gt=0,
        le=1,
        description="Non-inferiority margin of each judged group on its own (injection, extraction, "
        "out-of-scope): a gain elsewhere cannot hide failing one of them (37 items needed at 0.10).",
    )
    regression_tolerance: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Non-inferiority margin on the regression items the baseline knows (forgetting). "
        "Set it from the churn of two retrains that differ only in seed (`eval_suites.stats.aa_tolerance`).",
    )
    regression_max_new_tokens: int = Field(16, ge=1, description="Answer length on the regression suite (short facts).")
    heldout_metric: Literal["fact_accuracy", "token_f1", "exact_match"] = Field(
        "fact_accuracy",
        description="Generation: what a held-out answer scores: all of the reference's facts "
        "(numbers, names) present, token F1 with it, or an exact match.",
    )
    regression_floor: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A regression item counts only where the baseline scores at least this: the "
        "forgetting check covers what the champion already answers well, not what it never knew.",
    )
    bootstrap_samples: int = Field(2000, ge=100, description="Paired bootstrap resamples for the CI.")
    max_heldout_examples: int = Field(
        2000,
        ge=10,
        description="Held-out examples the gate scores (a fixed sample when the split is larger): the CI "
        "it reports says how much that sample can tell.",
    )
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Two-sided confidence of the CI.")


class DeployConfig(BaseModel):
    """How a registered challenger goes live."""

    canary_percent: int = Field(10, ge=0, le=100, description="Sticky share of users sent to the challenger.")
    ramp: list[int] = Field([10, 50, 100], description="Challenger shares the rollout flow steps through.")
    step_wait_s: float = Field(900, gt=0, description="Time at each share before the next step is judged.")
    max_wait_s: float = Field(6 * 3600, gt=0, description="Give up (hold the share) if a step lacks samples this long.")
    min_samples: int = Field(30, ge=1, description="Feedback records per version before rates are compared.")
    worse_tolerance: float = Field(
        0.02, ge=0, description="Challenger's negative rate may exceed the champion's by this and still ramp."
    )
    guard_alpha: float = Field(0.01, gt=0, lt=0.5, description="One-sided significance for the live guard's rollback.")
    guard_interval_s: float = Field(10, gt=0, description="How often the service's live guard checks the rates.")
    promote_at_full: bool = Field(True, description="Promote the challenger once it serves 100 % healthily.")
    shadow: bool = Field(False, description="Mirror champion traffic to the challenger without returning its answers.")
    max_batch_size: int | None = Field(
        None,
        ge=1,
        description="Most requests the service answers in one model call (adaptive batching); None: 32 on "
        "the CPU, 128 on a GPU, where a bigger batch costs almost nothing more.",
    )
    serve_workers: int = Field(
        0,
        ge=0,
        description="Service worker processes, each holding its own base model and adapters and splitting "
        "the CPU cores between them; 0: one per core.",
    )
    guard_mixture_scale: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Live guard: the rise in the thumbs-down rate its sequential test is tuned to catch "
        "(the normal mixture's scale, tau): it finds a rise of about this size soonest, and any rise eventually.",
    )
    guard_segments: int = Field(
        8,
        ge=0,
        le=100,
        description="Live guard: segments (feedback `segment`) tested on their own besides the overall "
        "rate, the first ones to reach min_samples on both sides; each gets guard_alpha x segment_alpha_share / this.",
    )
    segment_alpha_share: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Live guard: share of guard_alpha spent on the per-segment tests (the rest on the "
        "overall rate), so that testing many segments cannot raise the false-rollback rate above guard_alpha.",
    )
    max_segment_labels: int = Field(
        20,
        ge=1,
        le=1000,
        description="/metrics: distinct request segments labelled per worker; later ones count as "
        "'other' (segments are client-supplied: unbounded label values would grow Prometheus without limit).",
    )
    registry_timeout_s: int = Field(
        3,
        ge=1,
        le=120,
        description="The service's wait for one MLflow call (MLFLOW_HTTP_REQUEST_TIMEOUT in its "
        "processes): requests and admin calls never wait on a registry that is down for longer than this.",
    )
    registry_retries: int = Field(
        1,
        ge=0,
        le=10,
        description="The service's retries of a failed MLflow call (MLFLOW_HTTP_REQUEST_MAX_RETRIES; "
        "MLflow's own default, 7 with backoff, waits about 4 minutes).",
    )
    failed_version_retry_s: float = Field(
        60, gt=0, description="How long the service waits before trying again to load a version that failed to load."
    )


class DriftConfig(BaseModel):
    """Input drift: live inputs against the served version's training prompts (``tuneloop/release/drift.py``)."""

    enabled: bool = Field(True, description="The service tests input windows when the served version has a reference.")
    window: int = Field(
        200,
        ge=10,
        le=10_000,
        description="Inputs per test window (disjoint windows, so their p-values are independent under no drift).",
    )
    max_wait_s: float = Field(
        3600, gt=0, description="Test a partial window after this long if it holds min_window inputs."
    )
    min_window: int = Field(50, ge=10, description="Fewest inputs a window is tested on.")
    check_interval_s: float = Field(
        10, gt=0, description="How often the service's drift thread looks for a full window."
    )
    alpha: float = Field(
        0.01, gt=0, lt=0.5, description="A window has drifted when its permutation p-value is at most this."
    )
    permutations: int = Field(
        200, ge=50, le=10_000, description="Permutations of the MMD test (p-values >= 1/(1+this))."
    )
    reference_size: int = Field(
        500, ge=20, le=20_000, description="Training prompts (a seeded sample) embedded as the reference."
    )
    consecutive: int = Field(
        3,
        ge=1,
        le=100,
        description="Trigger: this many drifted windows in a row since the last "
        "loop make drift a reason to run (one window at alpha would fire by chance).",
    )
    min_interval_minutes: float = Field(
        360, ge=0, description="Trigger: at most one drift-started loop per this many minutes."
    )
    min_new_corrections: int = Field(
        10,
        ge=0,
        description="Trigger: usable new corrections a drift-started loop needs "
        "(with none, a loop would retrain on the same data).",
    )
