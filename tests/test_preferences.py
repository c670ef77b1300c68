"""Learning from every signal: preference pairs and unpaired thumbs from curation, DPO and KTO in the
training loop (tiny random models), the adapter-disabled base as reference, exact resume, the gate."""

from __future__ import annotations

import pytest
import torch
import transformers

from tuneloop.config import LoopConfig, TuneConfig
from tuneloop.data.datasets import SPLITS, split_of
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.preference import PreferencePair, Unpaired, load_pairs, load_unpaired, signal_files
from tuneloop.eval_suites.gate import regression_check
from tuneloop.eval_suites.stats import FAIL, PASS
from tuneloop.eval_suites.suites import SuiteItem
from tuneloop.flows import curate as curate_module
from tuneloop.flows.curate import build_dataset
from tuneloop.modeling.batches import collate, encode
from tuneloop.modeling.inference import predict
from tuneloop.modeling.models import load_base, load_tokenizer, lora_targets, resolve_base
from tuneloop.modeling.objectives import (
    PreferenceTerm,
    answer_logps,
    dpo_loss,
    pair_rows,
    reference_logps,
    unpaired_rows,
    usable,
)
from tuneloop.modeling.prompting import Prompting
from tuneloop.modeling.training import add_adapter, train

PROMPTING = Prompting("Answer in one short sentence.")


def _record(n: int, prompt: str, rating: str, output: str, correction: str | None = None) -> dict:
    record = {
        "request_id": f"p-{n}",
        "user_id": f"u-{n % 5}",
        "model_version": "base",
        "prompt": prompt,
        "output": output,
        "rating": rating,
    }
    if correction is not None:
        record["correction"] = correction
    return record


