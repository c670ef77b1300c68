"""The models the gate compares and their answers: the bare base, a registered version or a freshly
trained adapter, each on its own base model, with its own prompting and (classification) its own
neighbour store and out-of-scope threshold.

Answers of the base and of registered versions are cached on disk by content (the model, the
inputs, the decoding settings): greedy decoding gives the same answers every time, and every loop
and every trial compares against the same baseline, so it answers each suite once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tuneloop.config import LoopConfig
from tuneloop.data.datasets import DatasetRef, calibration_half, load_examples
from tuneloop.eval_suites.suites import SuiteItem, recorded_baseline
from tuneloop.modeling.adapters import load_adapter
from tuneloop.modeling.calibration import Calibration, calibrate_answers
from tuneloop.modeling.inference import embed, predict, predict_classes
from tuneloop.modeling.memory import CorrectionMemory, answered_from_memory, build_memory, load_memory, sentence_encoder
from tuneloop.modeling.models import BaseModelInfo, base_of, load_base, load_tokenizer, resolve_device, resolve_dtype
from tuneloop.modeling.neighbours import Neighbours, build_neighbours, clearly_worse, load_neighbours
from tuneloop.modeling.prompting import Prompting

CALIBRATION_FILE = "calibration.json"
log = logging.getLogger(__name__)


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
    neighbours: Neighbours | None = None  # classification: its training utterances' votes
    memory: CorrectionMemory | None = None  # generation: its training questions' answers


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
    neighbours = load_neighbours(Path(adapter_dir), len(labels)) if labels else None
    memory = load_memory(Path(adapter_dir)) if meta.kind == "generation" else None
    return Candidate(
        name,
        model,
        tokenizer,
        meta.prompting,
        labels,
        meta.base(),
        calibration,
        cache_id,
        Path(adapter_dir),
        neighbours=neighbours,
        memory=memory,
    )


class Answers(NamedTuple):
    """A candidate's raw outputs (before any fallback threshold) and, for classification, each label's
    probability, the input's energy and its nearest stored utterance's similarity
    (``tuneloop.modeling.inference.Classified``); None otherwise."""

    outputs: list[str]
    confidences: list[float] | None
    energies: list[float] | None
    similarities: list[float | None] | None = None


def answers(config: LoopConfig, candidate: Candidate, items: Sequence[SuiteItem], max_new_tokens: int) -> Answers:
    """The candidate's answers to ``items``, from its cache when it has one."""
    inputs = [it.input for it in items]
    path = _cache_path(config, candidate, inputs, max_new_tokens)
    cached = json.loads(path.read_text()) if candidate.cache_id and path.exists() else None
    # a classification cache written before energies were kept is answered again, not half-used
    if cached and (cached["confidences"] is None or cached.get("energies") is not None):
        return Answers(cached["outputs"], cached["confidences"], cached.get("energies"), cached.get("similarities"))
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
    confidences = energies = similarities = None
    with candidate.model.disable_adapter() if candidate.adapters_off else nullcontext():
        if config.kind == "classification":
            fresh, confidences, energies, similarities = predict_classes(
                candidate.model,
                candidate.tokenizer,
                [inputs[i] for i in rest],
                candidate.labels,
                neighbours=None if candidate.adapters_off else candidate.neighbours,
            )
        else:
            asked = [inputs[i] for i in rest]
            fresh, _ = predict(
                config.kind,
                candidate.model,
                candidate.tokenizer,
                asked,
                candidate.labels,
                max_new_tokens,
                candidate.prompting,
            )
            if not candidate.adapters_off:
                fresh = answered_from_memory(candidate.memory, asked, fresh)
    for n, i in enumerate(rest):
        outputs[i] = fresh[n]
    return Answers(outputs, confidences, energies, similarities)


def routed(config: LoopConfig, candidate: Candidate, answered: Answers) -> list[str]:
    """What the candidate answers after its out-of-scope threshold (classification with a fallback label)."""
    if config.kind != "classification" or candidate.calibration is None or answered.confidences is None:
        return answered.outputs
    return candidate.calibration.apply(answered.outputs, answered.confidences, answered.energies, answered.similarities)


