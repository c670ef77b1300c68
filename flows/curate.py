"""Stage 1, curate: raw feedback -> a versioned train/validation/held-out dataset, logged to MLflow.

From every record of the kind up to the newest one (the high-water mark), in arrival order:
validate (invalid records are quarantined with a reason, in the store's ``quarantine`` table);
normalise and scrub personal data (before anything leaves the store); bare thumbs-down (counted) make
no supervised pair; cluster exact and near-duplicate prompts; resolve conflicting targets per cluster
(majority, else the most recent; every conflict recorded); split clusters by the hash of their
representative's key. The raw rows are never changed. For generation, the preference signal the
supervised pairs leave out (the rejected answer of each correction, every thumbs-up and bare
thumbs-down) goes through the same rules into files of its own (``tuneloop/data/signals.py``).

It streams: rows come from the store a page at a time, each page is parsed and clustered, and its
usable pairs go to a scratch SQLite file; a second pass reads them back grouped by cluster (SQLite
sorts on disk) and writes the split files. Memory holds one page, the cluster index and the
per-label counts, never every row or every MinHash.

The result is a ``DatasetRef``: files under ``work/<kind>/datasets/<hash>/`` and the same files as
artifacts of the loop's MLflow run, a ``curation_runs`` row (the high-water mark the trigger counts
from), an MLflow dataset input with counts and a sample table, and a Prefect markdown artifact.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path
from typing import NamedTuple

import mlflow
from prefect import task
from prefect.artifacts import create_markdown_artifact

from tuneloop.config import LoopConfig
from tuneloop.data.datasets import FILES, SPLITS, DatasetRef, Example, file_digest, split_of
from tuneloop.data.dedupe import Clusterer, prompt_key
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.pii import clean as scrub_clean
from tuneloop.data.preference import signal_files
from tuneloop.data.records import FeedbackError, validate_feedback
from tuneloop.data.signals import SignalSpill
from tuneloop.version_check import is_external

__all__ = ["DatasetError", "build_dataset", "curate", "clean"]


class DatasetError(ValueError):
    """The feedback cannot make a dataset the loop can train and judge on; says what to change."""


class _Usable(NamedTuple):
    id: int
    prompt: str
    target: str
    segment: str | None
    positive: bool


def clean(text: str) -> str:
    """Normalised and scrubbed (normalising first unmasks full-width and zero-width-split personal data)."""
    return scrub_clean(text)


def _parse(
    row_id: int, payload: str, kind: str, counts: Counter, signals: SignalSpill | None = None
) -> _Usable | str | None:
    """A usable pair, a quarantine reason, or None for a valid record that makes no supervised pair;
    ``signals`` gets the record's preference signal."""
    try:
        record = validate_feedback(json.loads(payload), kind)
    except FeedbackError as err:
        return str(err)
    except ValueError:
        return "body: not valid JSON"
    if is_external(record.model_version):  # lineage: answers of a hosted model or another system
        counts["source.external"] += 1
    if record.rating == "down" and record.correction is None:
        counts["thumbs_down_without_correction"] += 1
        if signals is not None:
            signals.note_bare(row_id, record)
        return None
    prompt = clean(record.prompt)
    target = clean(record.correction if record.rating == "down" else record.output)
    if not prompt or not target:
        return ("prompt" if not prompt else "target") + ": empty after cleaning"
    counts["corrections" if record.rating == "down" else "thumbs_up"] += 1
    segment = clean(record.segment) if record.segment else None
    if signals is not None:
        signals.note(row_id, record, prompt, target if record.rating == "down" else None, segment)
    return _Usable(row_id, prompt, target, segment, record.rating == "up")


def _resolve(items: list[_Usable], key: str, counts: Counter, conflicts) -> Example:
    """One example per cluster: the majority target, a tie going to the most recent record."""
    votes = Counter(item.target for item in items)
    top = max(votes.values())
    latest = next(item for item in reversed(items) if votes[item.target] == top)
    counts["duplicates_removed"] += len(items) - len(votes)
    if len(votes) > 1:
        counts["conflicts_resolved"] += 1
        counts["outvoted"] += len(items) - top
        rule = "majority" if list(votes.values()).count(top) == 1 else "most recent"
        conflicts.write(
            json.dumps(
                {"key": key, "winner": latest.target, "rule": rule, "votes": dict(votes.most_common())},
                ensure_ascii=False,
            )
            + "\n"
        )
    return Example(
        prompt=items[0].prompt,
        target=latest.target,
        key=key,
        source_ids=[i.id for i in items],
        segment=latest.segment,
        positive=latest.positive,
    )


