"""The whole loop on tiny models, through real Prefect, MLflow, Optuna and peft."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from conftest import constant_corrections, tiny_config
from mlflow import MlflowClient

from tuneloop.data.datasets import SPLITS, load_examples
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.sample_data import sample_feedback
from tuneloop.flows.loop import loop
from tuneloop.registry.versions import alias_version, promote, version_for
from tuneloop.release.flags import challenger_percent

ANSWER = "Please ask Brightwell support about that."


def _seed(config, records):
    FeedbackStore(config.feedback_db).add_many_raw(records, config.kind)


def _children(parent_run_id: str):
    return mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", search_all_experiments=True, output_format="list"
    )


def test_generation_loop_registers_and_deploys_a_canary(home):
    config = tiny_config(home, "generation", n_trials=2)
    _seed(config, constant_corrections(sample_feedback("generation"), ANSWER))

    state = loop(config, return_state=True)
    assert state.is_completed()
    result = state.result()

    counts = result.data.counts
    assert counts["quarantined"] == 6 and counts["thumbs_down_without_correction"] > 0
    assert counts["duplicates_removed"] > 0
    keys = {split: {e.key for e in load_examples(result.data, split, config.work_dir)} for split in SPLITS}
    assert all(keys[split] for split in SPLITS)  # train, validation (what trials score) and the gate's held-out
    assert not (keys["train"] & keys["heldout"]) and not (keys["validation"] & keys["heldout"])

    assert result.report.passed, result.report.reasons
    assert result.report.challenger["heldout"].mean > result.report.champion["heldout"].mean
    assert result.registered is not None and result.registered.alias == "challenger"
    mv = version_for(config.model_name, "challenger")
    assert str(mv.version) == result.registered.version == "1"
    assert mv.tags["dataset_hash"] == result.data.dataset_hash
    assert len(mv.tags["base_model_sha256"]) == 64 and mv.tags["search_id"] == result.tuned.study_name

    # only the adapter is logged, never the base model's weights
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{config.model_name}/{mv.version}"))
    files = {p.name for p in local.rglob("*") if p.is_file()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    assert sum(p.stat().st_size for p in local.rglob("*") if p.is_file()) < 20e6

    assert result.challenger_percent == 10 == challenger_percent(config)

    # its memory of the training questions is registered with it: the pyfunc and the service answer a
    # training question with its answer, and a rephrased one from the memory, as the gate scored it
    import pandas as pd

    from tuneloop.serving.models import AdapterBank

    stored = load_examples(result.data, "train", config.work_dir) + load_examples(
        result.data, "validation", config.work_dir
    )
    assert "memory.safetensors" in files and result.report.memory["questions"] == len({e.prompt for e in stored})
    # the reviewer's figures: it answered held-out rephrasings, and none of the general-knowledge questions
    memory = result.report.memory
    assert memory["answered_heldout"] > 0 and memory["answered_general_knowledge"] == 0.0
    assert mlflow.get_run(result.run_id).data.metrics["memory.answered_heldout"] == memory["answered_heldout"]
    trained = stored[0]
    asked = [trained.prompt, f"Hi, {trained.prompt.rstrip('?. ')}? Thanks!"]
    loaded = mlflow.pyfunc.load_model(f"models:/{config.model_name}@challenger")
    answered = list(loaded.predict(pd.DataFrame({"input": asked})))
    assert answered[0] == trained.target and answered[1] in {e.target for e in stored}
    bank = AdapterBank(config)
    bank.refresh()
    assert bank.predict(["1", "1"], asked)[0] == answered

    searches = _children(result.run_id)  # the loop run -> its search run -> one run per trial
    assert [s.data.tags["tuneloop.stage"] for s in searches] == ["search"]
    assert (
        searches[0].info.run_id
        == result.tuned.search_run_id
        == mlflow.get_run(result.run_id).data.tags["search_run_id"]
    )
    children = _children(result.tuned.search_run_id)
    assert len(children) == 2
    for child in children:
        assert {"rank", "lr"} <= set(child.data.params) and "trainable_params" in child.data.metrics
        history = MlflowClient().get_metric_history(child.info.run_id, "train_loss")
        # a loss per step: every step of a complete trial, those before its stop for a pruned one
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, len(history) + 1))
        assert len(history) > (0 if child.data.tags["optuna.state"] == "PRUNED" else 5)
    parent = mlflow.get_run(result.run_id)
    assert parent.inputs.dataset_inputs[0].dataset.digest == result.data.dataset_hash
    assert parent.data.metrics["gate.passed"] == 1.0
    for suite in ("heldout", "adversarial", "regression"):  # a table per suite, every item with both answers
        table = json.loads(
            Path(
                mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path=f"evaluate/{suite}.json")
            ).read_text()
        )
        assert {"champion_output", "challenger_output", "diff"} <= set(table["columns"]) and table["data"]


def test_classification_loop_then_gate_refuses_a_worse_challenger(home):
    config = tiny_config(home, "classification", epochs=10)
    _seed(config, sample_feedback("classification", small=True))
    first = loop(config)
    assert first.report.passed, first.report.reasons
    # where the router fails, per label: support sums to the held-out items, worst challenger F1 first
    table = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(run_id=first.run_id, artifact_path="evaluate/per_label.json")
        ).read_text()
    )
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert sum(r["support"] for r in rows) == first.report.items["heldout"]
    assert [r["challenger_f1"] for r in rows] == sorted(r["challenger_f1"] for r in rows)
    assert {"champion_recall", "challenger_precision"} <= set(table["columns"])
    promote(config.model_name, config=config)
    champion = alias_version(config.model_name, "champion")
    # the version loads as a pyfunc (logged as code, not pickled) and answers with labels
    import pandas as pd

    loaded = mlflow.pyfunc.load_model(f"models:/{config.model_name}@champion")
    answers = loaded.predict(pd.DataFrame({"input": ["where is my Orbit camera", "refund my hub"]}))
    from tuneloop.data.sample_data import INTENTS

    assert len(answers) == 2 and set(answers) <= set(INTENTS) | {config.fallback_label}
    # its out-of-scope threshold, fitted on validation, is on the energy score here, and the pyfunc applies it
    from tuneloop.modeling.calibration import MIN_FOR_SIMILARITY, Calibration
    from tuneloop.modeling.inference import predict_classes
    from tuneloop.modeling.neighbours import clearly_worse

    served = loaded._model_impl.python_model
    calibration = Calibration.from_dict(served.calibration)
    texts = ["where is my Orbit camera", "refund my hub", "tell me a joke about penguins", "asdf qwer zxcv"]
    store = first.report.neighbours  # built from its training utterances; kept unless they lower validation accuracy
    assert store["utterances"] > 0 and (served.neighbours is not None) == bool(store["kept"])
    assert bool(store["kept"]) == (not clearly_worse(store["validation_losses"], store["validation_wins"]))
    answered = predict_classes(served.model, served.tokenizer, texts, served.labels, neighbours=served.neighbours)
    assert config.fallback_score == "energy_and_similarity" and 0 < calibration.n_in_scope < MIN_FOR_SIMILARITY
    assert calibration.score == "energy"  # too few calibration inputs to standardise the similarity on
    assert list(loaded.predict(pd.DataFrame({"input": texts}))) == calibration.apply(*answered)

    # the same data, but a search that cannot learn: the challenger is worse than the champion
    weak = tiny_config(
        home, "classification", epochs=1, ranks=[4], lr_min=1e-7, lr_max=2e-7, first_trial={"rank": 4, "lr": 1e-7}
    ).model_copy(update={"neighbours": 0})  # no votes either: its stored utterances alone would answer well
    second = loop(weak)
    assert not second.report.passed
    assert second.report.baseline == champion == "1"
    assert any("held-out" in reason for reason in second.report.reasons)
    assert second.registered is None
    assert version_for(config.model_name, "challenger") is None
    assert len(MlflowClient().search_model_versions(f"name='{config.model_name}'")) == 1
    assert mlflow.get_run(second.run_id).data.tags["gate"] == "refused"


def test_rerun_on_the_same_data_continues_the_study(home):
    config = tiny_config(home, "classification", epochs=2)
    _seed(config, sample_feedback("classification", small=True))
    first = loop(config)
    again = loop(config)  # completed trials are never trained twice
    assert again.tuned.study_name == first.tuned.study_name
    assert again.tuned.best.mlflow_run_id == first.tuned.best.mlflow_run_id
    assert len(_children(again.run_id)) == 0  # the search run it continued belongs to the first loop run
    assert again.tuned.search_run_id == first.tuned.search_run_id
