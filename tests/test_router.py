"""The classification router: its recipe's pieces on a tiny model (pooler and head trained in full, the
final training on train + the validation split's retraining half, the defaults), the serving contract
when no trained version answers, and label sets that change between loops."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from tuneloop.config import CLASSIFICATION_TUNE, LoopConfig, TuneConfig
from tuneloop.data.datasets import DatasetRef, calibration_half, load_examples, load_labels
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.sample_data import OUT_OF_SCOPE_LABEL, sample_feedback
from tuneloop.flows.curate import build_dataset
from tuneloop.flows.trial import build_model, trial_data, with_validation
from tuneloop.modeling.adapters import load_adapter, write_meta
from tuneloop.modeling.models import DEFAULT_TARGETS, base_of, load_base, lora_targets, save_labels
from tuneloop.modeling.training import add_adapter, train
from tuneloop.registry.versions import log_adapter, move_alias
from tuneloop.serving.models import EXISTING_ROUTER, AdapterBank

PARAMS = {"rank": 8, "alpha_ratio": 2.0, "dropout": 0.05, "target_modules": "all-linear"}


def _dataset(config: LoopConfig, records: list[dict] | None = None) -> DatasetRef:
    store = FeedbackStore(config.feedback_db)
    store.add_many_raw(records if records is not None else sample_feedback("classification"), config.kind)
    return build_dataset(store, config)


def _adapter(config: LoopConfig, labels: list[str], folder) -> None:
    """A trained-looking adapter for ``labels`` (a few steps on made-up rows), saved as the loop saves one."""
    info = base_of(config)
    model = add_adapter(
        load_base(info, "classification", labels),
        "classification",
        8,
        0,
        targets=lora_targets(load_base(info, "classification", labels), DEFAULT_TARGETS["classification"]),
    )
    model.save_pretrained(folder)
    write_meta(folder, config, info)
    save_labels(folder, labels)


def test_the_recipe_trains_pooler_head_and_every_linear_layer_and_saves_them(home):
    config = tiny_config(home, "classification", train_pooler=True)  # the default; the tiny config turns it off
    data = trial_data(config, _dataset(config))
    model = build_model(config, data, PARAMS, torch.device("cpu"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("pooler.modules_to_save" in n for n in trainable)
    assert any("classifier.modules_to_save" in n for n in trainable)
    assert any("lora_A" in n and "intermediate" in n for n in trainable)  # the feed-forward blocks too
    assert any("lora_A" in n and "attention" in n for n in trainable)
    pooler = {n: p.detach().clone() for n, p in model.named_parameters() if "pooler.modules_to_save" in n}
    train(model, data.encoded[:64], data.tokenizer.pad_token_id, lr=0.01, epochs=1, batch_size=16, seed=0)
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if n in pooler}
    assert all(not torch.equal(pooler[n], trained[n]) for n in pooler)

    folder = home / "adapter"
    model.save_pretrained(folder)
    write_meta(folder, config, data.base)
    save_labels(folder, data.labels)
    loaded, *_ = load_adapter(folder)
    reloaded = dict(loaded.named_parameters())
    assert all(torch.equal(reloaded[n], trained[n]) for n in trained)  # the served model has the trained pooler


def test_the_final_training_adds_the_validation_retraining_half_and_scores_on_the_other(home):
    config = tiny_config(home, "classification")
    ref = _dataset(config)
    data = trial_data(config, ref)
    validation = load_examples(ref, "validation", config.work_dir)
    retrain = [e for e in validation if not calibration_half(e)]
    assert retrain and len(retrain) < len(validation)
    final = with_validation(config, ref, data)
    assert len(final.encoded) == len(data.encoded) + len(retrain)
    assert final.validation and all(calibration_half(e) for e in final.validation)
    assert {e.key for e in final.validation}.isdisjoint(e.key for e in retrain)


def test_classification_defaults_are_the_router_recipe_and_a_users_setting_wins():
    config = LoopConfig(kind="classification")
    assert DEFAULT_TARGETS["classification"] == "attention" and config.tune.train_pooler
    assert {k: getattr(config.tune, k) for k in CLASSIFICATION_TUNE} == CLASSIFICATION_TUNE
    assert config.tune.first_trial == {"rank": 8, "lr": 2e-3} and config.tune.retrain_with_validation
    mine = LoopConfig(kind="classification", tune=TuneConfig(ranks=[16], epochs=6, lr_min=1e-4, lr_max=1e-3))
    assert (mine.tune.ranks, mine.tune.epochs, mine.tune.lr_max) == ([16], 6, 1e-3)
    assert mine.tune.first_trial == {"rank": 16, "lr": 1e-3}  # the prior's start, moved into the user's space
    assert LoopConfig.model_validate_json(mine.model_dump_json()).tune == mine.tune
    assert LoopConfig(kind="generation").tune.ranks == [4, 8, 16]  # generation keeps its own defaults


def test_the_champion_slot_never_answers_from_an_untrained_head(home):
    config = tiny_config(home, "classification")
    bank = AdapterBank(config)
    bank.refresh()
    assert bank.ready  # nothing registered yet: ready, and every answer tells the app to route itself
    outputs, confidences = bank.predict(["base"], ["where is my hub"])
    assert outputs == [config.fallback_label] and confidences == [0.0]
    assert bank.variant_of("champion", "base") == EXISTING_ROUTER

    labels = sorted({"billing", "returns", "shipping_status", OUT_OF_SCOPE_LABEL})
    _adapter(config, labels, home / "v1")
    version = str(log_adapter(config, home / "v1", {"note": "first trained version"}).version)
    move_alias(
        config.model_name, "challenger", version, "test", config=config
    )  # a first loop: a challenger at a canary, no champion
    bank.refresh()
    assert bank.version_of("champion") == "base" and bank.version_of("challenger") == version
    outputs, confidences = bank.predict(["base", version, "base"], ["where is my hub"] * 3)
    assert outputs[0] == outputs[2] == config.fallback_label and confidences[0] == confidences[2] == 0.0
    assert outputs[1] in labels + [config.fallback_label] and confidences[1] > 0  # the trained version's own answer
    assert bank.variant_of("challenger", version) == "challenger"


def test_the_service_answers_a_version_with_its_own_neighbour_store(home):
    """A version's store, registered beside its adapter, is loaded with it and votes on its rows only."""
    from tuneloop.modeling.inference import embed
    from tuneloop.modeling.models import load_tokenizer
    from tuneloop.modeling.neighbours import build_neighbours

    config = tiny_config(home, "classification")
    labels = ["billing", "returns", "shipping_status"]
    texts = ["refund my hub please", "where is my parcel", "my invoice is wrong"]
    _adapter(config, labels, home / "v1")
    _adapter(config, labels, home / "v2")
    model, *_ = load_adapter(home / "v1")
    tokenizer = load_tokenizer(base_of(config))
    votes_only = build_neighbours(lambda ts: embed(model, tokenizer, ts), texts, [1, 2, 0], k=1, weight=1.0)
    votes_only.save(home / "v1")  # v1 answers from its votes alone; v2 has no store
    v1 = str(log_adapter(config, home / "v1", {"note": "with a store"}).version)
    v2 = str(log_adapter(config, home / "v2", {"note": "without"}).version)
    move_alias(config.model_name, "champion", v1, "test", config=config)
    move_alias(config.model_name, "challenger", v2, "test", config=config)
    bank = AdapterBank(config.model_copy(update={"fallback_label": None}))
    bank.refresh()
    outputs, confidences = bank.predict([v1, v2, v1, v2, v1, v2], [t for t in texts for _ in range(2)])
    assert outputs[0::2] == ["returns", "shipping_status", "billing"]  # each stored utterance's own label
    assert confidences[0::2] == pytest.approx([1.0] * 3)
    assert all(c < 1.0 for c in confidences[1::2])  # v2's head alone: a 2-layer random head is never sure


