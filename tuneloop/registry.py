"""The MLflow Model Registry side: logging adapters as versions, aliases, promotion and rollback.

A version holds the LoRA adapter only (the base model is named and hashed in its tags). Aliases
``champion``, ``challenger`` and ``previous`` say what serves; every move is appended to the
registered model's ``alias_history`` tag so a reviewer sees who moved what, when and why.
"""

from __future__ import annotations

import getpass
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from tuneloop.config import LoopConfig

ALIASES = ("champion", "challenger", "previous")


SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string", "input")]), outputs=Schema([ColSpec("string")]))


def log_adapter(config: LoopConfig, adapter_dir: Path, tags: dict[str, str]) -> ModelVersion:
    """Log the adapter as a new version of the kind's registered model, tagged with its lineage."""
    (Path(adapter_dir) / "tuneloop.json").write_text(
        json.dumps({"kind": config.kind, "tiny": config.tiny, "max_new_tokens": config.max_new_tokens})
    )
    info = mlflow.pyfunc.log_model(
        name="adapter",
        python_model=str(Path(__file__).with_name("adapter_model.py")),  # models from code: no pickled class
        artifacts={"adapter": str(adapter_dir)},
        signature=SIGNATURE,
        registered_model_name=config.model_name,
        pip_requirements=["tuneloop", "peft", "transformers", "torch"],  # skip slow requirement inference
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
    """The version's adapter folder, downloaded once into ``cache``."""
    target = cache / name / str(version)
    if not (target / "adapter_config.json").exists():
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(tmp)))
        found = next(local.rglob("adapter_config.json")).parent
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(found), str(target))
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def move_alias(name: str, alias: str, version: str | None, reason: str) -> None:
    """Point (or with ``version=None`` remove) an alias, recording the move in the model's history."""
    client = MlflowClient()
    before = alias_version(name, alias)
    if version is None:
        if before is not None:
            client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, version)
    model = client.get_registered_model(name)
    history = json.loads(model.tags.get("alias_history", "[]"))
    history.append({
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "by": getpass.getuser(), "alias": alias,
        "from": before, "to": version, "reason": reason,
    })
    client.set_registered_model_tag(name, "alias_history", json.dumps(history[-200:]))


def promote(name: str, reason: str = "promoted by operator") -> str:
    """challenger -> champion, the old champion -> previous. Returns the new champion's version."""
    challenger = alias_version(name, "challenger")
    if challenger is None:
        raise ValueError(f"{name} has no challenger to promote")
    champion = alias_version(name, "champion")
    if champion is not None:
        move_alias(name, "previous", champion, reason)
    move_alias(name, "champion", challenger, reason)
    move_alias(name, "challenger", None, reason)
    return challenger


def restore_previous(name: str, reason: str = "rolled back by operator") -> str:
    """champion -> previous's version; the rolled-back version loses the champion alias."""
    previous = alias_version(name, "previous")
    if previous is None:
        raise ValueError(f"{name} has no previous champion to roll back to")
    move_alias(name, "champion", previous, reason)
    move_alias(name, "previous", None, reason)
    return previous