def _curate(tmp_path, records, monkeypatch=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = LoopConfig(kind="generation", home=tmp_path)
    store = FeedbackStore(config.feedback_db)
    store.add_many_raw(records, "generation")
    return config, build_dataset(store, config, check=False)


RECORDS = [
    _record(1, "What is the Nimbus price?", "down", "It is free.", "The Nimbus costs 189 euros."),
    _record(2, "What is the Nimbus price?", "down", "It is free.", "The Nimbus costs 189 euros."),  # a duplicate pair
    _record(3, "How long is the warranty?", "down", "Two years.", "two years"),  # chosen == rejected once normalised
    _record(4, "Where is my order?", "up", "Check the tracking link in your email."),
    _record(5, "Can I pay with cash?", "down", "Yes, always."),  # bare thumbs-down
    _record(6, "Can I pay with cash?", "down", "Cash works everywhere."),  # the same prompt, only disliked
    _record(7, "Do you ship abroad?", "up", "We ship to 30 countries."),
    _record(8, "Do you ship abroad?", "down", "We ship to 30 countries."),  # one answer liked and disliked:
    _record(9, "Do you ship abroad?", "up", "We ship to 30 countries."),  # the majority (liked) wins
]


def test_curation_yields_pairs_and_unpaired_examples_with_counts(tmp_path):
    config, ref = _curate(tmp_path, RECORDS)
    counts = ref.counts
    assert counts["preference_pairs"] == 1 and counts["pairs_duplicates_removed"] == 1
    assert counts["pairs_chosen_equals_rejected"] == 1
    assert counts["thumbs_down_without_correction"] == 3
    assert counts["unpaired_liked"] == 2 and counts["unpaired_disliked"] == 2
    assert counts["unpaired_conflicts_resolved"] == 1 and counts["unpaired_duplicates_removed"] == 2
    assert counts["prompts_only_disliked"] == 1  # "Can I pay with cash?": kept for KTO, counted
    pairs = [p for split in SPLITS for p in load_pairs(ref, split, config.work_dir)]
    assert [(p.chosen, p.rejected) for p in pairs] == [("The Nimbus costs 189 euros.", "It is free.")]
    assert sorted(pairs[0].source_ids) == [1, 2]
    unpaired = {(u.prompt, u.answer): u.liked for split in SPLITS for u in load_unpaired(ref, split, config.work_dir)}
    for split in SPLITS:  # each follows its prompt cluster's split, as the supervised pairs do
        assert all(
            split_of(u.key, config.heldout_percent, config.validation_percent) == split
            for u in load_unpaired(ref, split, config.work_dir)
        )
    assert unpaired == {
        ("Where is my order?", "Check the tracking link in your email."): True,
        ("Can I pay with cash?", "Yes, always."): False,
        ("Can I pay with cash?", "Cash works everywhere."): False,
        ("Do you ship abroad?", "We ship to 30 countries."): True,
    }
    assert all((ref.path / name).exists() for name in signal_files())


def test_the_supervised_pairs_are_exactly_those_curated_without_the_signal(tmp_path, monkeypatch):
    """The preference signal is extra: the supervised split files are byte for byte what they are without it,
    and a bare thumbs-down never moves a supervised prompt's cluster."""
    records = [_record(0, "Can I pay with Nimbus credit?", "down", "No.")] + RECORDS  # a near-duplicate, first
    _, with_signal = _curate(tmp_path / "a", records)
    monkeypatch.setattr(curate_module, "SignalSpill", lambda *args: None)
    _, without = _curate(tmp_path / "b", records)
    for split in ("train", "validation", "heldout"):
        assert (with_signal.path / f"{split}.jsonl").read_bytes() == (without.path / f"{split}.jsonl").read_bytes()
    assert not (without.path / "pairs-train.jsonl").exists()


def test_an_objective_the_data_cannot_feed_is_left_out_with_a_reason():
    kept, reasons = usable(["sft", "dpo", "kto"], n_pairs=0, n_unpaired=5, kind="generation")
    assert kept == ["sft", "kto"] and len(reasons) == 1 and reasons[0].startswith("dpo: no preference pairs")
    kept, reasons = usable(["dpo", "kto"], n_pairs=3, n_unpaired=0, kind="generation")
    assert kept == ["dpo"] and "kto: no unpaired thumbs" in reasons[0]
    with pytest.raises(ValueError):
        TuneConfig(dpo_beta_min=1.0, dpo_beta_max=0.1)


def _tiny():
    info = resolve_base("generation", tiny=True)
    tokenizer = load_tokenizer(info)
    base = load_base(info, "generation")
    return info, tokenizer, base


def _adapter(base, seed: int = 0):
    return add_adapter(base, "generation", 8, seed, targets=lora_targets(base, "attention"), dropout=0.0)


PAIRS = [
    PreferencePair(
        prompt=f"What does plan {c} cost?",
        chosen=f"Plan {c} costs {9 + i} euros a month.",
        rejected="I do not know.",
        key=c,
        source_ids=[i],
    )
    for i, c in enumerate("ABCDEFGH")
]
THUMBS = [
    Unpaired(
        prompt=f"Tell me about plan {c}.",
        answer=f"Plan {c} is short." if i % 2 else "I cannot help you.",
        liked=bool(i % 2),
        key=c,
        source_ids=[i],
    )
    for i, c in enumerate("ABCDEFGH")
]


def _term(objective: str, tokenizer, beta: float = 0.5) -> PreferenceTerm:
    rows = (
        pair_rows(tokenizer, PAIRS, 64, PROMPTING)
        if objective == "dpo"
        else unpaired_rows(tokenizer, THUMBS, 64, PROMPTING)
    )
    return PreferenceTerm(
        objective, rows, beta=beta, weight=1.0, batch_size=4, seed=0, pad_id=tokenizer.pad_token_id, max_length=64
    )


def _supervised(tokenizer):
    return encode("generation", tokenizer, [(p.prompt, p.chosen) for p in PAIRS[:4]], [], 64, PROMPTING)


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_each_objective_trains_a_tiny_model_and_its_loss_falls(objective, monkeypatch):
    _, tokenizer, base = _tiny()
    model = _adapter(base)
    term = _term(objective, tokenizer)

    def no_second_model(*args, **kwargs):  # the reference is the same model, adapter off: nothing is loaded
        raise AssertionError("a second model was loaded for the reference")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_second_model)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", no_second_model)
    result = train(
        model, _supervised(tokenizer), tokenizer.pad_token_id, lr=0.01, epochs=12, batch_size=4, seed=0, extra_loss=term
    )
    assert len(term.history) == result.steps == 12
    assert all(torch.isfinite(torch.tensor(term.history)))
    first, last = sum(term.history[:3]) / 3, sum(term.history[-3:]) / 3
    assert last < first - 0.02, term.history
    if objective == "dpo":  # the margin grew: chosen over rejected, relative to the base
        rows = pair_rows(tokenizer, PAIRS, 64, PROMPTING)
        chosen, rejected = (collate([r[side] for r in rows], tokenizer.pad_token_id) for side in ("chosen", "rejected"))
        with torch.no_grad():
            margin = (
                answer_logps(model, chosen)
                - reference_logps(model, chosen)
                - answer_logps(model, rejected)
                + reference_logps(model, rejected)
            )
        assert margin.mean() > 0