def _spill(
    store: FeedbackStore,
    config: LoopConfig,
    high_water: int,
    scratch: Path,
    counts: Counter,
    signals: SignalSpill | None = None,
) -> tuple[sqlite3.Connection, Clusterer]:
    """Pass 1: every usable pair with its cluster key into a scratch database; quarantine to a file."""
    db = sqlite3.connect(scratch / "pairs.sqlite")
    db.execute(
        "CREATE TABLE pairs (cluster TEXT, id INTEGER, prompt TEXT, target TEXT, segment TEXT, positive INTEGER)"
    )
    clusterer = Clusterer()
    with open(scratch / "quarantine.jsonl", "w") as quarantine:
        for page in store.iter_rows(config.kind, upto_id=high_water):
            counts["records"] += len(page)
            for row in page:  # lineage: how the records came (api: receipt verified; import: an operator's import)
                counts[f"source.{row.source or 'unrecorded'}"] += 1
            usable: list[_Usable] = []
            for row in page:
                parsed = _parse(row.id, row.payload, config.kind, counts, signals)
                if isinstance(parsed, str):
                    quarantine.write(json.dumps({"feedback_id": row.id, "reason": parsed}) + "\n")
                    counts["quarantined"] += 1
                    counts[f"quarantined.{parsed.split(':')[0]}"] += 1
                elif parsed is not None:
                    usable.append(parsed)
            keys = [prompt_key(u.prompt) for u in usable]
            clusters = clusterer.assign(keys)
            counts["near_duplicates"] += sum(c != k for c, k in zip(clusters, keys))
            db.executemany(
                "INSERT INTO pairs VALUES (?, ?, ?, ?, ?, ?)",
                [(c, u.id, u.prompt, u.target, u.segment, int(u.positive)) for c, u in zip(clusters, usable)],
            )
            if signals is not None:
                signals.write_page((c, u.id) for c, u in zip(clusters, usable))
    db.commit()
    return db, clusterer


def _clusters(db: sqlite3.Connection) -> Iterator[tuple[str, list[_Usable]]]:
    """Pass 2: each cluster's pairs in arrival order, clusters in key order (sorted on disk by SQLite)."""
    rows = db.execute("SELECT cluster, id, prompt, target, segment, positive FROM pairs ORDER BY cluster, id")
    for key, group in groupby(rows, key=lambda r: r[0]):
        yield key, [_Usable(r[1], r[2], r[3], r[4], bool(r[5])) for r in group]


