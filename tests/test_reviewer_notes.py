"""The reviewer's first screen (flows/reviewer_notes.py) on a fixed gate report: the verdict table with
item counts, and the explanation of a search tag that seems to contradict a gate that passed. The whole
note on a real loop run and model version: tests/test_cli.py and, in a browser, tests/test_mlflow_ui.py."""

from __future__ import annotations

from tuneloop.config import LoopConfig
from tuneloop.flows.evaluate import EvalReport, SuiteScores
from tuneloop.flows.reviewer_notes import links_section, search_tag_section, verdict_section
from tuneloop.flows.tune import TrialResult, TuneResult


def _scores(mean: float) -> SuiteScores:
    return SuiteScores(mean=mean, metrics={"score": mean}, breakdown={}, seconds_per_item=0.01)


def _report(passed: bool) -> EvalReport:
    check = {
        "name": "held-out",
        "verdict": "pass" if passed else "fail",
        "diff_mean": 0.2,
        "diff_low": 0.1,
        "diff_high": 0.3,
        "threshold": 0.0,
    }
    return EvalReport(
        baseline="2",
        challenger={"heldout": _scores(0.8), "regression": _scores(0.9)},
        champion={"heldout": _scores(0.6), "regression": _scores(0.92)},
        checks=[check],
        verdict="passed" if passed else "refused",
        passed=passed,
        reasons=[] if passed else ["held-out: worse"],
        heldout_diff=0.2,
        ci_low=0.1,
        ci_high=0.3,
        adversarial_diff=0.0,
        regression_diff=-0.02,
        items={"heldout": 120, "regression": 300},
    )


def test_the_verdict_table_has_item_counts_and_changes():
    text = "\n".join(verdict_section(_report(True)))
    assert text.startswith("## Gate: PASSED (baseline: champion (version 2))")
    assert (
        "| heldout | 120 | 0.600 | 0.800 | +0.200 |" in text and "| regression | 300 | 0.920 | 0.900 | -0.020 |" in text
    )
    assert "| held-out | pass | +0.200 | [+0.100, +0.300] | 0.000 |" in text


def test_a_search_tag_that_seems_to_contradict_a_passed_gate_is_explained():
    config = LoopConfig(kind="generation")
    tags = {"best_trial_within_gate_tolerances": "false"}
    explained = "\n".join(search_tag_section(tags, _report(True), config))
    assert "best_trial_within_gate_tolerances: false" in explained and f"{config.tune.gate_sample} of each" in explained
    assert "heldout 120, regression 300" in explained
    assert search_tag_section(tags, _report(False), config) == []  # a refused gate needs no reconciling
    assert search_tag_section({"best_trial_within_gate_tolerances": "true"}, _report(True), config) == []


def test_links_open_the_search_run_and_every_per_item_table():
    trial = TrialResult(number=0, params={"rank": 8}, score=0.7, adapter_uri="runs:/t/adapter", mlflow_run_id="t")
    tuned = TuneResult(study_name="s", best=trial, challenger=trial, n_complete=1, n_pruned=0, search_run_id="SEARCH")
    text = "\n".join(links_section("5", "LOOP", tuned, _report(True), "classification"))
    assert "[the search run](#/experiments/5/runs/SEARCH)" in text
    for table in ("heldout", "regression", "gate", "per_label"):
        assert f"[{table}](#/experiments/5/runs/LOOP/artifacts/evaluate/{table}.json)" in text


def test_a_long_note_is_cut_at_a_line_end_within_mlflows_limits():
    from tuneloop.flows.reviewer_notes import MAX_DESCRIPTION, _fit

    cut = _fit("| row | 1 |\n" * 1000, MAX_DESCRIPTION)
    assert len(cut) <= MAX_DESCRIPTION + 40 and cut.endswith("(cut: see evaluate/gate.json)")
    assert "| row | 1 |\n\n(cut" in cut