def test_the_reference_is_the_base_with_its_adapter_disabled():
    """Reference log-probabilities are the bare base's, whatever the adapter has learned; a fresh
    adapter (the identity) gives DPO's loss log 2 exactly."""
    _, tokenizer, base = _tiny()
    batch = collate(_supervised(tokenizer), tokenizer.pad_token_id)
    with torch.no_grad():
        bare = answer_logps(base, batch)  # before any adapter exists
    model = _adapter(base)
    n_params = sum(p.numel() for p in model.parameters())
    assert torch.allclose(reference_logps(model, batch), bare, atol=1e-5)
    with torch.no_grad():
        policy = answer_logps(model, batch)
    assert torch.allclose(dpo_loss(policy, policy, bare, bare, 0.1), torch.log(torch.tensor(2.0)).expand(4), atol=1e-5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
    with torch.no_grad():
        assert not torch.allclose(answer_logps(model, batch), bare, atol=1e-3)  # the adapter moved the policy
    assert torch.allclose(reference_logps(model, batch), bare, atol=1e-5)  # but not the reference
    assert sum(p.numel() for p in model.parameters()) == n_params  # and no copy was made for it


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_a_killed_preference_trial_resumes_with_the_same_losses(objective, tmp_path):
    info, tokenizer, _ = _tiny()
    encoded = _supervised(tokenizer)
    args = dict(lr=0.01, epochs=8, batch_size=2, seed=0)

    def fresh():
        base = load_base(info, "generation")
        return add_adapter(base, "generation", 8, 0, targets=lora_targets(base, "attention"), dropout=0.1), _term(
            objective, tokenizer
        )

    model, term = fresh()
    reference = train(model, encoded, tokenizer.pad_token_id, **args, extra_loss=term)

    class Killed(Exception):
        pass

    def die_at_step_13(step: int, loss: float) -> None:
        if step == 13:
            raise Killed

    model, term = fresh()
    with pytest.raises(Killed):
        train(
            model,
            encoded,
            tokenizer.pad_token_id,
            **args,
            extra_loss=term,
            checkpoint_dir=tmp_path,
            checkpoint_every=5,
            on_step=die_at_step_13,
        )
    torch.manual_seed(123)  # elsewhere in the stream: only the checkpoint brings it back
    model, term = fresh()
    resumed = train(
        model, encoded, tokenizer.pad_token_id, **args, extra_loss=term, checkpoint_dir=tmp_path, checkpoint_every=5
    )
    assert resumed.resumed_from_step == 10
    assert resumed.losses == pytest.approx(reference.losses[10:], abs=1e-4)


def test_the_gate_refuses_a_preference_trained_challenger_that_forgets():
    """DPO pushed hard away from the base's own answers: on regression items the base answers (its own
    greedy answers are their references) the challenger's answers change, and the forgetting check refuses
    it; the same adapter untrained passes, so the refusal is the training's."""
    _, tokenizer, base = _tiny()
    prompts = [f"Question number {i}: what is {i} plus {i}?" for i in range(80)]  # 74 needed to conclude at 0.05
    base_answers, _ = predict("generation", base, tokenizer, prompts, [], 6, PROMPTING)
    items = [
        SuiteItem(id=f"r{i}", suite="regression", category="known", input=p, reference=a or "-", metric="exact_match")
        for i, (p, a) in enumerate(zip(prompts, base_answers))
    ]
    model = add_adapter(base, "generation", 8, 0, targets=lora_targets(base, "all-linear"), dropout=0.0)

    def regression(candidate) -> list[float]:  # the base's exact answer kept; the judge's normalising would
        # score a random model's empty answer and a trained one's "......" alike
        outputs, _ = predict("generation", candidate, tokenizer, prompts, [], 6, PROMPTING)
        return [float(out == answer) for out, answer in zip(outputs, base_answers)]

    baseline = regression(base)
    assert sum(baseline) == len(items)  # the base knows every item
    untrained = regression_check(items, baseline, regression(model), tolerance=0.05, samples=500)
    assert untrained.verdict == PASS, untrained.reason
    pairs = [
        PreferencePair(prompt=p, chosen="Sorry.", rejected=a or "-", key=str(i), source_ids=[i])
        for i, (p, a) in enumerate(zip(prompts[:12], base_answers))
    ]
    term = PreferenceTerm(
        "dpo",
        pair_rows(tokenizer, pairs, 64, PROMPTING),
        beta=0.5,
        weight=1.0,
        batch_size=4,
        seed=0,
        pad_id=tokenizer.pad_token_id,
        max_length=64,
    )
    train(
        model, _supervised(tokenizer), tokenizer.pad_token_id, lr=0.05, epochs=30, batch_size=4, seed=0, extra_loss=term
    )
    check = regression_check(items, baseline, regression(model), tolerance=0.05, samples=500)
    assert check.verdict == FAIL, check.reason


def test_the_loop_searches_objectives_logs_objective_and_beta_and_tags_the_signal(home):
    """A search over dpo and kto: each trial's objective and beta are MLflow params, the registered version
    says which signal it learned from; bare thumbs-down feed KTO (none dropped)."""
    import mlflow
    from conftest import constant_corrections, tiny_config

    from tuneloop.data.sample_data import sample_feedback
    from tuneloop.flows.loop import loop
    from tuneloop.registry.versions import version_for

    config = tiny_config(
        home,
        "generation",
        n_trials=2,
        objectives=["sft", "dpo", "kto"],
        first_trial={"rank": 16, "lr": 0.02, "objective": "kto"},
    )
    FeedbackStore(config.feedback_db).add_many_raw(
        constant_corrections(sample_feedback("generation"), "Please ask Brightwell support about that."), config.kind
    )
    result = loop(config)
    counts = result.data.counts
    assert counts["unpaired_disliked"] > 0 and counts["preference_pairs"] > 0
    trials = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{result.tuned.search_run_id}'",
        search_all_experiments=True,
        output_format="list",
    )
    assert len(trials) == 2
    for run in trials:
        assert run.data.params["objective"] in {"sft", "dpo", "kto"}
        if run.data.params["objective"] != "sft":
            assert 0.05 <= float(run.data.params["beta"]) <= 0.5
            assert "preference_loss_last" in run.data.metrics
    assert "kto" in {run.data.params["objective"] for run in trials}
    assert result.registered is not None, result.report.reasons
    version = version_for(config.model_name, "challenger")
    assert version.tags["objective"] == result.tuned.best.params["objective"]
    assert version.tags["learned_from"].startswith("supervised pairs")


