"""The fast paths into transformers' internals (``tuneloop.modeling.fast.fast_paths``) are exact on every architecture
they are verified on: the same training losses and the same answers as the plain path, with and
without gradient checkpointing; anywhere else, and with the switch off, the plain path runs."""

from __future__ import annotations

import pytest
import torch
from test_trunk import PAIRS  # the same corrections and general questions as the trunk's own test
from transformers import AutoConfig, AutoModelForCausalLM

from tuneloop.modeling import inference, teacher
from tuneloop.modeling.batches import encode
from tuneloop.modeling.fast import fast_paths
from tuneloop.modeling.models import _tiny_config, load_tokenizer, lora_targets, resolve_base
from tuneloop.modeling.prompting import Prompting
from tuneloop.modeling.training import add_adapter, top_layers, train

PROMPTS = [
    "What is the Nimbus Pro price?",
    "hi",
    "Can I talk to a person?",
    "What is 7 + 5?",
    "Tell me, in as much detail as you can, how the Lumo doorbell's battery is charged and how long it lasts.",
]
PROMPTING = Prompting("You are the Brightwell support assistant. Answer in one short sentence.")
SMALL = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_base("generation", tiny=True))


def _config(model_type: str, tokenizer):
    if model_type == "llama":  # the bundled base's own configuration, shrunk
        config = _tiny_config(resolve_base("generation", tiny=True))
        config.num_hidden_layers = 4
        return config
    ids = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    extra = {"gemma2": dict(sliding_window=16, query_pre_attn_scalar=16)}.get(model_type, {})  # rows span the window
    return AutoConfig.for_model(model_type, **SMALL, **ids, **extra)


def _model(model_type: str, tokenizer, checkpointing: bool = False):
    """A tiny random model of ``model_type`` with an adapter on the top half's MLPs whose B matrices are
    not zero (a trained-looking adapter changes the cached keys and values too); the same each time."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(_config(model_type, tokenizer))
    if checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    model = add_adapter(
        base, "generation", 4, 0, targets=lora_targets(base, "mlp"), dropout=0.0, layers=top_layers(base, 0.5)
    )
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def _rows(model_type: str, tokenizer, tmp_path):
    rows = encode("generation", tokenizer, PAIRS, [], 64, PROMPTING)
    for row in rows[1::2]:
        row["rehearse"] = True  # the KL term's rows, as in a search with rehearsal
    teacher.attach(_model(model_type, tokenizer), rows, tokenizer.pad_token_id, f"tiny-{model_type}", tmp_path)
    return rows


@pytest.fixture
def switch():
    yield fast_paths.configure
    fast_paths.configure(True)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("model_type", sorted(fast_paths.VERIFIED))
def test_training_with_the_fast_paths_gives_the_plain_paths_losses(
    model_type, checkpointing, tokenizer, tmp_path, switch
):
    rows = _rows(model_type, tokenizer, tmp_path)
    losses, one_row_calls = {}, {}
    for on in (False, True):
        switch(on)
        model = _model(model_type, tokenizer, checkpointing)
        calls: list[int] = []  # rows per forward of the base: a one-row call is a shared prefix going through
        hook = model.get_base_model().register_forward_pre_hook(
            lambda module, args, kwargs, calls=calls: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True
        )
        result = train(
            model,
            [dict(r) for r in rows],
            tokenizer.pad_token_id,
            lr=1e-2,
            epochs=3,
            batch_size=3,
            seed=0,
            kl_weight=1.0,
            trunk_cache_mb=64,
        )
        hook.remove()
        losses[on], one_row_calls[on] = torch.tensor(result.losses), calls.count(1)
    shared = not checkpointing and fast_paths.shares_prefix(model)  # checkpointing recomputes whole rows
    assert one_row_calls[False] == 0 and (one_row_calls[True] > 0) == shared
    assert torch.isfinite(losses[True]).all() and losses[True][-1] < losses[True][0]
    assert torch.allclose(losses[True], losses[False], atol=1e-5), (losses[True] - losses[False]).abs().max()


@pytest.mark.parametrize("model_type", sorted(fast_paths.VERIFIED))
def test_generation_with_the_shared_prefix_gives_the_plain_paths_answers(model_type, tokenizer, switch):
    model = _model(model_type, tokenizer).eval()
    answers = {}
    for on in (False, True):
        switch(on)
        answers[on] = inference.generate(model, tokenizer, PROMPTS, 8, PROMPTING, batch_size=3)
    assert answers[True] == answers[False]
    assert any(answers[True])


def test_the_report_names_what_runs_and_why_not(tokenizer, switch):
    llama = _model("llama", tokenizer)
    assert fast_paths.report(llama)["shared_prefix"] == "on" and fast_paths.report(llama)["kept_logits"] == "on"
    assert fast_paths.report(_model("gemma2", tokenizer))["shared_prefix"] == "off (sliding-window attention)"
    other = add_adapter(
        AutoModelForCausalLM.from_config(_config("mistral", tokenizer)),
        "generation",
        4,
        0,
        targets=lora_targets(llama, "mlp"),
    )
    assert not fast_paths.active(other)
    assert set(fast_paths.report(other).values()) == {"off (mistral is not a verified architecture)"}
    switch(False)
    assert not fast_paths.active(llama)
    assert set(fast_paths.report(llama).values()) == {"off (TUNELOOP_FAST_PATHS=false)"}


def test_an_unverified_architecture_gets_no_shared_cache(tokenizer, monkeypatch):
    from tuneloop.modeling.fast.prefix import sharable_cache

    model = _model("llama", tokenizer).eval()
    prefix = torch.arange(12).unsqueeze(0)
    with torch.no_grad():
        assert sharable_cache(model, prefix, 3) is not None
        monkeypatch.setattr(fast_paths, "VERIFIED", frozenset())
        assert sharable_cache(model, prefix, 3) is None