def test_a_new_intent_and_a_correction_naming_an_unseen_intent_are_trained_and_served(home):
    config = tiny_config(home, "classification", epochs=2)
    records = sample_feedback("classification")
    first = _dataset(
        config,
        [
            r
            for r in records
            if r.get("correction") != "installation_service"
            and not (r.get("rating") == "up" and r.get("output") == "installation_service")
        ],
    )
    old_labels = load_labels(first, config.work_dir)
    assert "installation_service" not in old_labels
    _adapter(config, old_labels, home / "v1")
    v1 = str(log_adapter(config, home / "v1", {"note": "champion without the new intent"}).version)
    move_alias(config.model_name, "champion", v1, "test", config=config)

    extra = [
        {
            "request_id": f"new-{i}",
            "user_id": "u",
            "model_version": v1,
            "kind": "classification",
            "prompt": text,
            "output": "billing",
            "rating": "down",
            "correction": "gift_wrapping",
        }
        for i, text in enumerate(
            [
                "can you gift wrap my order",
                "add gift wrapping to the hub",
                "wrap the smart plug as a present",
                "I want my order wrapped as a gift",
                "is gift wrapping available for the doorbell",
                "gift wrap please",
            ]
        )
    ]
    extra.append(
        {
            "request_id": "once",
            "user_id": "u",
            "model_version": v1,
            "kind": "classification",
            "prompt": "I want to trade in my old thermostat",
            "output": "returns",
            "rating": "down",
            "correction": "trade_in",
        }
    )  # an intent named once, never seen by any model
    second = _dataset(config, records + extra)
    labels = load_labels(second, config.work_dir)
    assert {"installation_service", "gift_wrapping", "trade_in"} <= set(labels)  # kept, not dropped (rare_labels=keep)

    from tuneloop.flows.evaluate import label_changes

    assert label_changes(old_labels, labels)["new"] == ["gift_wrapping", "installation_service", "trade_in"]
    assert label_changes(labels, old_labels)["retired"] == ["gift_wrapping", "installation_service", "trade_in"]

    data = trial_data(config, second)
    model = build_model(config, data, PARAMS, torch.device("cpu"))
    train(model, data.encoded, data.tokenizer.pad_token_id, lr=0.02, epochs=2, batch_size=16, seed=0)
    model.save_pretrained(home / "v2")
    write_meta(home / "v2", config, data.base)
    save_labels(home / "v2", data.labels)
    v2 = str(log_adapter(config, home / "v2", {"note": "with the new intents"}).version)
    move_alias(config.model_name, "challenger", v2, "test", config=config)
    bank = AdapterBank(config)
    bank.refresh()  # two label sets side by side: each version answers from its own head
    outputs, confidences = bank.predict([v1, v2], ["can you gift wrap my order"] * 2)
    assert outputs[0] in old_labels + [config.fallback_label]
    assert outputs[1] in labels + [config.fallback_label] and all(c > 0 for c in confidences)
    assert len(bank.banks) == 2 and {len(b.labels) for b in bank.banks.values()} == {len(old_labels), len(labels)}


def test_the_search_is_sized_to_the_data_unless_set(tmp_path):
    from tuneloop.flows.tune import MAX_SIZED_TRIALS, sized_to_data

    def ref(n: int) -> DatasetRef:
        return DatasetRef(kind="classification", dataset_hash="h", path=tmp_path, counts={"train": n})

    config = LoopConfig(kind="classification", home=tmp_path)
    small, demo, large = (sized_to_data(config, ref(n)).tune.n_trials for n in (60, 450, 8700))
    assert small == MAX_SIZED_TRIALS and large == config.tune.DEFAULT_TRIALS and large < demo < small
    assert sized_to_data(config.model_copy(update={"tune": TuneConfig(n_trials=5)}), ref(60)).tune.n_trials == 5
    generation = LoopConfig(kind="generation", home=tmp_path)
    assert sized_to_data(generation, ref(60)).tune.n_trials is None
