"""The gate's statistics (numpy only): paired cluster bootstrap, non-inferiority and superiority
checks with three outcomes, and the forgetting tolerance derived from an A/A run.

Rules (the numbers are the defaults; every one is an argument):

- **Paired cluster bootstrap.** Per item, d = challenger - baseline. Items of one cluster (paraphrases
  of one fact, copies of one held-out example, utterances of one intent) are resampled together:
  draw clusters with replacement, the statistic is sum(d) / items over the drawn clusters. Percentile
  interval at ``confidence`` (two-sided), then widened about the point estimate by sqrt(C / (C - 1))
  for C clusters, the factor by which a bootstrap underestimates the variance of a mean of C units.
- **Non-inferiority** with tolerance t (a drop the gate accepts), checked in this order:
  1. fewer than ``min_items`` items or ``min_clusters`` clusters: "not enough evidence";
  2. the point estimate or the upper bound below -t: "fail" (the best estimate is a drop beyond the
     tolerance, so more data would more likely confirm the regression than clear it; waiting for
     the upper bound alone would let a badly forgetting model off as merely "uncertain" on a
     mid-sized suite);
  3. fewer items than ``evidence_needed(t, confidence)`` = ceil(-ln(alpha) / t), alpha the one-sided
     error (1 - confidence) / 2: even a challenger with no change at all could not show that the
     drop is under t (rule of three: with n unchanged items the drop rate can still be up to
     -ln(alpha) / n): "not enough evidence" (74 items for t = 0.05 at 95 %, 37 for t = 0.10);
  4. lower bound above -t: "pass"; otherwise the interval is too wide: "not enough evidence".
- **Superiority** with margin m (held-out): "pass" when the mean exceeds m and the lower bound is above
  zero; "fail" when the mean is at most m or the upper bound is at most zero; otherwise (or with too
  few items or clusters) "not enough evidence".
- **A/A tolerance.** Two retrains that differ only in seed are scored item by item on the same suite;
  their difference is pure training noise. The tolerance is the larger magnitude of the two bounds of
  the A/A difference's cluster-bootstrap interval at the gate's confidence (what noise alone can show
  as a drop or a gain), rounded up to ``step`` and at least ``floor``: a retrain that differs only in
  seed then passes the non-inferiority test (its lower bound stays above -t) with about the
  interval's one-sided confidence. It is also at least the suite's resolution -ln(alpha) / n (rule 3
  above), so a suite of the A/A run's size can pass it at all. It holds for a suite of that size; a
  smaller suite has a wider interval and will say "not enough evidence" rather than pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Verdict = Literal["pass", "fail", "not enough evidence"]
PASS: Verdict = "pass"
FAIL: Verdict = "fail"
UNSURE: Verdict = "not enough evidence"


@dataclass(frozen=True)
class Interval:
    """A paired difference (challenger - baseline): its mean and bootstrap interval."""

    mean: float
    low: float
    high: float
    confidence: float
    n_items: int
    n_clusters: int
    sd: float  # of the (widened) bootstrap distribution of the mean

    @property
    def width(self) -> float:
        return self.high - self.low


@dataclass(frozen=True)
class Check:
    """One gate check's outcome, with the numbers and a sentence that says why."""

    name: str
    verdict: Verdict
    interval: Interval
    threshold: float  # the tolerance (non-inferiority) or the margin (superiority)
    reason: str

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "verdict": self.verdict,
            "threshold": self.threshold,
            "reason": self.reason,
            **{f"diff_{k}": v for k, v in asdict(self.interval).items()},
        }


def _cluster_ids(clusters: Sequence | None, n: int) -> np.ndarray:
    if clusters is None:
        return np.arange(n)
    if len(clusters) != n:
        raise ValueError(f"{len(clusters)} cluster ids for {n} items")
    _, ids = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    return ids


