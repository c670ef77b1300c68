"""The MLflow Model Registry side: logging adapters as versions, aliases, promotion and rollback.

A version holds the LoRA adapter only (the base model is named and hashed in its tags). Aliases
``champion``, ``challenger`` and ``previous`` say what serves; moves are serialised under one lock
and every move is appended to the registered model's ``alias_history`` tag, so a reviewer sees who
moved what, when and why.
"""

from __future__ import annotations

import getpass
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from tuneloop.config import LoopConfig
from tuneloop.data.cache_files import CacheError, fetch_folder
from tuneloop.data.locks import database_lock, registry_lock_url
from tuneloop.registry.tracking import use_experiment

ALIASES = ("champion", "challenger", "previous")


SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string", "input")]), outputs=Schema([ColSpec("string")]))


MODEL_REQUIREMENTS = ("tuneloop", "peft", "transformers", "torch")


def pinned_requirements() -> list[str]:
    """The registered model's requirements at the versions that trained it (``torch==2.13.0``, not
    ``2.13.0+cpu``: a build label would refuse the same version's CUDA build on a serving GPU)."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in MODEL_REQUIREMENTS]


def log_adapter(config: LoopConfig, adapter_dir: Path, tags: dict[str, str]) -> ModelVersion:
    """Log the adapter (its folder carries the base and prompting it needs: ``tuneloop.modeling.adapters``) as
    a new version of the kind's registered model, tagged with its lineage."""
    if mlflow.active_run() is None:  # outside a loop (CLI, tests): the kind's experiment, not whichever was active
        use_experiment(config)
    info = mlflow.pyfunc.log_model(
        name="adapter",
        python_model=str(
            Path(__file__).parents[1] / "modeling" / "adapter_model.py"
        ),  # models from code: no pickled class
        artifacts={"adapter": str(adapter_dir)},
        signature=SIGNATURE,
        registered_model_name=config.model_name,
        pip_requirements=pinned_requirements(),  # explicit: MLflow's requirement inference is slow
        tags=tags,
    )
    client = MlflowClient()
    version = client.get_model_version(config.model_name, str(info.registered_model_version))
    for key, value in tags.items():
        client.set_model_version_tag(config.model_name, str(version.version), key, value)
    return version


def version_for(name: str, alias: str) -> ModelVersion | None:
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def alias_version(name: str, alias: str) -> str | None:
    """The version number an alias points to, as a string (MLflow 3 returns ints)."""
    mv = version_for(name, alias)
    return str(mv.version) if mv is not None else None


def adapter_path(name: str, version: str, cache: Path) -> Path:
    """The version's adapter folder, downloaded once into ``cache`` as a complete, verified copy.

    The folder is named by where the version's files come from (the tracking server and the version's
    source and run), not by its number: a second MLflow server using the same home has its own
    version 1, which must never be served from the first one's copy. Concurrent callers (service
    workers, the shadow bank, evaluation) wait for one download (``tuneloop.data.cache_files``)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    mv = MlflowClient().get_model_version(name, str(version))
    target = cache / name / source_key(mlflow.get_tracking_uri(), mv.source, mv.run_id)
    repo = get_artifact_repository(f"models:/{name}/{version}")
    located: dict[str, str] = {}

    def download(tmp: Path) -> Path:
        local = Path(repo.download_artifacts("", dst_path=str(tmp)))
        found = next(local.rglob("adapter_config.json"), None)
        if found is None:
            raise CacheError(f"{name} version {version} holds no adapter_config.json: not an adapter")
        located["prefix"] = found.parent.relative_to(local).as_posix()
        return found.parent

    def expected() -> dict[str, int]:
        prefix = located["prefix"].strip(".").strip("/")
        return {path[len(prefix) :].lstrip("/"): size for path, size in _remote_files(repo, prefix)}

    fetch_folder(target, download, expected)
    return target


def source_key(tracking_uri: str, source: str | None, run_id: str | None) -> str:
    """A cache folder name for one version's files: the same server and source give the same name."""
    return hashlib.sha256(f"{tracking_uri}|{source}|{run_id}".encode()).hexdigest()[:20]


