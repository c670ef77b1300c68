"""Preference objectives beside supervised fine-tuning: DPO on corrections, KTO on unpaired thumbs.

A trial's objective (``tune.objectives``, searched like the other hyper-parameters) decides what is
added to each step of the ordinary loop (``tuneloop.modeling.training.train``, through its ``extra_loss``):

- ``sft``: nothing; the supervised pairs (corrections, liked answers) and the rehearsal rows alone.
- ``dpo``: ``weight`` x the DPO loss on a batch of preference pairs (chosen = the correction,
  rejected = the served answer; Rafailov et al. 2023). The supervised rows stay in every step, so
  this is DPO with an SFT term on the chosen answers, the RPO mix (Pang et al. 2024) that keeps DPO
  from lowering the chosen answer's likelihood along with the rejected one's.
- ``kto``: ``weight`` x the KTO loss on a batch of unpaired answers, liked or not (Ethayarajh et al.
  2024): no pairing needed, so every bare thumbs-down teaches too.

The reference policy is the base itself, the adapter switched off (peft's ``disable_adapter()``),
never a second copy in memory. The base is frozen, so a row's reference log-probability never
changes: it is computed once and kept (``_reference``), which makes later epochs cost one forward
and one backward per row.

Why not TRL's implementations: in TRL (1.16) ``dpo_loss`` and ``kto_loss`` are methods of
``DPOTrainer`` / ``KTOTrainer`` (``trl.experimental.kto``) that read the trainer's state (beta, loss
type, accelerator, the reference model or its precomputed columns) and take batches in TRL's own
concatenated layout; using them means building a ``transformers.Trainer`` around the model, whose
loop, checkpoints and resume are not this project's (``tuneloop.modeling.training``: adapter-only
checkpoints, exact resume, rehearsal KL rows, the search's pruning and gate-aware constraints).
The losses themselves are the few lines below, written to the papers' formulas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from tuneloop.modeling.batches import collate, encode, epoch_batches
from tuneloop.modeling.fast.prefix import keeps_logits, kept_logits

Objective = Literal["sft", "dpo", "kto"]
OBJECTIVES: tuple[Objective, ...] = ("sft", "dpo", "kto")


def encode_answers(tokenizer, items: Sequence[tuple[str, str]], max_length: int, prompting) -> list[dict]:
    """(prompt, answer) rows as training encodes them (loss on the answer only), each with the length
    of its prompt part, so KTO can pair a prompt with another row's answer."""
    rows = encode("generation", tokenizer, items, [], max_length, prompting)
    for row in rows:
        row["head"] = next((i for i, label in enumerate(row["labels"]) if label != -100), len(row["labels"]))
    return rows


