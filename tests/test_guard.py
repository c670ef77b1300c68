"""The live guard's sequential test: false rollbacks within alpha in simulated A/A canaries checked at
every record, a 2x worse challenger caught (and how soon), and a regression in one segment rolled
back while the overall rate looks fine."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_config
from mlflow import MlflowClient

from tuneloop.config import DeployConfig
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.records import FeedbackRecord
from tuneloop.release.flags import challenger_percent, set_challenger_percent
from tuneloop.release.operations import events
from tuneloop.release.rollout import Guard, Rate, check, judge
from tuneloop.release.sequential import rise_test, simulate
from tuneloop.serving.live import guard_once


@pytest.mark.parametrize("rate, share", [(0.1, 0.1), (0.02, 0.1), (0.3, 0.5)])
def test_aa_canary_checked_at_every_record_rolls_back_within_alpha(rate, share):
    """Same true rate on both sides, the guard looking after every feedback record: the share of
    canaries it rolls back stays within alpha; a repeated fixed-sample z-test's is several times alpha."""
    alpha = 0.05
    sim = simulate(rate, rate, share=share, observations=3000, runs=1000, alpha=alpha, tau=0.1, min_samples=30, seed=7)
    print(
        f"A/A rate {rate} share {share}: sequential {sim.rollback_rate:.3f}, repeated z-test {sim.rollback_rate_z:.3f} "
        f"(alpha {alpha}, {sim.runs} runs x {sim.observations} records)"
    )
    assert sim.rollback_rate <= alpha
    assert sim.rollback_rate_z > 2 * alpha  # what the guard did before: alarms that did not mean what they said


def test_a_2x_worse_challenger_is_rolled_back_and_the_delay_is_measured():
    deploy = DeployConfig()
    sim = simulate(
        0.1,
        0.2,
        share=0.1,
        observations=6000,
        runs=300,
        alpha=deploy.guard_alpha,
        tau=deploy.guard_mixture_scale,
        min_samples=deploy.min_samples,
        seed=8,
    )
    print(
        f"2x worse (10% -> 20%) at a 10% canary, alpha {deploy.guard_alpha}: rolled back in {sim.rollback_rate:.1%} of "
        f"{sim.runs} runs; challenger records until rollback median {sim.median_delay_challenger:.0f}, "
        f"p90 {sim.p90_delay_challenger:.0f} (all records median {sim.median_delay:.0f})"
    )
    assert sim.rollback_rate >= 0.95
    assert deploy.min_samples <= sim.median_delay_challenger <= 600


def test_the_always_valid_p_value_orders_evidence():
    weak, strong = rise_test(100, 16, 100, 10, tau=0.1), rise_test(100, 50, 100, 10, tau=0.1)
    assert 0 < strong.p_value < 1e-6 < weak.p_value <= 1
    assert rise_test(100, 10, 100, 10, tau=0.1).p_value == 1.0  # no rise, no evidence
    assert rise_test(0, 0, 100, 10, tau=0.1).p_value == 1.0
    deploy = DeployConfig(min_samples=30, guard_alpha=0.01, worse_tolerance=0.02)
    assert judge(Rate(100, 10), Rate(100, 50), deploy).action == "rollback"
    assert judge(Rate(100, 10), Rate(100, 16), deploy).action == "wait"


def _simulate_guard_with_segments(runs: int, segments: int, alpha: float, seed: int) -> float:
    """Share of A/A canaries the Guard (overall + per-segment tests) rolls back, looking every 100 records."""
    rng = np.random.default_rng(seed)
    deploy = DeployConfig(guard_alpha=alpha, min_samples=30, worse_tolerance=0.0, guard_segments=segments)
    rolled = 0
    for _ in range(runs):
        guard = Guard(deploy)
        n = 4000
        seg = rng.integers(0, segments, n)
        to_challenger = rng.random(n) < 0.3
        down = rng.random(n) < 0.1
        for look in range(100, n + 1, 100):
            s, c, d = seg[:look], to_challenger[:look], down[:look]
            by_segment = {
                f"s{k}": (
                    Rate(int(((s == k) & ~c).sum()), int(((s == k) & ~c & d).sum())),
                    Rate(int(((s == k) & c).sum()), int(((s == k) & c & d).sum())),
                )
                for k in range(segments)
            }
            verdict = guard.judge(
                "2", Rate(int((~c).sum()), int((~c & d).sum())), Rate(int(c.sum()), int((c & d).sum())), by_segment
            )
            if verdict.action == "rollback":
                rolled += 1
                break
    return rolled / runs


def test_testing_several_segments_keeps_the_family_within_alpha():
    rate = _simulate_guard_with_segments(runs=300, segments=4, alpha=0.05, seed=3)
    print(
        f"A/A with 4 segments, overall + per-segment tests every 100 records: {rate:.3f} rolled back (alpha 0.05, 300 runs)"
    )
    assert rate <= 0.05


