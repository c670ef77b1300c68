"""One trial of the search, top to bottom: build the adapter, train it within its budget, report
validation scores to the pruner, checkpoint, and leave the finished adapter in the artifact store.

A trial killed mid-way (SIGKILL, a lost spot machine) is retried by whichever worker claims it next,
on this machine or another: it reopens its MLflow run, fetches its last checkpoint from the artifact
store when the machine has none, and continues from that step with its original parameters.
``train_final`` is the same for the winner's configuration on the whole train split, when the
trials saw only part of it.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import optuna
import torch

from tuneloop import progress
from tuneloop.config import LoopConfig
from tuneloop.data.datasets import DatasetRef, Example, calibration_half, load_examples, load_labels
from tuneloop.data.framings import framed_pairs
from tuneloop.data.preference import load_pairs, load_unpaired
from tuneloop.eval_suites.scoring import score
from tuneloop.eval_suites.suites import heldout_suite
from tuneloop.flows.trial_gate import constraints, gate_drops
from tuneloop.modeling import teacher
from tuneloop.modeling.adapters import write_meta
from tuneloop.modeling.batches import encode
from tuneloop.modeling.declining import declining_pairs
from tuneloop.modeling.fast import fast_paths
from tuneloop.modeling.inference import predict
from tuneloop.modeling.models import (
    DEFAULT_ADAPTER_LAYERS,
    BaseModelInfo,
    base_of,
    cache_dir,
    full_modules,
    load_base,
    load_tokenizer,
    lora_targets,
    resolve_device,
    resolve_dtype,
    save_labels,
)
from tuneloop.modeling.objectives import PreferenceTerm, pair_rows, unpaired_rows
from tuneloop.modeling.prompting import Prompting
from tuneloop.modeling.replay import replay_pairs
from tuneloop.modeling.training import Pruned, TrainResult, add_adapter, schedule_length, top_layers, train
from tuneloop.search.study import origin, rung_steps, suggest, usable_objectives
from tuneloop.search.tracking import TrialRun, peak_memory, trial_label

_score_lock = threading.Lock()  # evaluate's metric modules keep per-call state: one scorer at a time


@dataclass
class TrialData:
    """What every trial of one search needs, loaded once per process."""

    base: BaseModelInfo
    tokenizer: object
    encoded: list[dict]
    validation: list[Example]
    labels: list[str]
    prompting: Prompting
    pairs: list[dict]  # preference pairs of the train split, encoded (dpo)
    unpaired: list[dict]  # rated answers of the train split, encoded (kto)


_loaded: dict[tuple, TrialData] = {}


def prompting_of(config: LoopConfig) -> Prompting:
    return Prompting(config.system_prompt, config.prompt_template)


def trial_data(config: LoopConfig, ref: DatasetRef, replay_ratio: float = 0.0) -> TrialData:
    """The encoded train split with its rehearsal pairs, and the validation sample (cached per
    process: trials reuse them)."""
    base, prompting = base_of(config), prompting_of(config)
    key = (
        ref.dataset_hash,
        base.id,
        config.tune.max_length,
        prompting,
        config.tune.validation_examples,
        replay_ratio,
        config.tune.decline_share,
        config.tune.framings,
        tuple(config.tune.objectives),
    )
    if key not in _loaded:
        tokenizer = load_tokenizer(base)
        labels = load_labels(ref, config.work_dir)
        pairs = [(e.prompt, e.target) for e in load_examples(ref, "train", config.work_dir)]
        replay = replay_pairs(config, base, prompting, round(replay_ratio * len(pairs)), [p for p, _ in pairs])
        if config.kind == "generation":
            pairs += framed_pairs(pairs, config.tune.framings) + declining_pairs(
                pairs, config.tune.decline_share, config.tune.seed
            )
        encoded = encode(config.kind, tokenizer, pairs + replay, labels, config.tune.max_length, prompting)
        for example in encoded[len(pairs) :]:
            example["rehearse"] = True  # held to the base by the KL term (tune.replay_kl)
        wants = set(usable_objectives(config, ref))
        pref_pairs = (
            pair_rows(tokenizer, load_pairs(ref, "train", config.work_dir), config.tune.max_length, prompting)
            if "dpo" in wants
            else []
        )
        thumbs = (
            unpaired_rows(tokenizer, load_unpaired(ref, "train", config.work_dir), config.tune.max_length, prompting)
            if "kto" in wants
            else []
        )
        _loaded.clear()  # one dataset at a time per process
        _loaded[key] = TrialData(
            base,
            tokenizer,
            encoded,
            load_examples(ref, "validation", config.work_dir, limit=config.tune.validation_examples),
            labels,
            prompting,
            pref_pairs,
            thumbs,
        )
    return _loaded[key]


def retrains_with_validation(config: LoopConfig) -> bool:
    return config.kind == "classification" and config.tune.retrain_with_validation


def with_validation(config: LoopConfig, ref: DatasetRef, data: TrialData) -> TrialData:
    """The final training's data: the train split plus the validation split's retraining half; scored on
    the calibration half, which it never sees (``tuneloop.data.datasets.calibration_half``)."""
    validation = load_examples(ref, "validation", config.work_dir)
    extra = [(e.prompt, e.target) for e in validation if not calibration_half(e)]
    encoded = data.encoded + encode(config.kind, data.tokenizer, extra, data.labels, config.tune.max_length)
    scored = [e for e in data.validation if calibration_half(e)] or data.validation
    return replace(data, encoded=encoded, validation=scored)


def schedule(config: LoopConfig, n_train: int, full: bool = False, n_pairs: int | None = None) -> tuple[int, list[int]]:
    """Optimiser steps of a trial over its ``n_pairs`` training pairs (the split plus its rehearsal
    pairs; its budget, or ``full``: the final training's) and the steps after which its validation
    score is reported: the pruner's rungs, at the same shares of every trial's own schedule (1/9 and
    4/9 by default: past the warm-up whatever the replay ratio), and evenly spaced ones for the
    curves, less those a rung already stands in for."""
    tune = config.tune
    budget = None if full else tune.trial_steps
    total = schedule_length(n_pairs or n_train, tune.batch_size, tune.epochs, budget, tune.grad_accum_steps)
    nominal = schedule_length(n_train, tune.batch_size, tune.epochs, budget, tune.grad_accum_steps)
    rungs = [] if full else [round(r * total / nominal) for r in rung_steps(tune, nominal)]
    spacing = total / tune.evals_per_trial
    evenly = {max(1, round(spacing * (i + 1))) for i in range(tune.evals_per_trial)}
    evenly = {s for s in evenly if s == total or all(abs(s - r) > spacing / 2 for r in rungs)}
    return total, sorted(evenly | set(rungs))


def pruner_step(config: LoopConfig, n_train: int, n_pairs: int, step: int) -> int:
    """``step`` of a trial over ``n_pairs`` pairs as the pruner counts: in steps of the split alone
    (the rungs it was made with, ``make_pruner``), so trials with different replay ratios are compared
    at the same share of their training."""
    total, nominal = schedule(config, n_train, n_pairs=n_pairs)[0], schedule(config, n_train)[0]
    return round(step * nominal / total)


def validation_score(config: LoopConfig, model, data: TrialData) -> float:
    """The trial's score on its fixed validation sample (the gate's held-out split stays unseen)."""
    items = heldout_suite(data.validation)
    outputs, confidences = predict(
        config.kind, model, data.tokenizer, [i.input for i in items], data.labels, config.max_new_tokens, data.prompting
    )
    with _score_lock:
        return score(config.kind, items, outputs, confidences, data.labels)[1]["score"]


def build_model(config: LoopConfig, data: TrialData, params: dict, device: torch.device):
    """The base on ``device`` with a fresh adapter for ``params``."""
    dtype = resolve_dtype(config.precision, device)
    base = load_base(
        data.base, config.kind, data.labels or None, device=device, dtype=dtype, quantization=config.quantization
    )
    if config.quantization != "none":
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=config.tune.gradient_checkpointing)
    elif config.tune.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    model = add_adapter(
        base,
        config.kind,
        params["rank"],
        config.tune.seed,
        targets=lora_targets(base, params["target_modules"]),
        alpha=params["alpha_ratio"] * params["rank"],
        dropout=params["dropout"],
        layers=top_layers(base, config.tune.adapter_layers or DEFAULT_ADAPTER_LAYERS[config.kind]),
        full_modules=full_modules(base, config.kind) if config.tune.train_pooler else None,
    )
    return model


def preference_term(config: LoopConfig, data: TrialData, params: dict) -> PreferenceTerm | None:
    """The trial's preference loss (``tuneloop.modeling.objectives``); None for plain supervised training."""
    objective = params.get("objective", "sft")
    if objective == "sft":
        return None
    tune = config.tune
    return PreferenceTerm(
        objective,
        data.pairs if objective == "dpo" else data.unpaired,
        beta=params["beta"],
        weight=tune.preference_weight,
        batch_size=tune.preference_batch_size,
        seed=tune.seed,
        pad_id=data.tokenizer.pad_token_id,
        max_length=tune.max_length,
    )


