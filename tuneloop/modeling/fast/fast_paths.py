"""The speed-ups that reach into transformers' internals, fenced in one place: one switch, the
architectures they are verified on, and a report of which ran.

- **shared prefix** (``tuneloop/modeling/fast/prefix.py``): the prompt prefix every row of a batch shares (chat
  template and system prompt) goes through the model once; its key/value cache is repeated across
  the rows, in training, in the rehearsal teacher and in generation (a pre-filled cache handed to
  ``generate``).
- **kept logits** (``tuneloop/modeling/fast/prefix.py``): only the answer positions reach the vocabulary
  projection (``logits_to_keep`` as a boolean mask, which transformers' ``slice_logits_to_keep`` takes).
- **trunk** (``tuneloop/modeling/fast/trunk.py``): the hidden states below the lowest adapted layer are kept per
  training row after the first pass; later passes skip those layers.

Each runs only on an architecture (``config.model_type``) in ``VERIFIED``, whose exactness tests (the
same losses and answers as the plain path, with and without gradient checkpointing) run in
``tests/test_fast_paths.py``; any other architecture, or ``TUNELOOP_FAST_PATHS=false``, takes the plain
path. transformers is bounded in ``pyproject.toml`` for the same reason: a new release may change the
internals these rely on, and the bound moves only after the exactness tests pass on it.
"""

from __future__ import annotations

import sys
from functools import cache

# model_type values whose exactness tests run in tests/test_fast_paths.py: Llama (the bundled base),
# Qwen2 (grouped-query attention, biased projections) and Gemma2 (sliding-window layers, where the shared
# prefix stays off, soft-capped logits, a scaled embedding)
VERIFIED = frozenset({"llama", "qwen2", "gemma2"})
PATHS = ("shared_prefix", "kept_logits", "trunk")

_enabled = True


class FastPathWarning(UserWarning):
    """A fast path could not run where it was expected to (the tests make this an error)."""


def configure(enabled: bool) -> None:
    """Turn every fast path on or off for this process (``LoopConfig.fast_paths``, set once per entry point)."""
    global _enabled
    _enabled = bool(enabled)


def enabled() -> bool:
    return _enabled


def bare(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def model_type(model) -> str:
    base = bare(model)
    return str(getattr(base.config, "model_type", ""))


def active(model) -> bool:
    """Whether the fast paths may run on ``model``: switched on, and its architecture verified."""
    return _enabled and model_type(model) in VERIFIED


def shares_prefix(model) -> bool:
    """Whether the shared prompt prefix may run on ``model``: not where attention slides over a window
    (Gemma2, Mistral, Qwen2 with ``use_sliding_window``): generation from a repeated prefix cache there
    gives other answers than whole rows (tests/test_fast_paths.py)."""
    return active(model) and not sliding_window(model)


def sliding_window(model) -> bool:
    base = bare(model)
    config = base.config.get_text_config()
    return bool(getattr(config, "sliding_window", None)) and getattr(config, "use_sliding_window", True) is not False


def kept_logits_supported(model_class: type) -> bool:
    """Whether ``model_class``'s forward slices its hidden states with transformers' helper that takes a
    boolean mask (older releases take only a count or an index list)."""
    return _uses_mask_slicing(model_class.__module__)


@cache
def _uses_mask_slicing(module_name: str) -> bool:
    module = sys.modules.get(module_name)
    return module is not None and "slice_logits_to_keep" in vars(module)


def report(model) -> dict[str, str]:
    """Which fast path runs on ``model`` and, where one does not, why: logged with each search."""
    if not _enabled:
        return {path: "off (TUNELOOP_FAST_PATHS=false)" for path in PATHS}
    kind = model_type(model) or "unknown"
    if kind not in VERIFIED:
        return {path: f"off ({kind} is not a verified architecture)" for path in PATHS}
    base = bare(model)
    kept = "on" if kept_logits_supported(type(base)) else "off (this transformers takes no mask)"
    shared = "off (sliding-window attention)" if sliding_window(model) else "on"
    return {
        "shared_prefix": shared,
        "kept_logits": kept,
        "trunk": "on where the rows' states fit tune.trunk_cache_mb, without gradient checkpointing",
    }
