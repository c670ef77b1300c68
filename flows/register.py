"""Stage 4, register: a challenger that passed the gate becomes a registry version aliased `challenger`."""

from __future__ import annotations

import json

from prefect import task
from pydantic import BaseModel

from tuneloop.config import LoopConfig
from tuneloop.data.datasets import DatasetRef, load_examples
from tuneloop.flows.evaluate import EvalReport
from tuneloop.flows.tune import TuneResult
from tuneloop.modeling.models import base_of
from tuneloop.registry.tracking import git_sha, within_run
from tuneloop.registry.versions import log_adapter, move_alias
from tuneloop.release.drift import register_reference
from tuneloop.search.tracking import fetch_adapter

# which feedback signal a version learned from, by its objective (tuneloop/modeling/objectives.py)
LEARNED_FROM = {
    "sft": "supervised pairs: corrections and liked answers",
    "dpo": "supervised pairs and preference pairs: each correction over the answer it corrected",
    "kto": "supervised pairs and unpaired thumbs: liked and disliked answers, bare thumbs-down included",
}


class Registered(BaseModel):
    name: str
    version: str
    alias: str


@task(name="register")
def register(
    config: LoopConfig, ref: DatasetRef, tuned: TuneResult, report: EvalReport, parent_run_id: str
) -> Registered | None:
    """Log the adapter with its lineage; ``None`` (and nothing registered) when the gate refused it."""
    if not report.passed:
        return None
    tags = {
        "dataset_hash": ref.dataset_hash,
        "dataset_uri": ref.artifact_uri or str(ref.path),
        **base_of(config).tags(),
        "code_version": git_sha(),
        "search_id": tuned.study_name,
        "best_trial": str(tuned.best.number),
        "params": json.dumps(tuned.best.params),
        "objective": str(tuned.best.params.get("objective", "sft")),
        "learned_from": LEARNED_FROM[str(tuned.best.params.get("objective", "sft"))],
        "trial_run_id": tuned.best.mlflow_run_id,
        "adapter_run_id": tuned.challenger.mlflow_run_id,
        "loop_run_id": parent_run_id,
        "baseline": report.baseline,
        "gate.heldout_diff": f"{report.heldout_diff:.4f}",
        "gate.ci": f"[{report.ci_low:.4f}, {report.ci_high:.4f}]",
        "gate.adversarial_diff": f"{report.adversarial_diff:.4f}",
        "gate.regression_diff": f"{report.regression_diff:.4f}",
        "eval.heldout": f"{report.challenger['heldout'].mean:.4f}",
        "eval.adversarial": f"{report.challenger['adversarial'].mean:.4f}",
    }
    adapter_dir = fetch_adapter(tuned.challenger.adapter_uri, config.work_dir / "adapters")
    with within_run(parent_run_id):
        version = log_adapter(config, adapter_dir, tags)
    # the share of users names the version it was given to (tuneloop/release/flags.py): this version starts at 0 %
    # however much its predecessor had, and only deploy gives it the canary share
    move_alias(
        config.model_name, "challenger", str(version.version), f"passed the gate in loop run {parent_run_id}", config
    )
    if config.drift.enabled:  # what live inputs are compared with: this version's training prompts
        register_reference(
            config,
            str(version.version),
            [e.prompt for e in load_examples(ref, "train", config.work_dir)],
            run_id=parent_run_id,
        )
    return Registered(name=config.model_name, version=str(version.version), alias="challenger")