def train_candidate(
    config: LoopConfig,
    ref: DatasetRef,
    params: dict,
    run: TrialRun,
    checkpoint_dir: Path,
    device: torch.device,
    full: bool,
    trial: optuna.Trial | None = None,
) -> float | None:
    """Train one configuration with checkpoints, reporting validation scores (to ``trial``'s pruner
    when there is one); the final score, or None when pruned. Logs its figures on ``run``."""
    model, data = prepare_candidate(config, ref, params, run, device, full)
    total, eval_steps = schedule(config, ref.sizes["train"], full, n_pairs=len(data.encoded))
    run.metrics(
        {
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_steps": total,
            "train_examples": len(data.encoded),
        }
    )
    run.fetch_checkpoint(checkpoint_dir)  # from the artifact store when this machine has none
    reporter = TrainingReport(
        config, ref, model, data, run, trial, total, every=config.tune.checkpoint_every or max(1, total // 4)
    )
    extra = preference_term(config, data, params)
    cpu_began = time.process_time()  # the process's CPU time (every thread's), beside the wall time train() keeps
    with peak_memory(device) as memory:
        result = train_adapter(config, model, data, params, checkpoint_dir, full, eval_steps, reporter, extra)
        final = None if result.pruned else reporter.scores.get(total)
        if final is None and not result.pruned:
            final = validation_score(config, model, data)
    reporter.record_steps(result.steps_run)
    run.metrics(training_metrics(result, time.process_time() - cpu_began, memory, extra), step=result.resumed_from_step)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    run.drop_checkpoint()
    if final is None:
        return None
    if trial is not None and config.tune.gate_sample:  # what the gate will check, so the search can keep within it
        constrain_to_gate(config, ref, model, data, trial, run, total)
    save_adapter(config, model, data, adapter_dir_of(checkpoint_dir))
    run.metrics({"final_validation_score": final}, step=total)
    return final


def prepare_candidate(
    config: LoopConfig, ref: DatasetRef, params: dict, run: TrialRun, device: torch.device, full: bool
) -> tuple[object, TrialData]:
    """The training's model (a fresh adapter for ``params`` on ``device``) and its data (with the
    validation split's retraining half for a ``full`` final training that retrains with it); the fast
    paths it runs tagged on ``run``."""
    fast_paths.configure(config.fast_paths)
    data = trial_data(config, ref, params.get("replay_ratio", 0.0))
    if full and retrains_with_validation(config):
        data = with_validation(config, ref, data)
    model = build_model(config, data, params, device)
    run.tags({f"fast_path.{path}": state for path, state in fast_paths.report(model).items()})
    if config.kind == "generation" and config.tune.replay_kl:  # the frozen base's side of the KL term, once per search
        teacher.attach(
            model, data.encoded, data.tokenizer.pad_token_id, f"{data.base.id}:{model.dtype}", cache_dir() / "teacher"
        )
    return model, data


@dataclass
class TrainingReport:
    """What a training reports while it runs: its losses and validation scores to its MLflow run, the
    scores to ``trial``'s pruner, and the steps trained to ``trial`` (a retry adds its own to those of
    the attempts before it, up to their checkpoints). ``on_step`` and ``on_eval`` are train()'s callbacks."""

    config: LoopConfig
    ref: DatasetRef
    model: object
    data: TrialData
    run: TrialRun
    trial: optuna.Trial | None
    total: int  # the schedule's steps
    every: int  # steps between checkpoints
    scores: dict[int, float] = field(init=False, default_factory=dict)  # validation score by step
    steps_before: int = field(init=False)  # earlier attempts', at their checkpoints

    def __post_init__(self) -> None:
        self.steps_before = self.trial.user_attrs.get("steps_trained", 0) if self.trial else 0

    def on_step(self, step: int, loss: float) -> None:
        """Log the step's loss; at a checkpoint step, send the losses and the steps trained so far."""
        self.run.step_loss(step, loss)
        if step % self.every == 0:  # train() checkpoints right after: the losses and the count go first
            self.run.flush()
            if self.trial:
                self.trial.set_user_attr("steps_trained", self.steps_before + self.run.session_steps)

    def on_eval(self, step: int) -> None:
        """Score the model at ``step`` and report it; raises ``Pruned`` when the pruner stops the trial."""
        self.scores[step] = validation_score(self.config, self.model, self.data)
        self.run.flush()
        self.run.metrics({"validation_score": self.scores[step]}, step)
        if self.trial:
            self.trial.report(
                self.scores[step], pruner_step(self.config, self.ref.sizes["train"], len(self.data.encoded), step)
            )
            if step < self.total and self.trial.should_prune():  # a trial that reached its end is finished, not pruned
                raise Pruned

    def record_steps(self, steps_run: int) -> None:
        """The steps trained by every attempt, this one's ``steps_run`` included, on the trial."""
        if self.trial:
            self.trial.set_user_attr("steps_trained", self.steps_before + steps_run)


def train_adapter(
    config: LoopConfig,
    model,
    data: TrialData,
    params: dict,
    checkpoint_dir: Path,
    full: bool,
    eval_steps: list[int],
    reporter: TrainingReport,
    extra: PreferenceTerm | None,
) -> TrainResult:
    """``train`` with the search's settings: a trial's step budget (none when ``full``), checkpoints
    every ``reporter.every`` steps uploaded by its run, and the KL term for generation."""
    tune = config.tune
    return train(
        model,
        data.encoded,
        data.tokenizer.pad_token_id,
        lr=params["lr"],
        epochs=tune.epochs,
        batch_size=tune.batch_size,
        seed=tune.seed,
        max_steps=None if full else tune.trial_steps,
        grad_accum=tune.grad_accum_steps,
        head_lr=tune.head_lr,
        length_grouping=tune.length_grouping,
        eval_steps=set(eval_steps),
        on_eval=reporter.on_eval,
        on_step=reporter.on_step,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=reporter.every,
        on_checkpoint=reporter.run.upload_checkpoint,
        progress=True,
        kl_weight=tune.replay_kl if config.kind == "generation" else 0.0,
        trunk_cache_mb=tune.trunk_cache_mb,
        extra_loss=extra,
    )


def training_metrics(
    result: TrainResult, cpu_seconds: float, memory: dict[str, float], extra: PreferenceTerm | None
) -> dict[str, float]:
    """A training's figures for its run: steps, examples, time and throughput, padding, peak memory, and
    the preference loss's first and last values when there is one."""
    return {
        "resumed_from_step": result.resumed_from_step,
        "steps_trained": result.steps_run,
        "examples_seen": result.examples,
        "wall_seconds": result.seconds,
        "cpu_seconds": cpu_seconds,  # training and its validation scoring
        "examples_per_second": result.examples / result.seconds if result.seconds else 0.0,
        "tokens_per_second": result.tokens / result.seconds if result.seconds else 0.0,
        "padding_share": 1 - result.tokens / result.padded_tokens if result.padded_tokens else 0.0,
        **memory,
        **(
            {"preference_loss_first": extra.history[0], "preference_loss_last": extra.history[-1]}
            if extra and extra.history
            else {}
        ),
    }


def constrain_to_gate(
    config: LoopConfig, ref: DatasetRef, model, data: TrialData, trial: optuna.Trial, run: TrialRun, total: int
) -> None:
    """The trained model's drops on the gate's sample: the trial's constraints (the search prefers trials
    within the gate's tolerances) and metrics of its run."""
    drops = gate_drops(config, ref, model, data)
    for key, value in constraints(config, drops).items():
        trial.set_constraint(key, value)
    run.metrics(drops, step=total)


def adapter_dir_of(checkpoint_dir: Path) -> Path:
    """Where the training that checkpoints to ``checkpoint_dir`` leaves its finished adapter."""
    return checkpoint_dir.with_name(checkpoint_dir.name + "-adapter")


def save_adapter(config: LoopConfig, model, data: TrialData, adapter_dir: Path) -> None:
    """The adapter, with the base and prompting it needs wherever it is loaded and its labels, into a
    fresh ``adapter_dir``."""
    shutil.rmtree(adapter_dir, ignore_errors=True)
    model.save_pretrained(adapter_dir)
    write_meta(adapter_dir, config, data.base)
    if data.labels:
        save_labels(adapter_dir, data.labels)


def run_trial(
    trial: optuna.Trial, config: LoopConfig, ref: DatasetRef, search_run_id: str, name: str, device: torch.device
) -> float:
    """The Optuna objective: one trial, resumed from its checkpoint and MLflow run when retried."""
    params = suggest(trial, config.tune, config.kind, usable_objectives(config, ref))
    key = origin(next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number))
    trial.set_user_attr("trial_key", key)
    progress.current().trial(key + 1, config.tune.trial_budget, params)
    run = TrialRun.open(
        search_run_id,
        name,
        key,
        {
            **params,
            "epochs": config.tune.epochs,
            "batch_size": config.tune.batch_size,
            "trial_steps": config.tune.trial_steps,
        },
        tags={"dataset_hash": ref.dataset_hash, "optuna.study": name, "device": str(device)},
    )
    trial.set_user_attr("mlflow_run_id", run.run_id)
    run.client.set_tag(run.run_id, "optuna.trial", str(trial.number))  # the latest attempt's number
    checkpoint_dir = config.work_dir / "checkpoints" / name / f"trial-{key:03d}"
    final = train_candidate(config, ref, params, run, checkpoint_dir, device, full=False, trial=trial)
    if final is None:
        run.finish("PRUNED", f"{trial_label(key, params)} pruned@{trial.user_attrs.get('steps_trained', 0)}")
        raise optuna.TrialPruned()
    trial.set_user_attr("adapter_uri", run.upload_adapter(adapter_dir_of(checkpoint_dir)))
    run.finish("COMPLETE", f"{trial_label(key, params)} -> {final:.3f}")
    return final


def train_final(
    config: LoopConfig, ref: DatasetRef, params: dict, search_run_id: str, name: str, winner: int
) -> tuple[str, float, str]:
    """The winning trial's configuration trained on the whole train split for ``epochs`` (trials saw
    part of it); resumable like a trial. Its adapter URI, validation score and MLflow run id."""
    key = f"final-{winner:03d}"
    run = TrialRun.open(
        search_run_id,
        name,
        key,
        {**params, "epochs": config.tune.epochs, "batch_size": config.tune.batch_size},
        tags={"dataset_hash": ref.dataset_hash, "optuna.study": name},
    )
    existing = run.client.get_run(run.run_id)
    if existing.data.tags.get("optuna.state") == "COMPLETE":  # a rerun after it finished: nothing to retrain
        return f"runs:/{run.run_id}/adapter", existing.data.metrics["final_validation_score"], run.run_id
    checkpoint_dir = config.work_dir / "checkpoints" / name / key
    final = train_candidate(config, ref, params, run, checkpoint_dir, resolve_device(config.device), full=True)
    uri = run.upload_adapter(adapter_dir_of(checkpoint_dir))
    run.finish("COMPLETE", f"{trial_label(key, params)} -> {final:.3f}")
    return uri, final, run.run_id