def fit_neighbours(
    config: LoopConfig, candidate: Candidate, ref: DatasetRef, validation: Sequence[SuiteItem]
) -> tuple[dict | None, Answers | None]:
    """Classification: the candidate's neighbour store, its training utterances (the train split and the
    validation split's retraining half; never the calibration half or the held-out split) embedded by
    its own encoder, kept beside its adapter (registered with it, queried when it serves) unless its votes
    answer ``validation`` (the calibration half) clearly worse than the head alone (``clearly_worse``).
    What was built and why it was kept or dropped, and the candidate's answers to ``validation`` as it
    now stands (with the votes when kept), for its threshold; (None, None) when there was nothing to build."""
    if config.kind != "classification" or not config.neighbours or not config.neighbour_weight:
        return None, None
    index = {label: i for i, label in enumerate(candidate.labels)}
    examples = load_examples(ref, "train", config.work_dir) + [
        e for e in load_examples(ref, "validation", config.work_dir) if not calibration_half(e)
    ]
    examples = [e for e in examples if e.target in index]
    if not examples:
        return None, None
    began = time.process_time()
    store = build_neighbours(
        lambda texts: embed(candidate.model, candidate.tokenizer, texts),
        [e.prompt for e in examples],
        [index[e.target] for e in examples],
        config.neighbours,
        config.neighbour_weight,
        seed=config.tune.seed,
    )
    report = {"utterances": len(store.labels), "cpu_seconds": round(time.process_time() - began, 1)}
    comparison, head, voted = _votes_against_head(candidate, store, validation)
    report.update(comparison)
    if clearly_worse(report.get("validation_losses", 0), report.get("validation_wins", 0)):
        # e.g. an encoder whose mean states say little of meaning
        log.warning("neighbour votes dropped: they answer the calibration half worse than the head alone: %s", report)
        return {**report, "kept": 0.0}, head
    candidate.neighbours = store
    if candidate.adapter_dir is not None:
        store.save(candidate.adapter_dir)
    return {**report, "kept": 1.0}, voted


def fit_memory(config: LoopConfig, candidate: Candidate, ref: DatasetRef) -> dict | None:
    """Generation: the candidate's memory of its training questions (the train and validation splits; never
    the held-out split the gate judges it on) and their answers, kept beside its adapter (registered with
    it, recalled when it serves). What was stored; None when there was nothing to store."""
    if config.kind != "generation" or not config.memory_threshold:
        return None
    examples = load_examples(ref, "train", config.work_dir) + load_examples(ref, "validation", config.work_dir)
    if not examples:
        return None
    began = time.process_time()
    encode, sha256 = sentence_encoder()
    memory = build_memory(
        encode, [e.prompt for e in examples], [e.target for e in examples], config.memory_threshold, sha256
    )
    candidate.memory = memory
    if candidate.adapter_dir is not None:
        memory.save(candidate.adapter_dir)
    return {"questions": len(memory.answers), "cpu_seconds": round(time.process_time() - began, 1)}


def _votes_against_head(
    candidate: Candidate, store: Neighbours, items: Sequence[SuiteItem]
) -> tuple[dict, Answers | None, Answers | None]:
    """The answers to ``items`` of the head alone and with the votes, and, on the items whose reference
    the candidate knows, each one's accuracy and where they disagree: the inputs the votes lose (the
    head alone is right) and win."""
    if not items:
        return {}, None, None
    inputs = [item.input for item in items]
    head, voted = (
        Answers(*predict_classes(candidate.model, candidate.tokenizer, inputs, candidate.labels, neighbours=votes))
        for votes in (None, store)
    )
    known = [i for i, item in enumerate(items) if item.reference in candidate.labels]
    if not known:
        return {}, head, voted
    right = {
        name: [answered.outputs[i] == items[i].reference for i in known]
        for name, answered in (("head", head), ("with_votes", voted))
    }
    pairs = list(zip(right["head"], right["with_votes"]))
    return (
        {
            **{f"validation_accuracy_{name}": round(sum(r) / len(r), 4) for name, r in right.items()},
            "validation_losses": sum(head and not voted for head, voted in pairs),
            "validation_wins": sum(voted and not head for head, voted in pairs),
        },
        head,
        voted,
    )


def fit_calibration(
    config: LoopConfig, candidate: Candidate, validation: Sequence[SuiteItem], answered: Answers | None = None
) -> Calibration | None:
    """Classification: the candidate's threshold from its confidences on in-scope validation inputs
    (``answered``, its answers to them when already at hand), kept beside its adapter (registered with
    it, applied when it serves)."""
    if config.kind != "classification" or not config.fallback_label or not validation:
        return None
    answered = answered or answers(config, candidate, validation, config.max_new_tokens)
    candidate.calibration = calibrate_answers(
        config.fallback_score,
        config.fallback_label,
        config.max_fallback_rate,
        answered.confidences,
        answered.energies,
        answered.similarities,
    )
    if candidate.adapter_dir is not None:
        (candidate.adapter_dir / CALIBRATION_FILE).write_text(json.dumps(candidate.calibration.as_dict()))
    return candidate.calibration
