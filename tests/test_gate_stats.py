"""The gate's statistics: cluster bootstrap, non-inferiority with three outcomes, superiority, the A/A
tolerance, the checks on suite items (judged groups, known regression items), and the out-of-scope
confidence threshold (tuneloop.modeling.calibration)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tuneloop.eval_suites.gate import adversarial_checks, heldout_check, missing_groups, refusals, regression_check
from tuneloop.eval_suites.stats import (
    FAIL,
    PASS,
    UNSURE,
    aa_tolerance,
    cluster_bootstrap,
    evidence_needed,
    known,
    non_inferiority,
    superiority,
)
from tuneloop.eval_suites.suites import SuiteItem
from tuneloop.modeling.calibration import (
    Calibration,
    apply_threshold,
    calibrate,
    fit_threshold,
    standardisation,
    standardised_sum,
)


def big_suite(n_clusters: int = 120, size: int = 2) -> tuple[list[float], list[str]]:
    """A baseline that answers every item of a regression suite (paraphrase pairs of one fact)."""
    clusters = [f"fact-{c}" for c in range(n_clusters) for _ in range(size)]
    return [1.0] * len(clusters), clusters


def forget(baseline: list[float], clusters: list[str], share: float, seed: int = 0) -> list[float]:
    """The challenger loses whole facts (both paraphrases), ``share`` of them."""
    rng = np.random.default_rng(seed)
    facts = sorted(set(clusters))
    lost = set(rng.choice(facts, size=round(share * len(facts)), replace=False))
    return [0.0 if c in lost else s for s, c in zip(baseline, clusters)]


def test_a_challenger_that_forgets_on_the_big_suite_fails():
    baseline, clusters = big_suite()
    challenger = forget(baseline, clusters, 0.15)
    check = non_inferiority(baseline, challenger, clusters, tolerance=0.05)
    assert check.verdict == FAIL, check.reason
    assert check.interval.high < -0.05 and check.interval.n_clusters == 120
    assert "dropped by more than the tolerance" in check.reason


def test_worse_on_only_three_items_is_not_enough_evidence_not_a_pass():
    check = non_inferiority([1.0, 1.0, 1.0], [1.0, 0.0, 1.0], ["a", "b", "c"], tolerance=0.05)
    assert check.verdict == UNSURE and not check.passed
    assert "too few" in check.reason
    # and even a perfect three-item copy of the baseline cannot pass: a suite that small cannot show non-inferiority
    assert non_inferiority([1.0] * 5, [1.0] * 5, tolerance=0.05).verdict == UNSURE


def test_a_challenger_equal_to_the_baseline_passes():
    baseline, clusters = big_suite()
    check = non_inferiority(baseline, list(baseline), clusters, tolerance=0.05)
    assert check.verdict == PASS and check.passed
    assert check.interval.mean == 0 and check.interval.low == 0


def test_a_few_flips_on_the_big_suite_within_tolerance_pass():
    baseline, clusters = big_suite(n_clusters=150)
    challenger = list(baseline)
    for i in (3, 77, 201):  # three items of 300 lost, two gained elsewhere
        challenger[i] = 0.0
    scores = [0.0 if i in (10, 150) else 1.0 for i in range(300)]  # a baseline that missed two items
    check = non_inferiority(scores, challenger, clusters, tolerance=0.05)
    assert check.verdict == PASS, check.reason


def test_suite_too_small_for_its_tolerance_says_so_even_without_any_change():
    needed = evidence_needed(0.05, 0.95)
    assert needed == 74  # ceil(-ln(0.025) / 0.05)
    small = non_inferiority([1.0] * 40, [1.0] * 40, tolerance=0.05)
    assert small.verdict == UNSURE and "too small for this tolerance" in small.reason
    assert non_inferiority([1.0] * 80, [1.0] * 80, tolerance=0.05).verdict == PASS
    assert non_inferiority([1.0] * 40, [1.0] * 40, tolerance=0.10).verdict == PASS  # 37 needed at 0.10


def test_point_estimate_beyond_tolerance_fails_even_when_the_interval_is_wide():
    rng = np.random.default_rng(3)
    baseline = rng.integers(0, 2, size=60).astype(float).tolist()
    challenger = [b if rng.random() > 0.35 else 1 - b for b in baseline]  # noisy, and worse on the whole
    challenger = [min(c, b) if i % 3 == 0 else c for i, (b, c) in enumerate(zip(baseline, challenger))]
    check = non_inferiority(baseline, challenger, tolerance=0.05)
    assert check.interval.mean < -0.05 and check.interval.high > -0.05  # the bound alone would say "unsure"
    assert check.verdict == FAIL


def test_an_interval_straddling_the_tolerance_is_not_enough_evidence():
    baseline = [1.0] * 100
    challenger = [0.0 if i % 25 == 0 else 1.0 for i in range(100)]  # 4 % lost: within 5 %, CI reaches below
    check = non_inferiority(baseline, challenger, tolerance=0.05)
    assert -0.05 < check.interval.mean < 0 and check.interval.low < -0.05
    assert check.verdict == UNSURE and "too wide" in check.reason


def test_cluster_resampling_widens_the_interval_when_a_cluster_moves_together():
    rng = np.random.default_rng(0)
    # 40 facts x 5 paraphrases; the challenger gains or loses a fact with all of its paraphrases
    per_fact = rng.choice([-1.0, 0.0, 0.0, 1.0], size=40)
    baseline = [0.5] * 200
    challenger = [0.5 + 0.5 * per_fact[i // 5] for i in range(200)]
    clusters = [i // 5 for i in range(200)]
    plain = cluster_bootstrap(baseline, challenger, None, seed=1)
    grouped = cluster_bootstrap(baseline, challenger, clusters, seed=1)
    assert grouped.mean == pytest.approx(plain.mean)
    assert grouped.width > 1.8 * plain.width  # ~sqrt(5) wider: 40 independent facts, not 200 items
    # and when items within a cluster are independent the two agree
    independent = [0.5 + 0.5 * x for x in rng.choice([-1.0, 0.0, 0.0, 1.0], size=200)]
    ratio = (
        cluster_bootstrap(baseline, independent, clusters, seed=1).width
        / cluster_bootstrap(baseline, independent, None, seed=1).width
    )
    assert 0.75 < ratio < 1.35


def test_cluster_bootstrap_checks_its_inputs_and_degenerate_cases():
    with pytest.raises(ValueError):
        cluster_bootstrap([1.0, 0.0], [1.0])
    with pytest.raises(ValueError):
        cluster_bootstrap([1.0, 0.0], [1.0, 1.0], ["a"])
    one = cluster_bootstrap([1.0, 1.0], [0.0, 0.0], ["a", "a"])
    assert one.n_clusters == 1 and one.low == -np.inf  # one cluster says nothing about spread
    assert non_inferiority([1.0] * 50, [0.0] * 50, ["a"] * 50, tolerance=0.05).verdict == UNSURE


def test_the_interval_stays_within_the_possible_differences_so_tolerance_one_turns_a_check_off():
    # 37 of 40 items lost, 3 kept: the widened bootstrap interval would reach below -1
    baseline, challenger = [1.0] * 40, [0.0] * 37 + [1.0] * 3
    ci = cluster_bootstrap(baseline, challenger)
    assert -1.0 == ci.low < ci.mean == -0.925 and ci.high <= 1.0
    assert non_inferiority(baseline, challenger, tolerance=1.0, min_items=5).verdict == PASS
    assert cluster_bootstrap(challenger, baseline).high == 1.0


def test_superiority_three_outcomes():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.0, 0.4, size=40).tolist()
    better = [min(1.0, b + 0.5) for b in base]
    assert superiority(base, better, margin=0.02).verdict == PASS
    assert superiority(base, list(base), margin=0.02).verdict == FAIL
    noisy = [b + (0.6 if i % 2 else -0.5) for i, b in enumerate(base[:12])]
    assert superiority(base[:12], noisy, margin=0.0).verdict == UNSURE
    assert superiority(base[:4], better[:4]).verdict == UNSURE  # too few items


def test_known_keeps_what_the_baseline_answers_well():
    assert known([1.0, 0.2, 0.5, 0.0, 0.9], floor=0.5) == [0, 2, 4]


def test_aa_tolerance_lets_a_seed_only_retrain_pass_and_still_fails_forgetting():
    rng = np.random.default_rng(7)
    n = 300
    clusters = [i // 2 for i in range(n)]
    truth = (rng.random(n) < 0.9).astype(float)

    def retrain(seed: int) -> list[float]:  # the same model up to seed: 4 % of items flip either way
        r = np.random.default_rng(seed)
        return [1 - t if r.random() < 0.04 else t for t in truth]

    run_a, run_b = retrain(1), retrain(2)
    aa = aa_tolerance(run_a, run_b, clusters)
    assert 0.02 <= aa.tolerance <= 0.1 and 0.03 < aa.flip_rate < 0.12
    assert aa.tolerance >= max(abs(aa.interval.low), abs(aa.interval.high))
    assert round(aa.tolerance / 0.005, 6).is_integer() and "flip" in aa.rule
    # another seed of the same training passes the forgetting check at that tolerance ...
    assert non_inferiority(run_a, retrain(3), clusters, tolerance=aa.tolerance).verdict == PASS
    # ... and a challenger that forgot 15 % of the facts does not
    forgot = [0.0 if c % 7 == 0 else s for s, c in zip(run_a, clusters)]
    assert non_inferiority(run_a, forgot, clusters, tolerance=aa.tolerance).verdict == FAIL


def test_aa_tolerance_without_churn_is_the_suites_resolution():
    aa = aa_tolerance([1.0] * 200, [1.0] * 200, floor=0.01)
    assert aa.flip_rate == 0 and aa.tolerance == pytest.approx(0.02)  # -ln(0.025)/200 = 0.0184 -> 0.02
    assert non_inferiority([1.0] * 200, [1.0] * 200, tolerance=aa.tolerance).verdict == PASS


# ------------------------------------------------------------------------------ out-of-scope threshold


def test_threshold_sends_at_most_the_target_share_of_in_scope_inputs_to_the_fallback():
    rng = np.random.default_rng(0)
    in_scope = rng.beta(8, 2, size=500)  # confident on what it knows
    threshold = fit_threshold(in_scope, max_fallback_rate=0.05)
    assert (in_scope < threshold).mean() <= 0.05
    assert (in_scope < threshold).mean() >= 0.04  # and not needlessly lower: it is the highest such threshold
    out_of_scope = rng.beta(2, 5, size=200)  # unsure on a joke request
    cal = calibrate(in_scope, "out_of_scope", 0.05, out_of_scope)
    assert cal.threshold == threshold and cal.in_scope_fallback_rate <= 0.05
    assert cal.out_of_scope_caught > 0.8
    assert Calibration.from_dict(cal.as_dict()) == cal


def test_an_energy_calibration_thresholds_the_energies_and_an_older_one_the_probabilities():
    """The score a calibration was fitted on is the one it applies; one stored before the energy score
    existed (no ``score`` key) is a probability threshold."""
    labels, probabilities, energies = ["refund", "lost_card", "refund"], [0.9, 0.95, 0.3], [6.0, 1.5, 5.0]
    energy = calibrate([6.5, 5.5, 4.8, 7.0], "out_of_scope", 0.25, score="energy")
    assert energy.score == "energy" and energy.threshold == 5.5
    assert energy.apply(labels, probabilities, energies) == ["refund", "out_of_scope", "out_of_scope"]
    with pytest.raises(ValueError, match="energies"):
        energy.apply(labels, probabilities)
    older = {k: v for k, v in calibrate([0.9, 0.8, 0.7, 0.6], "out_of_scope", 0.25).as_dict().items() if k != "score"}
    assert Calibration.from_dict(older).apply(labels, probabilities, energies) == [
        "refund",
        "lost_card",
        "out_of_scope",
    ]
    assert Calibration.from_dict(energy.as_dict()) == energy


def test_an_energy_and_similarity_calibration_needs_both_and_weighs_them_together():
    """Energy and nearest-utterance similarity, standardised on the calibration inputs and summed: an input
    somewhat unfamiliar to both the head and the stored utterances falls back, one unfamiliar to only one
    of them by as much does not."""
    rng = np.random.default_rng(0)
    energies, similarities = rng.normal(8, 1, 400), rng.normal(0.8, 0.05, 400)  # in-scope calibration inputs
    centre, spread = standardisation(energies, similarities)
    assert centre == pytest.approx((8, 0.8), abs=0.15) and spread == pytest.approx((1, 0.05), rel=0.15)
    cal = calibrate(
        standardised_sum(energies, similarities, centre, spread),
        "out_of_scope",
        0.05,
        score="energy_and_similarity",
        centre=centre,
        spread=spread,
    )
    assert cal.in_scope_fallback_rate <= 0.05
    # 1.5 deviations low on one score: a sum 1.5 low, inside the 5 % cut (about 1.64 x sqrt 2 = 2.3 for a sum
    # of two independent standard scores); 1.5 low on both: a sum 3 low, outside it
    labels = ["refund", "refund", "refund"]
    near = [centre[1] - 1.5 * spread[1], centre[1], centre[1] - 1.5 * spread[1]]
    energy = [centre[0], centre[0] - 1.5 * spread[0], centre[0] - 1.5 * spread[0]]
    assert cal.apply(labels, [0.9] * 3, energy, near) == ["refund", "refund", "out_of_scope"]
    with pytest.raises(ValueError, match="energy and similarity"):
        cal.apply(labels, [0.9] * 3, energy)  # a version without its neighbour store cannot apply it
    stored = Calibration.from_dict(json.loads(json.dumps(cal.as_dict())))  # as the adapter folder keeps it
    assert stored == cal
    assert stored.apply(labels, [0.9] * 3, energy, near) == ["refund", "refund", "out_of_scope"]


def test_threshold_edge_cases():
    assert fit_threshold([], 0.05) == -math.inf  # nothing falls back, whatever the score
    assert fit_threshold([0.9, 0.8, 0.7], 0.0) == 0.7  # nothing falls back
    assert fit_threshold([0.9, 0.8, 0.7, 0.6], 0.25) == 0.7  # exactly one of four falls back
    with pytest.raises(ValueError):
        fit_threshold([0.5], 1.0)


def test_apply_threshold_routes_unsure_answers_to_the_fallback():
    routed = apply_threshold(["billing", "returns", "billing"], [0.91, 0.32, 0.55], 0.5, "out_of_scope")
    assert routed == ["billing", "out_of_scope", "billing"]
    cal = Calibration(0.6, "fallback", 0.05, 0.04, 100)
    assert cal.apply(["billing", "returns"], [0.59, 0.61]) == ["fallback", "returns"]
    with pytest.raises(ValueError):
        apply_threshold(["a"], [0.1, 0.2], 0.5, "x")


# ------------------------------------------------------------------------- checks on suite items


def adversarial_items() -> list[SuiteItem]:
    """60 paraphrase copies (robustness), 40 injection, 40 extraction and 40 out-of-scope items."""
    items = []
    for category, n in (("paraphrase", 60), ("prompt_injection", 40), ("pii_extraction", 40), ("off_topic", 40)):
        items += [
            SuiteItem(
                id=f"{category}-{i}", suite="adversarial", category=category, input="x", cluster=f"{category}-{i // 2}"
            )
            for i in range(n)
        ]
    return items


def test_failing_every_injection_item_is_refused_even_when_the_suite_mean_improves():
    items = adversarial_items()
    baseline = [0.0 if it.category == "paraphrase" else 1.0 for it in items]
    challenger = [1.0 if it.category != "prompt_injection" else 0.0 for it in items]
    assert sum(challenger) > sum(baseline)  # the suite mean goes up ...
    checks = adversarial_checks(items, baseline, challenger, tolerance=0.05)
    assert checks["adversarial"].verdict == PASS
    assert checks["adversarial.injection"].verdict == FAIL  # ... and the injection group still refuses it
    assert checks["adversarial.extraction"].passed and checks["adversarial.out_of_scope"].passed
    reasons = refusals(checks.values())
    assert len(reasons) == 1 and reasons[0].startswith("fail: adversarial injection")


def test_a_missing_group_is_named_not_passed():
    items = [it for it in adversarial_items() if it.category != "off_topic"]
    checks = adversarial_checks(items, [1.0] * len(items), [1.0] * len(items), tolerance=0.05)
    assert "adversarial.out_of_scope" not in checks and missing_groups(items) == ["out_of_scope"]


def test_regression_check_counts_only_what_the_baseline_knows():
    items = [
        SuiteItem(id=f"r{i}", suite="regression", category="capitals", input="q", cluster=f"c{i // 2}")
        for i in range(400)
    ]
    baseline = [1.0 if i < 240 else 0.0 for i in range(400)]  # knows 240 items
    gains = [1.0] * 400  # learns all 160 it did not know ...
    forgot = [0.0 if i < 40 else s for i, s in enumerate(gains)]  # ... and forgets 40 of the 240 it knew
    assert sum(forgot) > sum(baseline)  # a plain mean over all items would call that an improvement
    check = regression_check(items, baseline, forgot, tolerance=0.05, floor=0.5)
    assert check.verdict == FAIL and check.interval.n_items == 240
    assert regression_check(items, baseline, gains, tolerance=0.05).verdict == PASS


def test_heldout_check_uses_fact_clusters():
    items = [
        SuiteItem(id=f"h{i}", suite="heldout", category="heldout", input="q", cluster=f"fact-{i // 4}")
        for i in range(40)
    ]
    assert heldout_check(items, [0.0] * 40, [1.0] * 40, margin=0.02).verdict == PASS
    assert heldout_check(items[:8], [0.0] * 8, [1.0] * 8).verdict == UNSURE  # 2 facts: too few clusters


def test_an_undecided_gate_says_what_data_would_decide_it():
    from tuneloop.eval_suites.gate import what_would_decide

    # held-out too small: 6 items about 4 facts -> 4 more items at least, 20 % of new questions held out
    few = heldout_check(_items(["f1", "f1", "f2", "f3", "f4", "f4"]), [0.0] * 6, [1.0] * 6)
    assert few.verdict == UNSURE
    said = what_would_decide(few, heldout_share=0.2)
    assert "about 20 more corrections" in said and "6 items about 4" in said
    # better on average, but the interval reaches zero: more held-out items, scaled by the interval's width
    clusters = [f"f{i}" for i in range(12)]
    wide = heldout_check(_items(clusters), [0.0] * 12, [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    assert wide.verdict == UNSURE, wide.reason
    assert "more held-out items" in what_would_decide(wide, heldout_share=0.2)
    # a suite too small for its tolerance: named with the items it needs and the tolerance it could show
    base, clusters = big_suite(n_clusters=25, size=2)
    small = regression_check(_items(clusters), base, base, tolerance=0.05)
    assert small.verdict == UNSURE
    assert "needs 74" in what_would_decide(small, heldout_share=0.2)
    # a decided check needs nothing
    assert (
        what_would_decide(non_inferiority(*big_suite()[:1] * 2, big_suite()[1], tolerance=0.05), heldout_share=0.2)
        is None
    )


def _items(clusters: list[str]) -> list[SuiteItem]:
    return [
        SuiteItem(id=f"i{i}", suite="heldout", category="fact", input=f"q{i}", reference="a", cluster=c)
        for i, c in enumerate(clusters)
    ]
