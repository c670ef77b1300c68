"""Shared caches under concurrency and damage: adapter downloads, the base hash index, content keys."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import mlflow
import pytest
from conftest import tiny_config

from tuneloop.data.cache_files import MANIFEST, CacheError, fetch_folder, verified
from tuneloop.modeling import models
from tuneloop.registry.versions import adapter_path, log_adapter


def _adapter_folder(root: Path, content: bytes) -> Path:
    """A folder shaped like a saved LoRA adapter (the registry stores it as files; nothing here loads it)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (root / "adapter_model.safetensors").write_bytes(content)
    return root


def _register(home: Path, tracking_uri: str, content: bytes) -> str:
    mlflow.set_tracking_uri(tracking_uri)
    config = tiny_config(home, "classification")
    version = log_adapter(config, _adapter_folder(home / f"src-{len(content)}-{content[:4].hex()}", content), {})
    return str(version.version)


def test_eight_concurrent_downloads_leave_one_complete_verified_copy(home):
    weights = os.urandom(3 << 20)
    version = _register(home, mlflow.get_tracking_uri(), weights)
    cache = home / "adapters"
    barrier, paths, errors = threading.Barrier(8), [], []

    def fetch() -> None:
        barrier.wait()
        try:
            paths.append(adapter_path("tuneloop-classification", version, cache))
        except Exception as err:  # noqa: BLE001  collected: the assertion below names it
            errors.append(err)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(set(paths)) == 1
    folder = paths[0]
    assert (folder / "adapter_model.safetensors").read_bytes() == weights
    assert verified(folder, full=True) is not None
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]
    assert leftovers == [], leftovers  # no temporary folders left behind


def test_a_damaged_cached_copy_is_fetched_again(home):
    weights = os.urandom(1 << 20)
    version = _register(home, mlflow.get_tracking_uri(), weights)
    folder = adapter_path("tuneloop-classification", version, home / "adapters")
    with open(folder / "adapter_model.safetensors", "r+b") as f:
        f.truncate(1000)  # a copy cut short (a kill mid-copy, a full disk)
    assert verified(folder) is None
    again = adapter_path("tuneloop-classification", version, home / "adapters")
    assert again == folder and (again / "adapter_model.safetensors").read_bytes() == weights


def test_a_download_short_of_its_source_is_refused_and_not_cached(tmp_path):
    def download(tmp: Path) -> Path:
        (tmp / "w.bin").write_bytes(b"x" * 10)
        return tmp

    with pytest.raises(CacheError, match="w.bin is 10 bytes"):
        fetch_folder(tmp_path / "v", download, lambda: {"w.bin": 20})
    assert not (tmp_path / "v").exists() and list(tmp_path.iterdir()) == [tmp_path / ".v.lock"]


def test_a_second_mlflow_server_with_the_same_home_never_reuses_the_first_ones_version(home):
    first = _register(home, f"sqlite:///{home / 'mlflow.db'}", b"first server " * 1000)
    a = adapter_path("tuneloop-classification", first, home / "adapters")
    second = _register(home, f"sqlite:///{home / 'mlflow-other.db'}", b"second server " * 1000)
    assert first == second == "1"  # both servers call it version 1
    b = adapter_path("tuneloop-classification", second, home / "adapters")
    assert a != b
    assert (b / "adapter_model.safetensors").read_bytes() == b"second server " * 1000
    assert verified(a) != verified(b)


def test_a_truncated_hash_index_is_recovered(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELOOP_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights" * 100)
    first = models._sha256_file(weights)
    index = tmp_path / "cache" / "hashes.json"
    text = index.read_text()
    index.write_text(text[: len(text) // 2])  # what a writer killed mid-write leaves
    assert models._sha256_file(weights) == first
    assert json.loads(index.read_text())  # rewritten whole
    assert (tmp_path / "cache" / "hashes.json.corrupt").exists()


def test_a_manifest_names_every_file(tmp_path):
    folder = _adapter_folder(tmp_path / "a", b"abc")
    fetch_folder(tmp_path / "copy", lambda tmp: _adapter_folder(tmp / "x", b"abc"))
    manifest = json.loads((tmp_path / "copy" / MANIFEST).read_text())
    assert set(manifest) == {"adapter_config.json", "adapter_model.safetensors"}
    assert verified(tmp_path / "copy", full=True) is not None and verified(folder) is None
