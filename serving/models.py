"""The adapters a service routes to: each base model once in memory, champion and challenger as named
LoRA adapters on it, chosen per request within one batch, and swapped in when the registry's aliases move.

Versions are grouped by the base they were trained on (its content hash) and, for classification,
their label set (the head's size): adapters of two different bases are never mixed in one model.
On a GPU the bank runs there, in the configured precision (bf16 by default).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from peft import PeftModel

from tuneloop.config import LoopConfig
from tuneloop.data.cache_files import CacheError, verified
from tuneloop.modeling.adapters import AdapterMeta, read_meta
from tuneloop.modeling.calibration import Calibration
from tuneloop.modeling.inference import predict, predict_classes
from tuneloop.modeling.memory import CorrectionMemory, answered_from_memory, load_memory
from tuneloop.modeling.models import base_of, load_base, load_tokenizer, read_labels, resolve_device, resolve_dtype
from tuneloop.modeling.neighbours import Neighbours, load_neighbours
from tuneloop.modeling.prompting import Prompting
from tuneloop.registry.versions import adapter_path, aliases
from tuneloop.serving import known_state
from tuneloop.serving.known_state import FRESHNESS

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
    neighbours: dict[str, Neighbours] = field(default_factory=dict)  # adapter name -> its training utterances' votes
    memory: dict[str, CorrectionMemory] = field(default_factory=dict)  # adapter name -> its training questions' answers


class AdapterBank:
    def __init__(self, config: LoopConfig, device_index: int = 0):
        self.config = config
        self.device = resolve_device(config.device, device_index)  # a service worker per GPU: its own device
        self.dtype = resolve_dtype(config.precision, self.device)
        self.lock = threading.RLock()  # one forward at a time; adapter switches must not interleave
        self.banks: dict[tuple[str, tuple[str, ...]], _Bank] = {}
        self.served: dict[str, str] = {}  # alias -> version
        self.ready = False
        self.adapters: dict[str, dict[str, str]] = {}  # version -> {"path", "sha256"} of each loaded adapter
        self.failed: dict[str, float] = {}  # version -> when it last failed to load (monotonic)
        self.on_load_failure: Callable[[str, str, str], None] | None = None  # (alias, version, reason)

    def _bank_for(self, meta: AdapterMeta | None, labels: tuple[str, ...]) -> _Bank:
        info = meta.base() if meta else base_of(self.config)
        key = (info.sha256, labels)
        if key not in self.banks:
            model = load_base(info, self.config.kind, list(labels) or None, device=self.device, dtype=self.dtype)
            own = meta.prompting if meta else Prompting(self.config.system_prompt, self.config.prompt_template)
            self.banks[key] = _Bank(info.sha256, labels, model, load_tokenizer(info), {"__base__": own})
        return self.banks[key]

    def _fetch(self, version: str) -> Path:
        """The version's verified local copy (a registry call when it is not cached yet)."""
        return adapter_path(self.config.model_name, version, self.config.home.resolve() / "adapters")

    def _attach(self, version: str, path: Path) -> None:
        """Put the adapter at ``path`` on its base; a failure leaves no half-added adapter behind."""
        digest = verified(path, full=True)
        if digest is None:
            raise CacheError(f"the cached adapter of v{version} at {path} does not match its manifest")
        meta = read_meta(path)
        bank = self._bank_for(meta, tuple(read_labels(path) or ()))
        name = f"v{version}"
        try:
            if isinstance(bank.model, PeftModel):
                if name not in bank.model.peft_config:
                    bank.model.load_adapter(str(path), adapter_name=name)
            else:
                bank.model = PeftModel.from_pretrained(bank.model, str(path), adapter_name=name)
        except Exception:
            if isinstance(bank.model, PeftModel) and name in bank.model.peft_config and len(bank.model.peft_config) > 1:
                bank.model.delete_adapter(name)
            raise
        bank.prompting[name] = meta.prompting
        if (path / CALIBRATION_FILE).exists():
            bank.calibration[name] = Calibration.from_dict(json.loads((path / CALIBRATION_FILE).read_text()))
        if bank.labels and (store := load_neighbours(path, len(bank.labels))) is not None:
            bank.neighbours[name] = store
        if meta.kind == "generation" and (memory := load_memory(path)) is not None:
            bank.memory[name] = memory
        bank.model.eval()
        self.adapters[version] = {"path": str(path), "sha256": digest}

    def refresh(self) -> dict[str, str]:
        """Follow the registry's aliases, each on its own: an alias whose version cannot be loaded is
        skipped (counted, reported through ``on_load_failure``) while the others move on, and a
        registry that cannot be read leaves what serves as it is (and, at start, serves what this
        home last knew: ``serving/known_state.py``). New adapters are loaded before they are routed to."""
        try:
            current = aliases(self.config.model_name)  # one read: never half of a promotion
        except Exception as err:  # unreachable, timed out, 5xx: keep serving, report stale
            FRESHNESS.failed(err)
            if not self.ready:
                self._start_from_known()
            return dict(self.served)
        wanted = {alias: current[alias] for alias in ROUTED_ALIASES if alias in current}
        if wanted == self.served and self.ready:  # nothing moved: no need for the forward lock
            FRESHNESS.fresh()
            return wanted
        with self.lock:
            served = self._load_each(wanted)
            if not self.banks and self.config.kind == "generation":
                self._bank_for(None, ())  # nothing registered yet: serve the base model
            changed, self.served = served != self.served or not self.ready, served
            # classification with nothing trained is ready too: every row answers the fallback (``untrained``)
            self.ready = bool(self.banks) or self.config.kind == "classification"
        if changed:
            log.info("serving %s", served or "the base model")
            known_state.save(self.config, mlflow.get_tracking_uri(), served, self.adapters)
        FRESHNESS.fresh()
        return served

    def _load_each(self, wanted: dict[str, str]) -> dict[str, str]:
        served = {}
        for alias, version in wanted.items():
            if version in self.adapters or self._try_load(alias, version):
                served[alias] = version
            elif alias == "champion" and self.served.get(alias) in self.adapters:
                served[alias] = self.served[alias]  # the last good champion serves on
        return served

    def _try_load(self, alias: str, version: str) -> bool:
        failed_at = self.failed.get(version)
        if failed_at is not None and time.monotonic() - failed_at < self.config.deploy.failed_version_retry_s:
            return False
        try:
            path = self._fetch(version)
        except MlflowException as err:  # the registry, not the version: retried at the next refresh
            FRESHNESS.failed(err)
            return False
        except Exception as err:  # noqa: BLE001  a broken download is the version's fault
            return self._failed(alias, version, err)
        try:
            self._attach(version, path)
        except Exception as err:  # noqa: BLE001  corrupt weights, wrong base, ...: skip this version only
            return self._failed(alias, version, err)
        self.failed.pop(version, None)
        return True

    def _failed(self, alias: str, version: str, err: Exception) -> bool:
        self.failed[version] = time.monotonic()
        reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"
        log.error("v%s (%s) cannot be loaded and is skipped; the other aliases still move: %s", version, alias, reason)
        if self.on_load_failure is not None:
            try:
                self.on_load_failure(alias, version, reason)
            except Exception:  # noqa: BLE001  reporting must not stop the refresh
                log.exception("reporting the failed load of v%s failed", version)
        return False

    def _start_from_known(self) -> None:
        served, folders = known_state.load(self.config, mlflow.get_tracking_uri())
        with self.lock:
            for version, path in folders.items():
                try:
                    self._attach(version, path)
                except Exception as err:  # noqa: BLE001
                    log.error("known state: v%s cannot be loaded from %s (%s)", version, path, err)
                    served = {a: v for a, v in served.items() if v != version}
            self.served = {a: v for a, v in served.items() if v in self.adapters}
            self.ready = bool(self.banks) or self.config.kind == "classification"  # as in refresh
        if self.ready:
            log.warning("registry unreachable at start: serving %s from the known state", self.served)

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
                with adapters:  # the service's batch is one model call
                    if confidences is None:
                        out, _ = predict(
                            self.config.kind,
                            bank.model,
                            bank.tokenizer,
                            [inputs[i] for i in rows],
                            bank.labels,
                            self.config.max_new_tokens,
                            prompting,
                            adapter_names=per_row,
                            batch_size=len(rows),
                        )
                        out = answered_from_memory([bank.memory.get(n) for n in names], [inputs[i] for i in rows], out)
                        conf = energy = None
                    else:
                        out, conf, energy, similarity = predict_classes(
                            bank.model,
                            bank.tokenizer,
                            [inputs[i] for i in rows],
                            bank.labels,
                            adapter_names=per_row,
                            batch_size=len(rows),
                            neighbours=[bank.neighbours.get(names[n]) for n in range(len(rows))],
                        )
                for n, i in enumerate(rows):
                    outputs[i] = out[n]
                    if confidences is not None:
                        confidences[i] = conf[n]
                        calibration = bank.calibration.get(names[n])
                        if calibration is not None:  # out-of-scope input: the fallback label, not a guess
                            near = [similarity[n]] if similarity else None
                            outputs[i] = calibration.apply([out[n]], [conf[n]], [energy[n]], near)[0]
        return outputs, confidences

    def _bank_of(self, version: str) -> _Bank:
        if version == "base":  # the base model answers through the first bank, its adapters off
            return next(iter(self.banks.values()))
        return next(
            b for b in self.banks.values() if isinstance(b.model, PeftModel) and f"v{version}" in b.model.peft_config
        )

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
                bank.refresh()  # reports an unreachable registry itself (stale); anything else is a bug to see
            except Exception:  # noqa: BLE001  never take serving down; keep the current adapters
                log.exception("registry refresh failed; still serving %s", bank.served)

    thread = threading.Thread(target=loop, name="tuneloop-registry-watch", daemon=True)
    thread.start()
    return thread
