"""Out-of-scope routing for classification: a confidence threshold below which the router answers a
configurable fallback label instead of its best in-scope guess.

The router's softmax always names one of its labels, even for "tell me a joke". A threshold on the
top probability sends such inputs to the fallback. It is picked from in-scope validation examples
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

import numpy as np

DEFAULT_MAX_FALLBACK_RATE = 0.05


@dataclass(frozen=True)
class Calibration:
    """A fitted threshold with what it costs and catches; stored beside an adapter as a dict."""

    threshold: float
    fallback_label: str
    max_fallback_rate: float
    in_scope_fallback_rate: float  # measured on the examples it was fitted on
    n_in_scope: int
    out_of_scope_caught: float | None = None  # share of the given out-of-scope inputs sent to the fallback

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        return cls(**data)

    def apply(self, labels: Sequence[str], confidences: Sequence[float]) -> list[str]:
        return apply_threshold(labels, confidences, self.threshold, self.fallback_label)


def fit_threshold(in_scope_confidences: Sequence[float], max_fallback_rate: float = DEFAULT_MAX_FALLBACK_RATE) -> float:
    """The highest threshold at which at most ``max_fallback_rate`` of the in-scope confidences fall
    below it: the (k+1)-th smallest confidence with k = floor(rate x n), so exactly the k least
    confident in-scope inputs (fewer when tied) fall back. 0.0 (nothing falls back) without data.

    The top probability, not a margin or entropy, because it is what ``classify`` already returns.
    """
    if not 0 <= max_fallback_rate < 1:
        raise ValueError(f"max_fallback_rate must be in [0, 1), got {max_fallback_rate}")
    conf = np.sort(np.asarray(in_scope_confidences, dtype=float))
    if conf.size == 0:
        return 0.0
    k = math.floor(max_fallback_rate * conf.size + 1e-9)
    return float(conf[min(k, conf.size - 1)])


def apply_threshold(labels: Sequence[str], confidences: Sequence[float], threshold: float,
                    fallback_label: str) -> list[str]:
    """Each label, or ``fallback_label`` where its probability is below ``threshold``."""
    if len(labels) != len(confidences):
        raise ValueError(f"{len(labels)} labels for {len(confidences)} confidences")
    return [fallback_label if c < threshold else label for label, c in zip(labels, confidences)]


def calibrate(in_scope_confidences: Sequence[float], fallback_label: str,
              max_fallback_rate: float = DEFAULT_MAX_FALLBACK_RATE,
              out_of_scope_confidences: Sequence[float] | None = None) -> Calibration:
    """Fit the threshold and measure what it does on the data at hand."""
    threshold = fit_threshold(in_scope_confidences, max_fallback_rate)
    conf = np.asarray(in_scope_confidences, dtype=float)
    rate = float((conf < threshold).mean()) if conf.size else 0.0
    caught = None
    if out_of_scope_confidences is not None and len(out_of_scope_confidences):
        caught = float((np.asarray(out_of_scope_confidences, dtype=float) < threshold).mean())
    return Calibration(threshold, fallback_label, max_fallback_rate, rate, int(conf.size), caught)
