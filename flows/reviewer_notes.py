"""The reviewer's first screen: the description of the loop's MLflow run and of the version it
registered (MLflow shows it at the top of each page; runs keep it in the ``mlflow.note.content``
tag). It carries the gate's verdict with the item count of every suite, what changed since the
champion, links to the search run and the per-item tables, and an explanation where a search tag
seems to contradict the gate.
"""

from __future__ import annotations

import json

import mlflow

from tuneloop.config import LoopConfig
from tuneloop.data.datasets import DatasetRef
from tuneloop.flows.evaluate import EvalReport
from tuneloop.flows.register import Registered
from tuneloop.flows.tune import TuneResult

NOTE_TAG = "mlflow.note.content"
MAX_NOTE = 7900  # MLflow keeps tag values up to 8,000 characters
MAX_DESCRIPTION = 4900  # and model version descriptions up to 5,000 (its registry's column)


def run_link(experiment_id: str, run_id: str, artifact: str = "") -> str:
    """A link inside MLflow's UI (a hash route: it works whatever address the UI is served at)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}" + (f"/artifacts/{artifact}" if artifact else "")


def verdict_section(report: EvalReport) -> list[str]:
    lines = [
        f"## Gate: {report.verdict.upper()} (baseline: {_baseline_name(report.baseline)})",
        "",
        "| suite | items | baseline | challenger | change |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {suite} | {report.items.get(suite, 0)} | {report.champion[suite].mean:.3f} | {scores.mean:.3f} | "
        f"{scores.mean - report.champion[suite].mean:+.3f} |"
        for suite, scores in report.challenger.items()
    ]
    lines += ["", "| check | verdict | diff | CI | threshold |", "|---|---|---|---|---|"]
    lines += [
        f"| {c['name']} | {c['verdict']} | {c['diff_mean']:+.3f} | [{c['diff_low']:+.3f}, {c['diff_high']:+.3f}] | "
        f"{c['threshold']:.3f} |"
        for c in report.checks
    ]
    return lines + [""] + [f"- {reason}" for reason in report.reasons]


def changes_section(config: LoopConfig, data: DatasetRef, tuned: TuneResult, report: EvalReport) -> list[str]:
    """What differs from the champion the gate compared with: the data, the winning configuration, the scores."""
    counts = data.counts
    lines = ["", f"## What changed since the {_baseline_name(report.baseline)}", ""]
    champion = _champion_tags(config, report.baseline)
    before = champion.get("dataset_hash")
    lines.append(
        f"- data: {before + ' -> ' if before else ''}{data.dataset_hash}, {counts.get('records', 0)} records -> "
        f"{counts.get('train', 0)} train / {counts.get('validation', 0)} validation / {counts.get('heldout', 0)} "
        f"held-out"
        + (
            f" ({counts['source.external']} from outside tuneloop, model_version external:...)"
            if counts.get("source.external")
            else ""
        )
    )
    previous = json.loads(champion["params"]) if champion.get("params") else None
    params = ", ".join(
        f"{k} {_fmt(v)}"
        + (f" (was {_fmt(previous[k])})" if previous and previous.get(k) != v and k in previous else "")
        for k, v in tuned.best.params.items()
    )
    lines.append(f"- configuration: trial {tuned.best.number} of search {tuned.study_name}: {params}")
    regression = (
        f"regression {report.regression_diff:+.3f} over the {report.regression_items} items the baseline answers well"
        if report.regression_items
        else "regression not checked (no items the baseline answers well)"
    )
    lines.append(
        f"- scores: held-out {report.heldout_diff:+.3f} (CI [{report.ci_low:+.3f}, {report.ci_high:+.3f}]), "
        f"{regression}, adversarial {report.adversarial_diff:+.3f}"
    )
    return lines


def links_section(experiment_id: str, loop_run_id: str, tuned: TuneResult, report: EvalReport, kind: str) -> list[str]:
    tables = [*report.challenger, "gate"] + (["per_label"] if kind == "classification" else [])
    table_links = ", ".join(
        f"[{name}]({run_link(experiment_id, loop_run_id, f'evaluate/{name}.json')})" for name in tables
    )
    return [
        "",
        "## Links",
        "",
        f"- [the search run]({run_link(experiment_id, tuned.search_run_id)}) and its trials (its child runs)",
        f"- per-item tables (before/after, why each item failed): {table_links}",
        f"- [the loop run]({run_link(experiment_id, loop_run_id)})",
    ]


def search_tag_section(loop_run_tags: dict[str, str], report: EvalReport, config: LoopConfig) -> list[str]:
    """``best_trial_within_gate_tolerances: false`` beside a gate that passed: why both hold."""
    if loop_run_tags.get("best_trial_within_gate_tolerances") != "false" or not report.passed:
        return []
    sample = config.tune.gate_sample
    return [
        "",
        "## Why the search tag says best_trial_within_gate_tolerances: false",
        "",
        f"During the search each trial answered only a sample of the gate's regression and adversarial items "
        f"({sample} of each, tune.gate_sample) and no trial kept within the gate's tolerances on that sample, so "
        f"the winner was picked on its validation score alone. The gate then judged the challenger on every item "
        f"({', '.join(f'{s} {n}' for s, n in report.items.items())}) with confidence intervals, and it passed: "
        f"the gate's verdict above is what decides.",
    ]


def compose(config: LoopConfig, data: DatasetRef, tuned: TuneResult, report: EvalReport, loop_run_id: str) -> str:
    run = mlflow.MlflowClient().get_run(loop_run_id)
    experiment_id = run.info.experiment_id
    lines = (
        verdict_section(report)
        + search_tag_section(run.data.tags, report, config)
        + changes_section(config, data, tuned, report)
        + links_section(experiment_id, loop_run_id, tuned, report, config.kind)
    )
    return "\n".join(lines)


def _fit(text: str, limit: int) -> str:
    """Cut at a line end, saying where the rest is."""
    return text if len(text) <= limit else text[:limit].rsplit("\n", 1)[0] + "\n\n(cut: see evaluate/gate.json)"


def write_notes(
    config: LoopConfig,
    data: DatasetRef,
    tuned: TuneResult,
    report: EvalReport,
    registered: Registered | None,
    loop_run_id: str,
) -> str:
    """The description of the loop run and, when one was registered, of its model version."""
    text = compose(config, data, tuned, report, loop_run_id)
    client = mlflow.MlflowClient()
    client.set_tag(loop_run_id, NOTE_TAG, _fit(text, MAX_NOTE))
    if registered:
        version_text = (
            f"Registered by [loop run {loop_run_id}]({run_link(client.get_run(loop_run_id).info.experiment_id, loop_run_id)}).\n\n"
            + text
        )
        client.update_model_version(
            registered.name, registered.version, description=_fit(version_text, MAX_DESCRIPTION)
        )
    return text


def _champion_tags(config: LoopConfig, baseline: str) -> dict[str, str]:
    if baseline == "base":
        return {}
    try:
        return dict(mlflow.MlflowClient().get_model_version(config.model_name, baseline).tags)
    except mlflow.exceptions.MlflowException:  # a champion deleted since: nothing to compare with
        return {}


def _baseline_name(baseline: str) -> str:
    if baseline == "base" or baseline.startswith("base ("):  # a first classification loop: "base (untrained head)"
        return f"base model{baseline[4:]}"
    return f"champion (version {baseline})"


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
