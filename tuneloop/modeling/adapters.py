"""An adapter folder and everything it needs to run: its base model, its prompting and its labels.

Each adapter carries ``tuneloop.json`` (written when it is trained), so evaluate, the registered
pyfunc and the service load the base it was trained on, not whatever base is configured now, and
format prompts the way it was trained.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tuneloop.config import Kind, LoopConfig
from tuneloop.modeling.models import BaseModelInfo, ModelError, load_base, load_tokenizer, read_labels, resolve_base
from tuneloop.modeling.prompting import Prompting

META_FILE = "tuneloop.json"


@dataclass(frozen=True)
class AdapterMeta:
    kind: Kind
    base_spec: str  # "" for the kind's bundled default
    base_sha256: str
    tiny: bool
    system_prompt: str | None
    prompt_template: str
    max_new_tokens: int

    @property
    def prompting(self) -> Prompting:
        return Prompting(self.system_prompt, self.prompt_template)

    def base(self) -> BaseModelInfo:
        """The base this adapter was trained on, found on this machine; refused if its weights differ."""
        info = resolve_base(self.kind, self.base_spec or None, self.tiny)
        if info.sha256 != self.base_sha256:
            raise ModelError(
                f"the adapter was trained on base {self.base_spec or 'bundled'!r} with weights sha256 "
                f"{self.base_sha256[:12]}, but {info.path} has {info.sha256[:12]}: point "
                "TUNELOOP_BASE_MODEL at the same weights."
            )
        return info


def write_meta(adapter_dir: Path, config: LoopConfig, base: BaseModelInfo) -> None:
    meta = AdapterMeta(
        config.kind,
        base.spec,
        base.sha256,
        base.tiny,
        config.system_prompt,
        config.prompt_template,
        config.max_new_tokens,
    )
    (Path(adapter_dir) / META_FILE).write_text(json.dumps(asdict(meta), indent=1))


def read_meta(adapter_dir: Path) -> AdapterMeta:
    return AdapterMeta(**json.loads((Path(adapter_dir) / META_FILE).read_text()))


def load_adapter(
    adapter_dir: Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    adapter_name: str = "default",
):
    """(model, tokenizer, meta, labels): the adapter on its own base, in eval mode on ``device``."""
    from peft import PeftModel

    meta = read_meta(adapter_dir)
    info = meta.base()
    labels = read_labels(adapter_dir) or []
    base = load_base(info, meta.kind, labels or None, device=device, dtype=dtype)
    model = PeftModel.from_pretrained(base, str(adapter_dir), adapter_name=adapter_name).eval()
    return model, load_tokenizer(info), meta, labels
