"""Alias moves in the MLflow registry: serialised across processes, history complete, readers never
see a half-done promotion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tuneloop.registry.versions import aliases, move_alias, promote, restore_previous

ROOT = Path(__file__).resolve().parent.parent
NAME = "tuneloop-registry-test"

# One operator process: make a version the challenger, promote it, now and then restore the previous.
OPERATOR = """
import sys, mlflow
from mlflow import MlflowClient
from tuneloop.registry.versions import move_alias, promote, restore_previous
name, rounds, versions = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
for i in range(rounds):
    move_alias(name, "challenger", versions[i % len(versions)], f"pid {sys.argv[4]} round {i}")
    try:
        promote(name, reason=f"pid {sys.argv[4]} round {i}")
        if i % 3 == 2:
            restore_previous(name, reason=f"pid {sys.argv[4]} round {i}")
    except ValueError:  # another operator promoted or restored first: a refusal, never a corruption
        pass
"""


def _versions(n: int) -> list[str]:
    client = MlflowClient()
    client.create_registered_model(NAME)
    return [str(client.create_model_version(NAME, source=f"file:///tmp/adapter-{i}").version) for i in range(n)]


def test_promote_and_restore_move_aliases_in_order_and_keep_history(home):
    v1, v2, v3 = _versions(3)
    with pytest.raises(ValueError, match="no challenger"):
        promote(NAME)
    move_alias(NAME, "challenger", v1, "first")
    assert promote(NAME) == v1 and aliases(NAME) == {"champion": v1}
    move_alias(NAME, "challenger", v2, "second")
    assert promote(NAME) == v2 and aliases(NAME) == {"champion": v2, "previous": v1}
    assert restore_previous(NAME) == v1 and aliases(NAME) == {"champion": v1}
    with pytest.raises(ValueError, match="no previous"):
        restore_previous(NAME)
    history = json.loads(MlflowClient().get_registered_model(NAME).tags["alias_history"])
    assert [(h["alias"], h["from"], h["to"]) for h in history] == [
        ("challenger", None, v1),
        ("champion", None, v1),
        ("challenger", v1, None),
        ("challenger", None, v2),
        ("previous", None, v1),
        ("champion", v1, v2),
        ("challenger", v2, None),
        ("champion", v2, v1),
        ("previous", v1, None),
    ]
    assert all(h["by"] and h["at"] and h["reason"] for h in history)
    assert v3 not in aliases(NAME).values()


def test_concurrent_operators_lose_no_move_and_readers_always_see_a_champion(home):
    """Three processes promote and restore at once; the history chains every alias move without a
    gap (each move's ``from`` is the previous move's ``to``), and a reader polling all aliases in one
    call never sees a champion-less registry once there was a champion."""
    versions = _versions(4)
    move_alias(NAME, "challenger", versions[0], "seed")
    promote(NAME)
    stop, seen = threading.Event(), []

    def read() -> None:
        while not stop.is_set():
            seen.append(aliases(NAME))

    reader = threading.Thread(target=read)
    reader.start()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPERATOR, NAME, "6", ",".join(versions), str(i)],
            env=env,
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err[-3000:]
    finally:
        stop.set()
        reader.join()
    history = json.loads(MlflowClient().get_registered_model(NAME).tags["alias_history"])
    assert len(history) >= 3 * 6 + 2  # every operator's challenger moves at least, none lost
    last: dict[str, str | None] = {}
    for h in history:
        assert h["from"] == last.get(h["alias"]), f"a move was lost or interleaved before {h}"
        last[h["alias"]] = h["to"]
    assert {a: v for a, v in last.items() if v is not None} == aliases(NAME)
    assert seen and all("champion" in snapshot for snapshot in seen)


def test_a_registered_version_names_the_library_versions_that_trained_it(home, tmp_path):
    from importlib import metadata

    from tuneloop.config import LoopConfig
    from tuneloop.registry.versions import MODEL_REQUIREMENTS, log_adapter

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    config = LoopConfig()
    version = log_adapter(config, adapter, tags={"purpose": "requirements"})
    uri = f"models:/{config.model_name}/{version.version}"
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "m")))
    requirements = (local / "requirements.txt").read_text().split()
    pinned = {line.split("==")[0]: line.split("==")[1] for line in requirements if "==" in line}
    assert set(MODEL_REQUIREMENTS) <= set(pinned)
    assert pinned["transformers"] == metadata.version("transformers")
    assert "+" not in pinned["torch"]  # a build label would refuse the same version's CUDA build


def test_the_registry_lock_comes_from_the_callers_configuration(home):
    """A database registry locks itself; an MLflow server over HTTP needs the configuration's lock database,
    and without one an alias move refuses with the reason instead of locking on one machine only."""
    from conftest import tiny_config

    from tuneloop.data.locks import registry_lock_url

    config = tiny_config(home, "classification")
    assert registry_lock_url("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert registry_lock_url("http://mlflow.internal:5000", config) == config.feedback_db
    assert (
        registry_lock_url("http://mlflow.internal:5000", config.model_copy(update={"lock_url": "postgresql://x/locks"}))
        == "postgresql://x/locks"
    )
    with pytest.raises(ValueError, match="not a database"):
        registry_lock_url("http://mlflow.internal:5000")
