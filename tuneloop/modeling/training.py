"""LoRA training for both task kinds: a plain PyTorch loop over a peft model (answers: ``tuneloop.modeling.inference``).

Plain on purpose (nanoGPT-style): the loop is short enough to read, checkpoints everything a killed
run needs to continue exactly (adapter, optimizer, scheduler, RNG, step), and runs as fast as a
hand-written loop because it is one. It runs wherever the model is (CPU, CUDA, MPS): batches follow
the model's device, and a base loaded in bf16/fp16 trains under autocast with fp32 adapter weights
(fp16 with loss scaling). Accelerate is not used for this: its state is one device per process,
and its ``save_state`` writes the whole model, where a LoRA checkpoint needs the adapter only.

Imports torch, transformers, peft and the config only: an accelerator machine without MLflow,
Prefect or Optuna can run it (the training benchmark does).
"""

from __future__ import annotations

import math
import os
import pickle
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import get_linear_schedule_with_warmup

from tuneloop.config import Kind
from tuneloop.modeling.batches import collate, epoch_batches
from tuneloop.modeling.fast.prefix import keeps_logits, kept_logits
from tuneloop.modeling.fast.trunk import open_trunk
from tuneloop.modeling.models import compute_dtype
from tuneloop.modeling.teacher import sparse_kl

CHECKPOINT = "ckpt.pt"
_init_lock = threading.Lock()


def lora_config(
    kind: Kind,
    rank: int,
    targets: list[str] | str,
    alpha: float | None = None,
    dropout: float = 0.05,
    layers: list[int] | None = None,
    full_modules: list[str] | None = None,
) -> LoraConfig:
    """LoRA on ``targets`` (module name suffixes, or peft's ``"all-linear"``) in ``layers`` (None:
    all); alpha defaults to 2 x rank. ``full_modules`` are trained in full beside the adapter (peft's
    ``modules_to_save``; a classification head always is)."""
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM if kind == "generation" else TaskType.SEQ_CLS,
        r=rank,
        lora_alpha=alpha or 2 * rank,
        lora_dropout=dropout,
        target_modules=targets,
        layers_to_transform=layers,
        modules_to_save=list(full_modules) if full_modules else None,
    )


def top_layers(base, share: float) -> list[int] | None:
    """The indices of the top ``share`` of the base's transformer layers (None: all of them). With
    adapters there only, the backward pass stops below them."""
    n = getattr(base.config.get_text_config(), "num_hidden_layers", None)
    if share >= 1 or not n:
        return None
    return list(range(n - max(1, math.ceil(n * share)), n))


def add_adapter(
    base,
    kind: Kind,
    rank: int,
    seed: int,
    targets: list[str] | str,
    alpha: float | None = None,
    dropout: float = 0.05,
    layers: list[int] | None = None,
    full_modules: list[str] | None = None,
) -> PeftModel:
    """A fresh LoRA adapter on ``base``, initialised from a generator of its own: the same ``seed``
    gives the same adapter whatever else runs in the process (the global RNG is never reseeded).
    ``full_modules``: see ``lora_config`` (``tuneloop.modeling.models.full_modules`` names a classifier's)."""
    if targets == "all-linear" and layers is not None:
        # peft takes "all-linear" only for every layer; for some layers, name the Linear modules inside the numbered
        # layers (the output layer and a pooler sit outside them and stay out, as "all-linear" leaves them)
        targets = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in base.named_modules()
                if isinstance(m, torch.nn.Linear) and re.search(r"\.\d+\.", n)
            }
        )
    with _init_lock:  # peft draws its initial A matrices from the global RNG: hold others off, then redo them
        model = get_peft_model(base, lora_config(kind, rank, targets, alpha, dropout, layers, full_modules))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if ".lora_A." in name:  # B stays zero, so the adapter starts as the identity
                fresh = torch.empty(param.shape, dtype=torch.float32)
                torch.nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
                param.copy_(fresh)
    return model


@dataclass
class TrainResult:
    steps: int  # the schedule's length
    resumed_from_step: int  # 0 for a fresh start
    losses: list[float] = field(
        default_factory=list
    )  # one per step run by this call (after a resume: from its checkpoint on)
    tokens: int = 0  # non-padding tokens seen by this call
    padded_tokens: int = 0  # tokens computed, padding included
    examples: int = 0  # examples seen by this call
    seconds: float = 0.0
    pruned: bool = False

    @property
    def steps_run(self) -> int:
        return len(self.losses)


class Pruned(Exception):
    """Raised by an eval callback to stop a trial that is not worth finishing."""


