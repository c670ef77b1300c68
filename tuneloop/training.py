"""LoRA training and inference for both task kinds: a plain PyTorch loop over a peft model.

Plain on purpose (nanoGPT-style): the loop is short enough to read, checkpoints everything a
killed run needs to continue exactly (adapter, optimizer, scheduler, RNG, step), and runs as fast as
a hand-written loop because it is one.
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model, set_peft_model_state_dict, get_peft_model_state_dict
from transformers import PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from tuneloop.config import Kind
from tuneloop.sample_data import SYSTEM_PROMPT

# Named module sets a search can choose between; peft matches a name or any ".name" suffix.
TARGET_SETS: dict[str, dict[str, list[str]]] = {
    "generation": {
        "qv": ["q_proj", "v_proj"],
        "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "all-linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    },
    "classification": {
        "qv": ["query", "value"],
        "attention": ["query", "key", "value", "attention.output.dense"],
        "all-linear": ["query", "key", "value", "dense"],  # dense: attention output, MLP in/out, pooler
    },
}
DEFAULT_TARGETS: dict[str, str] = {"generation": "attention", "classification": "qv"}
TARGET_MODULES: dict[str, list[str]] = {kind: sets[DEFAULT_TARGETS[kind]] for kind, sets in TARGET_SETS.items()}


def lora_config(kind: Kind, rank: int, alpha: float | None = None, dropout: float = 0.05,
                target_modules: list[str] | str | None = None) -> LoraConfig:
    """LoRA on ``target_modules`` (module names, or a ``TARGET_SETS`` name); alpha defaults to 2 x rank."""
    if isinstance(target_modules, str):
        target_modules = TARGET_SETS[kind][target_modules]
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM if kind == "generation" else TaskType.SEQ_CLS,
        r=rank,
        lora_alpha=alpha or 2 * rank,
        lora_dropout=dropout,
        target_modules=target_modules or TARGET_MODULES[kind],
    )


def chat_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode(kind: Kind, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]],
           labels: list[str], max_length: int) -> list[dict[str, list[int] | int]]:
    """Token ids per (input, target); for generation the loss covers the answer only."""
    encoded = []
    for prompt, target in pairs:
        if kind == "classification":
            ids = tokenizer(prompt, truncation=True, max_length=max_length)["input_ids"]
            encoded.append({"input_ids": ids, "label": labels.index(target)})
            continue
        head = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        tail = tokenizer(target + tokenizer.eos_token + "\n", add_special_tokens=False)["input_ids"]
        head = head[-max(1, max_length - len(tail)):]  # keep the question's end next to the answer
        ids = (head + tail)[:max_length]
        encoded.append({"input_ids": ids, "labels": ([-100] * len(head) + tail)[:max_length]})
    return encoded


def collate(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
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
    return {"input_ids": ids, "attention_mask": mask, **out}


@dataclass
class TrainResult:
    steps: int  # the schedule's length
    resumed_from_step: int  # 0 for a fresh start
    losses: list[float] = field(default_factory=list)  # one per step run in this session
    tokens: int = 0  # non-padding tokens seen in this session
    seconds: float = 0.0
    pruned: bool = False

    @property
    def steps_run(self) -> int:
        return len(self.losses)


class Pruned(Exception):
    """Raised by an eval callback to stop a trial that is not worth finishing."""


def train(model: PeftModel, encoded: list[dict], pad_id: int, *, lr: float, epochs: int, batch_size: int, seed: int,
          eval_steps: set[int] | None = None, on_eval: Callable[[int], None] | None = None,
          on_step: Callable[[int, float], None] | None = None, checkpoint_dir: Path | None = None,
          checkpoint_every: int = 0, on_checkpoint: Callable[[Path, int], None] | None = None,
          progress: bool = False) -> TrainResult:
    """Train the adapter in place: AdamW, linear warm-up and decay, gradient clipping at 1.

    With ``checkpoint_dir``, resumes from ``ckpt.pt`` there and saves to it every ``checkpoint_every``
    steps (``on_checkpoint(path, step)`` follows each save, e.g. to upload it). Steps are numbered
    from 1; ``on_step(step, loss)`` follows every step, ``on_eval(step)`` the steps in ``eval_steps``
    and may raise ``Pruned`` to stop early.
    """
    steps_per_epoch = math.ceil(len(encoded) / batch_size)
    total = steps_per_epoch * epochs
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, max(1, total // 10), total)
    start = _load_checkpoint(checkpoint_dir, model, optimizer, scheduler) if checkpoint_dir else 0
    result = TrainResult(steps=total, resumed_from_step=start)
    bar = _progress_bar(total, start) if progress else None
    began = time.perf_counter()
    model.train()
    order: list[int] = []
    for step in range(start, total):
        epoch, index = divmod(step, steps_per_epoch)
        if index == 0 or not order:
            order = list(range(len(encoded)))
            random.Random(seed * 1000 + epoch).shuffle(order)  # the same order after a resume
        batch = collate([encoded[i] for i in order[index * batch_size:(index + 1) * batch_size]], pad_id)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(loss.item())
        result.tokens += int(batch["attention_mask"].sum())
        if on_step:
            on_step(step + 1, result.losses[-1])
        if bar:
            bar.update(1, loss=f"{result.losses[-1]:.3f}")
        if checkpoint_dir and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < total:
            path = _save_checkpoint(checkpoint_dir, model, optimizer, scheduler, step + 1)
            if on_checkpoint:
                on_checkpoint(path, step + 1)
        if on_eval and eval_steps and step + 1 in eval_steps:
            model.eval()
            try:
                on_eval(step + 1)
            except Pruned:
                result.pruned = True
                break
            finally:
                model.train()
    if bar:
        bar.close()
    model.eval()
    result.seconds = time.perf_counter() - began
    return result


def _progress_bar(total: int, start: int):
    from tqdm.auto import tqdm

    class _Bar:
        def __init__(self):
            self.bar = tqdm(total=total, initial=start, desc="train", unit="step", leave=False)

        def update(self, n: int, **postfix):
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

        def close(self):
            self.bar.close()

    return _Bar()


CHECKPOINT = "ckpt.pt"


def _save_checkpoint(directory: Path, model, optimizer, scheduler, step: int) -> Path:
    """Everything a killed run needs to continue exactly: adapter, optimizer, scheduler, RNG, step."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "adapter": get_peft_model_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng_torch": torch.get_rng_state(),
        "rng_python": random.getstate(),
    }
    tmp = directory / (CHECKPOINT + ".partial")
    torch.save(state, tmp)
    os.replace(tmp, directory / CHECKPOINT)  # a kill mid-write leaves the previous checkpoint intact
    return directory / CHECKPOINT


