"""The layers below the adapters, run once per training row: the same training, less work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tuneloop.modeling import teacher
from tuneloop.modeling.batches import encode
from tuneloop.modeling.fast.trunk import decoder_layers, open_trunk
from tuneloop.modeling.models import _tiny_config, load_tokenizer, lora_targets, resolve_base
from tuneloop.modeling.prompting import Prompting
from tuneloop.modeling.training import add_adapter, top_layers, train

PAIRS = [
    ("What is the Nimbus Pro price?", "The Nimbus Pro costs 189 euros."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("How long is the Nimbus warranty?", "Two years, parts and labour."),
    ("Where do I find my invoice?", "In your account, under Orders."),
    ("Can I pay by bank transfer?", "Yes, from the checkout page."),
    ("What is 19 + 7?", "19 + 7 = 26."),
]


def _model(share: float = 0.5):
    """A tiny random model of the bundled base's architecture with 4 layers (the same weights each time)."""
    config = _tiny_config(resolve_base("generation", tiny=True))
    config.num_hidden_layers = 4
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config)
    return add_adapter(base, "generation", 4, 0, targets=lora_targets(base, "mlp"), layers=top_layers(base, share))


def _rows(cache: Path):
    tokenizer = load_tokenizer(resolve_base("generation", tiny=True))
    rows = encode("generation", tokenizer, PAIRS, [], 64, Prompting("Answer in one short sentence."))
    for row in rows[1::2]:
        row["rehearse"] = True  # the KL term's rows, with their base's distribution as in a search
    teacher.attach(_model(), rows, tokenizer.pad_token_id, "tiny", cache)
    return rows, tokenizer.pad_token_id


def _train(model, rows, pad_id, trunk_cache_mb: float) -> tuple[list[float], list[int]]:
    """Losses per step, and how many rows each real run of the lowest layer saw (the shared prompt
    prefix goes through as one row, a batch's rows as several)."""
    seen: list[int] = []
    lowest = decoder_layers(model)[0]
    forward = lowest.forward
    lowest.forward = lambda hidden_states, *a, **kw: (
        seen.append(hidden_states.shape[0]),
        forward(hidden_states, *a, **kw),
    )[1]
    result = train(
        model, rows, pad_id, lr=1e-2, epochs=3, batch_size=3, seed=0, kl_weight=1.0, trunk_cache_mb=trunk_cache_mb
    )
    del lowest.forward
    return result.losses, seen


def test_kept_states_below_the_adapters_train_the_same_adapter_with_the_lower_layers_run_once_per_row(tmp_path):
    rows, pad_id = _rows(tmp_path)
    plain, plain_runs = _train(_model(), [dict(r) for r in rows], pad_id, trunk_cache_mb=0)
    model = _model()
    kept, kept_runs = _train(model, rows, pad_id, trunk_cache_mb=64)
    assert torch.allclose(torch.tensor(kept), torch.tensor(plain), atol=1e-5)
    batches = [n for n in plain_runs if n > 1]
    assert len(batches) == 6  # 2 batches x 3 epochs through every layer
    assert len([n for n in kept_runs if n > 1]) == 2  # the first epoch's only; later ones start above
    assert [n for n in plain_runs if n == 1] == [1] * 6  # each batch's shared prompt prefix, as one row
    assert [n for n in kept_runs if n == 1] == [1] * 2  # later epochs' prefixes start above too
    assert all("trunk_states" in r for r in rows)
    # the model is left as it was: generation afterwards runs every layer
    layers = decoder_layers(model)
    assert all("forward" not in vars(layer) for layer in layers) and not any(
        layer._forward_pre_hooks for layer in layers
    )


def test_states_kept_for_another_adapter_placement_are_not_reused(tmp_path):
    rows, pad_id = _rows(tmp_path)
    _train(_model(0.5), rows, pad_id, trunk_cache_mb=64)  # keeps the states entering the middle layer
    lower, _ = _train(_model(0.25), [dict(r) for r in rows], pad_id, trunk_cache_mb=0)
    reused, runs = _train(_model(0.25), rows, pad_id, trunk_cache_mb=64)
    assert torch.allclose(torch.tensor(reused), torch.tensor(lower), atol=1e-5)
    assert len([n for n in runs if n > 1]) == 2  # captured afresh for the top quarter, then reused


def test_no_states_are_kept_where_that_would_not_be_exact_or_would_not_fit(tmp_path):
    rows, _ = _rows(tmp_path)
    assert open_trunk(_model(1.0), rows, 64) is None  # adapters in every layer: nothing frozen below
    model = _model()
    decoder_layers(model)[0].self_attn.attention_dropout = 0.1  # random below the adapters
    assert open_trunk(model, rows, 64) is None
    model = _model()
    with pytest.warns(UserWarning, match="trunk_cache_mb"):
        assert open_trunk(model, rows, 0.001) is None
    trunk = open_trunk(model, rows, 64)
    assert trunk is not None and trunk.k == len(decoder_layers(model)) // 2
    trunk.close()
