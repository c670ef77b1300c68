"""How a loop searches and trains: the search space, its budget, the objectives, rehearsal, and the
classification recipe's priors."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

FIRST_TRIAL_NAMES = {
    "rank",
    "lr",
    "alpha_ratio",
    "dropout",
    "target_modules",
    "replay_ratio",
    "objective",
    "dpo_beta",
    "kto_beta",
}  # the parameters tuneloop.search.study.suggest draws


class TuneConfig(BaseModel):
    """The LoRA hyper-parameter search: its space, its budget and how its trials run.

    A list-valued option with one entry is fixed; with several it is searched (categorical).
    The study's identity covers the space and the training settings, never the budget or the
    execution fields (``STUDY_EXCLUDES``), so a larger budget or more workers continue one study.

    For classification, the defaults below of ranks, lr_min, lr_max, first_trial, epochs, batch_size,
    max_length, validation_examples and objectives give way to the router recipe's priors
    (``CLASSIFICATION_TUNE``: rank 8, 1e-3 to 4e-3 from 2e-3, 3 epochs, batch 32, 64 tokens, 500, sft) wherever
    they are not set.
    """

    n_trials: int | None = Field(
        None,
        ge=1,
        description="Finished (complete or pruned) trials the study should hold. None: as many as "
        "timeout_s fits when it is set (at most 100, MAX_TRIALS), else 2 (DEFAULT_TRIALS: the known-good first trial and "
        "one more).",
    )
    timeout_s: float | None = Field(
        None,
        gt=0,
        description="The search's time budget in seconds of this run: a trial starts only while the time "
        "left fits the mean duration of the completed ones (the first always starts), so the budget buys whole trials.",
    )
    ranks: list[int] = Field([4, 8, 16], min_length=1, description="LoRA ranks to choose from.")
    lr_min: float = Field(5e-4, gt=0, description="Lower bound of the log-uniform learning rate.")
    lr_max: float = Field(
        2e-3,
        gt=0,
        description="Upper bound of the log-uniform learning rate. 2e-3, not higher: "
        "with rehearsal rows on the KL term alone the corrections carry all the cross-entropy, and "
        "higher rates forget more of what the base knew.",
    )
    adapter_layers: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Share of the base's transformer layers, from the top, that get adapters; the "
        "backward pass stops below them. None: the kind's default, 0.5 for generation (a shorter backward pass, "
        "and the demo's gate results as good as with every layer: docs/measurements.md), 1 (every layer) for "
        "classification.",
    )
    alpha_ratios: list[float] = Field(
        [2.0], min_length=1, description="LoRA alpha as a multiple of the rank (alpha = ratio x rank)."
    )
    dropouts: list[float] = Field([0.05], min_length=1, description="LoRA dropout values to choose from.")
    target_modules: list[Literal["qv", "attention", "mlp", "all-linear"]] | None = Field(
        None,
        description="Module sets to choose from: qv (query/value), attention (+ key/output), mlp (the feed-forward "
        "blocks), all-linear (attention + mlp); None: the kind's default (mlp for generation, attention for classification).",
    )
    replay_ratios: list[float] = Field(
        [4.0],
        min_length=1,
        description="Generation rehearsal: replay pairs (the base's own answers to general prompts, "
        "short questions first) per training pair, to choose from (several: searched). 0 trains on the feedback alone. "
        "4 with 8 epochs forgot least on the generation benchmark's sets (docs/benchmarks/generation.md).",
    )
    replay_kl: float = Field(
        8.0,
        ge=0,
        description="Generation rehearsal: weight of a KL term to the frozen base over the rehearsal answers' "
        "tokens, which then replaces their cross-entropy (the base's whole next-token distribution, not its greedy "
        "answer, often wrong on short questions; its top 64 tokens, computed once per search: tuneloop/modeling/teacher.py). 0: "
        "rehearsal answers are trained on like corrections.",
    )
    decline_share: float = Field(
        0.25,
        ge=0,
        description="Generation: pairs declining a request for someone else's personal data, alone or "
        "appended to a training question, per training pair (at most 2 per shipped request): a model tuned on "
        "answers holding numbers otherwise makes up phone numbers when asked for one. 0: none.",
    )
    framings: int = Field(
        0,
        ge=0,
        le=9,
        description="Generation: other framings of each training question (a greeting, a thanks, a "
        "prefix, another casing: tuneloop/data/framings.py) trained with the same answer, so the model answers from the "
        "question's content rather than its wording. 0: the questions as users asked them.",
    )
    objectives: list[Literal["sft", "dpo", "kto"]] = Field(
        ["sft", "kto"],
        min_length=1,
        description="Training objectives to choose from (several: searched, each trial "
        "one): sft (the supervised pairs: corrections and liked answers), dpo (sft plus DPO on preference pairs, a "
        "correction over the answer it corrected: the RPO mix), kto (sft plus KTO on unpaired thumbs, bare thumbs-down "
        "included); tuneloop/modeling/objectives.py. One the data cannot feed (dpo without corrections, kto without "
        "thumbs) is left out of the search with a logged reason. Default sft and kto: the first trial is the plain "
        "fine-tune, later ones may learn from the thumbs nothing else uses, and the pruner and the gate judge them "
        "like any trial (dpo adds nothing sft does not already learn from a correction: "
        "docs/benchmarks/preferences.md). Classification: sft.",
    )
    dpo_beta_min: float = Field(
        0.05, gt=0, description="Lower bound of DPO's beta (log-uniform; how far from the base)."
    )
    dpo_beta_max: float = Field(0.5, gt=0, description="Upper bound of DPO's beta.")
    kto_beta_min: float = Field(0.05, gt=0, description="Lower bound of KTO's beta (log-uniform).")
    kto_beta_max: float = Field(0.5, gt=0, description="Upper bound of KTO's beta.")
    preference_weight: float = Field(
        1.0, gt=0, description="Weight of the preference loss (dpo, kto) beside the supervised loss in each step."
    )
    preference_batch_size: int = Field(4, ge=1, description="Preference pairs (dpo) or rated answers (kto) per step.")
    first_trial: dict[str, int | float | str] | None = Field(
        {"rank": 16, "lr": 1.5e-3},
        description="Enqueued as trial 0 (a known-good start for a tiny budget); None to skip. Keys: the search's "
        "parameters (rank, lr, alpha_ratio, dropout, target_modules, replay_ratio, objective, and beta for the objective's "
        "beta); any other is refused. Rank 16 at 1.5e-3 with 8 epochs learned the most never-imported phrasings on the "
        "generation benchmark's sets.",
    )
    startup_trials: int = Field(4, ge=1, description="Random trials before TPE starts modelling the space.")
    pruner: Literal["successive_halving", "hyperband", "none"] = Field(
        "successive_halving", description="Stops trials whose intermediate held-out scores trail the others'."
    )
    reduction_factor: int = Field(
        4,
        ge=2,
        description="Pruner keeps the top 1/reduction_factor of trials at each rung. 4, not 3: a search's "
        "later trials are mostly good ones (TPE has found the region), and with 3 too many of them run to the end.",
    )
    first_rung: float = Field(
        1 / 9,
        gt=0,
        lt=1,
        description="Share of a trial's steps at which the pruner first compares trials (just past "
        "the 1/10 warm-up); later rungs lie reduction_factor times further on while half the trial is still ahead "
        "(default: rungs at 1/9 and 4/9 of the steps).",
    )
    epochs: int = Field(
        8,
        ge=1,
        description="Passes over the training pairs (a trial's, and the final training's). 8: on every set of "
        "the generation benchmark, 8 passes with rehearsal 4 and KL 8 learned more and forgot less than 3 (at about "
        "1.7x the minutes; `tuneloop demo` runs the faster DEMO_TUNE). Classification: 3.",
    )
    trial_steps: int | None = Field(
        None,
        ge=1,
        description="A trial's budget in optimiser steps (None: `epochs` full passes). With a budget, a "
        "trial sees the first trial_steps x batch_size examples of the shuffled split, the pruner's rungs grow that "
        "share, and the winner's configuration is then trained on the full split for `epochs`.",
    )
    min_trial_coverage: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Refuse a trial budget that shows a trial less than this share of one pass over "
        "the train split: rankings on a sliver of the data do not carry over to the full training.",
    )
    batch_size: int = Field(8, ge=1)
    grad_accum_steps: int = Field(
        1, ge=1, description="Micro-batches per optimiser step (effective batch = batch_size x this)."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, ~30 % more time."
    )
    length_grouping: bool = Field(
        True, description="Batch examples of similar length together (less padding), shuffled in windows."
    )
    head_lr: float | None = Field(
        None,
        gt=0,
        description="Classification: learning rate of the new head (None: the trial's lr). A head that "
        "starts from random weights wants larger steps than the adapter.",
    )
    max_length: int = Field(96, ge=8, description="Tokens per training example (prompt + answer).")
    evals_per_trial: int = Field(
        1,
        ge=1,
        description="Evenly spaced validation scores per trial, the last at its end (its objective), besides "
        "those at the pruner's rungs. Each answers validation_examples prompts (seconds each on a CPU); the "
        "loss is logged every step. Raise it for finer validation curves in MLflow.",
    )
    gate_sample: int = Field(
        48,
        ge=0,
        description="Generation: regression and adversarial items each trial answers so the search can keep "
        "within the gate's tolerances (Optuna constraints); 0 turns that off.",
    )
    validation_examples: int = Field(
        64,
        ge=1,
        description="Validation examples a trial is scored on (a fixed sample of the validation split, never "
        "the gate's held-out test).",
    )
    trunk_cache_mb: float = Field(
        1024,
        ge=0,
        description="Memory (on the training device) for each training row's hidden states below the "
        "adapters, kept from its first step for its next ones and the other trials' (tuneloop/modeling/fast/trunk.py): the same "
        "training with the frozen layers run once per row (faster steps: python -m bench step). A train "
        "set whose states do not fit runs every layer at every step, as with 0.",
    )
    train_pooler: bool = Field(
        True,
        description="Classification: train the layer between encoder and head (BERT's pooler, DistilBERT's "
        "pre_classifier) in full beside the head (peft modules_to_save), not frozen: all-MiniLM-L6-v2's pooler was "
        "never trained (docs/benchmarks/classification.md).",
    )
    retrain_with_validation: bool = Field(
        True,
        description="Classification: the winner's final training adds the validation split's retraining half "
        "(by prompt hash) to the train split; the other half stays unseen and sets the out-of-scope threshold.",
    )
    checkpoint_every: int | None = Field(None, ge=1, description="Steps between checkpoints; None: four per trial.")
    n_workers: int = Field(
        1,
        ge=1,
        description="Trials run at once, each in its own process (Prefect process-pool task runner) with its "
        "own random state, and on its own GPU when there are several.",
    )
    worker_deployment: str | None = Field(
        None,
        description="Run the search workers as flow runs of this Prefect deployment ('flow/deployment', e.g. "
        "'search-worker/search-worker' from prefect.yaml) on its work pool, n_workers of them, wherever its workers "
        "are (one per machine or GPU); needs an Optuna database and MLflow server every worker reaches. None: here.",
    )
    heartbeat_interval_s: int = Field(10, ge=1, description="How often a running trial proves it is alive.")
    grace_period_s: int = Field(
        60, ge=1, description="A trial silent this long is failed and retried from its checkpoint."
    )
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
        "n_trials",
        "timeout_s",
        "n_workers",
        "heartbeat_interval_s",
        "grace_period_s",
        "max_retry",
        "checkpoint_every",
        "min_trial_coverage",
        "gate_sample",
        "worker_deployment",
        "trunk_cache_mb",
    }

    @model_validator(mode="after")
    def _first_trial_in_space(self) -> TuneConfig:
        # Optuna would only fail once the queued trial runs, deep inside a search
        first = self._first_trial_names(dict(self.first_trial or {}))
        if first != (self.first_trial or {}):  # assigning marks the field set: only a user's own first trial changes
            self.first_trial = first
        if "first_trial" not in self.model_fields_set and first:
            self._default_first_trial_into_space(first)
        if "rank" in first and first["rank"] not in self.ranks:
            raise ValueError(f"first_trial rank {first['rank']} is not one of ranks {self.ranks}")
        if "lr" in first and not self.lr_min <= float(first["lr"]) <= self.lr_max:
            raise ValueError(f"first_trial lr {first['lr']} is outside [{self.lr_min}, {self.lr_max}]")
        if self.lr_min > self.lr_max:
            raise ValueError("lr_min must not exceed lr_max")
        for name in ("dpo", "kto"):
            if getattr(self, f"{name}_beta_min") > getattr(self, f"{name}_beta_max"):
                raise ValueError(f"{name}_beta_min must not exceed {name}_beta_max")
        if len(set(self.objectives)) < len(self.objectives):  # a repeat would weigh the draw (assigning marks the
            self.objectives = list(dict.fromkeys(self.objectives))  # field set: only a user's own list changes)
        return self

    def _default_first_trial_into_space(self, first: dict) -> None:
        """The default start moved into a space the user narrowed, so narrowing ranks or rates never needs a
        first_trial of one's own. Left unmarked as set, so a kind's priors still replace it."""
        moved = start_in_space(first, self.ranks, self.lr_min, self.lr_max)
        if moved != first:
            self.first_trial = moved
            first.update(moved)
            self.model_fields_set.discard("first_trial")

    def _first_trial_names(self, first: dict) -> dict:
        """The first trial in the search's own parameter names: ``beta`` is the beta of its objective
        (``kto_beta``, ``dpo_beta``); a name the search does not have is refused, never silently unused."""
        objective = first.get("objective", self.objectives[0] if len(self.objectives) == 1 else None)
        if objective is not None and objective not in self.objectives:
            raise ValueError(f"first_trial objective {objective!r} is not one of objectives {self.objectives}")
        if "beta" in first:
            if objective not in ("dpo", "kto"):
                raise ValueError('first_trial beta needs its objective: add "objective": "dpo" or "kto"')
            first[f"{objective}_beta"] = first.pop("beta")
        unknown = sorted(set(first) - FIRST_TRIAL_NAMES)
        if unknown:
            raise ValueError(
                f"first_trial has {', '.join(unknown)}, which the search does not set; it sets "
                f"{', '.join(sorted(FIRST_TRIAL_NAMES))} (beta: the objective's)"
            )
        return first


def start_in_space(first: dict, ranks: list[int], lr_min: float, lr_max: float) -> dict:
    """A default first trial moved into a search space: the rank nearest its own (the larger on a tie), the
    rate clamped to the bounds; a user's own first trial is checked instead, never moved."""
    moved = dict(first)
    if "rank" in moved and moved["rank"] not in ranks:
        moved["rank"] = min(ranks, key=lambda r: (abs(r - int(first["rank"])), -r))
    if "lr" in moved and lr_min <= lr_max:
        moved["lr"] = min(max(float(moved["lr"]), lr_min), lr_max)
    return moved