def test_a_first_trial_sets_its_objectives_beta_and_a_name_the_search_lacks_is_refused():
    import optuna

    from tuneloop.search.study import suggest

    tune = TuneConfig(objectives=["sft", "kto"], first_trial={"rank": 16, "lr": 9e-4, "objective": "kto", "beta": 0.1})
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(tune.first_trial)
    params = suggest(study.ask(), tune, "generation", tune.objectives)
    assert (params["objective"], params["beta"], params["rank"], params["lr"]) == ("kto", 0.1, 16, 9e-4)
    with pytest.raises(ValueError, match="first_trial has epochs, which the search does not set"):
        TuneConfig(first_trial={"rank": 16, "lr": 9e-4, "epochs": 8})
    with pytest.raises(ValueError, match="first_trial beta needs its objective"):
        TuneConfig(objectives=["sft", "kto"], first_trial={"rank": 16, "lr": 9e-4, "beta": 0.1})
    with pytest.raises(ValueError, match="first_trial objective 'dpo' is not one of objectives"):
        TuneConfig(first_trial={"objective": "dpo"})


def test_the_first_trial_is_supervised_beside_preference_objectives_and_never_one_the_data_lacks(tmp_path):
    from tuneloop.config import LoopConfig
    from tuneloop.data.datasets import DatasetRef
    from tuneloop.search.study import first_trial_of

    def first(counts: dict, **tune) -> dict | None:
        config = LoopConfig(kind="generation", home=tmp_path, tune=TuneConfig(**tune))
        return first_trial_of(config, DatasetRef(kind="generation", dataset_hash="h", path=tmp_path, counts=counts))

    thumbs = {"pairs_train": 5, "unpaired_train": 7}
    # several objectives searched: the known-good start is the plain fine-tune, the others get the later trials
    assert first(thumbs, objectives=["kto", "sft"]) == {"rank": 16, "lr": 1.5e-3, "objective": "sft"}
    assert first(thumbs, objectives=["kto", "dpo"]) == {"rank": 16, "lr": 1.5e-3}  # no sft: the search draws
    assert first(
        thumbs, objectives=["sft", "kto"], first_trial={"rank": 8, "lr": 1e-3, "objective": "kto", "beta": 0.2}
    ) == {"rank": 8, "lr": 1e-3, "objective": "kto", "kto_beta": 0.2}
    # an objective the data cannot feed (no thumbs: no kto) leaves the first trial, its beta with it
    assert first(
        {"pairs_train": 5},
        objectives=["sft", "kto"],
        first_trial={"rank": 8, "lr": 1e-3, "objective": "kto", "beta": 0.2},
    ) == {"rank": 8, "lr": 1e-3}
    assert first(thumbs, first_trial=None) is None


