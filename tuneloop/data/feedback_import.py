"""Batch import of feedback collected elsewhere (JSONL or CSV), with the API's validation.

Every line is checked exactly as ``POST /v1/feedback`` checks a body; good records are stored in
batched transactions (idempotent on request id), bad ones are reported with their line number and
reason and not stored.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.records import FeedbackError, FeedbackRecord, parse_feedback, validate_feedback
from tuneloop.version_check import EXTERNAL_PREFIX, is_external, unknown_reason

Format = Literal["jsonl", "csv"]
OPTIONAL_CSV_FIELDS = ("correction", "segment")  # an empty cell means "not given"
EXTRA = "\x00extra"  # where csv puts cells beyond the header (no real column can be named so)


class Reject(BaseModel):
    line: int = Field(description="1-based line where the record starts.")
    field: str = Field(description="The offending field ('body' for the whole line).")
    reason: str


class ImportReport(BaseModel):
    path: str
    kind: str
    read: int = Field(0, description="Records read (blank lines skipped).")
    stored: int = Field(0, description="Newly stored records.")
    duplicates: int = Field(0, description="Valid records already stored exactly so (a re-import; not duplicated).")
    conflicts: int = Field(
        0,
        description="Records whose request id is stored with different content: not stored, "
        "and listed among the rejects (the API answers 409 to the same).",
    )
    rejected: list[Reject] = []


def _jsonl(handle: io.BufferedReader, kind: str) -> Iterator[tuple[int, FeedbackRecord | FeedbackError]]:
    for number, line in enumerate(handle, 1):
        if not line.strip():
            continue
        try:
            yield number, parse_feedback(line, kind)
        except FeedbackError as err:
            yield number, err


def _csv(handle: io.BufferedReader, kind: str) -> Iterator[tuple[int, FeedbackRecord | FeedbackError]]:
    # surrogateescape keeps reading past invalid UTF-8; the record holding it is refused on its own
    text = io.TextIOWrapper(handle, encoding="utf-8", errors="surrogateescape", newline="")
    reader = csv.DictReader(text, restkey=EXTRA)
    start = 2  # line 1 is the header
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:  # a field past csv's limit, a NUL byte: this record only is refused
            number, start = start, reader.line_num + 1
            yield (
                number,
                FeedbackError(
                    "row", f"unreadable CSV record ({err}); fields are limited to {csv.field_size_limit()} characters"
                ),
            )
            continue
        number, start = start, reader.line_num + 1
        try:
            columns = len(reader.fieldnames or [])
            if EXTRA in row:
                raise FeedbackError("row", f"{columns + len(row[EXTRA])} cells but {columns} header columns")
            data = {k: v for k, v in row.items() if v is not None and not (k in OPTIONAL_CSV_FIELDS and v == "")}
            for field, value in data.items():
                if _has_surrogate(value):
                    raise FeedbackError(field, "not valid UTF-8")
            yield number, validate_feedback(data, kind)
        except FeedbackError as err:
            yield number, err


def _has_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def import_feedback(
    store: FeedbackStore,
    path: Path,
    kind: str,
    fmt: Format | None = None,
    known_version: Callable[[str], bool | str] | None = None,
    batch: int = 1000,
    model_name: str | None = None,
) -> ImportReport:
    """Validate and store every record of a JSONL or CSV file; returns counts and the rejects.

    ``known_version`` (e.g. a registry look-up: True/"known", False/"unknown") refuses records naming a
    model version it does not know; ``external:<name>`` versions (answers from outside tuneloop) are
    never looked up. When the look-up raises (an unreachable registry), the records validated so far
    are stored and the error propagates: a rerun skips them as duplicates.
    """
    path = Path(path)
    fmt = fmt or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    known = lru_cache(maxsize=None)(known_version) if known_version else None
    report = ImportReport(path=str(path), kind=kind)
    pending: list[FeedbackRecord] = []
    numbers: list[int] = []  # the line of each pending record

    def flush() -> None:
        stored, duplicates, conflicts = store.add_many(pending)
        report.stored += stored
        report.duplicates += duplicates
        report.conflicts += len(conflicts)
        lines = {r.request_id: n for n, r in zip(numbers, pending)}
        report.rejected += [
            Reject(
                line=lines[c],
                field="request_id",
                reason=f"{c!r} is already stored with different "
                "content; not stored (use a new request id for a new record)",
            )
            for c in conflicts
        ]
        pending.clear()
        numbers.clear()

    try:
        with path.open("rb") as handle:
            for number, item in (_csv if fmt == "csv" else _jsonl)(handle, kind):
                report.read += 1
                if isinstance(item, FeedbackRecord):
                    item = _checked(item, known, model_name or f"tuneloop-{kind}")
                if isinstance(item, FeedbackError):
                    report.rejected.append(Reject(line=number, field=item.field, reason=item.message))
                    continue
                pending.append(item)
                numbers.append(number)
                if len(pending) >= batch:
                    flush()
    finally:
        flush()
    return report


def _checked(
    record: FeedbackRecord, known: Callable[[str], bool | str] | None, model_name: str
) -> FeedbackRecord | FeedbackError:
    version = record.model_version
    if version.startswith(EXTERNAL_PREFIX):
        return record if is_external(version) else FeedbackError("model_version", unknown_reason(model_name, version))
    if known is None or known(version) in (True, "known", "external"):
        return record
    return FeedbackError("model_version", unknown_reason(model_name, version))


def write_rejects(report: ImportReport, path: Path) -> None:
    """The rejects as JSON lines, for whoever fixes the source data."""
    Path(path).write_text("".join(json.dumps(r.model_dump()) + "\n" for r in report.rejected))
