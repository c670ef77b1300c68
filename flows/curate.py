"""Stage 1, curate: raw feedback -> a versioned train/held-out dataset, logged to MLflow.

From every record of the kind up to the newest one (the high-water mark), in arrival order:
validate (invalid records are quarantined with a reason, in the store's ``quarantine`` table);
normalise and scrub personal data (before anything leaves the store); drop bare thumbs-down (counted,
not trained on); cluster exact and near-duplicate prompts; resolve conflicting targets per cluster
(majority, else the most recent; every conflict recorded); split clusters by the hash of their
representative's key. The raw rows are never changed: the result is files under
``work/<kind>/datasets/<hash>/``, a ``curation_runs`` row (the high-water mark the trigger counts
from), an MLflow dataset with counts and a sample table, and a Prefect markdown artifact.

Each run curates the whole history up to the mark, not just the new records: the adapter is trained
from the base model every loop, and the split must stay stable as data grows. What is new since the
previous mark is what ``flows/trigger.py`` counts.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import NamedTuple

import mlflow
import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from tuneloop.config import LoopConfig
from tuneloop.dedupe import cluster_keys, normalize, prompt_key, split_of
from tuneloop.feedback import FeedbackError, FeedbackStore, validate_feedback
from tuneloop.pii import scrub

__all__ = ["CuratedData", "Example", "build_dataset", "curate", "normalize", "prompt_key", "split_of"]


class Example(BaseModel):
    prompt: str
    target: str
    key: str
    source_ids: list[int]
    segment: str | None = None
    positive: bool = False  # True when the target is a thumbs-up answer rather than a correction


class CuratedData(BaseModel):
    """A dataset version: what tune trains on and evaluate scores against."""

    kind: str
    train: list[Example]
    heldout: list[Example]
    labels: list[str]
    counts: dict[str, int]
    quarantine: list[dict]
    conflicts: list[dict] = []
    dataset_hash: str
    path: Path
    last_feedback_id: int
    curation_run_id: int | None = None


class _Usable(NamedTuple):
    id: int
    prompt: str
    target: str
    segment: str | None
    positive: bool


def clean(text: str) -> str:
    """Normalised and scrubbed (normalising first unmasks full-width and zero-width-split personal data)."""
    return normalize(scrub(normalize(text)))


def _parse(row_id: int, payload: str, kind: str, counts: Counter) -> _Usable | str | None:
    """A usable pair, a quarantine reason, or None for a valid record that is not trained on."""
    try:
        record = validate_feedback(json.loads(payload), kind)
    except FeedbackError as err:
        return str(err)
    except ValueError:
        return "body: not valid JSON"
    if record.rating == "down" and record.correction is None:
        counts["thumbs_down_without_correction"] += 1
        return None
    prompt = clean(record.prompt)
    target = clean(record.correction if record.rating == "down" else record.output)
    if not prompt or not target:
        return ("prompt" if not prompt else "target") + ": empty after cleaning"
    counts["corrections" if record.rating == "down" else "thumbs_up"] += 1
    segment = clean(record.segment) if record.segment else None
    return _Usable(row_id, prompt, target, segment, record.rating == "up")


def _resolve(items: list[_Usable], key: str, counts: Counter, conflicts: list[dict]) -> Example:
    """One example per cluster: the majority target, a tie going to the most recent record."""
    votes = Counter(item.target for item in items)
    top = max(votes.values())
    latest = next(item for item in reversed(items) if votes[item.target] == top)
    counts["duplicates_removed"] += len(items) - len(votes)
    if len(votes) > 1:
        counts["conflicts_resolved"] += 1
        counts["outvoted"] += len(items) - top
        rule = "majority" if list(votes.values()).count(top) == 1 else "most recent"
        conflicts.append({"key": key, "winner": latest.target, "rule": rule, "votes": dict(votes.most_common())})
    return Example(prompt=items[0].prompt, target=latest.target, key=key, source_ids=[i.id for i in items],
                   segment=latest.segment, positive=latest.positive)


def build_dataset(store: FeedbackStore, config: LoopConfig) -> CuratedData:
    """Validate, clean, scrub, dedupe, resolve conflicts and split every record of this kind."""
    counts: Counter[str] = Counter()
    quarantine: list[dict] = []
    usable: list[_Usable] = []
    high_water = store.high_water(config.kind)  # fixed first: records arriving meanwhile wait for the next run
    rows = store.rows(config.kind, upto_id=high_water)
    for row in rows:
        parsed = _parse(row.id, row.payload, config.kind, counts)
        if isinstance(parsed, str):
            quarantine.append({"feedback_id": row.id, "reason": parsed})
            counts["quarantined"] += 1
            counts[f"quarantined.{parsed.split(':')[0]}"] += 1
        elif parsed is not None:
            usable.append(parsed)

    keys = [prompt_key(u.prompt) for u in usable]
    representative = cluster_keys(keys)
    clusters: dict[str, list[_Usable]] = defaultdict(list)
    for item, key in zip(usable, keys):
        clusters[representative[key]].append(item)
    counts["near_duplicates"] = sum(1 for key in keys if representative[key] != key)

    conflicts: list[dict] = []
    train, heldout = [], []
    for key, items in clusters.items():
        example = _resolve(items, key, counts, conflicts)
        (heldout if split_of(key, config.heldout_percent) == "heldout" else train).append(example)
    train.sort(key=lambda e: e.key)
    heldout.sort(key=lambda e: e.key)

    labels = sorted({e.target for e in train + heldout}) if config.kind == "classification" else []
    counts.update(records=len(rows), train=len(train), heldout=len(heldout))
    content = json.dumps({name: [[e.prompt, e.target] for e in es] for name, es in (("train", train), ("heldout", heldout))})
    dataset_hash = hashlib.sha256(content.encode()).hexdigest()[:16]
    path = _write(config.work_dir / "datasets" / dataset_hash, train, heldout, quarantine, conflicts, dict(counts))
    return CuratedData(kind=config.kind, train=train, heldout=heldout, labels=labels, counts=dict(counts),
                       quarantine=quarantine, conflicts=conflicts, dataset_hash=dataset_hash, path=path,
                       last_feedback_id=high_water)


def _write(path: Path, train: list[Example], heldout: list[Example], quarantine: list[dict], conflicts: list[dict],
           counts: dict[str, int]) -> Path:
    """The derived set on disk: the training files plus what was refused and why (ids only, no text)."""
    path.mkdir(parents=True, exist_ok=True)
    for name, examples in (("train", train), ("heldout", heldout)):
        (path / f"{name}.jsonl").write_text("".join(e.model_dump_json() + "\n" for e in examples))
    (path / "quarantine.jsonl").write_text("".join(json.dumps(q) + "\n" for q in quarantine))
    (path / "conflicts.json").write_text(json.dumps(conflicts, indent=1))
    (path / "counts.json").write_text(json.dumps(counts, indent=1, sort_keys=True))
    return path


def quarantine_reasons(data: CuratedData) -> dict[str, int]:
    return dict(Counter(q["reason"] for q in data.quarantine).most_common())


def log_dataset(data: CuratedData, sample_size: int = 25) -> None:
    """The dataset, its counts and a sample a reviewer can open, on the active MLflow run.

    Everything logged here is built from the scrubbed examples; quarantined records appear by id and
    reason only, never with their text.
    """
    frame = pd.DataFrame(
        [{"split": s, "prompt": e.prompt, "target": e.target, "positive": e.positive, "segment": e.segment}
         for s, es in (("train", data.train), ("heldout", data.heldout)) for e in es]
    )
    dataset = mlflow.data.from_pandas(frame, source=str(data.path), name=f"feedback-{data.kind}",
                                      digest=data.dataset_hash, targets="target")
    mlflow.log_input(dataset, context="training")
    mlflow.log_params({"dataset_hash": data.dataset_hash, "n_train": len(data.train), "n_heldout": len(data.heldout),
                       "last_feedback_id": data.last_feedback_id})
    mlflow.log_metrics({f"curate.{k}": v for k, v in data.counts.items()})
    mlflow.log_table(frame.sample(min(len(frame), sample_size), random_state=0), "curate/sample.json")
    mlflow.log_dict({"counts": data.counts, "quarantine_reasons": quarantine_reasons(data),
                     "conflicts": data.conflicts[:200], "quarantine": data.quarantine[:1000]}, "curate/summary.json")


def summary_markdown(data: CuratedData) -> str:
    lines = [f"# Curated dataset `{data.dataset_hash}` ({data.kind})", "",
             f"Records up to feedback id {data.last_feedback_id}; files in `{data.path}`.", "",
             "| count | n |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(data.counts.items())]
    if data.quarantine:
        lines += ["", "## Quarantined (kept in the `quarantine` table)", "", "| reason | n |", "|---|---|"]
        lines += [f"| {reason} | {n} |" for reason, n in quarantine_reasons(data).items()]
    if data.conflicts:
        lines += ["", f"## Conflicts resolved: {len(data.conflicts)}", ""]
        lines += [f"- `{c['key'][:60]}`: {c['rule']} -> {c['winner'][:80]!r} (votes {list(c['votes'].values())})"
                  for c in data.conflicts[:10]]
    return "\n".join(lines)


@task(name="curate")
def curate(config: LoopConfig) -> CuratedData:
    """Build the dataset version, log it, and record which records this run used."""
    store = FeedbackStore(config.feedback_db)
    data = build_dataset(store, config)
    if not data.train or not data.heldout:
        raise ValueError(f"not enough usable feedback to train: {data.counts}")
    log_dataset(data)
    run = mlflow.active_run()
    data.curation_run_id = store.record_curation(config.kind, data.last_feedback_id, data.dataset_hash, data.counts,
                                                 data.quarantine, run.info.run_id if run else None)
    create_markdown_artifact(summary_markdown(data), key=f"curate-{data.kind}", description="Curated dataset")
    return data