def test_generation_searches_kto_beside_sft_by_default_and_classification_sft_alone(tmp_path):
    from tuneloop.config import LoopConfig

    assert LoopConfig(kind="generation", home=tmp_path).tune.objectives == ["sft", "kto"]
    assert LoopConfig(kind="classification", home=tmp_path).tune.objectives == ["sft"]  # no warning at every loop
    mine = LoopConfig(kind="generation", home=tmp_path, tune=TuneConfig(objectives=["sft"]))
    assert mine.tune.objectives == ["sft"]  # a user's own choice stands


def test_the_default_first_trial_moves_into_a_narrowed_space_and_a_users_own_is_refused_outside_it():
    narrowed = TuneConfig(ranks=[4, 8], lr_max=1e-3)  # the default start is rank 16 at 1.5e-3
    assert narrowed.first_trial == {"rank": 8, "lr": 1e-3} and "first_trial" not in narrowed.model_fields_set
    assert TuneConfig(lr_min=1.6e-3, lr_max=3e-3).first_trial == {"rank": 16, "lr": 1.6e-3}
    with pytest.raises(ValueError, match=r"first_trial rank 16 is not one of ranks \[4, 8\]"):
        TuneConfig(ranks=[4, 8], first_trial={"rank": 16, "lr": 1e-3})
    with pytest.raises(ValueError, match=r"first_trial lr 0.002 is outside \[0.0005, 0.001\]"):
        TuneConfig(lr_max=1e-3, first_trial={"rank": 16, "lr": 2e-3})
