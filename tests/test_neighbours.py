"""A classifier's neighbour store: the votes' arithmetic, the store on disk (bounded, checked, no pickle),
and the votes through classify, the service's per-row adapters and the loop's registered version."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import save_file

from tuneloop.modeling.inference import classify, embed
from tuneloop.modeling.models import base_of, load_base, load_tokenizer
from tuneloop.modeling.neighbours import (
    NEIGHBOURS_FILE,
    Neighbours,
    build_neighbours,
    clearly_worse,
    load_neighbours,
)


def _unit(rows: list[list[float]]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_the_nearest_utterances_vote_and_the_weight_blends_them_with_the_head():
    store = Neighbours(_unit([[1, 0], [0.9, 0.1], [0, 1]]), torch.tensor([0, 0, 1]), k=2, weight=0.5)
    votes, nearest = store.votes(_unit([[1, 0.05], [0.05, 1]]), n_labels=3)
    assert nearest.tolist() == pytest.approx([0.9988, 0.9988], abs=1e-4)  # cos of each query to its nearest
    assert votes.shape == (2, 3) and torch.allclose(votes.sum(1), torch.ones(2))
    assert votes[0, 0] == 1.0  # its two nearest are both label 0
    assert votes[1, 1] > votes[1, 0] > 0  # label 1's utterance is nearer, label 0's still counts
    head = torch.tensor([[0.1, 0.8, 0.1], [0.1, 0.8, 0.1]])
    mixed, _ = store.mix(head, _unit([[1, 0.05], [0.05, 1]]))
    assert torch.allclose(mixed, 0.5 * head + 0.5 * votes)
    assert mixed[0].argmax() == 0 and mixed[1].argmax() == 1  # the votes overrule a wrong head on the first


def test_the_store_round_trips_and_a_malformed_one_is_refused(tmp_path):
    store = Neighbours(_unit([[1, 0], [0, 1]]), torch.tensor([0, 2]), k=3, weight=0.25)
    store.save(tmp_path)
    loaded = load_neighbours(tmp_path, n_labels=3)
    assert loaded.k == 3 and loaded.weight == 0.25 and loaded.labels.tolist() == [0, 2]
    assert torch.allclose(loaded.embeddings, store.embeddings, atol=1e-3)  # stored as float16
    assert load_neighbours(tmp_path / "none", n_labels=3) is None
    with pytest.raises(ValueError, match="2-label head"):  # label 2 does not exist in a 2-label head
        load_neighbours(tmp_path, n_labels=2)
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(
        {"embeddings": torch.zeros(2, 4), "labels": torch.zeros(3, dtype=torch.int32)}, str(bad / NEIGHBOURS_FILE)
    )
    with pytest.raises(ValueError, match="not a neighbour store"):
        load_neighbours(bad, n_labels=3)


def test_the_store_is_dropped_only_when_its_votes_lose_beyond_chance():
    assert not clearly_worse(losses=3, wins=2)  # one input either way is noise
    assert not clearly_worse(losses=0, wins=0)
    assert not clearly_worse(losses=4, wins=0)  # p = 1/16
    assert clearly_worse(losses=5, wins=0) and clearly_worse(losses=15, wins=4)  # p = 1/32 and 0.010
    assert not clearly_worse(losses=12, wins=6)  # p = 0.12


def test_the_store_is_bounded(monkeypatch):
    monkeypatch.setattr("tuneloop.modeling.neighbours.MAX_EXAMPLES", 5)
    texts = [f"t{i}" for i in range(12)]
    store = build_neighbours(lambda ts: _unit([[float(t[1:]) + 1, 1.0] for t in ts]), texts, list(range(12)), 3, 0.5)
    assert len(store.labels) == 5 and len(set(store.labels.tolist())) == 5
    again = build_neighbours(lambda ts: _unit([[float(t[1:]) + 1, 1.0] for t in ts]), texts, list(range(12)), 3, 0.5)
    assert again.labels.tolist() == store.labels.tolist()  # the same sample every time
    with pytest.raises(ValueError, match="no training utterances"):
        build_neighbours(lambda ts: torch.zeros(0, 2), [], [], 3, 0.5)


def test_classify_answers_a_stored_utterance_with_its_label_and_leaves_rows_without_a_store_alone(home):
    config = tiny_config(home, "classification")
    labels = ["billing", "returns", "shipping_status"]
    info = base_of(config)
    model, tokenizer = load_base(info, "classification", labels).eval(), load_tokenizer(info)
    texts = ["refund my hub please", "where is my parcel", "my invoice is wrong", "cancel the order now"]
    stored = [1, 2, 0, 1]
    # the votes alone (weight 1, nearest one): each stored utterance is its own nearest neighbour
    store = build_neighbours(lambda ts: embed(model, tokenizer, ts), texts, stored, k=1, weight=1.0)
    voted = classify(model, tokenizer, texts, labels, neighbours=store)
    assert voted.labels == [labels[i] for i in stored] and all(c == pytest.approx(1.0) for c in voted.confidences)
    head = classify(model, tokenizer, texts, labels)
    per_row = classify(model, tokenizer, texts, labels, neighbours=[store, None, store, None])
    assert per_row.labels[0::2] == voted.labels[0::2] and per_row.labels[1::2] == head.labels[1::2]
    assert per_row.confidences[1::2] == pytest.approx(head.confidences[1::2])
    assert per_row.energies == pytest.approx(head.energies)  # the out-of-scope score stays the head's own
    assert voted.similarities == pytest.approx([1.0] * 4, abs=1e-3)  # each stored utterance is its own nearest
    assert per_row.similarities[1::2] == [None, None] and head.similarities is None


def test_a_candidate_with_a_store_is_calibrated_on_energy_and_similarity_given_enough_inputs(home):
    from tuneloop.eval_suites.suites import SuiteItem
    from tuneloop.flows.candidates import Candidate, answers, fit_calibration, routed
    from tuneloop.modeling.calibration import MIN_FOR_SIMILARITY
    from tuneloop.modeling.prompting import Prompting

    config = tiny_config(home, "classification")
    labels = ["billing", "returns", "shipping_status"]
    info = base_of(config)
    model, tokenizer = load_base(info, "classification", labels).eval(), load_tokenizer(info)
    texts = [
        f"{verb} my {thing} order {n}"
        for verb in ("refund", "track", "bill")
        for thing in ("hub", "cam")
        for n in range(20)
    ]
    store = build_neighbours(
        lambda ts: embed(model, tokenizer, ts), texts, [i // 40 for i in range(len(texts))], 10, 0.5
    )
    candidate = Candidate("challenger", model, tokenizer, Prompting(), labels, info, neighbours=store)
    validation = [
        SuiteItem(id=f"v{i}", suite="heldout", category="heldout", input=f"please {t}", reference=labels[i // 40])
        for i, t in enumerate(texts)
    ]
    assert len(validation) >= MIN_FOR_SIMILARITY
    calibration = fit_calibration(config, candidate, validation)
    assert calibration.score == "energy_and_similarity" and calibration.centre and calibration.spread
    assert calibration.in_scope_fallback_rate <= config.max_fallback_rate
    answered = answers(config, candidate, validation, config.max_new_tokens)
    assert answered.similarities and all(s is not None for s in answered.similarities)
    assert routed(config, candidate, answered) == calibration.apply(*answered)
    # the answers the store's check already has (head alone, with the votes) are the ones the threshold is
    # fitted on: the evaluate stage hands them over instead of answering the calibration half again
    from tuneloop.flows.candidates import _votes_against_head

    comparison, head, voted = _votes_against_head(candidate, store, validation)
    assert voted == answered and fit_calibration(config, candidate, validation, voted) == calibration
    assert head.similarities is None  # the head alone: no store asked
    for name, answered_by in (("head", head), ("with_votes", voted)):
        right = sum(o == it.reference for o, it in zip(answered_by.outputs, validation))
        assert comparison[f"validation_accuracy_{name}"] == pytest.approx(right / len(validation), abs=1e-4)
    few = fit_calibration(config, candidate, validation[: MIN_FOR_SIMILARITY - 1])
    assert few.score == "energy" and few.centre is None  # too few inputs to standardise the similarity on
