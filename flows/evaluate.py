"""Stage 3, evaluate: the challenger against the current champion (or the base model), and the gate.

Three suites, each item with a rule a bad answer breaks (``eval_suites``): the held-out split
(capped at ``gate.max_heldout_examples``), an adversarial suite (shipped items and rewrites of
held-out examples across injection, jailbreak, extraction, off-topic, empty, very long, odd unicode,
typos and paraphrases) and a regression suite (generation: hundreds of general-knowledge items the
bundled base was verified to answer, plus earlier corrections; classification: earlier labels).

The gate (``eval_suites/gate.py``, statistics in ``eval_suites/stats.py``) passes the challenger
only when every check passes: held-out superiority (a cluster-bootstrap CI above zero, clusters
being paraphrases of one fact or one intent); non-inferiority on the regression items the baseline
answers well (forgetting); non-inferiority on the adversarial suite and, on their own, its injection,
extraction and out-of-scope groups. A check whose suite is too small for its tolerance says "not
enough evidence", and that refuses too. Per-example before/after tables of every suite, the checks
and the verdict go to the loop's MLflow run; the summary is a Prefect artifact.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

import mlflow
import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from tuneloop import progress
from tuneloop.config import LoopConfig
from tuneloop.data.cache_files import verified
from tuneloop.data.datasets import DatasetRef, calibration_half, load_examples, load_labels
from tuneloop.eval_suites import gate
from tuneloop.eval_suites.scoring import breakdown, guard_scores, judge_all
from tuneloop.eval_suites.stats import FAIL, UNSURE
from tuneloop.eval_suites.suites import SuiteItem, adversarial_suite, heldout_suite, regression_suite
from tuneloop.flows.candidates import (
    Candidate,
    adapter_candidate,
    answers,
    base_candidate,
    fit_calibration,
    fit_memory,
    fit_neighbours,
    routed,
)
from tuneloop.flows.trial import retrains_with_validation
from tuneloop.flows.tune import TuneResult
from tuneloop.modeling.fast import fast_paths
from tuneloop.modeling.memory import answered_share
from tuneloop.modeling.models import read_labels
from tuneloop.registry.tracking import within_run
from tuneloop.registry.versions import adapter_path, alias_version
from tuneloop.search.tracking import fetch_adapter

log = logging.getLogger(__name__)

Verdict = Literal["passed", "refused", "not enough evidence"]


class SuiteScores(BaseModel):
    mean: float
    metrics: dict[str, float]
    breakdown: dict[str, float]
    seconds_per_item: float
    per_item: list[float] = Field(default_factory=list, exclude=True)  # in-process only: never stored by Prefect
    guard: list[float] = Field(default_factory=list, exclude=True)
    outputs: list[str] = Field(default_factory=list, exclude=True)
    reasons: list[str] = Field(default_factory=list, exclude=True)


class EvalReport(BaseModel):
    baseline: str  # "base" or the champion's version
    challenger: dict[str, SuiteScores]
    champion: dict[str, SuiteScores]
    checks: list[dict]
    verdict: Verdict
    passed: bool
    reasons: list[str]
    heldout_diff: float
    ci_low: float
    ci_high: float
    adversarial_diff: float
    regression_diff: float
    regression_items: int = 0  # regression items the baseline answers well, which the check is over
    items: dict[str, int] = {}
    calibration: dict | None = None  # classification: the challenger's out-of-scope threshold
    neighbours: dict | None = None  # classification: the challenger's neighbour store, and whether it was kept
    memory: dict | None = None  # generation: the challenger's memory of its training questions
    missing: list[str] = []  # "not enough evidence": the data each undecided check would need
    labels_new: list[str] = []  # classification: labels the champion never saw, trained into the challenger
    labels_retired: list[str] = []  # classification: the champion's labels no longer in the data (not trained)


def label_changes(before: list[str], after: list[str]) -> dict[str, list[str]]:
    """Labels new since the champion (trained now) and retired (the champion's, absent from the data: the
    challenger cannot answer them; feedback naming them again brings them back), each logged."""
    changes = {"new": sorted(set(after) - set(before)), "retired": sorted(set(before) - set(after))}
    for what, names in changes.items():
        if names:
            log.warning("%d %s label(s) since the champion: %s", len(names), what, ", ".join(names[:20]))
    return changes


def build_suites(config: LoopConfig, ref: DatasetRef) -> dict[str, list[SuiteItem]]:
    labels = load_labels(ref, config.work_dir)
    heldout = load_examples(ref, "heldout", config.work_dir, limit=config.gate.max_heldout_examples)
    train = load_examples(ref, "train", config.work_dir, limit=5000, seed=config.tune.seed)
    return {
        "heldout": heldout_suite(heldout, config.kind, metric=config.gate.heldout_metric),
        # 24 rewrites per judged variant: each judged group then holds the 37 items its tolerance needs
        "adversarial": adversarial_suite(
            config.kind,
            heldout,
            labels,
            config.tune.seed,
            per_group_variant=24,
            train_examples=train,
            system_prompt=config.system_prompt,
            fallback_label=config.fallback_label,
        ),
        "regression": regression_suite(config.kind, train, seed=config.tune.seed),
    }


def score_candidate(
    config: LoopConfig, candidate: Candidate, suites: dict[str, list[SuiteItem]], bar: progress.Bar | None = None
) -> dict[str, SuiteScores]:
    """One model's answers and scores on every suite (``bar`` advances by each suite's items)."""
    results = {}
    for name, items in suites.items():
        began = time.perf_counter()
        tokens = config.gate.regression_max_new_tokens if name == "regression" else config.max_new_tokens
        answered = answers(config, candidate, items, tokens)
        outputs = routed(config, candidate, answered)
        elapsed = time.perf_counter() - began
        per_item, reasons, metrics = judge_all(config.kind, items, outputs, answered.confidences)
        results[name] = SuiteScores(
            mean=metrics["score"],
            metrics=metrics,
            breakdown=breakdown(items, per_item),
            seconds_per_item=elapsed / max(1, len(items)),
            per_item=per_item,
            outputs=outputs,
            reasons=reasons,
            guard=guard_scores(config.kind, items, outputs) if name == "adversarial" else [],
        )
        if bar:
            bar.update(len(items), part=f"{candidate.name} {name}")
    return results


def decide(
    config: LoopConfig,
    suites: dict[str, list[SuiteItem]],
    baseline: dict[str, SuiteScores],
    challenger: dict[str, SuiteScores],
    has_champion: bool,
) -> list:
    """Every gate check: held-out superiority, regression and adversarial non-inferiority."""
    g, common = (
        config.gate,
        dict(confidence=config.gate.confidence, samples=config.gate.bootstrap_samples, seed=config.tune.seed),
    )
    checks = [
        gate.heldout_check(
            suites["heldout"], baseline["heldout"].per_item, challenger["heldout"].per_item, margin=g.margin, **common
        )
    ]
    known = sum(score >= g.regression_floor for score in baseline["regression"].per_item)
    if known and (config.kind == "generation" or has_champion):  # a baseline that knows nothing cannot forget
        checks.append(
            gate.regression_check(
                suites["regression"],
                baseline["regression"].per_item,
                challenger["regression"].per_item,
                tolerance=g.regression_tolerance,
                floor=g.regression_floor,
                **common,
            )
        )
    checks += gate.adversarial_checks(
        suites["adversarial"],
        baseline["adversarial"].per_item,
        challenger["adversarial"].per_item,
        tolerance=g.adversarial_tolerance,
        group_tolerance=g.group_tolerance,
        baseline_guard=baseline["adversarial"].guard,
        challenger_guard=challenger["adversarial"].guard,
        **common,
    ).values()
    return checks


# A first classification loop has no trained router to compare with: its baseline is the base encoder with
# the new, untrained head (chance-level answers), which the service never serves (docs/router.md), so passing
# the gate says "better than chance", not "better than the app's existing router".
UNTRAINED_BASELINE = "base (untrained head)"


def baseline_name(config: LoopConfig) -> str:
    return UNTRAINED_BASELINE if config.kind == "classification" else "base"


def evaluate_candidates(config: LoopConfig, ref: DatasetRef, challenger_dir: Path) -> tuple[EvalReport, dict]:
    champion = alias_version(config.model_name, "champion")
    labels = load_labels(ref, config.work_dir)
    changes: dict[str, list[str]] = {}
    if champion:
        folder = adapter_path(config.model_name, champion, config.home.resolve() / "adapters")
        # answers cached by the adapter's content, not its version number (another server has its own v1)
        baseline = adapter_candidate(config, folder, f"v{champion}", cache_id=f"adapter:{verified(folder)}")
        changes = label_changes(read_labels(folder) or [], labels) if config.kind == "classification" else {}
    else:
        baseline = base_candidate(config, labels)
    challenger = adapter_candidate(config, challenger_dir, "challenger")
    suites = build_suites(config, ref)
    validation = load_examples(ref, "validation", config.work_dir, limit=1000)
    if retrains_with_validation(config):  # the challenger trained on the other half: its threshold from unseen inputs
        validation = [e for e in validation if calibration_half(e)] or validation
    validation = heldout_suite(validation)
    store = answered = memory = None
    if challenger.neighbours is None:  # before its threshold: the votes change its probabilities
        store, answered = fit_neighbours(config, challenger, ref, validation)
    if challenger.memory is None:
        memory = fit_memory(config, challenger, ref)
    for candidate in (baseline, challenger):  # classification: each version's own out-of-scope threshold
        if candidate.calibration is None:
            fit_calibration(config, candidate, validation, answered if candidate is challenger else None)
    bar = progress.current().bar("evaluate", 2 * sum(len(items) for items in suites.values()))  # items answered
    try:
        scores = {
            "champion": score_candidate(config, baseline, suites, bar),
            "challenger": score_candidate(config, challenger, suites, bar),
        }
    finally:
        bar.close()
    if memory is not None and challenger.memory is not None:  # how much of each suite the memory answered
        # the regression suite's earlier corrections ("learned") are the memory's to answer; its general knowledge is not
        parts = {name: items for name, items in suites.items() if name != "regression"} | {
            "learned": [it for it in suites.get("regression", []) if it.category == "learned"],
            "general_knowledge": [it for it in suites.get("regression", []) if it.category != "learned"],
        }
        memory.update(
            {
                f"answered_{name}": answered_share(challenger.memory, [it.input for it in items])
                for name, items in parts.items()
            }
        )
    checks = decide(config, suites, scores["champion"], scores["challenger"], has_champion=champion is not None)
    verdicts = {c.verdict for c in checks}
    verdict: Verdict = "passed" if verdicts == {"pass"} else "refused" if FAIL in verdicts else "not enough evidence"
    by_name = {c.name.split(" (")[0]: c for c in checks}
    report = EvalReport(
        baseline=champion or baseline_name(config),
        challenger=scores["challenger"],
        champion=scores["champion"],
        checks=[c.as_dict() for c in checks],
        verdict=verdict,
        passed=verdict == "passed",
        reasons=gate.refusals(checks),
        heldout_diff=by_name["held-out"].interval.mean,
        ci_low=by_name["held-out"].interval.low,
        ci_high=by_name["held-out"].interval.high,
        adversarial_diff=by_name["adversarial"].interval.mean,
        regression_diff=by_name["regression"].interval.mean if "regression" in by_name else 0.0,
        regression_items=by_name["regression"].interval.n_items if "regression" in by_name else 0,
        items={name: len(items) for name, items in suites.items()},
        calibration=challenger.calibration.as_dict() if challenger.calibration else None,
        neighbours=store,
        memory=memory,
        labels_new=changes.get("new", []),
        labels_retired=changes.get("retired", []),
    )
    if UNSURE in verdicts and FAIL not in verdicts:
        report.missing = [
            line
            for c in checks
            if (
                line := gate.what_would_decide(
                    c, heldout_share=config.heldout_percent / 100, confidence=config.gate.confidence
                )
            )
        ]
        report.reasons.append(
            "not enough evidence to pass; what would decide it: "
            + "; ".join(report.missing or ["collect more feedback, or widen a tolerance knowingly"])
        )
    return report, suites


def log_report(report: EvalReport, suites: dict[str, list[SuiteItem]], kind: str = "generation") -> None:
    """Metrics, checks and a per-example before/after table of every suite, on the active run."""
    for who, scores in (("challenger", report.challenger), ("champion", report.champion)):
        for suite, s in scores.items():
            mlflow.log_metrics({f"eval.{who}.{suite}.{k}": v for k, v in {**s.metrics, **s.breakdown}.items()})
            mlflow.log_metric(f"eval.{who}.{suite}.latency_ms_per_item", s.seconds_per_item * 1000)
    mlflow.log_metrics(
        {
            "gate.heldout_diff": report.heldout_diff,
            "gate.ci_low": report.ci_low,
            "gate.ci_high": report.ci_high,
            "gate.adversarial_diff": report.adversarial_diff,
            "gate.regression_diff": report.regression_diff,
            "gate.regression_items": report.regression_items,
            "gate.passed": float(report.passed),
        }
    )
    if report.neighbours:
        mlflow.log_metrics({f"neighbours.{k}": v for k, v in report.neighbours.items()})
    if report.memory:
        mlflow.log_metrics({f"memory.{k}": v for k, v in report.memory.items()})
    for suite, items in suites.items():
        mlflow.log_table(
            pd.DataFrame(table_rows(items, report.champion[suite], report.challenger[suite])), f"evaluate/{suite}.json"
        )
    if kind == "classification" and suites.get("heldout"):
        mlflow.log_table(
            per_label(suites["heldout"], report.champion["heldout"].outputs, report.challenger["heldout"].outputs),
            "evaluate/per_label.json",
        )
    mlflow.log_dict(report.model_dump(exclude={"challenger", "champion"}), "evaluate/gate.json")
    mlflow.set_tag("gate", report.verdict)


def table_rows(items: list[SuiteItem], before: SuiteScores, after: SuiteScores) -> list[dict]:
    """One row per item for the per-example table. Model outputs are cleaned of personal data like
    user text: a model can repeat a training answer's phone number or invent one."""
    from tuneloop.data.pii import clean

    return [
        {
            **item.row(),
            "champion_output": clean(before.outputs[n]),
            "challenger_output": clean(after.outputs[n]),
            "champion_score": before.per_item[n],
            "challenger_score": after.per_item[n],
            "diff": after.per_item[n] - before.per_item[n],
            "challenger_failed_because": after.reasons[n],
        }
        for n, item in enumerate(items)
    ]


