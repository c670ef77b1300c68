"""Evaluation suites: the held-out split, an adversarial set kept as data, and derived perturbations.

Every item scores in [0, 1] so suites compare across versions and feed a paired bootstrap:
- with a ``reference``: token F1 (generation) or correctness (classification), via the local
  ``evaluate`` metric modules in ``eval_suites/metrics``;
- ``must_contain_any``: 1 when any phrase appears (knowledge the tuning must not destroy);
- otherwise 1 for a well-formed answer; any ``must_not_contain`` phrase present zeroes the item.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import evaluate

HERE = Path(__file__).parent


@dataclass
class SuiteItem:
    id: str
    suite: str
    category: str
    input: str
    reference: str | None = None
    must_contain_any: list[str] = field(default_factory=list)
    must_not_contain: list[str] = field(default_factory=list)
    segment: str | None = None


@lru_cache(maxsize=None)
def metric(kind: str) -> evaluate.EvaluationModule:
    name = "generation_quality" if kind == "generation" else "classification_quality"
    return evaluate.load(str(HERE / "metrics" / name))


def heldout_suite(examples: Sequence) -> list[SuiteItem]:
    """The curated held-out split (objects with ``prompt``, ``target``, ``key``, ``segment``)."""
    return [SuiteItem(id=f"heldout-{e.key[:40]}", suite="heldout", category="heldout", input=e.prompt,
                      reference=e.target, segment=e.segment) for e in examples]


def _typo(text: str, rng: random.Random) -> str:
    words = text.split()
    candidates = [i for i, w in enumerate(words) if len(w) > 3]
    for i in rng.sample(candidates, min(2, len(candidates))):
        j = rng.randrange(len(words[i]) - 1)
        w = words[i]
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]  # swap two neighbouring letters
    return " ".join(words)


PARAPHRASE_FRAMES = ["hi, {}", "{} thanks", "hey there! {}", "sorry to bother you: {}"]


def adversarial_suite(kind: str, heldout_examples: Sequence, labels: Sequence[str] = (), seed: int = 0,
                      max_derived: int = 8) -> list[SuiteItem]:
    """The kind's adversarial data file plus typo'd and reframed copies of held-out prompts."""
    items = []
    for line in (HERE / "data" / f"adversarial_{kind}.jsonl").read_text().splitlines():
        raw = json.loads(line)
        if kind == "classification" and raw.get("reference") and raw["reference"] not in labels:
            continue  # an intent this router does not have
        items.append(SuiteItem(suite="adversarial", **raw))
    rng = random.Random(seed)
    chosen = rng.sample(list(heldout_examples), min(max_derived, len(heldout_examples)))
    for n, e in enumerate(chosen):
        perturbed = _typo(e.prompt, rng) if n % 2 == 0 else rng.choice(PARAPHRASE_FRAMES).format(e.prompt[0].lower() + e.prompt[1:])
        category = "typo" if n % 2 == 0 else "paraphrase"
        items.append(SuiteItem(id=f"{category}-{e.key[:40]}", suite="adversarial", category=category,
                               input=perturbed, reference=e.target, segment=e.segment))
    return items


def regression_suite(kind: str, train_examples: Sequence, seed: int = 0, max_items: int = 16) -> list[SuiteItem]:
    """What the current champion already answers: general knowledge (data file) and a sample of earlier
    training pairs (datasets accumulate, so the champion learned them). Guards against forgetting."""
    items = []
    path = HERE / "data" / f"regression_{kind}.jsonl"
    if path.exists():
        items = [SuiteItem(suite="regression", **json.loads(line)) for line in path.read_text().splitlines()]
    rng = random.Random(seed + 1)
    for e in rng.sample(list(train_examples), min(max_items, len(train_examples))):
        items.append(SuiteItem(id=f"learned-{e.key[:40]}", suite="regression", category="learned", input=e.prompt,
                               reference=e.target, segment=e.segment))
    return items


def score(kind: str, items: Sequence[SuiteItem], outputs: Sequence[str], confidences: Sequence[float] | None = None,
          labels: Sequence[str] = ()) -> tuple[list[float], dict[str, float]]:
    """Per-item scores and aggregate metrics (from the evaluate module) for one model's outputs."""
    scores = [1.0] * len(items)
    with_ref = [i for i, it in enumerate(items) if it.reference is not None]
    aggregates: dict[str, float] = {}
    if with_ref:
        args = dict(predictions=[outputs[i] for i in with_ref], references=[items[i].reference for i in with_ref])
        if kind == "classification" and confidences is not None:
            args["confidences"] = [confidences[i] for i in with_ref]
        result = metric(kind).compute(**args)
        per = result.pop("per_example")
        primary = per["token_f1"] if kind == "generation" else per["correct"]
        for i, s in zip(with_ref, primary):
            scores[i] = float(s)
        aggregates.update({k: float(v) for k, v in result.items()})
    for i, it in enumerate(items):
        out = outputs[i].casefold()
        if it.reference is None and it.must_contain_any:
            scores[i] = float(any(p.casefold() in out for p in it.must_contain_any))
        if it.reference is None and kind == "classification" and labels:
            scores[i] = float(outputs[i] in labels)
        if any(p.casefold() in out for p in it.must_not_contain):
            scores[i] = 0.0
    aggregates["score"] = sum(scores) / len(scores) if scores else 0.0
    return scores, aggregates


def breakdown(items: Sequence[SuiteItem], scores: Sequence[float]) -> dict[str, float]:
    """Mean score per category and per segment, for the reviewer's table."""
    groups: dict[str, list[float]] = {}
    for it, s in zip(items, scores):
        groups.setdefault(f"category.{it.category}", []).append(s)
        if it.segment:
            groups.setdefault(f"segment.{it.segment}", []).append(s)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}
