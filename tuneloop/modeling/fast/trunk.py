"""The frozen layers below the adapters, run once per training row instead of once per epoch.

With adapters in the top layers only (``tune.adapter_layers``; generation's default is the top
half), nothing below them changes while training: a row's hidden states entering the first adapted
layer are the same at every epoch and in every trial of a search. The first time a row is trained
on they are kept (on the row, so the trials of a search that share its rows share them too); a
batch whose rows all have theirs then skips the layers below (each returns its input unchanged)
and starts the first adapted layer from the kept states: the same loss, a demo step 1.2x faster
for SmolLM2 on 2 cores (``python -m bench step``). So does the batch's shared prompt prefix
(``tuneloop.modeling.fast.prefix``; one row, a row's first states), its cache given zero placeholders for the
layers it skipped: the rows never read them, but the first layer's length numbers their positions.

Only where that is exact: an architecture ``tuneloop.modeling.fast.fast_paths`` verifies (and its switch on), no
dropout below the adapters, no activation checkpointing, decoder layers that take and return the
hidden states as a plain tensor (checked on the first batch), and a train set whose states fit the
memory budget (``tune.trunk_cache_mb``); otherwise every batch runs every layer.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from tuneloop.modeling.fast import fast_paths
from tuneloop.modeling.fast.prefix import bare, checkpointing

KEY = "trunk_states"  # where a row keeps its states
unsupported: set[type] = set()  # architectures whose layers do not pass a plain tensor along


def decoder_layers(model) -> torch.nn.ModuleList | None:
    """The base's list of transformer layers (the one ModuleList as long as ``num_hidden_layers``)."""
    n = getattr(bare(model).config.get_text_config(), "num_hidden_layers", None)
    lists = [m for m in bare(model).modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    return lists[0] if n and len(lists) == 1 else None


def first_adapted(layers: torch.nn.ModuleList) -> int:
    """Index of the lowest layer holding a trainable parameter (0 if none is found)."""
    return next((i for i, layer in enumerate(layers) if any(p.requires_grad for p in layer.parameters())), 0)


def _has_dropout(modules) -> bool:
    for m in modules:
        if isinstance(m, torch.nn.Dropout) and m.p > 0:
            return True
        if isinstance(getattr(m, "attention_dropout", None), float) and m.attention_dropout > 0:
            return True
    return False


class Trunk:
    """Keeps and reuses the states entering layer ``k`` for one model's training run."""

    def __init__(self, model, layers: torch.nn.ModuleList, k: int):
        self.layers, self.k, self.model_class = layers, k, type(bare(model))
        config = bare(model).config
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        # states kept by another model (another base, layer, dtype or device) are never injected here
        self.signature = (
            self.model_class.__name__,
            str(getattr(config, "_name_or_path", "")),
            k,
            str(dtype),
            str(next(model.parameters()).device),
            getattr(config, "quantization_config", None) is not None,
        )
        self.mode: str | None = None  # "capture" or "inject" while a batch runs
        self.rows = 0  # the running batch's rows
        self.entered = False  # layer k has run in this batch (its first forward is the shared prefix's)
        self.fill = None  # the prefix's cache, whose layers below k get placeholders once layer k has run
        self.prefix: torch.Tensor | None = None  # captured: the shared prefix's states (one row)
        self.states: torch.Tensor | None = None  # captured: the batch's; to inject: (rows, width, hidden)
        self.plain = True  # layer outputs seen so far were plain tensors
        self._forwards = [layer.forward for layer in layers[:k]]
        self._own = [vars(layer).get("forward") for layer in layers[:k]]  # an instance's own forward, if any
        for i, layer in enumerate(layers[:k]):
            layer.forward = self._lower(i)
        self._hook = layers[k].register_forward_pre_hook(self._enter, with_kwargs=True)
        self._after = layers[k].register_forward_hook(self._filled, with_kwargs=True)

    def _prefix_skips(self, hidden: torch.Tensor, kwargs: dict) -> bool:
        """Injecting, this forward is the batch's shared prefix (one row, before its rows) and its cache
        can take placeholders for the layers it skips: a plain dynamic cache, whose first layer's length
        numbers the rows' positions (placeholders of the prefix's length there; the rows never read them)."""
        if self.mode != "inject" or self.entered or not hidden.shape[0] == 1 < self.rows:
            return False
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)

    def _lower(self, i: int):
        forward = self._forwards[i]

        def run(hidden_states, *args, **kwargs):
            if (
                self.mode == "inject"
                and hidden_states.shape[0] == self.rows
                or self._prefix_skips(hidden_states, kwargs)
            ):
                return hidden_states  # replaced on entering layer k
            out = forward(hidden_states, *args, **kwargs)
            self.plain = self.plain and isinstance(out, torch.Tensor)
            return out

        return run

    def _enter(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        skipped = self._prefix_skips(hidden, kwargs)
        self.entered = True
        if skipped:  # the prefix's states: the first row's first ones (every row starts with the prefix)
            self.fill = kwargs.get("cache", kwargs.get("past_key_values"))
            kept = self.states[:1, : hidden.shape[1]].to(hidden.dtype)
            return ((kept, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": kept})
        if self.mode == "capture" and self.states is None:  # the batch's first forward: its shared prefix
            if hidden.shape[0] == 1 and self.rows > 1:  # (one row, computed first), then its rows
                self.prefix = hidden.detach()
            elif hidden.shape[0] == self.rows:
                self.states = hidden.detach()
        elif self.mode == "inject" and hidden.shape[0] == self.rows:
            kept = self.states[:, self.states.shape[1] - hidden.shape[1] :].to(hidden.dtype)  # rows are right-padded
            return ((kept, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": kept})
        return None

    def _filled(self, module, args, kwargs, output):
        if self.fill is not None:
            keys, values = self.fill.layers[self.k].keys, self.fill.layers[self.k].values
            for i in range(self.k):
                self.fill.update(torch.zeros_like(keys), torch.zeros_like(values), i)
            self.fill = None

    @contextmanager
    def batch(self, rows: list[dict], attention_mask: torch.Tensor):
        """Around one batch's forward and backward: inject the rows' kept states if they all have
        them, else capture theirs."""
        self.rows, self.entered, self.fill = len(rows), False, None
        if all(r.get(KEY, (None,))[0] == self.signature for r in rows):
            kept = [r[KEY][1] for r in rows]
            states = kept[0].new_zeros(len(rows), attention_mask.shape[1], kept[0].shape[-1])
            for i, row_states in enumerate(kept):
                states[i, : row_states.shape[0]] = row_states
            self.mode, self.states = "inject", states
        else:
            self.mode, self.prefix, self.states = "capture", None, None
        try:
            yield
            if self.mode == "capture" and self.states is not None and self.plain:
                shared = attention_mask.shape[1] - self.states.shape[1]
                if shared and self.prefix is None:
                    return  # the prefix ran some other way: keep nothing rather than guess
                for row, states, n in zip(rows, self.states, attention_mask.sum(1).tolist()):
                    parts = ([self.prefix[0, :shared]] if shared else []) + [states[: n - shared]]
                    row[KEY] = (self.signature, torch.cat(parts).clone())
        finally:
            self.mode, self.prefix, self.states = None, None, None

    def close(self) -> None:
        self._hook.remove()
        self._after.remove()
        for layer, own in zip(self.layers, self._own):
            if own is None:
                del layer.forward  # the class's forward again
            else:
                layer.forward = own
        if not self.plain:  # a verified architecture whose layers changed what they return: said, then plain
            unsupported.add(self.model_class)
            warnings.warn(
                f"{self.model_class.__name__}: its decoder layers return more than the hidden states; "
                "training runs every layer",
                fast_paths.FastPathWarning,
                stacklevel=2,
            )


def open_trunk(model, rows: list[dict], budget_mb: float) -> Trunk | None:
    """A ``Trunk`` for training ``model`` on ``rows``, or None where keeping states would not be exact
    or would not fit ``budget_mb``."""
    layers = decoder_layers(model)
    if (
        budget_mb <= 0
        or not fast_paths.active(model)
        or layers is None
        or checkpointing(model)
        or type(bare(model)) in unsupported
    ):
        return None
    k = first_adapted(layers)
    if k == 0:
        return None
    upper = {id(m) for layer in layers[k:] for m in layer.modules()}
    if _has_dropout(m for m in bare(model).modules() if id(m) not in upper):
        return None
    hidden = getattr(bare(model).config.get_text_config(), "hidden_size", 0)
    size = torch.finfo(next(p for p in model.parameters() if p.is_floating_point()).dtype).bits // 8
    if sum(len(r["input_ids"]) for r in rows) * hidden * size > budget_mb * 2**20:
        warnings.warn(
            f"the train set's states below the adapters exceed tune.trunk_cache_mb={budget_mb:g}: "
            "every step runs every layer",
            stacklevel=3,
        )
        return None
    return Trunk(model, layers, k)
