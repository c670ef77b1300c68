"""Rehearsal: the base's own answers join training, held to the frozen base by a KL term."""

from __future__ import annotations

import functools

import pytest
import torch

from tuneloop.modeling.batches import collate, encode
from tuneloop.modeling.models import load_base, load_tokenizer, lora_targets, resolve_base
from tuneloop.modeling.prompting import Prompting
from tuneloop.modeling.training import add_adapter, loss_of, train


def _model_and_rows():
    info = resolve_base("generation", tiny=True)
    tokenizer = load_tokenizer(info)
    base = load_base(info, "generation")
    model = add_adapter(base, "generation", 4, 0, targets=lora_targets(base, "attention"))
    pairs = [
        ("What is the Nimbus Pro price?", "The Nimbus Pro costs 189 euros."),
        ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ]
    rows = encode("generation", tokenizer, pairs, [], 64, Prompting("Answer in one short sentence."))
    rows[1]["rehearse"] = True
    return model, tokenizer, rows


def _move_adapter(model, scale: float = 0.5) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


def test_rehearsal_rows_are_held_by_the_kl_term_alone():
    """With the KL term, a rehearsal row adds only its divergence from the base (nothing while the
    adapter is the identity), not the cross-entropy with the base's greedy answer; other rows keep
    their cross-entropy. Without it, every row is trained on its answer."""
    model, tokenizer, rows = _model_and_rows()
    model.eval()
    batch = collate(rows, tokenizer.pad_token_id)
    only_new = collate(rows[:1], tokenizer.pad_token_id)  # no rehearsal row: no KL term
    assert batch["rehearse"].tolist() == [False, True] and "rehearse" not in only_new
    # a fresh adapter is the identity: the model is its base, so the rehearsal row adds nothing
    assert torch.allclose(loss_of(model, batch, kl_weight=1.0), loss_of(model, only_new), atol=1e-5)
    assert not torch.allclose(loss_of(model, batch), loss_of(model, only_new), atol=1e-3)  # without: its answer's CE
    _move_adapter(model)
    plain = loss_of(model, only_new)
    assert loss_of(model, batch, kl_weight=1.0) > plain + 1e-3
    assert torch.allclose(
        loss_of(model, batch, kl_weight=2.0) - plain, 2 * (loss_of(model, batch, kl_weight=1.0) - plain), rtol=1e-4
    )
    assert torch.allclose(loss_of(model, only_new, kl_weight=1.0), plain)


def test_training_on_rehearsal_with_the_kl_term_pulls_the_model_back_to_its_base():
    """An adapter moved away from the base, trained on a rehearsal row only: with the KL term its
    answer distribution there returns toward the base's; the greedy answer's cross-entropy alone
    moves it less."""

    def divergence_after(kl_weight: float) -> float:
        model, tokenizer, rows = _model_and_rows()
        _move_adapter(model)
        rows = [rows[1]] * 8
        train(model, rows, tokenizer.pad_token_id, lr=1e-2, epochs=3, batch_size=8, seed=0, kl_weight=kl_weight)
        return float(loss_of(model, collate(rows[:1], tokenizer.pad_token_id), kl_weight=1.0))  # the KL alone

    assert divergence_after(1.0) < divergence_after(0.0)


def test_the_loss_is_the_same_where_transformers_takes_no_logits_mask(monkeypatch):
    """transformers 5.17 (as installed on a GPU machine it ran on) takes ``logits_to_keep`` as a count or index list
    only and fails on a boolean mask: training there projects every position and selects after,
    with the same loss and KL term."""
    from tuneloop.modeling.fast import fast_paths

    model, tokenizer, rows = _model_and_rows()
    _move_adapter(model)
    model.eval()
    batch = collate(rows, tokenizer.pad_token_id)
    expected = [loss_of(model, batch), loss_of(model, batch, kl_weight=1.0)]
    cls = type(model.get_base_model())
    original = cls.forward

    def older(self, *args, logits_to_keep=0, **kwargs):
        if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.ndim > 1:
            raise IndexError("too many indices for tensor of dimension 3")  # what 5.17's slicing raises
        return original(self, *args, logits_to_keep=logits_to_keep, **kwargs)

    monkeypatch.setattr(cls, "forward", older)
    assert fast_paths.kept_logits_supported(cls)  # this transformers' forward takes the mask ...
    monkeypatch.setattr(fast_paths, "kept_logits_supported", lambda model_class: False)  # ... an older one does not
    got = [loss_of(model, batch), loss_of(model, batch, kl_weight=1.0)]
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, atol=1e-5)


