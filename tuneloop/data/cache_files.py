"""Files that several processes share on one machine: written atomically, read back defensively.

Service workers, the shadow bank, trials and the CLI all read the same caches. A cached folder is
made in a private temporary folder under a file lock, checked file by file against what its source
says it holds, given a manifest (size and SHA-256 of every file) and renamed into place in one step,
so a reader sees either nothing or a complete, verified copy. A JSON index is replaced, never
rewritten in place, and one that cannot be read (a kill mid-write by an older writer, a full disk)
is set aside and rebuilt rather than breaking every process that reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

MANIFEST = ".tuneloop-files.json"  # inside a cached folder: {relative path: {"size", "sha256"}}
log = logging.getLogger("tuneloop.cache")


class CacheError(RuntimeError):
    """A cached copy that is incomplete or does not match its source; names the file."""


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename: readers see the old or the new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path, default: Any) -> Any:
    """The JSON in ``path``; ``default`` when it is absent, and when it is unreadable (it is moved aside
    as ``<name>.corrupt`` and a warning names it, so the caller rebuilds it)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (ValueError, UnicodeDecodeError) as err:
        log.warning("%s is unreadable (%s); set aside as %s.corrupt and rebuilt", path, err, path.name)
        try:
            os.replace(path, path.with_name(path.name + ".corrupt"))
        except OSError:
            pass
        return default


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_of(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under ``folder`` (the manifest itself excluded)."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def digest_of(manifest: dict[str, dict[str, Any]]) -> str:
    """The folder's content hash: the same files give the same id wherever and whenever they were fetched."""
    return hashlib.sha256(
        json.dumps({k: v["sha256"] for k, v in manifest.items()}, sort_keys=True).encode()
    ).hexdigest()


def verified(folder: Path, full: bool = False) -> str | None:
    """The folder's content hash when its manifest is there and every file in it is present with its
    size (``full``: and its SHA-256); None for anything else (absent, partial, altered)."""
    folder = Path(folder)
    manifest = read_json(folder / MANIFEST, None) if (folder / MANIFEST).exists() else None
    if not isinstance(manifest, dict) or not manifest:
        return None
    for name, entry in manifest.items():
        path = folder / name
        try:
            if path.stat().st_size != entry["size"] or (full and _sha256(path) != entry["sha256"]):
                return None
        except (OSError, KeyError, TypeError):
            return None
    return digest_of(manifest)


def fetch_folder(
    target: Path, download: Callable[[Path], Path], expected_sizes: Callable[[], dict[str, int]] | None = None
) -> str:
    """Make ``target`` a complete, verified copy (once per machine, however many processes ask at once);
    returns its content hash.

    ``download(tmp)`` fills the private folder ``tmp`` and returns the folder of the files wanted
    (inside ``tmp``); ``expected_sizes()`` says what the source holds ({relative path: bytes}): a
    missing file or another size is a CacheError and nothing is cached.
    """
    target = Path(target)
    if (digest := verified(target)) is not None:
        return digest
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if (digest := verified(target)) is not None:  # another process finished it while this one waited
            return digest
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
        try:
            folder = Path(download(tmp))
            manifest = manifest_of(folder)
            if expected_sizes is not None:
                _check_sizes(target, manifest, expected_sizes())
            atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1))
            if target.exists():  # a partial or altered copy from before: set aside, then replaced in one rename
                stale = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
                os.replace(target, stale / "copy")
            os.replace(folder, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            for old in target.parent.glob(f".{target.name}.old-*"):
                shutil.rmtree(old, ignore_errors=True)
    return digest_of(manifest)


def _check_sizes(target: Path, manifest: dict[str, dict[str, Any]], expected: dict[str, int]) -> None:
    for name, size in expected.items():
        got = manifest.get(name, {}).get("size")
        if got != size:
            raise CacheError(
                f"{target.name}: {name} is {'missing' if got is None else f'{got} bytes'} in the "
                f"download; the source holds {size} bytes. Nothing cached."
            )
