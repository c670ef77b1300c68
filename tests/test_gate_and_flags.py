"""The gate's arithmetic and the routing flag, without models."""

from __future__ import annotations

import time

import pytest

from flows.evaluate import decide, known_diff, paired_bootstrap
from tuneloop.config import GateConfig
from tuneloop.flags import Router, challenger_percent, set_challenger_percent


def test_bootstrap_ci_excludes_zero_only_for_a_real_improvement():
    base = [0.2, 0.4, 0.1, 0.3] * 10
    better = [s + 0.3 for s in base]
    noisy = [s + (0.3 if i % 2 else -0.3) for i, s in enumerate(base)]
    diff, low, high = paired_bootstrap(base, better, 1000, 0.95)
    assert diff == pytest.approx(0.3) and low > 0
    diff, low, high = paired_bootstrap(base, noisy, 1000, 0.95)
    assert low < 0 < high


def test_gate_reasons():
    gate = GateConfig(margin=0.05, adversarial_tolerance=0.02)
    assert decide(gate, (0.2, 0.1, 0.3), 0.0) == []
    assert any("needs more than" in r for r in decide(gate, (0.03, 0.01, 0.05), 0.0))
    assert any("does not exclude zero" in r for r in decide(gate, (0.2, -0.01, 0.4), 0.0))
    assert any("adversarial" in r for r in decide(gate, (0.2, 0.1, 0.3), -0.05))
    assert any("forgot" in r for r in decide(gate, (0.2, 0.1, 0.3), 0.0, -0.2))


def test_forgetting_is_measured_on_what_the_baseline_already_answers_well():
    baseline = [1.0, 0.9, 0.0, 0.1, 1.0]
    learned_the_unknown = [1.0, 0.9, 1.0, 1.0, 1.0]  # gains on items it never knew do not hide a loss
    forgot_one = [1.0, 0.9, 1.0, 1.0, 0.0]
    assert known_diff(baseline, learned_the_unknown, 0.5) == (0.0, 3)
    diff, n = known_diff(baseline, forgot_one, 0.5)
    assert n == 3 and diff == pytest.approx(-1 / 3)
    assert any("forgot" in r for r in decide(GateConfig(), (0.2, 0.1, 0.3), 0.0, diff))
    assert known_diff([0.0, 0.2], [1.0, 1.0], 0.5) == (0.0, 0)  # nothing known: nothing to forget


def test_router_is_sticky_and_follows_the_file_live(tmp_path):
    flag_file = tmp_path / "flags.json"
    set_challenger_percent(flag_file, "route", 30)
    router = Router(flag_file, "route")
    first = {u: router.variant(f"user-{u}") for u in range(1000)}
    share = sum(v == "challenger" for v in first.values()) / 1000
    assert 0.25 < share < 0.35
    assert all(router.variant(f"user-{u}") == v for u, v in first.items())

    set_challenger_percent(flag_file, "route", 60)  # ramping up keeps every canary user on the challenger
    deadline = time.monotonic() + 3
    while router.variant("probe") and sum(router.variant(f"user-{u}") == "challenger" for u in range(1000)) < 550:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert all(router.variant(f"user-{u}") == "challenger" for u, v in first.items() if v == "challenger")

    set_challenger_percent(flag_file, "route", 0)
    deadline = time.monotonic() + 3
    while any(router.variant(f"user-{u}") == "challenger" for u in range(1000)):
        assert time.monotonic() < deadline, "rollback did not take effect"
        time.sleep(0.05)
    assert challenger_percent(flag_file, "route") == 0
    with pytest.raises(ValueError, match="challenger_percent"):
        set_challenger_percent(flag_file, "route", 101)