def build_dataset(store: FeedbackStore, config: LoopConfig, check: bool = True) -> DatasetRef:
    """Validate, clean, scrub, dedupe, resolve conflicts and split every record of this kind, streaming.

    ``check`` refuses (DatasetError) data the loop could not train and judge on; without it the
    splits are written as they fall (a look at curation alone).
    """
    counts: Counter[str] = Counter()
    label_counts: dict[str, Counter] = {split: Counter() for split in SPLITS}
    high_water = store.high_water(config.kind)  # fixed first: records arriving meanwhile wait for the next run
    root = config.work_dir / "datasets"
    scratch = root / f".building-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    try:
        signals = SignalSpill(scratch, counts) if config.kind == "generation" else None
        db, clusterer = _spill(store, config, high_water, scratch, counts, signals)
        outputs = {split: open(scratch / f"{split}.jsonl", "w") for split in SPLITS}
        with open(scratch / "conflicts.jsonl", "w") as conflicts:
            for key, items in _clusters(db):
                example = _resolve(items, key, counts, conflicts)
                split = split_of(key, config.heldout_percent, config.validation_percent)
                outputs[split].write(example.model_dump_json() + "\n")
                counts[split] += 1
                label_counts[split][example.target] += 1
        for f in outputs.values():
            f.close()
        db.close()
        (scratch / "pairs.sqlite").unlink()
        if signals is not None:
            signals.finish(clusterer, scratch, config.heldout_percent, config.validation_percent)
        labels = (
            _check_splits(config, scratch, counts, label_counts)
            if check
            else sorted(set().union(*label_counts.values()))
            if config.kind == "classification"
            else []
        )
        (scratch / FILES["labels"]).write_text(json.dumps(labels))
        (scratch / FILES["counts"]).write_text(json.dumps(dict(counts), indent=1, sort_keys=True))
        dataset_hash = file_digest(
            [scratch / f"{s}.jsonl" for s in SPLITS]
            + [scratch / FILES["labels"]]
            + [scratch / name for name in signal_files() if (scratch / name).exists()]
        )
        ref = DatasetRef(
            kind=config.kind,
            dataset_hash=dataset_hash,
            path=root / dataset_hash,
            counts=dict(counts),
            n_labels=len(labels),
            last_feedback_id=high_water,
        )
        (scratch / FILES["manifest"]).write_text(ref.model_dump_json(indent=1))
        if not (ref.path / FILES["manifest"]).exists():
            shutil.rmtree(ref.path, ignore_errors=True)
            scratch.replace(ref.path)
        else:  # the same examples again: keep the files, refresh what this run saw around them
            for name in ("quarantine.jsonl", "conflicts.jsonl", FILES["counts"], FILES["manifest"]):
                (scratch / name).replace(ref.path / name)
        return ref
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _check_splits(config: LoopConfig, folder: Path, counts: Counter, label_counts: dict[str, Counter]) -> list[str]:
    """Refuse data the loop cannot train and judge on, naming the problem and the setting to change;
    with ``rare_labels=drop``, leave out labels without enough examples (counted) and return the labels."""
    _require_every_split(config, counts)
    total = sum((label_counts[s] for s in SPLITS), Counter())
    if config.kind != "classification":
        _count_phrasings(total, label_counts["train"], counts)
        return []
    dropped = _apply_rare_label_policy(config, folder, counts, _rare_labels(total, label_counts))
    if dropped:
        for split, kept in _drop_labels(folder, dropped).items():
            counts[split] = kept
        counts["labels_dropped"] = len(dropped)
    labels = sorted(set(total) - dropped)
    counts["labels"] = len(labels)
    if len(labels) < 2:
        raise DatasetError(f"a classifier needs at least 2 labels with enough examples; have {_names(labels)}")
    return labels


def _require_every_split(config: LoopConfig, counts: Counter) -> None:
    """Refuse (DatasetError) a split without examples, naming the split settings to change."""
    sizes = {split: counts[split] for split in SPLITS}
    if min(sizes.values()) == 0:
        raise DatasetError(
            f"not enough usable feedback to split: {sum(sizes.values())} distinct prompts gave train {sizes['train']}, "
            f"validation {sizes['validation']}, held-out {sizes['heldout']}; each split needs at least one example. "
            f"Collect more feedback, or change TUNELOOP_HELDOUT_PERCENT ({config.heldout_percent}) / "
            f"TUNELOOP_VALIDATION_PERCENT ({config.validation_percent})."
        )


# why each kind of rare label cannot be both learned and judged, keyed as in rare_labels.json
_RARE_WHY = {
    "once": "seen only once (one example cannot be both learned and evaluated)",
    "no_heldout": "without any held-out example (the gate could not judge them)",
    "no_train": "without any training example",
}


def _rare_labels(total: Counter, label_counts: dict[str, Counter]) -> dict[str, list[str]]:
    """Classification labels without enough examples, sorted, by problem (``_RARE_WHY``'s keys): seen once,
    or (seen more often) with no held-out example, or no training example. Empty lists when none."""
    once = sorted(label for label, n in total.items() if n < 2)
    unjudged = sorted(label for label in total if label not in once and not label_counts["heldout"][label])
    untrained = sorted(label for label in total if label not in once and not label_counts["train"][label])
    return {"once": once, "no_heldout": unjudged, "no_train": untrained}


