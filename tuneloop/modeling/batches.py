"""Examples as token ids, batches as tensors, and the order an epoch sees them in (the same for the same
seed and epoch, so a resumed run sees what the killed one would have)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from tuneloop.config import Kind
from tuneloop.modeling.prompting import Prompting

MEGABATCH = 50  # length grouping sorts within windows of this many batches: short padding, still shuffled


def encode(
    kind: Kind,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    labels: Sequence[str],
    max_length: int,
    prompting: Prompting = Prompting(),
) -> list[dict[str, list[int] | int]]:
    """Token ids per (input, target); for generation the loss covers the answer only."""
    if kind == "classification":
        index = {label: i for i, label in enumerate(labels)}
        ids = tokenizer([p for p, _ in pairs], truncation=True, max_length=max_length)["input_ids"]
        return [{"input_ids": i, "label": index[t]} for i, (_, t) in zip(ids, pairs)]
    heads = tokenizer([prompting.render(tokenizer, p) for p, _ in pairs], add_special_tokens=False)["input_ids"]
    tails = tokenizer([t + tokenizer.eos_token + "\n" for _, t in pairs], add_special_tokens=False)["input_ids"]
    encoded = []
    for head, tail in zip(heads, tails):
        head = head[-max(1, max_length - len(tail)) :]  # keep the question's end next to the answer
        encoded.append({"input_ids": (head + tail)[:max_length], "labels": ([-100] * len(head) + tail)[:max_length]})
    return encoded


def collate(batch: list[dict], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    out: dict[str, torch.Tensor] = {}
    if "labels" in batch[0]:
        out["labels"] = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        mask[i, :n] = 1
        if "labels" in b:
            out["labels"][i, :n] = torch.tensor(b["labels"])
    if "label" in batch[0]:
        out["labels"] = torch.tensor([b["label"] for b in batch])
    if any(b.get("rehearse") for b in batch):
        out["rehearse"] = torch.tensor([bool(b.get("rehearse")) for b in batch])
        if all("teacher_ids" in b for b in batch if b.get("rehearse")):  # the base's distribution, precomputed
            out["teacher_ids"] = torch.cat([b["teacher_ids"] for b in batch if b.get("rehearse")])
            out["teacher_logp"] = torch.cat([b["teacher_logp"] for b in batch if b.get("rehearse")])
    return {k: v.to(device, non_blocking=True) for k, v in {"input_ids": ids, "attention_mask": mask, **out}.items()}


def epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, grouped: bool = True
) -> list[list[int]]:
    """One epoch's batches of example indices, the same for the same (seed, epoch) (so a resume sees
    the same order). Grouped by length: shuffled, sorted by length within windows of ``MEGABATCH``
    batches, batched, and the batches shuffled, so a batch pads to similar lengths."""
    rng = random.Random(seed * 1000 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if grouped:
        window = MEGABATCH * batch_size
        order = [
            i
            for w in range(0, len(order), window)
            for i in sorted(order[w : w + window], key=lambda i: lengths[i], reverse=True)
        ]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if grouped:
        rng.shuffle(batches)
    return batches