def per_label(items: list[SuiteItem], before: list[str], after: list[str]) -> pd.DataFrame:
    """Classification: held-out support, precision, recall and F1 per label for baseline and challenger,
    worst challenger F1 first: with hundreds of labels, where a router fails is per label, not on average."""
    from sklearn.metrics import precision_recall_fscore_support

    truth = [it.reference for it in items]
    labels = sorted(set(truth) | set(before) | set(after))
    table = {"label": labels}
    for who, predicted in (("champion", before), ("challenger", after)):
        p, r, f, support = precision_recall_fscore_support(truth, predicted, labels=labels, zero_division=0)
        table |= {f"{who}_precision": p, f"{who}_recall": r, f"{who}_f1": f}
    table["support"] = support
    return pd.DataFrame(table).sort_values(["challenger_f1", "support"], ascending=[True, False])


def report_markdown(report: EvalReport) -> str:
    lines = [
        f"# Gate: {report.verdict.upper()} (baseline: {report.baseline})",
        "",
        "| suite | items | baseline | challenger |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {s} | {report.items.get(s, 0)} | {report.champion[s].mean:.3f} | {report.challenger[s].mean:.3f} |"
        for s in report.challenger
    ]
    lines += ["", "| check | verdict | diff | CI | threshold |", "|---|---|---|---|---|"]
    lines += [
        f"| {c['name']} | {c['verdict']} | {c['diff_mean']:+.3f} | [{c['diff_low']:+.3f}, {c['diff_high']:+.3f}] "
        f"| {c['threshold']:.3f} |"
        for c in report.checks
    ]
    lines += [""] + [f"- {r}" for r in report.reasons]
    lines += [
        f"- {what} labels: {', '.join(names)}"
        for what, names in (("new", report.labels_new), ("retired", report.labels_retired))
        if names
    ]
    return "\n".join(lines)


@task(name="evaluate")
def evaluate(config: LoopConfig, ref: DatasetRef, tuned: TuneResult, parent_run_id: str) -> EvalReport:
    fast_paths.configure(config.fast_paths)
    challenger_dir = fetch_adapter(tuned.challenger.adapter_uri, config.work_dir / "adapters")
    report, suites = evaluate_candidates(config, ref, challenger_dir)
    with within_run(parent_run_id):
        log_report(report, suites, config.kind)
    create_markdown_artifact(report_markdown(report), key=f"gate-{config.kind}", description="Evaluation gate")
    return report