def _load_checkpoint(directory: Path, model, optimizer, scheduler) -> int:
    """Restore ``ckpt.pt`` if there is a readable one; the step to continue from (0: start over)."""
    path = directory / CHECKPOINT
    if not path.exists():
        return 0
    try:
        state = torch.load(path, weights_only=False)
    except (RuntimeError, EOFError, OSError) as err:  # e.g. a truncated copy from an interrupted upload
        warnings.warn(f"ignoring unreadable checkpoint {path}: {err}")
        return 0
    set_peft_model_state_dict(model, state["adapter"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_torch"])
    random.setstate(state["rng_python"])
    return int(state["step"])


def add_adapter(base, kind: Kind, rank: int, seed: int, **lora_kwargs) -> PeftModel:
    torch.manual_seed(seed)
    return get_peft_model(base, lora_config(kind, rank, **lora_kwargs))


def _adapters(adapter_names: Sequence[str] | None, start: int, stop: int) -> dict:
    """peft's per-row adapter choice for rows start:stop ("__base__": adapters off), or nothing."""
    return {"adapter_names": list(adapter_names[start:stop])} if adapter_names is not None else {}


@torch.inference_mode()
def generate(model, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_new_tokens: int,
             batch_size: int = 16, adapter_names: Sequence[str] | None = None) -> list[str]:
    """Greedy answers through the chat template; left padding so answers start together.

    ``adapter_names`` (one per prompt) runs several LoRA adapters in one batch: the base model's
    work is shared and each adapter adds its part to its own rows only.
    """
    tokenizer.padding_side = "left"
    answers: list[str] = []
    for i in range(0, len(prompts), batch_size):
        texts = [chat_prompt(tokenizer, p) for p in prompts[i:i + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False, truncation=True, max_length=512)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             **_adapters(adapter_names, i, i + batch_size))
        answers += [a.strip() for a in tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)]
    return answers


@torch.inference_mode()
def classify(model, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], labels: list[str],
             batch_size: int = 64, max_length: int = 128,
             adapter_names: Sequence[str] | None = None) -> tuple[list[str], list[float]]:
    """Predicted label and its probability per text (``adapter_names``: as for ``generate``)."""
    predictions, confidences = [], []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[i:i + batch_size]), return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        probs = model(**batch, **_adapters(adapter_names, i, i + batch_size)).logits.softmax(-1)
        conf, idx = probs.max(-1)
        predictions += [labels[j] for j in idx.tolist()]
        confidences += conf.tolist()
    return predictions, confidences


def predict(kind: Kind, model, tokenizer: PreTrainedTokenizerBase, inputs: Sequence[str], labels: Sequence[str],
            max_new_tokens: int, adapter_names: Sequence[str] | None = None) -> tuple[list[str], list[float] | None]:
    """Outputs for either kind (answers, or labels with their probabilities)."""
    if kind == "generation":
        return generate(model, tokenizer, inputs, max_new_tokens, adapter_names=adapter_names), None
    return classify(model, tokenizer, inputs, list(labels), adapter_names=adapter_names)