def schedule_length(
    n_examples: int, batch_size: int, epochs: int, max_steps: int | None = None, grad_accum: int = 1
) -> int:
    """Optimiser steps of a run: ``epochs`` passes, capped at ``max_steps`` (a trial's budget)."""
    per_epoch = math.ceil(math.ceil(n_examples / batch_size) / grad_accum)
    return min(per_epoch * epochs, max_steps) if max_steps else per_epoch * epochs


def train(
    model: PeftModel,
    encoded: list[dict],
    pad_id: int,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    max_steps: int | None = None,
    grad_accum: int = 1,
    head_lr: float | None = None,
    length_grouping: bool = True,
    eval_steps: set[int] | None = None,
    on_eval: Callable[[int], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[Path, int], None] | None = None,
    progress: bool = False,
    kl_weight: float = 0.0,
    trunk_cache_mb: float = 0.0,
    extra_loss: Callable[[PeftModel, int], torch.Tensor] | None = None,
) -> TrainResult:
    """Train the adapter in place: AdamW, linear warm-up (1/10) and decay, gradient clipping at 1.

    ``max_steps`` caps the optimiser steps (a trial's budget: it then sees part of the data, in the
    same order as a full run); ``grad_accum`` micro-batches make one step; ``head_lr`` trains the
    classification head (peft's modules to save) at its own rate. With ``checkpoint_dir``, resumes
    from ``ckpt.pt`` there and saves to it every ``checkpoint_every`` steps (``on_checkpoint(path,
    step)`` follows each save). Steps are numbered from 1; ``on_step(step, loss)`` follows every step,
    ``on_eval(step)`` the steps in ``eval_steps`` and may raise ``Pruned`` to stop early.
    ``kl_weight``: see ``loss_of`` (examples with ``rehearse`` set). ``trunk_cache_mb``: memory for the
    rows' states below the adapters, kept from their first step for the next (``tuneloop.modeling.fast.trunk``; 0: none).
    ``extra_loss(model, step)``: a further term of each step's loss on rows of its own, a function of
    the step alone so a resume computes the same (a preference objective: ``tuneloop.modeling.objectives``).
    """
    total = schedule_length(len(encoded), batch_size, epochs, max_steps, grad_accum)
    opt = _optimisation(model, lr, head_lr, total)
    start = _load_checkpoint(checkpoint_dir, model, opt.optimizer, opt.scheduler, opt.scaler) if checkpoint_dir else 0
    if start == 0:  # dropout masks from ``seed`` (a resume restores the stream from its checkpoint instead); side
        torch.manual_seed(seed)  # by side trials run in their own processes, so this global state is the trial's own
    result = TrainResult(steps=total, resumed_from_step=start)
    bar = _progress_bar(total, start) if progress else None
    steps = _step_rows(encoded, batch_size, seed, grad_accum, length_grouping, start, total)
    began = time.perf_counter()
    model.train()
    trunk = open_trunk(model, encoded, trunk_cache_mb)  # None: every step runs every layer
    try:
        for step, micro_batches in enumerate(steps, start):
            loss = _train_step(model, opt, micro_batches, pad_id, trunk, kl_weight, extra_loss, step, result)
            if on_step:
                on_step(step + 1, loss)
            if bar:
                bar.update(1, loss=f"{loss:.3f}")
            if checkpoint_dir and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < total:
                path = _save_checkpoint(checkpoint_dir, model, opt.optimizer, opt.scheduler, opt.scaler, step + 1)
                if on_checkpoint:
                    on_checkpoint(path, step + 1)
            if on_eval and eval_steps and step + 1 in eval_steps and _pruned_at(model, on_eval, step + 1):
                result.pruned = True
                break
    finally:
        if trunk:
            trunk.close()
    if bar:
        bar.close()
    model.eval()
    result.seconds = time.perf_counter() - began
    return result