def _apply_rare_label_policy(
    config: LoopConfig, folder: Path, counts: Counter, found: dict[str, list[str]]
) -> set[str]:
    """What ``rare_labels`` does with the labels ``_rare_labels`` found: ``error`` refuses (DatasetError);
    ``keep`` and ``drop`` record them in ``rare_labels.json`` and warn, ``keep`` counting the labels the
    gate cannot judge. The labels to drop from the splits (none unless ``drop``)."""
    rare = set().union(*found.values())
    if not rare:
        return set()
    detail = "; ".join(
        f"{len(labels)} label(s) {_names(labels)} {_RARE_WHY[key]}" for key, labels in found.items() if labels
    )
    if config.rare_labels == "error":
        raise DatasetError(
            f"{detail}. Collect more feedback for them, or set TUNELOOP_RARE_LABELS=keep (train them, "
            "listed as not judged) or drop (leave them out of this loop)."
        )
    (folder / "rare_labels.json").write_text(json.dumps({"policy": config.rare_labels, "detail": detail, **found}))
    _warn(
        f"{detail}. TUNELOOP_RARE_LABELS={config.rare_labels}: "
        + (
            "they are trained but the gate cannot judge them."
            if config.rare_labels == "keep"
            else "they are left out of this loop."
        )
    )
    if config.rare_labels == "keep":
        counts["labels_unjudged"] = len(set(found["once"]) | set(found["no_heldout"]))
        return set()
    return rare


def _drop_labels(folder: Path, labels: set[str]) -> dict[str, int]:
    """Rewrite each split file in ``folder`` without the examples whose target is in ``labels``; the
    examples each split keeps."""
    kept_per_split = {}
    for split in SPLITS:
        path, kept = folder / f"{split}.jsonl", 0
        with open(path) as source, open(path.with_suffix(".kept"), "w") as out:
            for line in source:
                if json.loads(line)["target"] not in labels:
                    out.write(line)
                    kept += 1
        path.with_suffix(".kept").replace(path)  # the split file is replaced only once its copy is complete
        kept_per_split[split] = kept
    return kept_per_split


def _count_phrasings(total: Counter, train: Counter, counts: Counter) -> None:
    """Generation: how many distinct answers the data holds, how many come with one phrasing only, and
    how many have none in the train split (every phrasing held out: the loop cannot learn them now)."""
    counts["answers"] = len(total)
    counts["answers_one_phrasing"] = sum(n == 1 for n in total.values())
    counts["answers_untrained"] = sum(not train[answer] for answer in total)
    if counts["answers_untrained"]:
        _warn(
            f"{counts['answers_untrained']} of {len(total)} distinct answers have no phrasing in the train split "
            f"({counts['answers_one_phrasing']} come with one phrasing only, which the split may hold out for the "
            "gate): this loop cannot learn them; more phrasings of the same questions teach them"
        )


def _warn(message: str) -> None:
    """To the Prefect run's log when there is one (the UI shows it), else to the module's logger."""
    try:
        from prefect import get_run_logger

        get_run_logger().warning(message)
    except Exception:  # noqa: BLE001  outside a Prefect run
        logging.getLogger(__name__).warning(message)


def _names(labels: list[str], shown: int = 8) -> str:
    return ", ".join(repr(label) for label in labels[:shown]) + (
        f" and {len(labels) - shown} more" if len(labels) > shown else ""
    )


def _sample(ref: DatasetRef, n: int) -> list[dict]:
    """The first ``n`` examples of each split in key order (keys are hashes of text: an arbitrary, stable sample)."""
    rows = []
    for split in SPLITS:
        with open(ref.path / f"{split}.jsonl") as f:
            for _, line in zip(range(n), f):
                e = json.loads(line)
                rows.append(
                    {
                        "split": split,
                        "prompt": e["prompt"],
                        "target": e["target"],
                        "positive": e["positive"],
                        "segment": e["segment"],
                    }
                )
    return rows


