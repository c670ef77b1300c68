"""Out-of-scope routing for classification: a threshold on a score below which the router answers a
configurable fallback label instead of its best in-scope guess.

The router's softmax always names one of its labels, even for "tell me a joke". A threshold on a
score of how familiar the input looks sends such inputs to the fallback: the energy (log-sum-exp of
the logits, Liu et al. 2020) beside the similarity of the nearest stored training utterance
(``tuneloop.modeling.neighbours``), each standardised on the calibration inputs and summed, by default;
the energy alone; or the top probability. On one BANKING77 open-set router the sum caught 73 % of unknown
intents, the energy alone 64 % and the top probability 45 %, at 5 % of in-scope validation inputs falling
back (docs/benchmarks/classification.md). The threshold is picked from in-scope validation examples
only (out-of-scope data is rarely at hand): the threshold at which at most ``max_fallback_rate`` of
in-scope inputs would fall back. So the cost is stated and bounded (that share of real requests
sent to the fallback), and whatever out-of-scope share it catches is measured, not tuned for: the
adversarial suite's out-of-scope items score that. When out-of-scope confidences are given too, the
fit reports the share of them it catches, so a reviewer sees the trade-off.

Numpy only; imported by flows (fitting after training) and serving (applying on each request).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

DEFAULT_MAX_FALLBACK_RATE = 0.05
# In-scope calibration inputs needed before the similarity joins the energy: standardising it on fewer is
# guesswork (on 13 near-duplicates of training utterances its spread was 0.003, and every held-out
# paraphrase fell back); with fewer the threshold is on the energy alone.
MIN_FOR_SIMILARITY = 100
Score = Literal["energy_and_similarity", "energy", "probability"]


@dataclass(frozen=True)
class Calibration:
    """A fitted threshold with what it costs and catches; stored beside an adapter as a dict."""

    threshold: float
    fallback_label: str
    max_fallback_rate: float
    in_scope_fallback_rate: float  # measured on the examples it was fitted on
    n_in_scope: int
    out_of_scope_caught: float | None = None  # share of the given out-of-scope inputs sent to the fallback
    score: Score = "probability"  # what the threshold is on (a calibration stored before energy: probability)
    # energy_and_similarity: each one's mean and standard deviation on the calibration inputs
    centre: tuple[float, float] | None = None
    spread: tuple[float, float] | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        """From ``as_dict`` or its JSON (where the pairs became lists): equal to the calibration stored."""
        pairs = {k: tuple(data[k]) for k in ("centre", "spread") if data.get(k) is not None}
        return cls(**{**data, **pairs})

    def apply(
        self,
        labels: Sequence[str],
        confidences: Sequence[float],
        energies: Sequence[float] | None = None,
        similarities: Sequence[float | None] | None = None,
    ) -> list[str]:
        """Each label, or the fallback where the calibration's score is below its threshold."""
        if self.score == "energy_and_similarity":
            if energies is None or similarities is None or any(s is None for s in similarities):
                raise ValueError("this calibration's threshold is on energy and similarity: pass both")
            scores = standardised_sum(energies, similarities, self.centre, self.spread)
            return apply_threshold(labels, scores, self.threshold, self.fallback_label)
        if self.score == "energy":
            if energies is None:
                raise ValueError("this calibration's threshold is on the energy score: pass the energies")
            return apply_threshold(labels, energies, self.threshold, self.fallback_label)
        return apply_threshold(labels, confidences, self.threshold, self.fallback_label)


def standardised_sum(
    energies: Sequence[float],
    similarities: Sequence[float],
    centre: tuple[float, float],
    spread: tuple[float, float],
) -> list[float]:
    """Energy and nearest-utterance similarity, each standardised by ``centre`` and ``spread``, summed:
    two views of unfamiliar input (the head's and the stored utterances') on one scale."""
    e, s = np.asarray(energies, dtype=float), np.asarray(similarities, dtype=float)
    return ((e - centre[0]) / spread[0] + (s - centre[1]) / spread[1]).tolist()


def standardisation(energies: Sequence[float], similarities: Sequence[float]) -> tuple[tuple, tuple]:
    """The mean and standard deviation of each (a spread of 0 counts as 1: nothing to scale)."""
    e, s = np.asarray(energies, dtype=float), np.asarray(similarities, dtype=float)
    return (float(e.mean()), float(s.mean())), (float(e.std()) or 1.0, float(s.std()) or 1.0)


def fit_threshold(in_scope_scores: Sequence[float], max_fallback_rate: float = DEFAULT_MAX_FALLBACK_RATE) -> float:
    """The highest threshold at which at most ``max_fallback_rate`` of the in-scope scores fall below
    it: the (k+1)-th smallest score with k = floor(rate x n), so exactly the k least familiar in-scope
    inputs (fewer when tied) fall back. Minus infinity (nothing falls back) without data.
    """
    if not 0 <= max_fallback_rate < 1:
        raise ValueError(f"max_fallback_rate must be in [0, 1), got {max_fallback_rate}")
    values = np.sort(np.asarray(in_scope_scores, dtype=float))
    if values.size == 0:
        return -math.inf
    k = math.floor(max_fallback_rate * values.size + 1e-9)
    return float(values[min(k, values.size - 1)])


def apply_threshold(labels: Sequence[str], scores: Sequence[float], threshold: float, fallback_label: str) -> list[str]:
    """Each label, or ``fallback_label`` where its score is below ``threshold``."""
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels for {len(scores)} scores")
    return [fallback_label if c < threshold else label for label, c in zip(labels, scores)]


def calibrate(
    in_scope_scores: Sequence[float],
    fallback_label: str,
    max_fallback_rate: float = DEFAULT_MAX_FALLBACK_RATE,
    out_of_scope_scores: Sequence[float] | None = None,
    score: Score = "probability",
    centre: tuple[float, float] | None = None,
    spread: tuple[float, float] | None = None,
) -> Calibration:
    """Fit the threshold on ``score`` values (probabilities, energies or standardised sums, with the
    ``centre`` and ``spread`` they were standardised by) and measure what it does on the data at hand."""
    threshold = fit_threshold(in_scope_scores, max_fallback_rate)
    values = np.asarray(in_scope_scores, dtype=float)
    rate = float((values < threshold).mean()) if values.size else 0.0
    caught = None
    if out_of_scope_scores is not None and len(out_of_scope_scores):
        caught = float((np.asarray(out_of_scope_scores, dtype=float) < threshold).mean())
    return Calibration(
        threshold, fallback_label, max_fallback_rate, rate, int(values.size), caught, score, centre, spread
    )


def calibrate_answers(
    score: Score,
    fallback_label: str,
    max_fallback_rate: float,
    confidences: Sequence[float],
    energies: Sequence[float],
    similarities: Sequence[float] | None,
) -> Calibration:
    """A threshold on ``score`` from a router's answers to in-scope inputs; ``energy_and_similarity`` falls
    back to the energy alone without similarities (no neighbour store) or under ``MIN_FOR_SIMILARITY`` inputs."""
    if score == "energy_and_similarity" and (similarities is None or len(energies) < MIN_FOR_SIMILARITY):
        score = "energy"
    if score == "energy_and_similarity":
        centre, spread = standardisation(energies, similarities)
        values = standardised_sum(energies, similarities, centre, spread)
        return calibrate(values, fallback_label, max_fallback_rate, score=score, centre=centre, spread=spread)
    return calibrate(energies if score == "energy" else confidences, fallback_label, max_fallback_rate, score=score)
