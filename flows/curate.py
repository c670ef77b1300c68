"""Stage 1, curate: raw feedback -> a versioned train/held-out dataset, logged to MLflow."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

import mlflow
import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ValidationError

from tuneloop.config import LoopConfig
from tuneloop.feedback import FeedbackRecord, FeedbackStore
from tuneloop.pii import scrub


class Example(BaseModel):
    prompt: str
    target: str
    key: str
    source_ids: list[int]
    segment: str | None = None


class CuratedData(BaseModel):
    """A dataset version: what tune trains on and evaluate scores against."""

    kind: str
    train: list[Example]
    heldout: list[Example]
    labels: list[str]
    counts: dict[str, int]
    quarantine: list[dict]
    dataset_hash: str
    path: Path
    last_feedback_id: int


def normalize(text: str) -> str:
    """Unicode NFKC and single spaces: what the model sees."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def prompt_key(prompt: str) -> str:
    """Case-, punctuation- and spacing-blind key: near-duplicate prompts share it (and its split)."""
    return " ".join(re.sub(r"[^\w\s]", " ", prompt.casefold()).split())


def split_of(key: str, heldout_percent: int) -> str:
    """Stable by construction: a prompt's side depends on its key alone, never on what else arrived."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100
    return "heldout" if bucket < heldout_percent else "train"


def _validate(payload: str, kind: str) -> FeedbackRecord | str:
    try:
        return FeedbackRecord.model_validate({"kind": kind, **json.loads(payload)})
    except json.JSONDecodeError as err:
        return f"not JSON: {err.msg}"
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or first["msg"].split(":")[0]
        return f"{field}: {first['msg']}"


def build_dataset(store: FeedbackStore, config: LoopConfig) -> CuratedData:
    """Validate, clean, scrub, dedupe, resolve conflicts and split every record of this kind."""
    counts: Counter[str] = Counter()
    quarantine: list[dict] = []
    groups: dict[str, list[tuple[int, str, str, str | None]]] = defaultdict(list)
    rows = store.rows(config.kind)
    for row in rows:
        record = _validate(row.payload, config.kind)
        if isinstance(record, str):
            quarantine.append({"feedback_id": row.id, "reason": record})
            counts["quarantined"] += 1
            continue
        prompt = normalize(scrub(record.prompt))
        if record.rating == "down" and record.correction is None:
            counts["thumbs_down_without_correction"] += 1
            continue
        target = normalize(scrub(record.correction if record.rating == "down" else record.output))
        if not prompt or not target:
            quarantine.append({"feedback_id": row.id, "reason": "empty after cleaning"})
            counts["quarantined"] += 1
            continue
        counts["corrections" if record.rating == "down" else "thumbs_up"] += 1
        groups[prompt_key(prompt)].append((row.id, prompt, target, record.segment))

    train, heldout = [], []
    for key, items in groups.items():
        votes = Counter(target for _, _, target, _ in items)
        top = max(votes.values())
        # majority wins; a tie goes to the most recent record
        winner = next(t for _, _, t, _ in reversed(items) if votes[t] == top)
        counts["duplicates_removed"] += len(items) - len(votes)
        if len(votes) > 1:
            counts["conflicts_resolved"] += 1
        latest = next(item for item in reversed(items) if item[2] == winner)
        example = Example(prompt=latest[1], target=winner, key=key, source_ids=[i for i, *_ in items], segment=latest[3])
        (heldout if split_of(key, config.heldout_percent) == "heldout" else train).append(example)

    train.sort(key=lambda e: e.key)
    heldout.sort(key=lambda e: e.key)
    labels = sorted({e.target for e in train + heldout}) if config.kind == "classification" else []
    counts.update(records=len(rows), train=len(train), heldout=len(heldout))
    content = json.dumps({name: [[e.prompt, e.target] for e in es] for name, es in (("train", train), ("heldout", heldout))})
    dataset_hash = hashlib.sha256(content.encode()).hexdigest()[:16]
    path = config.work_dir / "datasets" / dataset_hash
    path.mkdir(parents=True, exist_ok=True)
    for name, examples in (("train", train), ("heldout", heldout)):
        (path / f"{name}.jsonl").write_text("".join(e.model_dump_json() + "\n" for e in examples))
    (path / "quarantine.jsonl").write_text("".join(json.dumps(q) + "\n" for q in quarantine))
    return CuratedData(
        kind=config.kind, train=train, heldout=heldout, labels=labels, counts=dict(counts), quarantine=quarantine,
        dataset_hash=dataset_hash, path=path, last_feedback_id=rows[-1].id if rows else 0,
    )


def log_dataset(data: CuratedData) -> None:
    """The dataset, its counts and a sample a reviewer can open, on the active MLflow run."""
    frame = pd.DataFrame(
        [{"split": s, "prompt": e.prompt, "target": e.target} for s, es in (("train", data.train), ("heldout", data.heldout)) for e in es]
    )
    dataset = mlflow.data.from_pandas(frame, name=f"feedback-{data.kind}", digest=data.dataset_hash, targets="target")
    mlflow.log_input(dataset, context="training")
    mlflow.log_params({"dataset_hash": data.dataset_hash, "n_train": len(data.train), "n_heldout": len(data.heldout)})
    mlflow.log_metrics({f"curate.{k}": v for k, v in data.counts.items()})
    mlflow.log_table(frame.sample(min(len(frame), 25), random_state=0), "curate/sample.json")
    mlflow.log_dict({"counts": data.counts, "quarantine": data.quarantine}, "curate/summary.json")


def summary_markdown(data: CuratedData) -> str:
    lines = [f"# Curated dataset `{data.dataset_hash}` ({data.kind})", "", "| count | n |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(data.counts.items())]
    reasons = Counter(q["reason"] for q in data.quarantine)
    if reasons:
        lines += ["", "Quarantined:", *[f"- {r}: {n}" for r, n in reasons.most_common()]]
    return "\n".join(lines)


@task(name="curate")
def curate(config: LoopConfig) -> CuratedData:
    data = build_dataset(FeedbackStore(config.feedback_db), config)
    if not data.train or not data.heldout:
        raise ValueError(f"not enough usable feedback to train: {data.counts}")
    log_dataset(data)
    create_markdown_artifact(summary_markdown(data), key=f"curate-{data.kind}", description="Curated dataset")
    return data
