"""The feedback store at its edges: changed re-imports, oversize CSV fields, request ids per kind,
a full database, and a migration killed mid-way."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.exc import SQLAlchemyError

from tuneloop.data import migrations
from tuneloop.data.feedback import FeedbackStore, forget_engines
from tuneloop.data.feedback_import import import_feedback
from tuneloop.data.records import FeedbackRecord

ROOT = Path(__file__).resolve().parent.parent


def _record(request_id: str, rating: str = "up", kind: str = "generation", **extra) -> dict:
    return {
        "request_id": request_id,
        "user_id": "u1",
        "model_version": "1",
        "kind": kind,
        "prompt": "What is Orbit?",
        "output": "A camera.",
        "rating": rating,
        **extra,
    }


def test_reimporting_a_changed_record_is_a_conflict_not_already_stored(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    first = tmp_path / "a.jsonl"
    first.write_text("".join(json.dumps(_record(f"r-{i}")) + "\n" for i in range(3)))
    assert import_feedback(store, first, "generation").stored == 3
    changed = tmp_path / "b.jsonl"
    changed.write_text(
        json.dumps(_record("r-0")) + "\n" + json.dumps(_record("r-1", "down", correction="A drone.")) + "\n"
    )
    report = import_feedback(store, changed, "generation")
    assert (report.stored, report.duplicates, report.conflicts) == (0, 1, 1)
    assert [(r.line, r.field) for r in report.rejected] == [(2, "request_id")]
    assert "different content" in report.rejected[0].reason
    assert store.get("r-1")["rating"] == "up"  # the acknowledged record is kept as it was


def test_a_csv_field_over_the_csv_limit_is_a_named_reject(tmp_path):
    import csv

    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    path = tmp_path / "big.csv"
    columns = ["request_id", "user_id", "model_version", "kind", "prompt", "output", "rating"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerow(["c-1", "u", "1", "generation", "ok", "fine", "up"])
        writer.writerow(["c-2", "u", "1", "generation", "x" * (200 * 1024), "fine", "up"])
        writer.writerow(["c-3", "u", "1", "generation", "ok", "fine", "up"])
    report = import_feedback(store, path, "generation")
    assert report.stored == 2 and store.get("c-1") and store.get("c-3") and store.get("c-2") is None
    assert [(r.line, r.field) for r in report.rejected] == [(3, "row")]
    assert "limited to" in report.rejected[0].reason


def test_request_ids_are_unique_per_kind(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    generation = FeedbackRecord(**_record("same-id"))
    classification = FeedbackRecord(**_record("same-id", kind="classification"))
    assert store.add(generation)[1] is True
    assert store.add(classification)[1] is True  # another kind's client: not a retry of the first
    assert store.add(generation)[1] is False
    assert store.get("same-id", "classification")["kind"] == "classification"
    assert store.add_many([FeedbackRecord(**_record("same-id", kind="classification"))]) == (0, 1, [])


@contextmanager
def small_disk(path: Path, size: str = "2m"):
    """A size-limited file system (tmpfs) at ``path``: a real full disk. Needs the right to mount."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here ({mounted.stderr.decode().strip()[:200]})")
    try:
        yield path
    finally:
        forget_engines()
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Take every free byte of ``path``'s file system."""
    filler = path / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_refuses_the_write_and_keeps_what_was_acknowledged(tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        store = FeedbackStore(f"sqlite:///{disk / 'f.db'}")
        acknowledged, refused = [], []
        store.add(FeedbackRecord(**_record("before")))
        filler = fill(disk)
        for i in range(400):
            try:
                store.add(FeedbackRecord(**_record(f"r-{i}", prompt="x" * 4000)))
                acknowledged.append(f"r-{i}")
            except SQLAlchemyError as err:
                assert "full" in str(err)
                refused.append(f"r-{i}")
                if len(refused) >= 3:
                    break
        assert refused, "the full disk never refused a write"
        filler.unlink()
        assert all(store.get(r) for r in ["before", *acknowledged])
        assert not any(store.get(r) for r in refused)
        assert (
            store.add(FeedbackRecord(**_record(refused[0], prompt="x" * 4000)))[1] is True
        )  # a retry once there is room


KILLER = """
import os, signal, sys
from sqlalchemy import event
from tuneloop.data.feedback import make_engine
from tuneloop.data import migrations
engine = make_engine(sys.argv[1])

@event.listens_for(engine, "before_cursor_execute")
def die(conn, cursor, statement, *args):
    if "_alembic_tmp_feedback" in statement and statement.lstrip().upper().startswith("INSERT"):
        os.kill(os.getpid(), signal.SIGKILL)  # mid-way through the table rebuild of 0005

migrations.upgrade(engine)
"""


def test_a_migration_killed_mid_way_can_be_rerun_to_completion(tmp_path):
    url = f"sqlite:///{tmp_path / 'f.db'}"
    engine = FeedbackStore(url).engine
    forget_engines()
    migrations.downgrade(engine, "0004")
    with sqlite3.connect(tmp_path / "f.db") as conn:
        conn.execute(
            "INSERT INTO feedback (request_id, kind, received_at, payload) VALUES ('kept', 'generation', "
            "'2026-01-01 00:00:00', '{\"request_id\": \"kept\"}')"
        )
    killed = subprocess.run([sys.executable, "-c", KILLER, url], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    forget_engines()
    store = FeedbackStore(url)  # opening migrates again, from where the database really is
    assert migrations.current(store.engine) == migrations.head()
    assert store.get("kept") == {"request_id": "kept"}
    assert store.add(FeedbackRecord(**_record("kept", kind="classification")))[1] is True
    with pytest.raises(SQLAlchemyError, match="immutable"), store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE feedback SET kind = 'x'")
    assert os.path.exists(tmp_path / "f.db")