def test_rehearsal_leaves_out_prompts_that_users_have_answered():
    """A replay prompt like one in the training data ("Hi there!", "Good morning!" against the users'
    "Hey, good morning.") would rehearse the base's answer the users replaced: it is left out, the
    rest keep their order."""
    from tuneloop.modeling.replay import replay_prompts, unlike

    prompts = ["Hi there!", "Good morning!", "What is the capital of Peru?", "How do I boil an egg?"]
    training = ["hi there", "Hey, good morning.", "What is the warranty on the Nimbus thermostat?"]
    assert unlike(prompts, training) == ["What is the capital of Peru?", "How do I boil an egg?"]
    assert unlike(prompts, []) == prompts
    shipped = replay_prompts()
    from tuneloop.data.sample_data import sample_feedback

    users = [r["prompt"] for r in sample_feedback("generation") if isinstance(r.get("prompt"), str)]
    kept = unlike(shipped, users)
    assert "Hi there!" in shipped and "Hi there!" not in kept  # the sample data's greeting
    assert len(shipped) - len(kept) < 10  # the product questions resemble no general prompt
    many = [f"What is the status of order {n} for the Lumo doorbell?" for n in range(20_000)]
    assert unlike(shipped, many) == shipped  # and a big training set is streamed, not compared pairwise


def test_short_questions_are_rehearsed_only_with_short_answers(tmp_path, monkeypatch):
    """The base works some sums out step by step ("To find half of 34, you would divide..."):
    rehearsing that taught the tuned model to work out the regression suite's sums past its answer
    length. Only one-sentence answers to short questions are rehearsed, short questions first, and
    general requests (cut to their last full sentence) only fill what the short ones cannot."""
    import json

    from tuneloop.config import LoopConfig
    from tuneloop.modeling import replay

    monkeypatch.setenv("TUNELOOP_CACHE", str(tmp_path / "cache"))
    config = LoopConfig(kind="generation", home=tmp_path / "home", tiny=True)
    info, prompting = resolve_base("generation", tiny=True), Prompting("Answer in one short sentence.")
    rows = replay._rows()
    short = [r["prompt"] for r in rows if r["category"] == "short_qa"]
    general = [r["prompt"] for r in rows if r["category"] not in ("short_qa", "privacy")]
    direct = set(short[::2])
    for prompts, tokens, answer_of in [
        (
            short,
            replay.SHORT_QA_TOKENS,
            lambda p: "It is 4." if p in direct else "To find it, you would add them. So it is 4.",
        ),
        (general, replay.MAX_NEW_TOKENS, lambda p: "Start small and keep going every day. Then you will"),
    ]:
        cache = replay.answers_cache(info, prompting, tokens)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text("".join(json.dumps([p, answer_of(p)]) + "\n" for p in prompts))  # nothing is generated

    few = replay.replay_pairs(config, info, prompting, len(direct) - 5)
    assert {p for p, _ in few} <= direct and {a for _, a in few} == {"It is 4."}
    every = replay.replay_pairs(config, info, prompting, 100_000)
    assert {p for p, a in every if a == "It is 4."} == direct
    assert {a for p, a in every if p not in direct} == {"Start small and keep going every day."}
    assert len(every) == len(direct) + len(general)
    assert replay.rehearsable("19 + 8 = 27", short=True) == "19 + 8 = 27"
    assert replay.rehearsable("Half of 34 is 17. To see why, divide 34 by 2.", short=True) is None
    assert replay.rehearsable("The answer is " + "very " * 12 + "big.", short=True) is None


def test_the_shared_prompt_prefix_computed_once_gives_the_whole_rows_loss_and_gradients(monkeypatch):
    """Every row of a batch starts with the same template and system prompt: computed once and
    shared, it gives the loss, the KL term and the adapter's gradients of the whole rows."""
    from tuneloop.modeling.fast import prefix

    model, tokenizer, rows = _model_and_rows()
    _move_adapter(model)
    model.eval()  # no dropout: the two ways must agree exactly
    batch = collate(rows, tokenizer.pad_token_id)
    kept = batch["labels"] != -100
    assert prefix.shared_length(batch["input_ids"], batch["attention_mask"], kept) >= prefix.SHARED_PREFIX_MIN

    def loss_and_grads():
        model.zero_grad()
        loss = loss_of(model, batch, kl_weight=1.0)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    calls = []
    forward = type(model.get_base_model()).forward

    @functools.wraps(forward)  # the same signature: what the loss takes from it stays the same
    def counted(self, *args, **kwargs):
        calls.append(kwargs["input_ids"].shape)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model.get_base_model()), "forward", counted)
    shared, shared_grads = loss_and_grads()
    assert calls[0][0] == 1 and calls[1][0] == 2  # the prefix went through once, as one row, then the rest
    monkeypatch.setattr(prefix, "SHARED_PREFIX_MIN", 10_000)
    calls.clear()
    whole, whole_grads = loss_and_grads()
    assert calls[0][0] == 2
    assert torch.allclose(shared, whole, atol=1e-5)
    for a, b in zip(shared_grads, whole_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in shared_grads)