def answer_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per row, the summed log-probability of its answer tokens (labels != -100)."""
    labels = batch["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    if keeps_logits(model):  # the vocabulary projection of answer positions only (as training does)
        logits = kept_logits(model, batch["input_ids"], batch["attention_mask"], keep).float()
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()[keep]
    targets = labels[:, 1:][keep[:, :-1]]
    token_logps = torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)
    rows = keep.nonzero()[:, 0]
    return torch.zeros(labels.shape[0], dtype=token_logps.dtype, device=labels.device).index_add(0, rows, token_logps)


def reference_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``answer_logps`` under the base: the same model with its adapter switched off, no copy."""
    with torch.no_grad(), model.disable_adapter():
        return answer_logps(model, batch)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per pair: -log sigmoid(beta x (chosen's log-ratio to the reference - rejected's))."""
    return -F.logsigmoid(beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)))


def kto_loss(
    policy: torch.Tensor,
    reference: torch.Tensor,
    liked: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """Per example: weight x (1 - sigmoid(beta x (log-ratio - z0))) for a liked answer, with the sign
    of the difference turned for a disliked one. ``kl`` (z0) is the policy's KL to the reference,
    estimated on mismatched prompt/answer pairs, detached and clamped at 0 as in the paper."""
    z0 = kl.detach().clamp(min=0)
    ratio = policy - reference
    value = torch.where(liked, torch.sigmoid(beta * (ratio - z0)), torch.sigmoid(beta * (z0 - ratio)))
    weight = torch.where(liked, torch.full_like(ratio, desirable_weight), torch.full_like(ratio, undesirable_weight))
    return weight * (1 - value)


class PreferenceTerm:
    """The objective's loss on a batch of its rows at each step: ``train(..., extra_loss=term)``.

    Its batches depend on the step alone (shuffled passes over the rows from ``seed``), so a trial
    resumed from a checkpoint sees the same batches and computes the same losses.
    """

    def __init__(
        self,
        objective: Objective,
        rows: list[dict],
        *,
        beta: float,
        weight: float,
        batch_size: int,
        seed: int,
        pad_id: int,
        max_length: int,
    ):
        if objective not in ("dpo", "kto") or not rows:
            raise ValueError(f"objective {objective!r} needs rows of its own (dpo: pairs, kto: unpaired answers)")
        self.objective, self.rows, self.beta, self.weight = objective, rows, beta, weight
        self.batch_size, self.seed, self.pad_id, self.max_length = min(batch_size, len(rows)), seed, pad_id, max_length
        self._reference: dict[object, float] = {}  # the frozen base's log-probabilities, by row
        self._order: dict[int, list[list[int]]] = {}
        self.history: list[float] = []  # this term's loss at each step, before ``weight``
        if objective == "kto":  # each side weighs half, however unbalanced the thumbs (lambda_D n_D = lambda_U n_U)
            liked = sum(bool(r["liked"]) for r in rows)
            self.weights = (
                len(rows) / (2 * liked) if liked else 1.0,
                len(rows) / (2 * (len(rows) - liked)) if liked < len(rows) else 1.0,
            )

    def __call__(self, model, step: int) -> torch.Tensor:
        picked = self._batch(step)
        loss = (self._dpo(model, picked) if self.objective == "dpo" else self._kto(model, picked)).mean()
        self.history.append(loss.item())
        return self.weight * loss

    def _batch(self, step: int) -> list[int]:
        per_epoch = math.ceil(len(self.rows) / self.batch_size)
        epoch, index = divmod(step, per_epoch)
        if epoch not in self._order:
            self._order = {
                epoch: epoch_batches([0] * len(self.rows), self.batch_size, self.seed + 7919, epoch, grouped=False)
            }
        return self._order[epoch][index]

    def _logps(self, model, rows: list[dict], keys: list[object]) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's answer log-probabilities (with gradients) and the base's (kept per key)."""
        device = next(model.parameters()).device
        batch = collate(rows, self.pad_id, device)
        missing = [i for i, key in enumerate(keys) if key not in self._reference]
        if missing:
            values = reference_logps(model, collate([rows[i] for i in missing], self.pad_id, device))
            self._reference.update({keys[i]: v for i, v in zip(missing, values.tolist())})
        reference = torch.tensor([self._reference[key] for key in keys], device=device)
        return answer_logps(model, batch), reference

    def _dpo(self, model, picked: list[int]) -> torch.Tensor:
        rows = [self.rows[i]["chosen"] for i in picked] + [self.rows[i]["rejected"] for i in picked]
        keys = [(i, "chosen") for i in picked] + [(i, "rejected") for i in picked]
        policy, reference = self._logps(model, rows, keys)
        n = len(picked)
        return dpo_loss(policy[:n], policy[n:], reference[:n], reference[n:], self.beta)

    def _kto(self, model, picked: list[int]) -> torch.Tensor:
        rows = [self.rows[i] for i in picked]
        policy, reference = self._logps(model, rows, picked)
        mismatched = [self._mismatch(rows[j], rows[(j + 1) % len(rows)]) for j in range(len(rows))]
        with torch.no_grad():  # z0 carries no gradient (the paper; TRL likewise)
            kl_policy, kl_reference = self._logps(
                model, mismatched, [(i, picked[(j + 1) % len(picked)]) for j, i in enumerate(picked)]
            )
        liked = torch.tensor([bool(r["liked"]) for r in rows], device=policy.device)
        return kto_loss(policy, reference, liked, (kl_policy - kl_reference).mean(), self.beta, *self.weights)

    def _mismatch(self, prompt_row: dict, answer_row: dict) -> dict:
        """``prompt_row``'s prompt with ``answer_row``'s answer, cut like ``encode`` (the prompt's end kept)."""
        tail_ids = answer_row["input_ids"][answer_row["head"] :]
        head_ids = prompt_row["input_ids"][: prompt_row["head"]][-max(1, self.max_length - len(tail_ids)) :]
        ids = (head_ids + tail_ids)[: self.max_length]
        return {"input_ids": ids, "labels": ([-100] * len(head_ids) + tail_ids)[: self.max_length]}


def pair_rows(tokenizer, pairs, max_length: int, prompting) -> list[dict]:
    """Preference pairs (``tuneloop.data.preference.PreferencePair``) encoded for DPO."""
    chosen = encode_answers(tokenizer, [(p.prompt, p.chosen) for p in pairs], max_length, prompting)
    rejected = encode_answers(tokenizer, [(p.prompt, p.rejected) for p in pairs], max_length, prompting)
    return [{"chosen": c, "rejected": r} for c, r in zip(chosen, rejected)]


def unpaired_rows(tokenizer, examples, max_length: int, prompting) -> list[dict]:
    """Unpaired answers (``tuneloop.data.preference.Unpaired``) encoded for KTO, each marked liked or not."""
    rows = encode_answers(tokenizer, [(e.prompt, e.answer) for e in examples], max_length, prompting)
    for row, example in zip(rows, examples):
        row["liked"] = example.liked
    return rows


def usable(objectives: Sequence[str], n_pairs: int, n_unpaired: int, kind: str) -> tuple[list[str], list[str]]:
    """The objectives the data present allows, and why each other one is left out."""
    kept, reasons = [], []
    for objective in objectives:
        if objective != "sft" and kind != "generation":
            reasons.append(f"{objective}: preference objectives train generation models only")
        elif objective == "dpo" and not n_pairs:
            reasons.append("dpo: no preference pairs in the train split (no correction with a different served answer)")
        elif objective == "kto" and not n_unpaired:
            reasons.append("kto: no unpaired thumbs in the train split")
        else:
            kept.append(objective)
    return kept, reasons
