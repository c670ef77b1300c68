"""The frozen base's next-token distribution over the rehearsal answers, computed once per base and
data set instead of once per training step.

The rehearsal KL term (``training.loss_of``) compares the model with the frozen base on every
rehearsal row. The base never changes during a search, so a forward pass through it on those rows at
every step of every trial would be repeated work (a fifth to a quarter of a demo step's time on a CPU,
``python -m bench step``). Here it runs once, and each answer position keeps the base's ``TOP_K``
most likely tokens with their log-probabilities; the rest of the vocabulary is one bucket holding
the remaining probability. The KL divergence between these coarse distributions is a true
divergence (zero only where the model matches the base on the kept tokens and the bucket) and
lower-bounds the full one. At k = 64 the kept tokens hold 94 % of the base's probability on the
demo's rehearsal answers (5th percentile 77 %), and the demo's model trained this way scored the
same as with the frozen forward on every suite, to three decimals.

Cached on disk by content (the base, the rows' tokens, k), so every trial of a search, in this
process or another on the same machine, reuses one computation.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from pathlib import Path

import torch
from filelock import FileLock

from tuneloop.modeling.fast.prefix import kept_logits

TOP_K = 64
BATCH = 16


def _key(base_id: str, rows: list[dict], k: int) -> str:
    digest = hashlib.sha256(json.dumps([base_id, k]).encode())
    for row in rows:
        digest.update(json.dumps([row["input_ids"], row["labels"]]).encode())
    return digest.hexdigest()[:24]


@torch.inference_mode()
def _compute(model, rows: list[dict], pad_id: int, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from tuneloop.modeling.batches import collate

    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(rows), BATCH):
            chunk = rows[start : start + BATCH]
            batch = collate(chunk, pad_id, next(model.parameters()).device)
            keep = torch.zeros_like(batch["labels"], dtype=torch.bool)
            keep[:, :-1] = batch["labels"][:, 1:] != -100
            with model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext():
                logp = torch.log_softmax(
                    kept_logits(model, batch["input_ids"], batch["attention_mask"], keep).float(), -1
                )
            top = logp.topk(min(k, logp.shape[-1]), dim=-1)
            counts = keep.sum(1).tolist()
            for ids, values in zip(top.indices.split(counts), top.values.split(counts)):
                out.append((ids.to("cpu", torch.int32), values.to("cpu", torch.float16)))
    finally:
        model.train(was_training)
    return out


def attach(model, rows: list[dict], pad_id: int, base_id: str, cache_dir: Path, k: int = TOP_K) -> None:
    """Give each row marked ``rehearse`` its base's top-``k`` token ids and log-probabilities per
    answer position (``teacher_ids``, ``teacher_logp``), from the cache or computed with ``model``'s
    adapter off."""
    rehearse = [row for row in rows if row.get("rehearse") and "teacher_ids" not in row]
    if not rehearse:
        return
    path = Path(cache_dir) / f"{_key(base_id, rehearse, k)}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):  # trials in other processes wait for one computation
        if path.exists():
            stored = torch.load(path, weights_only=True)
        else:
            stored = _compute(model, rehearse, pad_id, k)
            torch.save(stored, path.with_suffix(".partial"))
            path.with_suffix(".partial").replace(path)
    for row, (ids, logp) in zip(rehearse, stored):
        row["teacher_ids"], row["teacher_logp"] = ids, logp


def sparse_kl(student_logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(base || model) on the base's kept tokens plus one bucket for the rest
    of the vocabulary."""
    student = torch.log_softmax(student_logits.float(), -1)
    s_kept = student.gather(-1, teacher_ids.long())
    t_kept = teacher_logp.float()
    t_rest = torch.log1p(-t_kept.exp().sum(-1).clamp(max=1 - 1e-6))
    s_rest = torch.log1p(-s_kept.exp().sum(-1).clamp(max=1 - 1e-6))
    kl = (t_kept.exp() * (t_kept - s_kept)).sum(-1) + t_rest.exp() * (t_rest - s_rest)
    return kl.mean()