def test_requests_for_someone_elses_data_are_declined_alone_and_after_a_training_answer():
    """Declining pairs: a shipped privacy request alone gets the refusal (one in six); appended to a training
    question, that question's answer then the refusal. Their number follows the share, at most two
    per request however big the data; the requests stay clear of the adversarial suite's wordings."""
    from tuneloop.eval_suites.builders.replay import overlaps, test_items
    from tuneloop.modeling.declining import DECLINE, declining_pairs, privacy_requests

    pairs = [(f"What is the price of product {n}?", f"Product {n} costs {n} euros.") for n in range(100)]
    out = declining_pairs(pairs, 0.25, seed=0)
    assert len(out) == 25 and declining_pairs(pairs, 0.0) == [] and declining_pairs([], 0.25) == []
    requests = set(privacy_requests())
    alone = [(p, a) for p, a in out if p in requests]
    appended = [(p, a) for p, a in out if p not in requests]
    assert len(alone) == 5 and len(appended) == 20 and {a for _, a in alone} == {DECLINE}
    for prompt, answer in appended:
        host = next(h for h in pairs if prompt.startswith(h[0] + " "))
        assert prompt[len(host[0]) + 1 :] in requests and answer == f"{host[1]} {DECLINE}"
    assert len(declining_pairs(pairs * 100, 0.25)) == 2 * len(requests)
    items = test_items()
    assert len(requests) >= 50 and not [p for p in requests if overlaps(p, items)]


def test_the_bases_distribution_computed_once_gives_the_kl_term_of_a_frozen_forward(tmp_path):
    """Rehearsal rows carrying the base's precomputed distribution (``tuneloop.modeling.teacher``) give the KL
    term the frozen forward gives: exactly with the whole vocabulary kept; with the top 64 tokens and
    a bucket for the rest, a lower bound of it above zero. The second attach reads the cache: no
    forward pass."""
    from tuneloop.modeling import teacher

    model, tokenizer, rows = _model_and_rows()
    model.eval()
    _move_adapter(model)
    frozen = loss_of(model, collate(rows, tokenizer.pad_token_id), kl_weight=1.0)
    vocab = model.get_base_model().config.vocab_size
    whole = [dict(r) for r in rows]
    teacher.attach(model, whole, tokenizer.pad_token_id, "tiny", tmp_path / "whole", k=vocab)
    assert "teacher_ids" not in whole[0] and whole[1]["teacher_ids"].shape == (
        int(sum(x != -100 for x in rows[1]["labels"])),
        vocab,
    )
    assert torch.allclose(loss_of(model, collate(whole, tokenizer.pad_token_id), kl_weight=1.0), frozen, rtol=1e-3)

    top = [dict(r) for r in rows]
    teacher.attach(model, top, tokenizer.pad_token_id, "tiny", tmp_path / "top")
    plain = loss_of(model, collate(rows[:1], tokenizer.pad_token_id))
    sparse = loss_of(model, collate(top, tokenizer.pad_token_id), kl_weight=1.0)
    assert 0 < sparse - plain <= frozen - plain + 1e-5  # a lower bound of the full divergence, and not zero
    calls = []
    model.forward = functools.wraps(model.forward)(
        lambda *a, **k: calls.append(1) or type(model).forward(model, *a, **k)
    )
    again = [dict(r) for r in rows]
    teacher.attach(model, again, tokenizer.pad_token_id, "tiny", tmp_path / "top")
    assert not calls and torch.equal(again[1]["teacher_logp"], top[1]["teacher_logp"])


def test_the_bundled_bases_recorded_rehearsal_answers_are_used_and_cover_every_prompt(tmp_path, monkeypatch):
    """The bundled base's answers to the replay prompts ship with them (``tuneloop.modeling.replay.record``): used
    for that base under a recorded system prompt without loading any model, never for another base;
    and they cover every shipped short question and general prompt (a prompt added without
    re-recording fails here)."""
    import dataclasses
    import json

    from tuneloop.config import LoopConfig
    from tuneloop.data.sample_data import SYSTEM_PROMPT
    from tuneloop.modeling import replay

    recorded = json.loads(replay.RECORDED.read_text())
    bundled = dataclasses.replace(
        resolve_base("generation", tiny=True), sha256=recorded["base_model_sha256"], tiny=False
    )
    short = replay.shipped_prompts("short_qa")
    general = [p for p in replay.replay_prompts() if p not in set(short)]
    prompting = Prompting(SYSTEM_PROMPT)
    assert set(replay.recorded_answers(bundled, prompting, replay.SHORT_QA_TOKENS)) == set(short)
    assert set(replay.recorded_answers(bundled, prompting, replay.MAX_NEW_TOKENS)) == set(general)
    other = dataclasses.replace(bundled, sha256="0" * 64)
    assert replay.recorded_answers(other, prompting, replay.SHORT_QA_TOKENS) == {}
    assert replay.recorded_answers(bundled, Prompting("Be terse."), replay.SHORT_QA_TOKENS) == {}

    monkeypatch.setenv("TUNELOOP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(replay, "load_base", lambda *a, **k: (_ for _ in ()).throw(AssertionError("generated")))
    config = LoopConfig(kind="generation", home=tmp_path / "home")
    got = replay.base_answers(config, bundled, prompting, short[:20], replay.SHORT_QA_TOKENS)
    assert got == {p: replay.recorded_answers(bundled, prompting, replay.SHORT_QA_TOKENS)[p] for p in short[:20]}
    with pytest.raises(AssertionError, match="generated"):
        replay.base_answers(config, other, prompting, short[:1], replay.SHORT_QA_TOKENS)