@dataclass
class _Optimisation:
    """What one optimiser step needs besides the model: AdamW and its schedule, the loss scaler (fp16 on
    CUDA; None otherwise), the autocast the forward passes run under, and the parameters clipped."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    autocast: AbstractContextManager
    device: torch.device
    trainable: list[torch.nn.Parameter]


def _optimisation(model: PeftModel, lr: float, head_lr: float | None, total: int) -> _Optimisation:
    """AdamW over the trainable parameters with a linear warm-up (1/10 of ``total``) and decay; autocast and
    loss scaling where the model's compute dtype is bf16/fp16 on an accelerator."""
    device = next(model.parameters()).device
    dtype = compute_dtype(model)
    autocast = (
        torch.autocast(device.type, dtype=dtype)
        if device.type in ("cuda", "mps") and dtype != torch.float32
        else nullcontext()
    )
    scaler = torch.amp.GradScaler(device.type) if device.type == "cuda" and dtype == torch.float16 else None
    optimizer = torch.optim.AdamW(_param_groups(model, lr, head_lr), lr=lr, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, max(1, total // 10), total)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return _Optimisation(optimizer, scheduler, scaler, autocast, device, trainable)


def _step_rows(
    encoded: list[dict], batch_size: int, seed: int, grad_accum: int, length_grouping: bool, start: int, total: int
) -> Iterator[list[list[dict]]]:
    """The rows of each step's ``grad_accum`` micro-batches, for steps ``start`` to ``total`` - 1: epoch by
    epoch in ``epoch_batches``' order, so a resumed run sees the same batches as one that never stopped."""
    lengths = [len(e["input_ids"]) for e in encoded]
    per_epoch = math.ceil(len(encoded) / batch_size)
    batches: dict[int, list[list[int]]] = {}  # the current epoch's only
    for step in range(start, total):
        micro_batches = []
        for micro in range(grad_accum):
            epoch, index = divmod(step * grad_accum + micro, per_epoch)
            if epoch not in batches:
                batches = {epoch: epoch_batches(lengths, batch_size, seed, epoch, length_grouping)}
            micro_batches.append([encoded[i] for i in batches[epoch][index]])
        yield micro_batches


def _train_step(
    model: PeftModel,
    opt: _Optimisation,
    micro_batches: list[list[dict]],
    pad_id: int,
    trunk,
    kl_weight: float,
    extra_loss: Callable[[PeftModel, int], torch.Tensor] | None,
    step: int,
    result: TrainResult,
) -> float:
    """One optimiser step (0-based ``step``) over its micro-batches and the extra term; its loss, appended to
    ``result.losses``."""
    loss = _accumulate(model, opt, micro_batches, pad_id, trunk, kl_weight, result)
    if extra_loss is not None:
        with opt.autocast:
            extra = extra_loss(model, step)
        _backward(opt, extra)
        loss += extra.item()
    _apply_gradients(opt)
    result.losses.append(loss)
    return loss


def _accumulate(
    model: PeftModel,
    opt: _Optimisation,
    micro_batches: list[list[dict]],
    pad_id: int,
    trunk,
    kl_weight: float,
    result: TrainResult,
) -> float:
    """Gradients of one step's micro-batches, each loss divided by their number; the step's loss. Counts
    the tokens, padded tokens and examples seen into ``result``."""
    loss_sum = 0.0
    for rows in micro_batches:
        batch = collate(rows, pad_id, opt.device)
        with opt.autocast, trunk.batch(rows, batch["attention_mask"]) if trunk else nullcontext():
            loss = loss_of(model, batch, kl_weight) / len(micro_batches)
        _backward(opt, loss)
        loss_sum += loss.item()
        result.tokens += int(batch["attention_mask"].sum())
        result.padded_tokens += batch["attention_mask"].numel()
        result.examples += len(rows)
    return loss_sum


def _backward(opt: _Optimisation, loss: torch.Tensor) -> None:
    """Backward pass of ``loss``, scaled when fp16 needs it."""
    (opt.scaler.scale(loss) if opt.scaler else loss).backward()


def _apply_gradients(opt: _Optimisation) -> None:
    """Clip the accumulated gradients at norm 1, step the optimiser and its schedule, clear the gradients."""
    if opt.scaler:
        opt.scaler.unscale_(opt.optimizer)  # clipping reads the true gradients
    torch.nn.utils.clip_grad_norm_(opt.trainable, 1.0)
    opt.scaler.step(opt.optimizer) if opt.scaler else opt.optimizer.step()
    if opt.scaler:
        opt.scaler.update()
    opt.scheduler.step()
    opt.optimizer.zero_grad(set_to_none=True)


def _pruned_at(model: PeftModel, on_eval: Callable[[int], None], step: int) -> bool:
    """Run ``on_eval(step)`` with the model in eval mode (training mode again after); whether it raised ``Pruned``."""
    model.eval()
    try:
        on_eval(step)
    except Pruned:
        return True
    finally:
        model.train()
    return False


def loss_of(model, batch: dict[str, torch.Tensor], kl_weight: float = 0.0) -> torch.Tensor:
    """The batch's loss. For a causal LM, logits are computed only where the next token is a target
    (transformers' boolean ``logits_to_keep``): the vocabulary projection of the prompt tokens,
    which the loss ignores, is most of a small model's training cost (SmolLM2: 49k x 576 per token).

    With ``kl_weight``, rows marked ``rehearse`` (the base's own answers) are trained on ``kl_weight``
    x the KL divergence from the frozen base (the same model, adapter off) to the model over their
    answer tokens, instead of the cross-entropy with that answer, which is over the other rows alone:
    rehearsal then keeps the base's whole next-token distribution, and does not sharpen it toward its
    greedy answer, which for a small base is wrong on most short questions ("19 + 7 = 16"). Rows that
    carry the base's top tokens (``tuneloop.modeling.teacher``, computed once per search) are compared with
    those instead of a frozen forward pass at every step."""
    labels = batch.get("labels")
    inputs = {k: v for k, v in batch.items() if k not in ("rehearse", "teacher_ids", "teacher_logp")}
    if labels is None or labels.ndim != 2 or not keeps_logits(model):
        return model(**inputs).loss
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    logits = kept_logits(model, batch["input_ids"], batch["attention_mask"], keep).float()
    targets = labels[:, 1:][keep[:, :-1]]
    rehearse = batch.get("rehearse")
    if not kl_weight or rehearse is None or not rehearse.any():
        return torch.nn.functional.cross_entropy(logits, targets)
    kept_rehearse = rehearse[:, None].expand_as(keep)[keep]  # per kept position: a rehearsal row's
    learn = ~kept_rehearse
    loss = torch.nn.functional.cross_entropy(logits[learn], targets[learn]) if learn.any() else logits.new_zeros(())
    if "teacher_ids" in batch:  # computed once per search (``tuneloop.modeling.teacher``): no frozen forward here
        return loss + kl_weight * sparse_kl(logits[kept_rehearse], batch["teacher_ids"], batch["teacher_logp"])
    rows = rehearse.nonzero().squeeze(1)
    with torch.no_grad(), model.disable_adapter():
        frozen = kept_logits(model, batch["input_ids"][rows], batch["attention_mask"][rows], keep[rows])
    frozen = torch.log_softmax(frozen.float(), -1)
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(logits[kept_rehearse], -1), frozen, log_target=True, reduction="batchmean"
    )
    return loss + kl_weight * kl


def _param_groups(model, lr: float, head_lr: float | None) -> list[dict]:
    """The adapter at ``lr``; the modules trained in full (peft's ``modules_to_save`` copies: a
    classification head, and its pooler) at ``head_lr``: a head starting from random weights can
    want a larger step than the adapter."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = [p for n, p in trainable if "modules_to_save" in n]
    if head_lr is None or not head:
        return [{"params": [p for _, p in trainable]}]
    return [{"params": [p for n, p in trainable if "modules_to_save" not in n]}, {"params": head, "lr": head_lr}]


def _progress_bar(total: int, start: int):
    from tuneloop import progress

    return progress.current().bar("train", total, start)


def _save_checkpoint(directory: Path, model, optimizer, scheduler, scaler, step: int) -> Path:
    """Everything a killed run needs to continue exactly: adapter, optimizer, scheduler, RNG, step."""
    directory.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    state = {
        "step": step,
        "adapter": get_peft_model_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler else None,
        "rng_torch": torch.get_rng_state(),  # dropout masks on the CPU
        "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    tmp = directory / (CHECKPOINT + ".partial")
    torch.save(state, tmp)
    os.replace(tmp, directory / CHECKPOINT)  # a kill mid-write leaves the previous checkpoint intact
    return directory / CHECKPOINT


class CheckpointError(ValueError):
    """A checkpoint holds more than tensors and plain values: it is refused, never unpickled."""


def _load_checkpoint(directory: Path, model, optimizer, scheduler, scaler) -> int:
    """Restore ``ckpt.pt`` if there is a readable one; the step to continue from (0: start over).

    Checkpoints come from the artifact store, which every worker writes: loaded as weights only
    (tensors and plain containers), so a planted file cannot run code in the trial's process."""
    path = directory / CHECKPOINT
    if not path.exists():
        return 0
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:  # what torch's weights-only unpickler raises for any other object
        raise CheckpointError(
            f"refusing checkpoint {path}: it holds not only tensors and plain values (a pickled "
            f"object, which could run code), so it was not loaded: {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:  # e.g. a truncated copy from an interrupted upload
        warnings.warn(f"ignoring unreadable checkpoint {path}: {err}", stacklevel=2)
        return 0
    set_peft_model_state_dict(model, state["adapter"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_torch"])
    device = next(model.parameters()).device
    if state.get("rng_cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["rng_cuda"], device)
    return int(state["step"])
