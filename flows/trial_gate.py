"""What the gate will check, estimated inside each trial, so the search optimises what the gate checks.

After a generation trial trains, its model answers a fixed sample of the regression items the base
answers well (forgetting) and a sample of the adversarial suite's judged groups (injection,
extraction, out-of-scope; rewritten from the validation split, never the gate's held-out split),
and so does the base (the same model with its adapter switched off; answers cached by content).
The drops become Optuna constraints (``Trial.set_constraint``, read by the TPE sampler; feasible when <= 0):
the search models which configurations forget, and the winner is the best trial within the gate's
tolerances. Classification needs none: its dataset holds every earlier label, and the base's new head
knows nothing to forget; the gate compares with the champion.
"""

from __future__ import annotations

from optuna.trial import FrozenTrial

from tuneloop.config import LoopConfig
from tuneloop.data.datasets import DatasetRef, load_examples
from tuneloop.eval_suites.scoring import guard_scores, judge_all
from tuneloop.eval_suites.suites import GROUPS, adversarial_suite, regression_suite, sample_suite
from tuneloop.flows.candidates import Candidate, answers

_samples: dict[tuple, dict] = {}


def samples(config: LoopConfig, ref: DatasetRef) -> dict:
    """The regression and adversarial samples a trial is judged on (built once per process)."""
    key = (ref.dataset_hash, config.tune.gate_sample, config.system_prompt, config.tune.seed)
    if key not in _samples:
        validation = load_examples(ref, "validation", config.work_dir)
        train = load_examples(ref, "train", config.work_dir, limit=2000, seed=config.tune.seed)
        adversarial = adversarial_suite(
            config.kind,
            validation,
            [],
            config.tune.seed,
            per_group_variant=8,
            train_examples=train,
            system_prompt=config.system_prompt,
        )
        judged = [it for it in adversarial if it.group in GROUPS]
        _samples.clear()
        _samples[key] = {
            "regression": regression_suite(config.kind, train, seed=config.tune.seed),
            "adversarial": sample_suite(judged, config.tune.gate_sample, config.tune.seed),
        }
    return _samples[key]


def gate_drops(config: LoopConfig, ref: DatasetRef, model, data) -> dict[str, float]:
    """The trial's drop against the base on the regression sample (mean item score) and on the judged
    adversarial groups (guard scores): positive means worse than the base."""
    if config.kind != "generation":
        return {}
    suites = samples(config, ref)
    base = Candidate(
        "base",
        model,
        data.tokenizer,
        data.prompting,
        data.labels,
        data.base,
        cache_id=f"base:{data.base.id}:[]",
        adapters_off=True,
    )
    trial = Candidate("trial", model, data.tokenizer, data.prompting, data.labels, data.base)
    tokens, regression = config.gate.regression_max_new_tokens, suites["regression"]
    before = judge_all(config.kind, regression, answers(config, base, regression, tokens).outputs)[0]  # cached per base
    known = [it for it, score in zip(regression, before) if score >= config.gate.regression_floor]
    picked = sample_suite(known, config.tune.gate_sample, config.tune.seed)
    base_scores = judge_all(config.kind, picked, answers(config, base, picked, tokens).outputs)[0]
    after = judge_all(config.kind, picked, answers(config, trial, picked, tokens).outputs)[0]
    adversarial = suites["adversarial"]
    base_guard = guard_scores(
        config.kind, adversarial, answers(config, base, adversarial, config.max_new_tokens).outputs
    )
    trial_guard = guard_scores(
        config.kind, adversarial, answers(config, trial, adversarial, config.max_new_tokens).outputs
    )
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    return {
        "regression_drop": mean(base_scores) - mean(after),
        "adversarial_drop": mean(base_guard) - mean(trial_guard),
    }


def constraints(config: LoopConfig, drops: dict[str, float]) -> dict[str, float]:
    """Optuna's constraint values (<= 0 is feasible): each drop beyond its gate tolerance."""
    if not drops:
        return {}
    return {
        "regression": drops["regression_drop"] - config.gate.regression_tolerance,
        "adversarial": drops["adversarial_drop"] - config.gate.group_tolerance,
    }


def feasible(trial: FrozenTrial) -> bool:
    """Within every constraint it carries (pruned trials and classification trials carry none)."""
    return all(value <= 0 for value in trial.constraints.values())
