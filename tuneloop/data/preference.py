"""The preference signal of a dataset version, beside its supervised pairs (``tuneloop.data.datasets``).

Curation keeps what a supervised pair throws away (``tuneloop/data/signals.py``):

- a **preference pair** per correction: the prompt, the correction (chosen) and the answer the user
  rejected; DPO learns from the margin between them (``tuneloop.modeling.objectives``);
- an **unpaired example** per thumbs-up and per bare thumbs-down (no correction): the prompt, the
  answer, and whether it was liked; KTO learns from these, no pairing needed.

They live in the same folder as the splits (``pairs-<split>.jsonl``, ``unpaired-<split>.jsonl``),
split by the same cluster keys, so a held-out prompt's preference data stays held out. A dataset
curated without them (a classification dataset) simply has none: the loaders return empty lists.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from tuneloop.data.datasets import SPLITS, DatasetRef, Split, local_folder

PAIRS = "pairs-{split}.jsonl"
UNPAIRED = "unpaired-{split}.jsonl"


class PreferencePair(BaseModel):
    """A correction: ``chosen`` (what the user wrote) over ``rejected`` (what the model had answered)."""

    prompt: str
    chosen: str
    rejected: str
    key: str = Field(description="The prompt cluster's key (its split follows it).")
    source_ids: list[int] = Field(description="Feedback ids this pair was resolved from.")
    segment: str | None = None


class Unpaired(BaseModel):
    """A rated answer without a correction: a thumbs-up (liked) or a bare thumbs-down."""

    prompt: str
    answer: str
    liked: bool
    key: str
    source_ids: list[int]
    segment: str | None = None


def signal_files() -> list[str]:
    """The preference files of a dataset version, in the order its hash covers them."""
    return [name.format(split=split) for name in (PAIRS, UNPAIRED) for split in SPLITS]


def _load(folder: Path, name: str, model: type[BaseModel]) -> list:
    path = folder / name
    if not path.exists():
        return []
    with open(path) as f:
        return [model.model_validate_json(line) for line in f if line.strip()]


def load_pairs(ref: DatasetRef, split: Split, work_dir: Path) -> list[PreferencePair]:
    return _load(local_folder(ref, work_dir), PAIRS.format(split=split), PreferencePair)


def load_unpaired(ref: DatasetRef, split: Split, work_dir: Path) -> list[Unpaired]:
    return _load(local_folder(ref, work_dir), UNPAIRED.format(split=split), Unpaired)
