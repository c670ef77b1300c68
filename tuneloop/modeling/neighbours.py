"""A classifier's nearest training examples as a second opinion beside its head.

After training, every utterance the router learned from is embedded by the trained encoder (the mean
of its last hidden states, the way sentence encoders such as all-MiniLM are trained to be compared) and
stored beside the adapter with its label. Answering, the input's ``k`` most similar stored utterances
vote (each weighted by ``exp(cosine / TEMPERATURE)``), and the router answers from
``(1 - weight) x head probabilities + weight x votes``. On BANKING77 the votes took the loop's router
from 92.5 % to 93.6 % test accuracy (1.0 to 2.5 points on the routers of the offline study), for one
more pass over the training data and a dot product per stored utterance (docs/benchmarks/classification.md).

The store is safetensors (plain arrays, nothing unpickled), bounded to ``MAX_EXAMPLES`` utterances,
and holds embeddings, never text.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

NEIGHBOURS_FILE = "neighbours.safetensors"
TEMPERATURE = 0.05  # a similarity 0.05 higher counts e times more: the nearest few decide
MAX_EXAMPLES = 50_000  # stored utterances at most (a fixed random sample beyond): 38 MB at 384 wide in float16


@dataclass(frozen=True)
class Neighbours:
    """Unit-length embeddings of the training utterances with their label indices (the head's order)."""

    embeddings: torch.Tensor  # (n, width), float32 in use, float16 stored
    labels: torch.Tensor  # (n,), long
    k: int
    weight: float

    def votes(self, queries: torch.Tensor, n_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query (unit rows), its ``k`` nearest stored utterances' similarity-weighted label shares,
        and the nearest one's cosine similarity (low for an input unlike anything trained on)."""
        sims = queries.float() @ self.embeddings.T
        top, where = sims.topk(min(self.k, sims.shape[1]), dim=1)
        weights = ((top - top[:, :1]) / TEMPERATURE).exp()  # relative to the nearest: no overflow
        out = torch.zeros(len(queries), n_labels)
        out.scatter_add_(1, self.labels[where], weights)
        return out / out.sum(1, keepdim=True), top[:, 0]

    def mix(self, probabilities: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's probabilities blended with the neighbours' votes, and each query's nearest similarity."""
        votes, nearest = self.votes(queries, probabilities.shape[1])
        return (1 - self.weight) * probabilities + self.weight * votes.to(probabilities.device), nearest

    def save(self, folder: Path) -> Path:
        from safetensors.torch import save_file

        path = Path(folder) / NEIGHBOURS_FILE
        tensors = {"embeddings": self.embeddings.half().contiguous(), "labels": self.labels.int().contiguous()}
        save_file(tensors, str(path), metadata={"k": str(self.k), "weight": str(self.weight)})
        return path


def load_neighbours(folder: Path, n_labels: int) -> Neighbours | None:
    """The store beside an adapter, checked against its head's ``n_labels``; None when it has none."""
    from safetensors import safe_open

    path = Path(folder) / NEIGHBOURS_FILE
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        embeddings, labels = f.get_tensor("embeddings").float(), f.get_tensor("labels").long()
    k, weight = int(meta.get("k", 0)), float(meta.get("weight", -1))
    if (
        embeddings.ndim != 2
        or labels.shape != (embeddings.shape[0],)
        or not len(labels)
        or labels.min() < 0
        or labels.max() >= n_labels
        or k < 1
        or not 0 <= weight <= 1
    ):
        raise ValueError(f"{path} is not a neighbour store for a {n_labels}-label head")
    return Neighbours(embeddings, labels, k, weight)


def mean_pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Unit-length means of each row's hidden states over its real (unpadded) tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(mean.float(), dim=-1)


def build_neighbours(
    embed, texts: Sequence[str], label_indices: Sequence[int], k: int, weight: float, seed: int = 0
) -> Neighbours:
    """A store of ``texts`` (at most ``MAX_EXAMPLES``, a fixed sample beyond) embedded by ``embed``
    (texts -> unit rows), with their label indices."""
    rows = list(range(len(texts)))
    if len(rows) > MAX_EXAMPLES:
        rows = sorted(random.Random(seed).sample(rows, MAX_EXAMPLES))
    if not rows:
        raise ValueError("no training utterances to store as neighbours")
    embeddings = embed([texts[i] for i in rows])
    return Neighbours(embeddings.float().cpu(), torch.tensor([label_indices[i] for i in rows]), k, weight)


def clearly_worse(losses: int, wins: int, alpha: float = 0.05) -> bool:
    """Whether the votes lose to the head beyond chance where the two disagree: ``losses`` inputs the head
    alone gets right and the votes get wrong, ``wins`` the reverse (a one-sided sign test at ``alpha``).
    One input either way on a few hundred is noise, not a reason to drop the store."""
    n = losses + wins
    tail = sum(math.comb(n, k) for k in range(losses, n + 1)) / 2**n if n else 1.0
    return tail < alpha