def _remote_files(repo, path: str) -> list[tuple[str, int]]:
    """(path, size) of every file under ``path`` in the artifact repository, walked folder by folder."""
    files = []
    for info in repo.list_artifacts(path or None):
        if info.is_dir:
            files += _remote_files(repo, info.path)
        elif info.file_size is not None:  # a store that does not report sizes: checked by the manifest only
            files.append((info.path, info.file_size))
    return files


def aliases(name: str) -> dict[str, str]:
    """Every alias of the model and its version, read in one call: a consistent view for a reader.

    An unregistered model has none; any other registry error is raised, so that a service keeps what
    it serves rather than taking an outage for "no versions".
    """
    try:
        model = MlflowClient().get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: str(version) for alias, version in model.aliases.items()}


Moves = list[tuple[str, str | None]]


def move_aliases(
    name: str, moves: Moves | Callable[[dict[str, str]], Moves], reason: str, config: LoopConfig | None = None
) -> dict[str, str]:
    """Apply ``(alias, version or None to remove)`` moves in order as one step; returns the aliases after.

    ``moves`` may be a function of the aliases before, so a decision and its moves see the same state.
    MLflow has no multi-alias transaction, so every writer's moves are serialised under one registry
    lock (no interleaving, no lost history entry), and callers order them so that each state in
    between still routes every user to a valid version (readers read all aliases at once). ``config``
    names the lock database when the registry is an MLflow server over HTTP (``registry_lock_url``).
    """
    client = MlflowClient()
    with database_lock(registry_lock_url(mlflow.get_tracking_uri(), config), f"mlflow-aliases:{name}"):
        model = client.get_registered_model(name)  # its aliases and history: only writers under this lock change them
        current = {alias: str(version) for alias, version in model.aliases.items()}
        entries, stamp = [], datetime.now(UTC).isoformat(timespec="seconds")
        for alias, version in moves(dict(current)) if callable(moves) else moves:
            before = current.get(alias)
            if version is None:
                if before is not None:
                    client.delete_registered_model_alias(name, alias)
                    current.pop(alias)
            else:
                client.set_registered_model_alias(name, alias, version)
                current[alias] = version
            entries.append(
                {"at": stamp, "by": getpass.getuser(), "alias": alias, "from": before, "to": version, "reason": reason}
            )
        history = json.loads(model.tags.get("alias_history", "[]")) + entries
        client.set_registered_model_tag(name, "alias_history", json.dumps(history[-200:]))
    return current


def move_alias(name: str, alias: str, version: str | None, reason: str, config: LoopConfig | None = None) -> None:
    """Point (or with ``version=None`` remove) one alias, recording the move in the model's history."""
    move_aliases(name, [(alias, version)], reason, config)


def promote(
    name: str, reason: str = "promoted by operator", expected: str | None = None, config: LoopConfig | None = None
) -> str:
    """challenger -> champion, the old champion -> previous. Returns the new champion's version.

    With ``expected``, only when the challenger is still that version (checked under the alias lock,
    so a challenger registered meanwhile is never promoted by a decision about its predecessor).
    The order serves readers between the moves: ``previous`` first (it routes nothing), then the
    champion (users on either side now get the challenger), then the challenger alias goes.
    """

    def plan(current: dict[str, str]) -> Moves:
        if "challenger" not in current:
            raise ValueError(f"{name} has no challenger to promote")
        if expected is not None and current["challenger"] != str(expected):
            raise ValueError(
                f"expected_version: the challenger of {name} is version {current['challenger']}, not "
                f"{expected}; promote refused (look again, then promote the version you mean)"
            )
        keep = [("previous", current["champion"])] if "champion" in current else []
        return keep + [("champion", current["challenger"]), ("challenger", None)]

    return move_aliases(name, plan, reason, config)["champion"]


def restore_previous(name: str, reason: str = "rolled back by operator", config: LoopConfig | None = None) -> str:
    """champion -> previous's version; the rolled-back version loses the champion alias."""

    def plan(current: dict[str, str]) -> Moves:
        if "previous" not in current:
            raise ValueError(f"{name} has no previous champion to roll back to")
        return [("champion", current["previous"]), ("previous", None)]

    return move_aliases(name, plan, reason, config)["champion"]
