"""Stage 3, evaluate: the best trial against the current champion (or the base model) and the gate.

The challenger passes only if it beats the baseline on held-out by more than the margin with a
paired-bootstrap confidence interval above zero, and is not worse than the tolerances on the
adversarial suite and on the regression items the baseline already answers well (forgetting). Numbers, decision and per-example diffs go to MLflow and a Prefect artifact.
"""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from peft import PeftModel
from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from eval_suites.suites import SuiteItem, adversarial_suite, breakdown, heldout_suite, regression_suite, score
from flows.curate import CuratedData
from flows.tune import TuneResult
from tuneloop.config import GateConfig, LoopConfig
from tuneloop.models import load_base, load_tokenizer, read_labels
from tuneloop.registry import adapter_path, alias_version
from tuneloop.tracking import within_run
from tuneloop.training import predict


class SuiteScores(BaseModel):
    mean: float
    per_item: list[float]
    metrics: dict[str, float]
    breakdown: dict[str, float]
    seconds_per_item: float


class EvalReport(BaseModel):
    baseline: str  # "base" or the champion's version
    challenger: dict[str, SuiteScores]
    champion: dict[str, SuiteScores]
    heldout_diff: float
    ci_low: float
    ci_high: float
    adversarial_diff: float
    regression_diff: float
    regression_items: int = 0  # regression items the baseline answers well, which the diff is over
    passed: bool
    reasons: list[str]