def log_dataset(ref: DatasetRef, sample_size: int = 10) -> DatasetRef:
    """The dataset's files as artifacts of the active run (so any machine can fetch them), its
    lineage input, counts and a sample a reviewer can open. Built from scrubbed examples only;
    quarantined records appear by id and reason, never with their text."""
    import pandas as pd
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, Schema

    mlflow.log_artifacts(str(ref.path), "dataset")
    ref = ref.model_copy(update={"artifact_uri": mlflow.get_artifact_uri("dataset")})
    try:
        source = resolve_dataset_source(ref.artifact_uri)
    except Exception:  # noqa: BLE001  a scheme MLflow has no dataset source for: point at the local copy
        source = resolve_dataset_source(str(ref.path))
    schema = Schema(
        [
            ColSpec("string", "prompt"),
            ColSpec("string", "target"),
            ColSpec("string", "segment"),
            ColSpec("boolean", "positive"),
        ]
    )
    mlflow.log_input(
        MetaDataset(source, name=f"feedback-{ref.kind}", digest=ref.dataset_hash, schema=schema), context="training"
    )
    mlflow.log_params(
        {
            "dataset_hash": ref.dataset_hash,
            "last_feedback_id": ref.last_feedback_id,
            "imported_records": ref.counts.get("source.import", 0),
            **{f"n_{split}": n for split, n in ref.sizes.items()},
            "n_labels": ref.n_labels,
        }
    )
    mlflow.log_metrics({f"curate.{k}": v for k, v in ref.counts.items()})
    mlflow.log_table(pd.DataFrame(_sample(ref, sample_size)), "curate/sample.json")
    quarantine = [json.loads(line) for line in _lines(ref.path / "quarantine.jsonl")]
    conflicts = [json.loads(line) for _, line in zip(range(200), _lines(ref.path / "conflicts.jsonl"))]
    mlflow.log_dict(
        {
            "counts": ref.counts,
            "quarantine_reasons": dict(Counter(q["reason"] for q in quarantine).most_common()),
            "conflicts": conflicts,
            "quarantine": quarantine[:1000],
        },
        "curate/summary.json",
    )
    return ref


def summary_markdown(ref: DatasetRef) -> str:
    lines = [
        f"# Curated dataset `{ref.dataset_hash}` ({ref.kind})",
        "",
        f"Records up to feedback id {ref.last_feedback_id}; files in `{ref.path}`"
        + (f" and `{ref.artifact_uri}`." if ref.artifact_uri else "."),
        "",
        "| count | n |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in sorted(ref.counts.items())]
    quarantine = Counter(json.loads(line)["reason"] for line in _lines(ref.path / "quarantine.jsonl"))
    if quarantine:
        lines += ["", "## Quarantined (kept in the `quarantine` table)", "", "| reason | n |", "|---|---|"]
        lines += [f"| {reason} | {n} |" for reason, n in quarantine.most_common(20)]
    conflicts = [json.loads(line) for _, line in zip(range(10), _lines(ref.path / "conflicts.jsonl"))]
    if conflicts:
        lines += ["", f"## Conflicts resolved: {ref.counts.get('conflicts_resolved', 0)}", ""]
        lines += [
            f"- `{c['key'][:60]}`: {c['rule']} -> {c['winner'][:80]!r} (votes {list(c['votes'].values())})"
            for c in conflicts
        ]
    rare = ref.path / "rare_labels.json"
    if rare.exists():
        lines += [
            "",
            f"## Rare labels ({json.loads(rare.read_text())['policy']})",
            "",
            json.loads(rare.read_text())["detail"],
        ]
    return "\n".join(lines)


def _lines(path: Path) -> Iterator[str]:
    if path.exists():
        with open(path) as f:
            yield from f


@task(name="curate")
def curate(config: LoopConfig) -> DatasetRef:
    """Build the dataset version, log it, and record which records this run used."""
    store = FeedbackStore(config.feedback_db)
    ref = log_dataset(build_dataset(store, config))
    run = mlflow.active_run()
    quarantine = (json.loads(line) for line in _lines(ref.path / "quarantine.jsonl"))
    ref.curation_run_id = store.record_curation(
        config.kind, ref.last_feedback_id, ref.dataset_hash, ref.counts, quarantine, run.info.run_id if run else None
    )
    create_markdown_artifact(summary_markdown(ref), key=f"curate-{ref.kind}", description="Curated dataset")
    return ref
