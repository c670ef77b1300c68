"""A dataset version: an id (the hash of its content) and where its files live.

Stages pass a ``DatasetRef`` (a few hundred bytes whatever the data size) and load the split they
need themselves, from the local work folder when it is there, else from the MLflow artifact store
(a worker on another machine). Examples never travel through Prefect parameters or results.

Splits are by a hash of each prompt cluster's key, so a prompt's side never moves as data grows:
``heldout`` (the gate's test), ``validation`` (what trials are scored on, so the search never sees
the gate's test) and ``train``.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

Split = Literal["train", "validation", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "validation", "heldout")
FILES = {"labels": "labels.json", "counts": "counts.json", "manifest": "manifest.json"}


class Example(BaseModel):
    """One curated pair: what the model is asked and what it should answer (or the label)."""

    prompt: str
    target: str
    key: str = Field(description="The prompt cluster's key (normalised text of its first prompt).")
    source_ids: list[int] = Field(description="Feedback ids this example was resolved from.")
    segment: str | None = None
    positive: bool = Field(False, description="A thumbs-up answer rather than a correction.")


class DatasetRef(BaseModel):
    """Where a dataset version lives and what is in it; never the examples themselves."""

    kind: str
    dataset_hash: str
    path: Path = Field(description="Local folder of the split files (a cache on machines that fetched it).")
    artifact_uri: str | None = Field(
        None, description="The same files in the MLflow artifact store, for other machines."
    )
    counts: dict[str, int] = Field(default_factory=dict)
    n_labels: int = 0
    last_feedback_id: int = 0
    curation_run_id: int | None = None

    @property
    def sizes(self) -> dict[str, int]:
        return {split: self.counts.get(split, 0) for split in SPLITS}


def split_of(key: str, heldout_percent: int, validation_percent: int = 0) -> Split:
    """Stable by construction: a key's side depends on the key alone, never on what else arrived.

    Buckets [0, heldout) are held out, the next ``validation_percent`` are validation: adding a
    validation split (or changing its size) never moves a held-out prompt.
    """
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100
    if bucket < heldout_percent:
        return "heldout"
    return "validation" if bucket < heldout_percent + validation_percent else "train"


def local_folder(ref: DatasetRef, work_dir: Path) -> Path:
    """The split files on this machine: the ref's own folder, else fetched once from the artifact store."""
    if (ref.path / FILES["manifest"]).exists():
        return ref.path
    folder = work_dir / "datasets" / ref.dataset_hash
    if (folder / FILES["manifest"]).exists():
        return folder
    if not ref.artifact_uri:
        raise FileNotFoundError(f"dataset {ref.dataset_hash}: no files at {ref.path} and no artifact store copy")
    import mlflow

    staging = folder.with_name(folder.name + ".download")
    shutil.rmtree(staging, ignore_errors=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.artifact_uri, dst_path=str(staging)))
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    local.replace(folder)  # whole, or not at all
    shutil.rmtree(staging, ignore_errors=True)
    return folder


def iter_examples(ref: DatasetRef, split: Split, work_dir: Path) -> Iterator[Example]:
    with open(local_folder(ref, work_dir) / f"{split}.jsonl") as f:
        for line in f:
            yield Example.model_validate_json(line)


def calibration_half(example: Example) -> bool:
    """Whether a validation example sets the out-of-scope threshold (True) or, with
    ``tune.retrain_with_validation``, joins the final training (False): by its cluster key's hash,
    so the halves never move as data grows, and paraphrases of one prompt stay on one side."""
    return int(hashlib.sha256(f"calibration:{example.key}".encode()).hexdigest()[:8], 16) % 2 == 0


def load_examples(
    ref: DatasetRef, split: Split, work_dir: Path, limit: int | None = None, seed: int = 0
) -> list[Example]:
    """A split's examples; with ``limit``, a fixed random sample of that size (the same for every caller)."""
    examples = list(iter_examples(ref, split, work_dir))
    if limit is not None and len(examples) > limit:
        examples = sorted(
            random.Random(f"{ref.dataset_hash}:{split}:{seed}").sample(examples, limit), key=lambda e: e.key
        )
    return examples


def load_labels(ref: DatasetRef, work_dir: Path) -> list[str]:
    """The label set (classification; empty for generation), in the order the model's head uses."""
    return json.loads((local_folder(ref, work_dir) / FILES["labels"]).read_text())


def file_digest(paths: list[Path]) -> str:
    """sha256 over the files' bytes in order: the dataset's id."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
