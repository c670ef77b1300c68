"""A generation version's memory of its corrections: a question near enough to a corrected one gets
that correction.

A small model tuned on a few phrasings of each fact learns the set of answers better than which
question each belongs to (on the generation sets, 11 of the game set's 20 missed probes answered with
another fact's sentence). A sentence encoder tells paraphrases apart from other questions far better:
with every imported question stored, the nearest one belonged to the probe's fact for 92-100 % of the
never-imported phrasings of the sets with several phrasings per fact, while no general-knowledge or
adversarial prompt of the gate's suites came within 0.6 (docs/benchmarks/generation.md). So after training, the version stores its
training questions (embedded by the bundled all-MiniLM-L6-v2, mean-pooled) with their answers; a
question whose nearest stored one is at least ``threshold`` similar is answered with that answer, any
other by the model. The gate scores the version with its memory, as it serves.

The memory is safetensors: embeddings as a tensor, answers and settings as JSON metadata (nothing
unpickled), bounded to ``MAX_ENTRIES`` entries of ``MAX_ANSWER_CHARS`` characters, tied to the
encoder's SHA-256 (a memory embedded by another encoder is not used).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneloop.data.text import normalize

MEMORY_FILE = "memory.safetensors"
MAX_ENTRIES = 20_000  # 15 MB of float16 embeddings at 384 wide
MAX_ANSWER_CHARS = 4_000
log = logging.getLogger(__name__)
Encoder = Callable[[Sequence[str]], torch.Tensor]


@dataclass(frozen=True)
class CorrectionMemory:
    """Unit-length embeddings of stored questions, their answers, and the similarity that counts as a hit."""

    embeddings: torch.Tensor  # (n, width), float32 in use, float16 stored
    answers: list[str]
    threshold: float
    encoder_sha256: str

    def recall(self, queries: torch.Tensor) -> tuple[list[str | None], list[float]]:
        """Per query (unit rows): the nearest stored question's answer where it is a hit (else None),
        and that nearest similarity."""
        if not len(self.answers) or not len(queries):
            return [None] * len(queries), [0.0] * len(queries)
        nearest, where = (queries.float() @ self.embeddings.T).max(dim=1)
        hits = [self.answers[int(i)] if s >= self.threshold else None for s, i in zip(nearest.tolist(), where)]
        return hits, nearest.tolist()

    def save(self, folder: Path) -> Path:
        from safetensors.torch import save_file

        path = Path(folder) / MEMORY_FILE
        meta = {
            "answers": json.dumps(self.answers),
            "threshold": repr(self.threshold),
            "encoder_sha256": self.encoder_sha256,
        }
        save_file({"embeddings": self.embeddings.half().contiguous()}, str(path), metadata=meta)
        return path


def build_memory(
    encode: Encoder, questions: Sequence[str], answers: Sequence[str], threshold: float, encoder_sha256: str
) -> CorrectionMemory:
    """The memory of ``questions`` and their ``answers`` (the last answer of a question asked twice; at
    most ``MAX_ENTRIES``, the first ones; answers cut at ``MAX_ANSWER_CHARS``)."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    by_question = dict(zip(questions, (a[:MAX_ANSWER_CHARS] for a in answers)))
    kept = list(by_question)[:MAX_ENTRIES]
    embeddings = encode(kept) if kept else torch.zeros(0, 1)
    return CorrectionMemory(embeddings.float(), [by_question[q] for q in kept], threshold, encoder_sha256)


def load_memory(folder: Path, encoder_sha256: str | None = None) -> CorrectionMemory | None:
    """The memory beside an adapter; None when it has none, or when it was embedded by another encoder
    than ``encoder_sha256`` (default: the bundled one's; logged). A malformed file is refused (ValueError).
    Loads no model: the encoder is loaded when a question is first looked up."""
    from safetensors import safe_open

    path = Path(folder) / MEMORY_FILE
    if not path.exists():
        return None
    encoder_sha256 = encoder_sha256 or bundled_encoder_sha256()
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        embeddings = f.get_tensor("embeddings").float()
    try:
        answers, threshold = json.loads(meta["answers"]), float(meta["threshold"])
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"malformed correction memory {path}: {err}") from None
    if (
        embeddings.ndim != 2
        or not isinstance(answers, list)
        or len(answers) != embeddings.shape[0]
        or len(answers) > MAX_ENTRIES
        or not all(isinstance(a, str) and len(a) <= MAX_ANSWER_CHARS for a in answers)
        or not 0 < threshold <= 1
    ):
        raise ValueError(f"malformed correction memory {path}: shapes, answers or threshold out of bounds")
    if meta.get("encoder_sha256") != encoder_sha256:
        log.warning("correction memory %s was embedded by another sentence encoder: not used", path)
        return None
    return CorrectionMemory(embeddings, answers, threshold, encoder_sha256)


_ENCODER: tuple[Encoder, str] | None = None
_LOCK = threading.Lock()


def bundled_encoder_sha256() -> str:
    """The SHA-256 of the bundled all-MiniLM-L6-v2's weights (hashed once per process, no model loaded)."""
    from tuneloop.modeling.models import resolve_base

    return resolve_base("classification").sha256


def sentence_encoder() -> tuple[Encoder, str]:
    """The bundled all-MiniLM-L6-v2 as a function from texts to unit-length embeddings (mean-pooled, as it
    was trained to be compared), and its weights' SHA-256; loaded once per process, on the CPU."""
    global _ENCODER
    with _LOCK:
        if _ENCODER is None:
            from transformers import AutoModel, AutoTokenizer

            from tuneloop.modeling.inference import embed
            from tuneloop.modeling.models import resolve_base

            path = resolve_base("classification").path
            model = AutoModel.from_pretrained(path).eval()
            tokenizer = AutoTokenizer.from_pretrained(path)
            _ENCODER = (lambda texts: embed(model, tokenizer, list(texts))), bundled_encoder_sha256()
        return _ENCODER


def answered_from_memory(
    memory: CorrectionMemory | None | Sequence[CorrectionMemory | None], inputs: Sequence[str], outputs: list[str]
) -> list[str]:
    """``outputs`` with each input that hits its memory (one for all rows, or one per row; None: none)
    answered from it instead."""
    per_row = list(memory) if isinstance(memory, Sequence) else [memory] * len(inputs)
    rows = [i for i, m in enumerate(per_row) if m is not None and normalize(inputs[i])]  # an empty input asks nothing
    if not rows:
        return outputs
    encode, _ = sentence_encoder()
    queries = encode([inputs[i] for i in rows])
    outputs = list(outputs)
    for n, i in enumerate(rows):
        hit = per_row[i].recall(queries[n : n + 1])[0][0]
        if hit is not None:
            outputs[i] = hit
    return outputs


def answered_share(memory: CorrectionMemory, inputs: Sequence[str]) -> float:
    """The share of ``inputs`` the memory answers (what a reviewer reads beside each suite's scores)."""
    asked = [text for text in inputs if normalize(text)]
    if not asked:
        return 0.0
    encode, _ = sentence_encoder()
    hits, _ = memory.recall(encode(asked))
    return round(sum(hit is not None for hit in hits) / len(inputs), 4)
