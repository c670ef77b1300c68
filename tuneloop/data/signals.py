"""Curation's preference signal (``tuneloop.data.preference``): what a supervised pair throws away.

Beside each supervised pair, curation records (generation only):

- per correction, a **preference pair** (prompt, chosen = the correction, rejected = the served
  answer). A pair whose two answers are the same after normalisation (case, punctuation, spacing) or
  whose served answer is empty teaches no preference: counted (``pairs_chosen_equals_rejected``,
  ``pairs_without_answer``) and left out; its supervised pair stays.
- per thumbs-up and per bare thumbs-down, an **unpaired example** (prompt, answer, liked or not).

They go through the supervised path's rules: the records were validated and their text normalised
and scrubbed by ``_parse`` (flows/curate.py); they join the supervised path's prompt clusters and
splits. A bare thumbs-down never shapes those clusters (the supervised pairs stay exactly what they
are without it): it joins the cluster its prompt falls into, else a cluster of bare thumbs-down.
Per cluster, duplicates collapse (counted); conflicts (one answer both liked and disliked; A chosen
over B and B over A) go to the majority, a tie to the most recent record (counted). A prompt with
only disliked answers and no correction is kept as undesirable examples for KTO and counted
(``prompts_only_disliked``); SFT and DPO have nothing to learn from it.

Streams like the rest of curation: rows wait in a scratch SQLite file, grouped on disk.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable
from itertools import groupby
from pathlib import Path
from typing import NamedTuple

from tuneloop.data.datasets import SPLITS, split_of
from tuneloop.data.dedupe import Clusterer, prompt_key
from tuneloop.data.pii import clean
from tuneloop.data.preference import PAIRS, UNPAIRED, PreferencePair, Unpaired

__all__ = ["SignalSpill"]


class _Pending(NamedTuple):
    prompt: str
    answer: str  # what the model answered (scrubbed)
    liked: bool
    chosen: str | None  # the correction, for a thumbs-down that has one
    segment: str | None


class SignalSpill:
    """Collects each page's signals while curation parses it, then resolves and splits them."""

    def __init__(self, scratch: Path, counts: Counter):
        self.path = scratch / "signals.sqlite"
        self.db = sqlite3.connect(self.path)
        self.db.execute(
            "CREATE TABLE pairs (cluster TEXT, id INTEGER, prompt TEXT, chosen TEXT, rejected TEXT, segment TEXT)"
        )
        self.db.execute(
            "CREATE TABLE unpaired (cluster TEXT, key TEXT, id INTEGER, prompt TEXT, answer TEXT, "
            "liked INTEGER, segment TEXT)"
        )
        self.counts = counts
        self.pending: dict[int, _Pending] = {}  # this page's, by feedback id
        self.corrected: set[str] = set()  # clusters with a correction (their prompt is not "only disliked")

    def note(self, row_id: int, record, prompt: str, chosen: str | None, segment: str | None) -> None:
        """A parsed record's signal: ``prompt`` cleaned, ``chosen`` the cleaned correction (None: none)."""
        answer = clean(record.output)
        if not answer:
            self.counts["pairs_without_answer" if chosen else "unpaired_without_answer"] += 1
            if not chosen:
                return
        self.pending[row_id] = _Pending(prompt, answer, record.rating == "up", chosen, segment)

    def note_bare(self, row_id: int, record) -> None:
        """A thumbs-down without a correction (never a supervised pair)."""
        prompt = clean(record.prompt)
        if not prompt:
            self.counts["unpaired_without_prompt"] += 1
            return
        self.note(row_id, record, prompt, None, clean(record.segment) if record.segment else None)

    def write_page(self, clustered: Iterable[tuple[str, int]]) -> None:
        """The page's signals, with the clusters its supervised pairs were given (``(cluster, id)``);
        the rest (bare thumbs-down) wait for their cluster until every supervised cluster is known."""
        pairs, unpaired = [], []
        for cluster, row_id in clustered:
            signal = self.pending.pop(row_id, None)
            if signal is None:
                continue
            if signal.chosen is None:
                unpaired.append(
                    (cluster, None, row_id, signal.prompt, signal.answer, int(signal.liked), signal.segment)
                )
                continue
            self.corrected.add(cluster)
            if not signal.answer:
                continue  # counted in note
            if prompt_key(signal.chosen) == prompt_key(signal.answer):
                self.counts["pairs_chosen_equals_rejected"] += 1
                continue
            pairs.append((cluster, row_id, signal.prompt, signal.chosen, signal.answer, signal.segment))
        unpaired += [
            (None, prompt_key(s.prompt), row_id, s.prompt, s.answer, int(s.liked), s.segment)
            for row_id, s in self.pending.items()
        ]
        self.pending.clear()
        self.db.executemany("INSERT INTO pairs VALUES (?, ?, ?, ?, ?, ?)", pairs)
        self.db.executemany("INSERT INTO unpaired VALUES (?, ?, ?, ?, ?, ?, ?)", unpaired)

    def finish(self, clusterer: Clusterer, folder: Path, heldout_percent: int, validation_percent: int) -> None:
        """Cluster the bare thumbs-down, resolve every cluster and write the split files into ``folder``."""
        self.db.commit()
        self._cluster_bare(clusterer)
        outputs = {
            (name, split): open(folder / name.format(split=split), "w")
            for name in (PAIRS, UNPAIRED)
            for split in SPLITS
        }
        try:
            rows = self.db.execute(
                "SELECT cluster, id, prompt, chosen, rejected, segment FROM pairs ORDER BY cluster, id"
            )
            for cluster, group in groupby(rows, key=lambda r: r[0]):
                split = split_of(cluster, heldout_percent, validation_percent)
                for pair in self._resolve_pairs(cluster, list(group)):
                    outputs[PAIRS, split].write(pair.model_dump_json() + "\n")
                    self.counts["preference_pairs"] += 1
                    self.counts[f"pairs_{split}"] += 1
            rows = self.db.execute(
                "SELECT cluster, id, prompt, answer, liked, segment FROM unpaired ORDER BY cluster, id"
            )
            for cluster, group in groupby(rows, key=lambda r: r[0]):
                split = split_of(cluster, heldout_percent, validation_percent)
                examples = self._resolve_unpaired(cluster, list(group))
                if cluster not in self.corrected and not any(e.liked for e in examples):
                    self.counts["prompts_only_disliked"] += 1
                for example in examples:
                    outputs[UNPAIRED, split].write(example.model_dump_json() + "\n")
                    self.counts["unpaired_liked" if example.liked else "unpaired_disliked"] += 1
                    self.counts[f"unpaired_{split}"] += 1
        finally:
            for f in outputs.values():
                f.close()
            self.db.close()
            self.path.unlink(missing_ok=True)

    def _cluster_bare(self, clusterer: Clusterer) -> None:
        """Each bare thumbs-down into the supervised cluster its prompt falls into, else into clusters
        of their own (in arrival order), without adding to the supervised index."""
        own = Clusterer()
        rows = self.db.execute("SELECT id, key FROM unpaired WHERE cluster IS NULL ORDER BY id").fetchall()
        for start in range(0, len(rows), 1000):
            chunk = rows[start : start + 1000]
            found = clusterer.find([key for _, key in chunk])
            alone = [key for (_, key), f in zip(chunk, found) if f is None]
            theirs = iter(own.assign(alone))
            clusters = [f if f is not None else next(theirs) for f in found]
            self.db.executemany(
                "UPDATE unpaired SET cluster = ? WHERE id = ?", [(c, row_id) for c, (row_id, _) in zip(clusters, chunk)]
            )
        self.db.commit()

    def _resolve_pairs(self, cluster: str, rows: list[tuple]) -> list[PreferencePair]:
        """Distinct (chosen, rejected) pairs; where both orders of two answers occur, the majority's
        order, a tie going to the most recent record."""
        votes: dict[tuple[str, str], list[tuple]] = {}
        for row in rows:
            votes.setdefault((row[3], row[4]), []).append(row)
        self.counts["pairs_duplicates_removed"] += len(rows) - len(votes)
        kept = []
        for (chosen, rejected), group in votes.items():
            other = votes.get((rejected, chosen))
            if other is not None:
                if (len(other), max(r[1] for r in other)) > (len(group), max(r[1] for r in group)):
                    continue  # the other order wins
                self.counts["pairs_conflicts_resolved"] += 1
            kept.append(
                PreferencePair(
                    prompt=rows[0][2],
                    chosen=chosen,
                    rejected=rejected,
                    key=cluster,
                    source_ids=[r[1] for r in group],
                    segment=group[-1][5],
                )
            )
        return kept

    def _resolve_unpaired(self, cluster: str, rows: list[tuple]) -> list[Unpaired]:
        """One example per distinct answer: liked or not by majority, a tie going to the most recent."""
        by_answer: dict[str, list[tuple]] = {}
        for row in rows:
            by_answer.setdefault(row[3], []).append(row)
        self.counts["unpaired_duplicates_removed"] += len(rows) - len(by_answer)
        examples = []
        for answer, group in by_answer.items():
            likes = sum(r[4] for r in group)
            liked = likes * 2 > len(group) or (likes * 2 == len(group) and bool(group[-1][4]))
            if 0 < likes < len(group):
                self.counts["unpaired_conflicts_resolved"] += 1
            examples.append(
                Unpaired(
                    prompt=rows[0][2],
                    answer=answer,
                    liked=liked,
                    key=cluster,
                    source_ids=[r[1] for r in group],
                    segment=group[-1][5],
                )
            )
        return examples
