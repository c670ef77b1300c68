"""The models the gate compares and their answers: the bare base, a registered version or a freshly
trained adapter, each on its own base model, with its own prompting and (classification) its own
out-of-scope threshold.

Answers of the base and of registered versions are cached on disk by content (the model, the
inputs, the decoding settings): greedy decoding gives the same answers every time, and every loop
and every trial compares against the same baseline, so it answers each suite once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tuneloop.config import LoopConfig
from tuneloop.eval_suites.suites import SuiteItem, recorded_baseline
from tuneloop.modeling.adapters import load_adapter
from tuneloop.modeling.calibration import Calibration, calibrate
from tuneloop.modeling.inference import predict, predict_classes
from tuneloop.modeling.models import BaseModelInfo, base_of, load_base, load_tokenizer, resolve_device, resolve_dtype
from tuneloop.modeling.prompting import Prompting

CALIBRATION_FILE = "calibration.json"


@dataclass
class Candidate:
    name: str  # "base", "v3" or "challenger"
    model: object
    tokenizer: object
    prompting: Prompting
    labels: list[str]
    base: BaseModelInfo
    calibration: Calibration | None = None
    cache_id: str | None = None  # answers are cached under it; None for a model that may still change
    adapter_dir: Path | None = None
    adapters_off: bool = False  # a peft model answering as its bare base (inside a trial)


def base_candidate(config: LoopConfig, labels: list[str]) -> Candidate:
    info, device = base_of(config), resolve_device(config.device)
    model = load_base(info, config.kind, labels or None, device=device, dtype=resolve_dtype(config.precision, device))
    return Candidate(
        "base",
        model,
        load_tokenizer(info),
        Prompting(config.system_prompt, config.prompt_template),
        labels,
        info,
        cache_id=f"base:{info.id}:{json.dumps(labels)}",
    )


def adapter_candidate(config: LoopConfig, adapter_dir: Path, name: str, cache_id: str | None = None) -> Candidate:
    """An adapter on the base it was trained on, with its stored threshold when it has one."""
    device = resolve_device(config.device)
    model, tokenizer, meta, labels = load_adapter(adapter_dir, device, resolve_dtype(config.precision, device))
    stored = Path(adapter_dir) / CALIBRATION_FILE
    calibration = Calibration.from_dict(json.loads(stored.read_text())) if stored.exists() else None
    return Candidate(
        name, model, tokenizer, meta.prompting, labels, meta.base(), calibration, cache_id, Path(adapter_dir)
    )


class Answers(NamedTuple):
    """A candidate's raw outputs (before any fallback threshold) and, for classification, each label's
    probability and the input's energy (``tuneloop.modeling.inference.Classified``); None otherwise."""

    outputs: list[str]
    confidences: list[float] | None
    energies: list[float] | None


def answers(config: LoopConfig, candidate: Candidate, items: Sequence[SuiteItem], max_new_tokens: int) -> Answers:
    """The candidate's answers to ``items``, from its cache when it has one."""
    inputs = [it.input for it in items]
    path = _cache_path(config, candidate, inputs, max_new_tokens)
    cached = json.loads(path.read_text()) if candidate.cache_id and path.exists() else None
    # a classification cache written before energies were kept is answered again, not half-used
    if cached and (cached["confidences"] is None or cached.get("energies") is not None):
        return Answers(cached["outputs"], cached["confidences"], cached.get("energies"))
    outputs = _recorded_answers(candidate, items, max_new_tokens)
    result = _predict_unanswered(config, candidate, inputs, outputs, max_new_tokens)
    if candidate.cache_id:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result._asdict()))
    return result


def _cache_path(config: LoopConfig, candidate: Candidate, inputs: list[str], max_new_tokens: int) -> Path:
    """Where the candidate's answers to ``inputs`` are cached: named by the model, the inputs and the
    decoding settings (used only for a candidate with a ``cache_id``)."""
    key = hashlib.sha256(
        json.dumps(
            [
                candidate.cache_id,
                inputs,
                max_new_tokens,
                candidate.prompting.system_prompt,
                candidate.prompting.template,
            ]
        ).encode()
    ).hexdigest()[:24]
    return config.work_dir / "answers" / f"{key}.json"


def _recorded_answers(candidate: Candidate, items: Sequence[SuiteItem], max_new_tokens: int) -> list[str | None]:
    """Per item, the answer recorded with the suite, or None: only the base has them (the bundled base's
    verified answers, shipped with the suite), and only while they match its weights and settings."""
    outputs: list[str | None] = [None] * len(items)
    shipped = [i for i, it in enumerate(items) if it.answers] if candidate.name == "base" else []
    recorded = recorded_baseline(
        [items[i] for i in shipped], candidate.base.sha256, candidate.prompting.system_prompt, max_new_tokens
    )
    for i, answer in zip(shipped, recorded or []):
        outputs[i] = answer
    return outputs


def _predict_unanswered(
    config: LoopConfig, candidate: Candidate, inputs: list[str], outputs: list[str | None], max_new_tokens: int
) -> Answers:
    """``outputs`` with every None predicted by the candidate, and the prediction's confidences and
    energies (classification, where nothing is recorded: every row was predicted); None without a prediction."""
    outputs = list(outputs)
    rest = [i for i, out in enumerate(outputs) if out is None]
    if not rest:
        return Answers(outputs, None, None)
    confidences = energies = None
    with candidate.model.disable_adapter() if candidate.adapters_off else nullcontext():
        if config.kind == "classification":
            fresh, confidences, energies = predict_classes(
                candidate.model, candidate.tokenizer, [inputs[i] for i in rest], candidate.labels
            )
        else:
            fresh, _ = predict(
                config.kind,
                candidate.model,
                candidate.tokenizer,
                [inputs[i] for i in rest],
                candidate.labels,
                max_new_tokens,
                candidate.prompting,
            )
    for n, i in enumerate(rest):
        outputs[i] = fresh[n]
    return Answers(outputs, confidences, energies)


def routed(config: LoopConfig, candidate: Candidate, answered: Answers) -> list[str]:
    """What the candidate answers after its out-of-scope threshold (classification with a fallback label)."""
    if config.kind != "classification" or candidate.calibration is None or answered.confidences is None:
        return answered.outputs
    return candidate.calibration.apply(answered.outputs, answered.confidences, answered.energies)


def fit_calibration(config: LoopConfig, candidate: Candidate, validation: Sequence[SuiteItem]) -> Calibration | None:
    """Classification: the candidate's threshold from its confidences on in-scope validation inputs,
    kept beside its adapter (registered with it, applied when it serves)."""
    if config.kind != "classification" or not config.fallback_label or not validation:
        return None
    answered = answers(config, candidate, validation, config.max_new_tokens)
    scores = answered.energies if config.fallback_score == "energy" else answered.confidences
    candidate.calibration = calibrate(
        scores, config.fallback_label, config.max_fallback_rate, score=config.fallback_score
    )
    if candidate.adapter_dir is not None:
        (candidate.adapter_dir / CALIBRATION_FILE).write_text(json.dumps(candidate.calibration.as_dict()))
    return candidate.calibration