# The classification recipe's priors (docs/benchmarks/classification.md; BANKING77, MiniLM-L6): LoRA rank 8 on
# attention (query, key, value, output) with the pooler and head in full (tune.train_pooler), a rate around ten times full
# fine-tuning's (2e-3 against 1e-4 to 2e-4), short utterances batched 32 by length, 3 epochs. A user's
# setting of any of these fields wins over the prior.
CLASSIFICATION_LR = 2e-3
CLASSIFICATION_TUNE: dict = {
    "ranks": [8],
    "lr_min": 1e-3,
    "lr_max": 4e-3,
    "epochs": 3,
    "batch_size": 32,
    "max_length": 64,
    "validation_examples": 500,
    "objectives": ["sft"],
}


# The demo's fast profile (`tuneloop demo --kind generation`): the settings the five-minute showcase was tuned
# with, applied only to fields the user left unset. A user's loop gets the defaults above, chosen for quality on
# the generation benchmark's sets (docs/benchmarks/generation.md), which take about 1.7x as long.
DEMO_TUNE: dict = {"epochs": 3, "replay_ratios": [2.5], "replay_kl": 4.0, "first_trial": {"rank": 16, "lr": 9e-4}}


def with_priors(tune: TuneConfig, priors: dict) -> TuneConfig:
    """``tune`` with ``priors`` in every field its user left unset (a user's own setting always wins)."""
    unset = {k: v for k, v in priors.items() if k not in tune.model_fields_set}
    if not unset:
        return tune
    return TuneConfig(**{**tune.model_dump(include=tune.model_fields_set), **unset})
