"""Live health of a canary: negative-feedback rates per version and what to do about them.

Shared by the rollout flow (ramp 10 -> 50 -> 100 % while healthy) and the service's live guard
(roll back to 0 % the moment the challenger is significantly worse).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from tuneloop.config import DeployConfig, LoopConfig
from tuneloop.feedback import FeedbackStore
from tuneloop.flags import set_challenger_percent


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


def negative_rates(store: FeedbackStore, kind: str, versions: set[str]) -> dict[str, Rate]:
    """Thumbs-down share per model version, from everything the store acknowledged."""
    counts = store.rating_counts(kind, versions)
    return {v: Rate(*counts.get(v, (0, 0))) for v in versions}


def one_sided_p(worse: Rate, better: Rate) -> float:
    """p-value of 'worse has the higher negative rate' (pooled two-proportion z-test)."""
    pooled = (worse.negative + better.negative) / (worse.n + better.n)
    if pooled in (0.0, 1.0):
        return 1.0
    se = math.sqrt(pooled * (1 - pooled) * (1 / worse.n + 1 / better.n))
    z = (worse.value - better.value) / se
    return 0.5 * math.erfc(z / math.sqrt(2))


def judge(champion: Rate, challenger: Rate, config: DeployConfig) -> Verdict:
    if min(champion.n, challenger.n) < config.min_samples:
        return Verdict("wait", f"need {config.min_samples} feedback records per version "
                               f"(champion {champion.n}, challenger {challenger.n})")
    p = one_sided_p(challenger, champion)
    summary = (f"negative rate challenger {challenger.value:.1%} (n={challenger.n}) vs champion "
               f"{champion.value:.1%} (n={champion.n}), one-sided p={p:.4f}")
    if p < config.guard_alpha and challenger.value > champion.value + config.worse_tolerance:
        return Verdict("rollback", "significantly worse: " + summary)
    if challenger.value <= champion.value + config.worse_tolerance:
        return Verdict("ramp", "not worse: " + summary)
    return Verdict("wait", "inconclusive: " + summary)


def check(config: LoopConfig, champion: str, challenger: str) -> Verdict:
    """Judge the live challenger against the champion ('base' when none) from stored feedback."""
    rates = negative_rates(FeedbackStore(config.feedback_db), config.kind, {champion, challenger})
    return judge(rates[champion], rates[challenger], config.deploy)


def roll_back(config: LoopConfig, challenger: str, reason: str) -> None:
    """Challenger share to 0 % at once, and the reason recorded on the version and in the history."""
    from mlflow import MlflowClient

    set_challenger_percent(config.flag_file, config.flag_key, 0)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    MlflowClient().set_model_version_tag(config.model_name, challenger, "rolled_back", f"{stamp} {reason}")
    with open(config.home.resolve() / "rollouts.jsonl", "a") as log:
        log.write(json.dumps({"at": stamp, "model": config.model_name, "version": challenger,
                              "action": "rollback", "reason": reason}) + "\n")