def _registered_challenger(config) -> str:
    """A real registry version to roll back (the guard tags it); its adapter is never loaded here."""
    client = MlflowClient()
    client.create_registered_model(config.model_name)
    version = client.create_model_version(config.model_name, source=str(config.home / "no-adapter")).version
    client.set_registered_model_alias(config.model_name, "challenger", str(version))
    return str(version)


def _ratings(store: FeedbackStore, kind: str, version: str, segment: str, n: int, down: int, tag: str) -> None:
    for i in range(n):
        store.add(
            FeedbackRecord(
                request_id=f"{tag}-{version}-{segment}-{i}",
                user_id=f"u{i}",
                model_version=version,
                kind=kind,
                prompt="where is my hub",
                output="shipping_status",
                rating="down" if i < down else "up",
                segment=segment,
            )
        )


def test_a_regression_in_one_segment_rolls_back_while_the_overall_rate_looks_fine(home):
    config = tiny_config(home, "classification")
    challenger = _registered_challenger(config)
    set_challenger_percent(config, 10)
    store = FeedbackStore(config.feedback_db)
    # champion 10 % everywhere; the challenger is better on web and much worse on mobile
    _ratings(store, config.kind, "base", "web", 400, 40, "a")
    _ratings(store, config.kind, "base", "mobile", 100, 10, "a")
    _ratings(store, config.kind, challenger, "web", 160, 6, "a")
    _ratings(store, config.kind, challenger, "mobile", 60, 30, "a")
    overall_champion, overall_challenger = Rate(500, 50), Rate(220, 36)
    overall = judge(overall_champion, overall_challenger, config.deploy, Guard(config.deploy).alphas[0])
    assert overall.action != "rollback", overall.reason  # 16 % vs 10 % overall: not significant

    verdict = guard_once(config, store, {"champion": "base", "challenger": challenger}, Guard(config.deploy))
    assert verdict.action == "rollback" and verdict.segment == "mobile", verdict.reason
    assert challenger_percent(config) == 0
    [event] = events(config, action="rollback")
    assert event["segment"] == "mobile" and event["version"] == challenger and "segment 'mobile'" in event["reason"]
    assert "live guard" in MlflowClient().get_model_version(config.model_name, challenger).tags["rolled_back"]
    # the rollout flow's check reaches the same verdict from the same store
    assert check(config, "base", challenger).segment == "mobile"


def test_same_segments_same_rates_do_not_roll_back(home):
    config = tiny_config(home, "classification")
    challenger = _registered_challenger(config)
    set_challenger_percent(config, 10)
    store = FeedbackStore(config.feedback_db)
    for version, n in (("base", 300), (challenger, 100)):
        _ratings(store, config.kind, version, "web", n, n // 10, "b")
        _ratings(store, config.kind, version, "mobile", n, n // 10, "b")
    verdict = guard_once(config, store, {"champion": "base", "challenger": challenger}, Guard(config.deploy))
    assert verdict.action == "ramp" and challenger_percent(config) == 10


def test_the_services_live_guard_rolls_back_a_one_segment_regression(home):
    """End to end: a running service's guard sees the feedback, rolls the challenger back for its mobile
    segment, says why, and publishes per-segment rates and the p-value in /metrics."""
    import time

    import httpx
    import mlflow
    from test_shadow import register_tiny_versions

    from devtools.localserver import tuneloop_service

    config = tiny_config(home, "generation")
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    champion, challenger = register_tiny_versions(config)
    set_challenger_percent(config, 10)
    store = FeedbackStore(config.feedback_db)
    _ratings(store, config.kind, champion, "web", 400, 40, "s")
    _ratings(store, config.kind, champion, "mobile", 100, 10, "s")
    _ratings(store, config.kind, challenger, "web", 160, 6, "s")
    _ratings(store, config.kind, challenger, "mobile", 60, 30, "s")
    with tuneloop_service(
        home,
        "generation",
        TUNELOOP_TINY="true",
        TUNELOOP_API_TOKEN="t",
        TUNELOOP_DEPLOY__SERVE_WORKERS="1",
        TUNELOOP_DEPLOY__GUARD_INTERVAL_S="0.5",
    ) as base:
        began = time.monotonic()
        while challenger_percent(config) != 0:
            assert time.monotonic() - began < 60, "the live guard did not roll back"
            time.sleep(0.1)
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
    [event] = events(config, action="rollback")
    assert (
        event["segment"] == "mobile"
        and event["version"] == challenger
        and event["reason"].startswith("live guard: segment")
    )
    rate = [
        line
        for line in metrics.splitlines()
        if line.startswith("tuneloop_segment_negative_feedback_rate{")
        and 'segment="mobile"' in line
        and f'version="{challenger}"' in line
    ]
    assert len(rate) == 1 and rate[0].endswith(" 0.5"), metrics
    [p_value] = [
        line
        for line in metrics.splitlines()
        if line.startswith("tuneloop_guard_p_value{") and 'segment="mobile"' in line
    ]
    assert (
        float(p_value.rsplit(" ", 1)[1])
        <= config.deploy.guard_alpha * config.deploy.segment_alpha_share / config.deploy.guard_segments
    )
