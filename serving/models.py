"""The adapters a service routes to: each base model once in memory, champion and challenger as named
LoRA adapters on it, chosen per request within one batch, and swapped in when the registry's aliases move.

Versions are grouped by the base they were trained on (its content hash) and, for classification,
their label set (the head's size): adapters of two different bases are never mixed in one model.
On a GPU the bank runs there, in the configured precision (bf16 by default).
"""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
import json
from dataclasses import dataclass, field
from typing import Sequence

from peft import PeftModel

from tuneloop.adapters import AdapterMeta, read_meta
from tuneloop.calibration import Calibration
from tuneloop.config import LoopConfig
from tuneloop.models import base_of, load_base, load_tokenizer, read_labels, resolve_device, resolve_dtype
from tuneloop.registry import adapter_path, aliases
from tuneloop.inference import predict
from tuneloop.training import Prompting

CALIBRATION_FILE = "calibration.json"  # written beside the adapter by the evaluate stage

log = logging.getLogger("tuneloop.serving")
ROUTED_ALIASES = ("champion", "challenger")
# A classification base has no trained head (a random one, sized to the labels): with no trained
# version in a slot it never answers. The row gets the fallback label, confidence 0, and this variant,
# which tells the app to route with the router it already has (docs/router.md).
EXISTING_ROUTER = "existing_router"
NO_MODEL_LABEL = "out_of_scope"  # when the fallback label is switched off (fallback_label=None)


@dataclass
class _Bank:
    """A base model and the adapters on it."""

    base_sha256: str
    labels: tuple[str, ...]
    model: object  # the base, or a PeftModel once an adapter is on it
    tokenizer: object
    prompting: dict[str, Prompting]  # adapter name ("__base__" for none) -> how its prompts are formatted
    calibration: dict[str, Calibration] = field(default_factory=dict)  # adapter name -> its out-of-scope threshold


class AdapterBank:
    def __init__(self, config: LoopConfig, device_index: int = 0):
        self.config = config
        self.device = resolve_device(config.device, device_index)  # a service worker per GPU: its own device
        self.dtype = resolve_dtype(config.precision, self.device)
        self.lock = threading.RLock()  # one forward at a time; adapter switches must not interleave
        self.banks: dict[tuple[str, tuple[str, ...]], _Bank] = {}
        self.served: dict[str, str] = {}  # alias -> version
        self.ready = False

    def _bank_for(self, meta: AdapterMeta | None, labels: tuple[str, ...]) -> _Bank:
        info = meta.base() if meta else base_of(self.config)
        key = (info.sha256, labels)
        if key not in self.banks:
            model = load_base(info, self.config.kind, list(labels) or None, device=self.device, dtype=self.dtype)
            own = meta.prompting if meta else Prompting(self.config.system_prompt, self.config.prompt_template)
            self.banks[key] = _Bank(info.sha256, labels, model, load_tokenizer(info), {"__base__": own})
        return self.banks[key]

    def _load(self, version: str) -> None:
        path = adapter_path(self.config.model_name, version, self.config.home.resolve() / "adapters")
        meta = read_meta(path)
        bank = self._bank_for(meta, tuple(read_labels(path) or ()))
        name = f"v{version}"
        if isinstance(bank.model, PeftModel):
            if name not in bank.model.peft_config:
                bank.model.load_adapter(str(path), adapter_name=name)
        else:
            bank.model = PeftModel.from_pretrained(bank.model, str(path), adapter_name=name)
        bank.prompting[name] = meta.prompting
        if (path / CALIBRATION_FILE).exists():
            bank.calibration[name] = Calibration.from_dict(json.loads((path / CALIBRATION_FILE).read_text()))
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
                    self._bank_for(None, ())  # nothing registered yet: serve the base model
                self.served = wanted
                # classification with nothing trained is ready too: every row answers the fallback (``untrained``)
                self.ready = bool(self.banks) or self.config.kind == "classification"
            log.info("serving %s", wanted or "the base model")
        return wanted

    def version_of(self, variant: str) -> str:
        """The version a variant is served by: the challenger falls back to champion, then to base."""
        return self.served.get(variant) or self.served.get("champion") or "base"

    def variant_of(self, variant: str, version: str) -> str:
        """What an answer says served it: its variant, "base" for a base model, or ``EXISTING_ROUTER``
        where no trained version answered (the app routes such a request itself)."""
        return EXISTING_ROUTER if self.untrained(version) else variant if version != "base" else "base"

    def untrained(self, version: str) -> bool:
        """True where ``version`` would answer from an untrained head: the base of a classification service."""
        return version == "base" and self.config.kind == "classification"

    def predict(self, versions: Sequence[str], inputs: Sequence[str]) -> tuple[list[str], list[float] | None]:
        """One answer per input from the version beside it ("base": no adapter), in one model call per
        base model and prompt format: peft runs every adapter on its own rows of the one batch. A
        classification row with no trained version gets the fallback label and confidence 0 (``untrained``)."""
        outputs: list[str | None] = [None] * len(inputs)
        confidences: list[float] | None = [0.0] * len(inputs) if self.config.kind == "classification" else None
        with self.lock:
            groups: dict[tuple, tuple[_Bank, list[int]]] = {}  # by base model (and prompting): one call each
            for i, version in enumerate(versions):
                if self.untrained(version):
                    outputs[i] = self.config.fallback_label or NO_MODEL_LABEL
                    continue
                bank = self._bank_of(version)
                name = "__base__" if version == "base" else f"v{version}"
                key = (id(bank), bank.prompting.get(name, bank.prompting["__base__"]))
                groups.setdefault(key, (bank, []))[1].append(i)
            for (_, prompting), (bank, rows) in groups.items():
                names = ["__base__" if versions[i] == "base" else f"v{versions[i]}" for i in rows]
                adapters, per_row = _routing(bank.model, names)
                with adapters:
                    out, conf = predict(self.config.kind, bank.model, bank.tokenizer, [inputs[i] for i in rows],
                                        bank.labels, self.config.max_new_tokens, prompting, adapter_names=per_row,
                                        batch_size=len(rows))  # the service's batch is one model call
                for n, i in enumerate(rows):
                    outputs[i] = out[n]
                    if confidences is not None and conf is not None:
                        confidences[i] = conf[n]
                        calibration = bank.calibration.get(names[n])
                        if calibration is not None:  # out-of-scope input: the fallback label, not a guess
                            outputs[i] = calibration.apply([out[n]], [conf[n]])[0]
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