def cluster_bootstrap(
    baseline: Sequence[float],
    challenger: Sequence[float],
    clusters: Sequence | None = None,
    *,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Mean of challenger - baseline over paired items and its bootstrap interval, resampling whole
    clusters (``clusters[i]`` is item i's cluster id; None: every item its own cluster, the plain
    paired item bootstrap)."""
    a, b = np.asarray(baseline, dtype=float), np.asarray(challenger, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two equal-length lists, got {a.shape} and {b.shape}")
    n = len(a)
    if n == 0:
        return Interval(0.0, -math.inf, math.inf, confidence, 0, 0, math.inf)
    diff = b - a
    ids = _cluster_ids(clusters, n)
    n_clusters = int(ids.max()) + 1
    sums = np.bincount(ids, weights=diff, minlength=n_clusters)
    sizes = np.bincount(ids, minlength=n_clusters).astype(float)
    mean = float(diff.mean())
    if n_clusters < 2:
        return Interval(mean, -math.inf, math.inf, confidence, n, n_clusters, math.inf)
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    chunk = max(1, 2_000_000 // n_clusters)  # bound memory: chunk x clusters indices at a time
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        draw = rng.integers(0, n_clusters, size=(stop - start, n_clusters))
        means[start:stop] = sums[draw].sum(axis=1) / sizes[draw].sum(axis=1)
    tail = (1 - confidence) / 2
    q_low, q_high = np.quantile(means, [tail, 1 - tail])
    widen = math.sqrt(n_clusters / (n_clusters - 1))
    # item scores lie in [0, 1], so no difference of means lies outside [-1, 1]: the widening must not
    # push the interval past it (tolerance 1 would no longer turn a check off)
    return Interval(
        mean,
        max(-1.0, float(mean - widen * (mean - q_low))),
        min(1.0, float(mean + widen * (q_high - mean))),
        confidence,
        n,
        n_clusters,
        float(means.std() * widen),
    )


def evidence_needed(tolerance: float, confidence: float = 0.95) -> int:
    """Items a suite needs before "no change" can show a drop below ``tolerance`` (rule of three):
    ceil(-ln(alpha) / tolerance) with alpha = (1 - confidence) / 2."""
    if tolerance <= 0:
        return math.inf  # type: ignore[return-value]
    return math.ceil(-math.log((1 - confidence) / 2) / tolerance)


def non_inferiority(
    baseline: Sequence[float],
    challenger: Sequence[float],
    clusters: Sequence | None = None,
    *,
    tolerance: float,
    confidence: float = 0.95,
    samples: int = 2000,
    seed: int = 0,
    min_items: int = 20,
    min_clusters: int = 5,
    name: str = "non-inferiority",
) -> Check:
    """Is the challenger no worse than the baseline by more than ``tolerance``? (rules: module doc)"""
    ci = cluster_bootstrap(baseline, challenger, clusters, samples=samples, confidence=confidence, seed=seed)
    where = (
        f"{name}: diff {ci.mean:+.3f}, {confidence:.0%} CI [{ci.low:+.3f}, {ci.high:+.3f}] over "
        f"{ci.n_items} items in {ci.n_clusters} clusters, tolerance {tolerance:.3f}"
    )
    if ci.n_items < min_items or ci.n_clusters < min_clusters:
        return Check(
            name,
            UNSURE,
            ci,
            tolerance,
            f"{where}: too few to judge (needs at least {min_items} items and {min_clusters} clusters)",
        )
    if ci.mean < -tolerance or ci.high < -tolerance:
        return Check(name, FAIL, ci, tolerance, f"{where}: dropped by more than the tolerance")
    needed = evidence_needed(tolerance, confidence)
    if ci.n_items < needed:
        return Check(
            name,
            UNSURE,
            ci,
            tolerance,
            f"{where}: the suite is too small for this tolerance (needs "
            f"{needed} items to show a drop under {tolerance:.3f} at {confidence:.0%})",
        )
    if ci.low >= -tolerance:  # a drop of exactly the tolerance is within it (tolerance 1 turns the check off)
        return Check(name, PASS, ci, tolerance, f"{where}: no worse than the tolerance")
    return Check(
        name,
        UNSURE,
        ci,
        tolerance,
        f"{where}: the interval reaches below -{tolerance:.3f}, too wide to show the drop is within tolerance",
    )


def superiority(
    baseline: Sequence[float],
    challenger: Sequence[float],
    clusters: Sequence | None = None,
    *,
    margin: float = 0.0,
    confidence: float = 0.95,
    samples: int = 2000,
    seed: int = 0,
    min_items: int = 10,
    min_clusters: int = 5,
    name: str = "superiority",
) -> Check:
    """Is the challenger better than the baseline by more than ``margin``, with a CI above zero?"""
    ci = cluster_bootstrap(baseline, challenger, clusters, samples=samples, confidence=confidence, seed=seed)
    where = (
        f"{name}: diff {ci.mean:+.3f}, {confidence:.0%} CI [{ci.low:+.3f}, {ci.high:+.3f}] over "
        f"{ci.n_items} items in {ci.n_clusters} clusters, margin {margin:+.3f}"
    )
    if ci.n_items < min_items or ci.n_clusters < min_clusters:
        return Check(
            name,
            UNSURE,
            ci,
            margin,
            f"{where}: too few to judge (needs at least {min_items} items and {min_clusters} clusters)",
        )
    if ci.mean <= margin or ci.high <= 0:
        return Check(name, FAIL, ci, margin, f"{where}: not better by more than the margin")
    if ci.low > 0:
        return Check(name, PASS, ci, margin, f"{where}: better, and the interval excludes zero")
    return Check(name, UNSURE, ci, margin, f"{where}: the interval does not exclude zero")


def known(baseline: Sequence[float], floor: float) -> list[int]:
    """Indices of the items the baseline scores at least ``floor`` on: what it already answers well,
    the only items on which forgetting can be measured."""
    return [i for i, s in enumerate(baseline) if s >= floor]


@dataclass(frozen=True)
class AATolerance:
    """The forgetting tolerance an A/A run supports, and the churn it was derived from."""

    tolerance: float
    interval: Interval  # of run_b - run_a
    flip_rate: float  # share of items whose score differs by at least 0.5 between the two runs
    n_items: int
    rule: str


def aa_tolerance(
    run_a: Sequence[float],
    run_b: Sequence[float],
    clusters: Sequence | None = None,
    *,
    confidence: float = 0.95,
    samples: int = 2000,
    seed: int = 0,
    floor: float = 0.01,
    step: float = 0.005,
) -> AATolerance:
    """Tolerance for the forgetting check from two retrains that differ only in seed (rule: module doc).

    ``run_a``/``run_b``: their per-item scores on the regression suite (the items the baseline knows).
    """
    ci = cluster_bootstrap(run_a, run_b, clusters, samples=samples, confidence=confidence, seed=seed)
    a, b = np.asarray(run_a, dtype=float), np.asarray(run_b, dtype=float)
    flip_rate = float((np.abs(b - a) >= 0.5).mean()) if len(a) else 0.0
    noise = max(abs(ci.low), abs(ci.high))
    resolvable = -math.log((1 - confidence) / 2) / max(1, len(a))  # the smallest t this suite can ever pass
    tolerance = math.ceil(round(max(noise, floor, resolvable) / step, 9)) * step
    rule = (
        f"max(|{ci.low:+.4f}|, |{ci.high:+.4f}|) = {noise:.4f} (A/A {confidence:.0%} CI over {ci.n_items} items, "
        f"{ci.n_clusters} clusters; {flip_rate:.1%} of items flip), at least {floor} and the suite's resolution "
        f"{resolvable:.4f}, rounded up to {step}"
    )
    return AATolerance(float(tolerance), ci, flip_rate, len(a), rule)
