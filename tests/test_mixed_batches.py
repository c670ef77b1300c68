"""One batch, several versions: each row gets exactly the answer its own adapter (or the bare base)
gives alone, for both task kinds. The service relies on this to serve champion and challenger rows
in one forward pass."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from tuneloop.modeling.inference import predict
from tuneloop.modeling.models import DEFAULT_TARGETS, load_base, load_tokenizer, lora_targets, resolve_base
from tuneloop.modeling.training import add_adapter, top_layers

LABELS = ["billing", "returns", "shipping_status"]
INPUTS = ["where is my Orbit camera", "I was charged twice for my hub", "return label for Nimbus Pro", "hello there"]


def _two_adapters(kind: str, tmp_path) -> PeftModel:
    """A tiny base with adapters v1 and v2 whose weights differ enough to change answers; v2 sits in
    the top layer only (``tune.adapter_layers``), as a version trained that way would."""
    labels = LABELS if kind == "classification" else None
    info = resolve_base(kind, None, tiny=True)
    for seed in (1, 2):
        base = load_base(info, kind, labels)
        model = add_adapter(
            base,
            kind,
            8,
            seed=seed,
            targets=lora_targets(base, DEFAULT_TARGETS[kind]),
            layers=top_layers(base, 0.5) if seed == 2 else None,
        )
        torch.manual_seed(seed)
        for p in model.parameters():
            if p.requires_grad:
                p.data.normal_(0, 0.5)
        model.save_pretrained(tmp_path / f"v{seed}")
    model = PeftModel.from_pretrained(load_base(info, kind, labels), str(tmp_path / "v1"), adapter_name="v1")
    model.load_adapter(str(tmp_path / "v2"), adapter_name="v2")
    return model.eval()


@pytest.mark.parametrize("kind", ["classification", "generation"])
def test_mixed_batch_rows_match_each_version_alone(kind, tmp_path):
    model, tokenizer = _two_adapters(kind, tmp_path), load_tokenizer(resolve_base(kind, None, tiny=True))
    labels = LABELS if kind == "classification" else []

    def alone(name: str) -> list:
        if name == "__base__":
            with model.disable_adapter():
                return predict(kind, model, tokenizer, INPUTS, labels, 6)[0]
        model.set_adapter(name)
        return predict(kind, model, tokenizer, INPUTS, labels, 6)[0]

    expected = {name: alone(name) for name in ("v1", "v2", "__base__")}
    assert expected["v1"] != expected["v2"]  # the adapters really differ, so a mix-up would show
    in_layer = lambda name, layer: any(f".{layer}." in n and f".{name}." in n for n, _ in model.named_parameters())  # noqa: E731
    assert in_layer("v1", 0) and in_layer("v1", 1) and in_layer("v2", 1) and not in_layer("v2", 0)
    names = ["v1", "v2", "__base__", "v2"]
    mixed, _ = predict(kind, model, tokenizer, INPUTS, labels, 6, adapter_names=names)
    assert mixed == [expected[name][i] for i, name in enumerate(names)]
