"""Rollout after registration: ramp while healthy, roll back when worse, and sabotage never promoted."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file, save_file

from tuneloop.config import DeployConfig
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.records import FeedbackRecord
from tuneloop.data.sample_data import sample_feedback
from tuneloop.flows.deploy import rollout
from tuneloop.flows.evaluate import evaluate_candidates
from tuneloop.flows.loop import loop
from tuneloop.registry.versions import alias_version, promote
from tuneloop.release.flags import challenger_percent, set_challenger_percent
from tuneloop.release.operations import events
from tuneloop.release.rollout import Rate, judge
from tuneloop.search.tracking import fetch_adapter


@pytest.fixture
def canary(home):
    """A tiny classifier registered as challenger v1 at a 10 % canary (the base model is the champion)."""
    config = tiny_config(home, "classification", epochs=10)
    FeedbackStore(config.feedback_db).add_many_raw(sample_feedback("classification", small=True), config.kind)
    result = loop(config)
    assert result.registered and result.challenger_percent == 10
    return config, result


def _live_feedback(config, url: str, rates: dict[str, float], n: int = 60):
    """Stand-in for live traffic: n acknowledged ratings per version with the given thumbs-down share."""
    store = FeedbackStore(url)
    for version, rate in rates.items():
        for i in range(n):
            store.add(
                FeedbackRecord(
                    request_id=f"live-{version}-{i}",
                    user_id=f"u{i}",
                    model_version=version,
                    kind=config.kind,
                    prompt="where is my hub",
                    output="shipping_status",
                    rating="down" if i < rate * n else "up",
                )
            )
    fast = config.deploy.model_copy(update={"step_wait_s": 0.05, "min_samples": 30})
    live = config.model_copy(update={"feedback_url": url, "deploy": fast})
    set_challenger_percent(live, challenger_percent(config))  # the live database holds the flag from here on
    return live


def test_rollout_ramps_while_healthy_then_promotes(canary, tmp_path):
    config, result = canary
    live = _live_feedback(config, f"sqlite:///{tmp_path / 'live.db'}", {"base": 0.3, result.registered.version: 0.1})
    assert rollout(live, poll_s=0.02) == "promoted"
    assert alias_version(config.model_name, "champion") == result.registered.version
    assert alias_version(config.model_name, "challenger") is None
    assert challenger_percent(live) == 0


def test_rollout_rolls_back_a_worse_challenger_and_records_why(canary, tmp_path):
    config, result = canary
    live = _live_feedback(config, f"sqlite:///{tmp_path / 'live.db'}", {"base": 0.1, result.registered.version: 0.6})
    outcome = rollout(live, poll_s=0.02)
    assert outcome.startswith("rolled back: significantly worse")
    assert challenger_percent(live) == 0
    assert alias_version(config.model_name, "champion") is None  # never promoted
    [event] = events(live, action="rollback")
    assert event["version"] == result.registered.version and "significantly worse" in event["reason"]


def test_sabotaged_challenger_is_never_promoted(canary):
    config, result = canary
    promote(config.model_name, config=config)
    sabotaged = config.work_dir / "sabotaged"
    shutil.copytree(fetch_adapter(result.tuned.challenger.adapter_uri, config.work_dir / "adapters"), sabotaged)
    weights = load_file(sabotaged / "adapter_model.safetensors")
    torch.manual_seed(0)
    save_file({k: torch.randn_like(v) * 5 for k, v in weights.items()}, sabotaged / "adapter_model.safetensors")
    report, _ = evaluate_candidates(config, result.data, sabotaged)
    assert not report.passed and report.heldout_diff < 0
    assert report.baseline == alias_version(config.model_name, "champion")


def test_judge_needs_samples_and_significance():
    deploy = DeployConfig(min_samples=30, guard_alpha=0.01, worse_tolerance=0.02)
    assert judge(Rate(10, 1), Rate(10, 9), deploy).action == "wait"
    assert judge(Rate(100, 10), Rate(100, 50), deploy).action == "rollback"
    assert judge(Rate(100, 10), Rate(100, 11), deploy).action == "ramp"
    assert judge(Rate(100, 10), Rate(100, 16), deploy).action == "wait"  # worse, not yet significant


def _python_counts(store: FeedbackStore, kind: str, versions: set[str]) -> dict[str, tuple[int, int]]:
    import json

    counts = {}
    for row in store.rows(kind):
        payload = json.loads(row.payload)
        version = str(payload.get("model_version"))
        if version in versions and payload.get("rating") in ("up", "down"):
            n, down = counts.get(version, (0, 0))
            counts[version] = (n + 1, down + (payload["rating"] == "down"))
    return counts


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_rating_counts_are_counted_by_the_database(backend, tmp_path, request):
    """The guard's per-version counts come from SQL; they must equal a count over the raw payloads,
    odd legacy payloads (numeric versions, no rating, other kinds) included."""
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else f"sqlite:///{tmp_path / 'fb.db'}"
    store = FeedbackStore(url)
    tag = tmp_path.name  # the Postgres database is shared by the session's tests
    raw = [
        {"model_version": f"{tag}-1", "rating": "down"},
        {"model_version": f"{tag}-1", "rating": "up"},
        {"model_version": f"{tag}-2", "rating": "down"},
        {"model_version": f"{tag}-2"},  # no rating
        {"model_version": f"{tag}-2", "rating": "meh"},
        {"rating": "down"},
        {"model_version": [1], "rating": "up"},
    ]
    for i, payload in enumerate(raw):
        store.add_raw({**payload, "request_id": f"{tag}-{i}"}, "classification")
    store.add_raw({"model_version": f"{tag}-1", "rating": "down", "request_id": f"{tag}-gen"}, "generation")
    versions = {f"{tag}-1", f"{tag}-2", f"{tag}-3"}
    counts = store.rating_counts("classification", versions)
    assert counts == {f"{tag}-1": (2, 1), f"{tag}-2": (1, 1)}
    assert counts == _python_counts(store, "classification", versions)
    number = abs(hash(tag)) % 10**9  # a version sent as a JSON number is the same version as its text
    store.add_raw({"model_version": number, "rating": "down", "request_id": f"{tag}-number"}, "classification")
    assert store.rating_counts("classification", {str(number)}) == {str(number): (1, 1)}
