"""The adapters a service routes to: one base model in memory, champion and challenger as named
LoRA adapters on it, chosen per request within one batch, and swapped in when the registry's aliases move.
"""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from peft import PeftModel

from tuneloop.config import LoopConfig
from tuneloop.models import load_base, load_tokenizer, read_labels
from tuneloop.registry import adapter_path, aliases
from tuneloop.training import predict

log = logging.getLogger("tuneloop.serving")
ROUTED_ALIASES = ("champion", "challenger")


@dataclass
class _Bank:
    """A base model and the adapters on it. Classification keeps one per label set (the head's size)."""

    labels: tuple[str, ...]
    model: object  # the base, or a PeftModel once an adapter is on it


class AdapterBank:
    def __init__(self, config: LoopConfig):
        self.config = config
        self.tokenizer = load_tokenizer(config.kind)
        self.lock = threading.RLock()  # one forward at a time; adapter switches must not interleave
        self.banks: dict[tuple[str, ...], _Bank] = {}
        self.served: dict[str, str] = {}  # alias -> version
        self.ready = False

    def _bank_for(self, labels: tuple[str, ...]) -> _Bank:
        if labels not in self.banks:
            self.banks[labels] = _Bank(labels, load_base(self.config.kind, self.config.tiny, list(labels) or None))
        return self.banks[labels]

    def _load(self, version: str) -> None:
        path = adapter_path(self.config.model_name, version, self.config.home.resolve() / "adapters")
        bank = self._bank_for(tuple(read_labels(path) or ()))
        name = f"v{version}"
        if isinstance(bank.model, PeftModel):
            if name not in bank.model.peft_config:
                bank.model.load_adapter(str(path), adapter_name=name)
        else:
            bank.model = PeftModel.from_pretrained(bank.model, str(path), adapter_name=name)
        bank.model.eval()

    def refresh(self) -> dict[str, str]:
        """Follow the registry's aliases; new adapters are loaded before they are routed to."""
        current = aliases(self.config.model_name)  # one read: never half of a promotion
        wanted = {alias: current[alias] for alias in ROUTED_ALIASES if alias in current}
        if wanted != self.served or not self.ready:
            with self.lock:
                for version in set(wanted.values()) - set(self.served.values()):
                    self._load(version)
                if not self.banks and self.config.kind == "generation":
                    self._bank_for(())  # nothing registered yet: serve the base model
                self.served = wanted
                self.ready = bool(self.banks)  # classification needs a version to know its labels
            log.info("serving %s", wanted or "the base model")
        return wanted

    def version_of(self, variant: str) -> str:
        """The version a variant is served by: the challenger falls back to champion, then to base."""
        return self.served.get(variant) or self.served.get("champion") or "base"

    def predict(self, versions: Sequence[str], inputs: Sequence[str]) -> tuple[list[str], list[float] | None]:
        """One answer per input from the version beside it ("base": no adapter), in one model call per
        base model: peft runs every adapter on its own rows of the one batch (mixed-adapter batches)."""
        outputs: list[str | None] = [None] * len(inputs)
        confidences: list[float] | None = [0.0] * len(inputs) if self.config.kind == "classification" else None
        with self.lock:
            groups: dict[int, tuple[_Bank, list[int]]] = {}  # by base model: one call each
            for i, version in enumerate(versions):
                bank = self._bank_of(version)
                groups.setdefault(id(bank), (bank, []))[1].append(i)
            for bank, rows in groups.values():
                names = ["__base__" if versions[i] == "base" else f"v{versions[i]}" for i in rows]
                adapters, per_row = _routing(bank.model, names)
                with adapters:
                    out, conf = predict(self.config.kind, bank.model, self.tokenizer, [inputs[i] for i in rows],
                                        bank.labels, self.config.max_new_tokens, adapter_names=per_row)
                for n, i in enumerate(rows):
                    outputs[i] = out[n]
                    if confidences is not None and conf is not None:
                        confidences[i] = conf[n]
        return outputs, confidences

    def _bank_of(self, version: str) -> _Bank:
        if version == "base":  # the base model answers through the first bank, its adapters off
            return next(iter(self.banks.values()))
        return next(b for b in self.banks.values() if isinstance(b.model, PeftModel) and f"v{version}" in b.model.peft_config)

    def labels(self) -> list[str]:
        return list(next(iter(self.banks.values())).labels) if self.banks else []


def _routing(model, names: list[str]):
    """How one call serves rows meant for ``names``: peft's per-row mix when they differ, else the
    plain path with that one adapter set (or all adapters off for the base): no per-row split."""
    if not isinstance(model, PeftModel):
        return nullcontext(), None
    if len(set(names)) > 1:
        return nullcontext(), names
    if names[0] == "__base__":
        return model.disable_adapter(), None
    model.set_adapter(names[0])
    return nullcontext(), None


def watch(bank: AdapterBank, interval_s: float, stop: threading.Event) -> threading.Thread:
    """Poll the registry so promotions and new challengers go live without a restart."""

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                bank.refresh()
            except Exception:  # a registry hiccup must not take serving down; keep the current adapters
                log.exception("registry refresh failed; still serving %s", bank.served)

    thread = threading.Thread(target=loop, name="tuneloop-registry-watch", daemon=True)
    thread.start()
    return thread
