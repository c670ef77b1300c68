"""The prompt prefix every row shares (chat template and system prompt), computed once per batch.

Every row of a training batch and of a generation batch starts with the same template tokens and
system prompt (22 of a demo row's ~40-55 tokens). They go through the model once, as one row, and
the rest of each row attends to that one cached copy: the same logits as the whole rows' (tested),
less work in both directions (``python -m bench prefix``). Only on the architectures
``tuneloop.modeling.fast.fast_paths`` verifies, and only while its switch is on; elsewhere rows stay whole.
"""

from __future__ import annotations

import inspect
from functools import cache

import torch

from tuneloop.modeling.fast import fast_paths
from tuneloop.modeling.fast.fast_paths import bare

SHARED_PREFIX_MIN = 8  # tokens all rows of a batch must share before computing them once is worth a second call


def base_class(model) -> type:
    return type(bare(model))


def kept_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The logits at the positions ``keep`` marks, one row each in row-major order, the shared
    prefix computed once. Where the architecture's forward takes the boolean mask as
    ``logits_to_keep`` only those rows reach the vocabulary projection; elsewhere (transformers 5.17
    takes only a count or an index list) every position is projected and the kept rows selected after."""
    if not fast_paths.active(model):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[keep]
    base = base_class(model)
    n = shared_length(input_ids, attention_mask, keep)
    cache = sharable_cache(model, input_ids[:1, :n], input_ids.shape[0]) if not checkpointing(model) else None
    n = n if cache is not None else 0
    ids, extra = input_ids[:, n:], ({cache_argument(base): cache} if cache is not None else {})
    if fast_paths.kept_logits_supported(base):
        logits = model(input_ids=ids, attention_mask=attention_mask, logits_to_keep=keep[:, n:], **extra).logits
        return logits.reshape(-1, logits.shape[-1])
    return model(input_ids=ids, attention_mask=attention_mask, **extra).logits[keep[:, n:]]


def shared_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> int:
    """How many leading tokens every (right-padded) row has in common, up to the first position whose
    logits are kept."""
    if input_ids.shape[0] < 2:
        return 0
    same = int((input_ids == input_ids[:1]).all(0).long().cumprod(0).sum())
    first_kept = int(keep.any(0).long().argmax()) if keep.any() else input_ids.shape[1]
    return max(0, min(same, first_kept, int(attention_mask.sum(1).min()) - 1))


def sharable_cache(model, prefix: torch.Tensor, rows: int):
    """The key/value cache of ``prefix`` (one row) repeated for ``rows`` rows (gradients flow back
    through it), or None where the prefix is too short to be worth it or the fast paths are off for
    this model (``tuneloop.modeling.fast.fast_paths``)."""
    if prefix.shape[1] < SHARED_PREFIX_MIN or not fast_paths.shares_prefix(model):
        return None
    last = {"logits_to_keep": 1} if keeps_logits(model) else {}  # its logits are never read
    out = model(input_ids=prefix, use_cache=True, **last)
    cache = out["cache"] if "cache" in out else out["past_key_values"]
    cache.batch_repeat_interleave(rows)
    return cache


def checkpointing(model) -> bool:
    """Activation checkpointing on: it recomputes forwards without a cache, so rows stay whole."""
    base = bare(model)
    flag = getattr(base, "is_activation_checkpointing", None)  # transformers >= 5.25; the old name warns there
    return bool(flag if flag is not None else getattr(base, "is_gradient_checkpointing", False))


@cache
def cache_argument(model_class: type) -> str:  # transformers 5.25 renamed past_key_values to cache
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def keeps_logits(model) -> bool:
    return _forward_takes_logits_to_keep(base_class(model))


@cache
def _forward_takes_logits_to_keep(model_class: type) -> bool:  # once per architecture, not once per step
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def prefix_first(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A left-padded generation batch re-laid as [``prefix``][padding][rest of the row], so the prefix
    sits at the same positions in every row and its cache can be shared; None when some row does not
    start with ``prefix`` (a truncated one) or holds nothing after it. Masked padding in the middle
    moves no position: generation numbers positions by the attention mask."""
    n, pads, width = prefix.shape[-1], (attention_mask == 0).long().sum(1), input_ids.shape[1]
    if n < 1 or bool((width - pads <= n).any()):
        return None
    heads = input_ids.gather(1, torch.arange(n, device=input_ids.device)[None, :] + pads[:, None])
    if not bool((heads == prefix.to(heads.device).reshape(1, n)).all()):
        return None
    ids, mask = input_ids.clone(), torch.zeros_like(attention_mask)
    for r, p in enumerate(pads.tolist()):
        ids[r, :n] = input_ids[r, p : p + n]
        ids[r, n : n + p] = input_ids[r, :p]  # the padding itself, now between prefix and rest
        mask[r, :n] = 1
        mask[r, n + p :] = 1
    return ids, mask
