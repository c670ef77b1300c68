"""Input drift: the MMD permutation test, the reference a registered version carries, and the planted
drift (banking77 utterances against Brightwell's prompts) that raises the signal and a trigger reason
while same-domain inputs do not."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from mlflow import MlflowClient

from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.sample_data import sample_feedback
from tuneloop.flows.trigger import decide
from tuneloop.release.drift import (
    DriftMonitor,
    find_reference,
    mmd_test,
    recent_windows,
    reference_path,
    register_reference,
    shared_encoder,
)

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "banking77" / "banking77_test.csv"


def test_mmd_permutation_test_separates_shifted_from_same_distributions():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 16))
    same = mmd_test(rng.normal(size=(60, 16)), reference, permutations=200, alpha=0.01)
    shifted = mmd_test(rng.normal(size=(60, 16)) + 0.5, reference, permutations=200, alpha=0.01)
    assert not same.drifted and same.p_value > 0.05
    assert (
        shifted.drifted and shifted.p_value == pytest.approx(1 / 201) and shifted.statistic > 10 * abs(same.statistic)
    )


def test_mmd_p_values_are_valid_under_no_drift():
    """Under 'same distribution' a window is flagged at most about alpha of the time (100 seeded windows)."""
    rng = np.random.default_rng(1)
    flagged = sum(
        mmd_test(rng.normal(size=(30, 8)), rng.normal(size=(60, 8)), permutations=100, alpha=0.05, seed=i).drifted
        for i in range(100)
    )
    assert flagged <= 10  # alpha 5 %: 5 expected; 10 is beyond the binomial's 99th percentile


def _brightwell_prompts() -> list[str]:
    prompts = {
        r["prompt"]
        for kind in ("generation", "classification")
        for r in sample_feedback(kind)
        if isinstance(r.get("prompt"), str) and r["prompt"].strip() and len(r["prompt"]) < 500
    }
    out = sorted(prompts)
    random.Random(0).shuffle(out)
    return out


def _banking77(n: int) -> list[str]:
    if not BANKING77.exists():
        pytest.skip(f"banking77 is not at {BANKING77}")
    with open(BANKING77, newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    random.Random(0).shuffle(texts)
    return texts[:n]


def _monitor(config, version: str = "1") -> DriftMonitor:
    results = []
    monitor = DriftMonitor(config, lambda: version, lambda v, r: results.append((v, r)))
    monitor.results = results
    return monitor


@pytest.mark.real_weights
def test_planted_drift_raises_the_signal_and_a_trigger_reason_and_same_domain_inputs_do_not(home):
    config = tiny_config(home, "classification")
    config.drift.window, config.drift.consecutive, config.drift.min_new_corrections = 40, 3, 5
    config.min_new_corrections = 1000  # only drift can start the loop here
    prompts = _brightwell_prompts()
    reference, same_domain = prompts[:130], prompts[130:250]
    register_reference(config, "1", reference)
    store = FeedbackStore(config.feedback_db)
    store.add_many_raw(
        [
            {
                "request_id": f"c{i}",
                "user_id": "u",
                "model_version": "1",
                "kind": "classification",
                "prompt": f"where is parcel {i}",
                "output": "billing",
                "rating": "down",
                "correction": "returns",
            }
            for i in range(6)
        ],
        "classification",
    )

    same = _monitor(config)
    for start in range(0, 120, 40):
        same.add(same_domain[start : start + 40])
        same.run_once()
    print("same-domain windows:", [(round(r.statistic, 4), round(r.p_value, 3)) for _, r in same.results])
    assert len(same.results) == 3 and not any(r.drifted for _, r in same.results)
    assert decide(config).drift is None and not decide(config).run

    drifted = _monitor(config)
    for start in range(0, 120, 40):
        drifted.add(_banking77(120)[start : start + 40])
        drifted.run_once()
    print("banking77 windows:", [(round(r.statistic, 4), round(r.p_value, 3)) for _, r in drifted.results])
    assert all(r.drifted for _, r in drifted.results) and len(drifted.results) == 3
    assert min(r.statistic for _, r in drifted.results) > 5 * max(r.statistic for _, r in same.results)
    windows = recent_windows(config)
    assert len(windows) == 6 and [w["drifted"] for w in windows[:3]] == [True] * 3 and windows[0]["version"] == "1"
    decision = decide(config)
    assert decision.run and decision.because == "drift" and "input drift" in decision.reason


@pytest.mark.real_weights
def test_the_window_holds_scrubbed_inputs_and_waits_for_enough_of_them(home):
    config = tiny_config(home, "generation")
    config.drift.window, config.drift.min_window = 20, 10
    register_reference(config, "base", _brightwell_prompts()[:40])
    monitor = _monitor(config, "base")
    monitor.add(["My email is jane.doe@example.com, call +44 20 7946 0958 about the Nimbus warranty"] * 5)
    assert all("jane.doe" not in t and "7946" not in t and "[EMAIL]" in t and "[PHONE]" in t for t in monitor.window)
    assert monitor.run_once() is None  # 5 of 20: not due
    config.drift.max_wait_s = 0.0
    assert monitor.run_once() is None  # old enough, but fewer than min_window
    monitor.add(["What is the Nimbus Pro cost?"] * 5)
    assert monitor.run_once().n == 10 and len(monitor.window) == 0


@pytest.mark.real_weights
def test_a_registered_versions_reference_travels_through_mlflow(home):
    config = tiny_config(home, "classification")
    client = MlflowClient()
    experiment = client.create_experiment(config.model_name)
    run = client.create_run(experiment)
    client.create_registered_model(config.model_name)
    version = client.create_model_version(config.model_name, source=str(home / "x"), run_id=run.info.run_id).version
    path = register_reference(config, str(version), _brightwell_prompts()[:50], run_id=run.info.run_id)
    local = np.load(path)["embeddings"]
    assert local.shape == (50, 384) and np.allclose(np.linalg.norm(local, axis=1), 1, atol=1e-4)
    assert (
        client.get_model_version(config.model_name, str(version))
        .tags["drift_reference"]
        .endswith(f"reference-{version}.npz")
    )
    path.unlink()  # another machine: only the registry knows where the reference is
    fetched = find_reference(config, str(version))
    assert fetched is not None and np.allclose(fetched, local) and reference_path(config, str(version)).exists()
    assert find_reference(config, "99") is None  # an unknown version has none: no monitoring, no error


@pytest.mark.real_weights
def test_the_encoder_embeds_meaning():
    encoder = shared_encoder()
    a, b, c = encoder.embed(
        [
            "How long is the Nimbus thermostat warranty?",
            "What warranty does the Nimbus thermostat have?",
            "My card payment was declined at the shop",
        ]
    )
    assert a @ b > a @ c + 0.2  # paraphrases are closer than another domain
