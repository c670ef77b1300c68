"""Live health of a canary: negative-feedback rates per version (and per segment) and what to do about them.

Shared by the rollout flow (ramp 10 -> 50 -> 100 % while healthy) and the service's live guard
(roll back to 0 % the moment the challenger is significantly worse). "Significantly" is judged by
an always-valid sequential test (``tuneloop.release.sequential``), so checking every few seconds does not
inflate the false-rollback rate; the segments' tests share ``deploy.segment_alpha_share`` of the
alpha (Bonferroni over at most ``deploy.guard_segments`` segments), so the family of tests a guard
runs on one challenger rolls it back wrongly at most ``deploy.guard_alpha`` of the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from tuneloop.config import DeployConfig, LoopConfig
from tuneloop.data.feedback import FeedbackStore
from tuneloop.release.sequential import rise_test


@dataclass(frozen=True)
class Rate:
    n: int
    negative: int

    @property
    def value(self) -> float:
        return self.negative / self.n if self.n else 0.0


@dataclass(frozen=True)
class Verdict:
    action: Literal["rollback", "ramp", "wait"]
    reason: str
    segment: str | None = None  # set when one segment's regression decided a rollback
    p_value: float | None = None  # always-valid p of "the challenger is worse" (None: not tested yet)


def negative_rates(store: FeedbackStore, kind: str, versions: set[str]) -> dict[str, Rate]:
    """Thumbs-down share per model version, from everything the store acknowledged."""
    counts = store.rating_counts(kind, versions)
    return {v: Rate(*counts.get(v, (0, 0))) for v in versions}


def segment_rates(store: FeedbackStore, kind: str, versions: set[str]) -> dict[str, dict[str, Rate]]:
    """segment -> version -> thumbs-down share (records without a segment are left out; every version present)."""
    out: dict[str, dict[str, Rate]] = {}
    for (version, segment), counts in store.rating_counts_by_segment(kind, versions).items():
        if segment is not None:
            out.setdefault(segment, {v: Rate(0, 0) for v in versions})[version] = Rate(*counts)
    return out


def one_sided_p(worse: Rate, better: Rate) -> float:
    """Fixed-sample p-value of 'worse has the higher negative rate' (pooled two-proportion z-test).

    Valid for one look only: repeated on growing counts it rejects a true null far more often than
    its alpha (see ``tuneloop.release.sequential``). Kept for one-off comparisons and the simulation's baseline.
    """
    pooled = (worse.negative + better.negative) / (worse.n + better.n)
    if pooled in (0.0, 1.0):
        return 1.0
    se = math.sqrt(pooled * (1 - pooled) * (1 / worse.n + 1 / better.n))
    z = (worse.value - better.value) / se
    return 0.5 * math.erfc(z / math.sqrt(2))


def judge(champion: Rate, challenger: Rate, config: DeployConfig, alpha: float | None = None) -> Verdict:
    """rollback when the always-valid p of "challenger worse" is <= ``alpha`` (default ``guard_alpha``)
    and its rate exceeds the champion's by more than ``worse_tolerance``; ramp when it does not exceed
    it by more than the tolerance; wait otherwise, and below ``min_samples`` per side."""
    alpha = config.guard_alpha if alpha is None else alpha
    if min(champion.n, challenger.n) < config.min_samples:
        return Verdict(
            "wait",
            f"need {config.min_samples} feedback records per version "
            f"(champion {champion.n}, challenger {challenger.n})",
        )
    test = rise_test(challenger.n, challenger.negative, champion.n, champion.negative, config.guard_mixture_scale)
    summary = (
        f"negative rate challenger {challenger.value:.1%} (n={challenger.n}) vs champion "
        f"{champion.value:.1%} (n={champion.n}), always-valid p={test.p_value:.4g} (alpha {alpha:.4g})"
    )
    if test.p_value <= alpha and challenger.value > champion.value + config.worse_tolerance:
        return Verdict("rollback", "significantly worse: " + summary, p_value=test.p_value)
    if challenger.value <= champion.value + config.worse_tolerance:
        return Verdict("ramp", "not worse: " + summary, p_value=test.p_value)
    return Verdict("wait", "inconclusive: " + summary, p_value=test.p_value)


@dataclass
class Guard:
    """Judges one challenger at a time, overall and in its segments, over many looks.

    The overall rate is tested at ``guard_alpha x (1 - segment_alpha_share)``; each segment at
    ``guard_alpha x segment_alpha_share / guard_segments``. The segments tested are the first
    ``guard_segments`` to reach ``min_samples`` on both sides, and stay tested for this challenger:
    the union bound over every test the guard ever runs on it keeps its false-rollback rate at
    ``guard_alpha`` at most. A new challenger starts afresh. Segments can roll back, not hold a ramp:
    the ramp follows the overall rate.
    """

    config: DeployConfig
    challenger: str | None = None
    tested: list[str] = field(default_factory=list)

    @property
    def alphas(self) -> tuple[float, float]:
        """(overall, per segment) significance levels."""
        if self.config.guard_segments == 0:
            return self.config.guard_alpha, 0.0
        share = self.config.segment_alpha_share
        return self.config.guard_alpha * (1 - share), self.config.guard_alpha * share / self.config.guard_segments

    def judge(
        self,
        challenger: str,
        champion_rate: Rate,
        challenger_rate: Rate,
        segments: dict[str, tuple[Rate, Rate]] | None = None,
    ) -> Verdict:
        """``segments``: segment -> (champion rate, challenger rate) within that segment."""
        if challenger != self.challenger:
            self.challenger, self.tested = challenger, []
        overall_alpha, segment_alpha = self.alphas
        overall = judge(champion_rate, challenger_rate, self.config, overall_alpha)
        if overall.action == "rollback":
            return overall
        segments = segments or {}
        for name in sorted(segments, key=lambda s: (-min(r.n for r in segments[s]), s)):
            ready = min(r.n for r in segments[name]) >= self.config.min_samples
            if ready and name not in self.tested and len(self.tested) < self.config.guard_segments:
                self.tested.append(name)
        for name in self.tested:
            if name in segments:
                verdict = judge(*segments[name], self.config, segment_alpha)
                if verdict.action == "rollback":
                    return Verdict(
                        "rollback",
                        f"segment {name!r} {verdict.reason} (overall: {overall.reason})",
                        segment=name,
                        p_value=verdict.p_value,
                    )
        return overall


_GUARDS: dict[tuple[str, str], Guard] = {}  # (store, model) -> the guard of its current canary, for ``check``


def check(config: LoopConfig, champion: str, challenger: str, guard: Guard | None = None) -> Verdict:
    """Judge the live challenger against the champion ('base' when none) from stored feedback, overall
    and per segment. Every look at one canary must go through one ``Guard`` (it remembers which
    segments it tests): by default this process keeps one per store and model."""
    store = FeedbackStore(config.feedback_db)
    versions = {champion, challenger}
    rates = negative_rates(store, config.kind, versions)
    by_segment = {name: (r[champion], r[challenger]) for name, r in segment_rates(store, config.kind, versions).items()}
    if guard is None:
        guard = _GUARDS.setdefault((config.feedback_db, config.model_name), Guard(config.deploy))
        guard.config = config.deploy
    return guard.judge(challenger, rates[champion], rates[challenger], by_segment)