def paired_bootstrap(a: list[float], b: list[float], samples: int, confidence: float, seed: int = 0) -> tuple[float, float, float]:
    """Mean of b - a and its two-sided percentile CI, resampling items in pairs."""
    diff = np.asarray(b) - np.asarray(a)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(samples, len(diff)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return float(diff.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def known_diff(baseline: list[float], challenger: list[float], floor: float) -> tuple[float, int]:
    """Mean challenger - baseline over the items the baseline scores at least ``floor`` on, and their count."""
    known = [i for i, score in enumerate(baseline) if score >= floor]
    if not known:
        return 0.0, 0
    return sum(challenger[i] - baseline[i] for i in known) / len(known), len(known)


def decide(gate: GateConfig, heldout: tuple[float, float, float], adversarial_diff: float,
           regression_diff: float = 0.0) -> list[str]:
    """Reasons to refuse the challenger; empty means it passes."""
    diff, low, high = heldout
    reasons = []
    if diff <= gate.margin:
        reasons.append(f"held-out mean improved by {diff:+.3f}, needs more than {gate.margin:+.3f}")
    if low <= 0:
        reasons.append(f"held-out {gate.confidence:.0%} CI [{low:+.3f}, {high:+.3f}] does not exclude zero")
    if adversarial_diff < -gate.adversarial_tolerance:
        reasons.append(f"adversarial mean dropped by {-adversarial_diff:.3f} (tolerance {gate.adversarial_tolerance:.3f})")
    if regression_diff < -gate.regression_tolerance:
        reasons.append(f"regression mean dropped by {-regression_diff:.3f} (tolerance {gate.regression_tolerance:.3f}): it forgot")
    return reasons


def load_candidate(config: LoopConfig, adapter_dir: Path | None, labels: list[str]):
    """Base model with the adapter applied (or the bare base when ``adapter_dir`` is None)."""
    base = load_base(config.kind, config.tiny, (read_labels(adapter_dir) if adapter_dir else None) or labels or None)
    return PeftModel.from_pretrained(base, adapter_dir).eval() if adapter_dir else base


def run_suites(config: LoopConfig, model, labels: list[str],
               suites: dict[str, list[SuiteItem]]) -> tuple[dict[str, SuiteScores], dict[str, list[str]]]:
    """Scores and raw outputs of one model on every suite."""
    tokenizer = load_tokenizer(config.kind)
    results, all_outputs = {}, {}
    for name, items in suites.items():
        began = time.perf_counter()
        outputs, confidences = predict(config.kind, model, tokenizer, [i.input for i in items], labels, config.max_new_tokens)
        elapsed = time.perf_counter() - began
        per_item, metrics = score(config.kind, items, outputs, confidences, labels)
        results[name] = SuiteScores(mean=metrics["score"], per_item=per_item, metrics=metrics,
                                    breakdown=breakdown(items, per_item), seconds_per_item=elapsed / max(1, len(items)))
        all_outputs[name] = outputs
    return results, all_outputs


def log_report(report: EvalReport, suites: dict[str, list[SuiteItem]], outputs: dict[str, dict[str, list[str]]]) -> None:
    for who, scores in (("challenger", report.challenger), ("champion", report.champion)):
        for suite, s in scores.items():
            mlflow.log_metrics({f"eval.{who}.{suite}.{k}": v for k, v in {**s.metrics, **s.breakdown}.items()})
            mlflow.log_metric(f"eval.{who}.{suite}.latency_ms_per_item", s.seconds_per_item * 1000)
    mlflow.log_metrics({"gate.heldout_diff": report.heldout_diff, "gate.ci_low": report.ci_low,
                        "gate.ci_high": report.ci_high, "gate.adversarial_diff": report.adversarial_diff,
                        "gate.regression_diff": report.regression_diff, "gate.regression_items": report.regression_items,
                        "gate.passed": float(report.passed)})
    rows = []
    for suite, items in suites.items():
        for n, item in enumerate(items):
            rows.append({
                "suite": suite, "category": item.category, "input": item.input[:300], "reference": item.reference,
                "champion_output": outputs["champion"][suite][n], "challenger_output": outputs["challenger"][suite][n],
                "champion_score": report.champion[suite].per_item[n], "challenger_score": report.challenger[suite].per_item[n],
                "diff": report.challenger[suite].per_item[n] - report.champion[suite].per_item[n],
            })
    mlflow.log_table(pd.DataFrame(rows), "evaluate/per_example.json")
    mlflow.log_dict(report.model_dump(exclude={"challenger", "champion"}), "evaluate/gate.json")
    mlflow.set_tag("gate", "passed" if report.passed else "refused")


def report_markdown(report: EvalReport) -> str:
    lines = [f"# Gate: {'PASSED' if report.passed else 'REFUSED'} (baseline: {report.baseline})", "",
             "| suite | baseline | challenger |", "|---|---|---|"]
    lines += [f"| {s} | {report.champion[s].mean:.3f} | {report.challenger[s].mean:.3f} |" for s in report.challenger]
    lines += ["", f"Held-out diff {report.heldout_diff:+.3f}, CI [{report.ci_low:+.3f}, {report.ci_high:+.3f}]; "
                  f"adversarial diff {report.adversarial_diff:+.3f}; regression diff {report.regression_diff:+.3f} "
                  f"(over the {report.regression_items} items the baseline answers well)."]
    lines += [f"- {r}" for r in report.reasons]
    return "\n".join(lines)


def evaluate_candidates(config: LoopConfig, data: CuratedData, challenger_dir: Path) -> tuple[EvalReport, dict, dict]:
    champion = alias_version(config.model_name, "champion")
    champion_dir = adapter_path(config.model_name, champion, config.home.resolve() / "adapters") if champion else None
    suites = {"heldout": heldout_suite(data.heldout),
              "adversarial": adversarial_suite(config.kind, data.heldout, data.labels, seed=config.tune.seed),
              "regression": regression_suite(config.kind, data.train, seed=config.tune.seed)}
    scores, outputs = {}, {}
    for who, adapter_dir in (("champion", champion_dir), ("challenger", challenger_dir)):
        labels = (read_labels(adapter_dir) if adapter_dir else None) or data.labels
        scores[who], outputs[who] = run_suites(config, load_candidate(config, adapter_dir, data.labels), labels, suites)
    heldout = paired_bootstrap(scores["champion"]["heldout"].per_item, scores["challenger"]["heldout"].per_item,
                               config.gate.bootstrap_samples, config.gate.confidence, config.tune.seed)
    adversarial_diff = scores["challenger"]["adversarial"].mean - scores["champion"]["adversarial"].mean
    regression_diff, regression_items = known_diff(scores["champion"]["regression"].per_item,
                                                   scores["challenger"]["regression"].per_item, config.gate.regression_floor)
    reasons = decide(config.gate, heldout, adversarial_diff, regression_diff)
    report = EvalReport(
        baseline=champion or "base", challenger=scores["challenger"], champion=scores["champion"],
        heldout_diff=heldout[0], ci_low=heldout[1], ci_high=heldout[2], adversarial_diff=adversarial_diff,
        regression_diff=regression_diff, regression_items=regression_items,
        passed=not reasons, reasons=reasons,
    )
    return report, suites, outputs


@task(name="evaluate")
def evaluate(config: LoopConfig, data: CuratedData, tuned: TuneResult, parent_run_id: str) -> EvalReport:
    report, suites, outputs = evaluate_candidates(config, data, tuned.best.adapter_dir)
    with within_run(parent_run_id):
        log_report(report, suites, outputs)
    create_markdown_artifact(report_markdown(report), key=f"gate-{config.kind}", description="Evaluation gate")
    return report
