"""Secrets stay secret: URL passwords redacted wherever a config is serialised (MLflow artifacts,
Prefect parameters, logs) and restored from the receiving process's environment; secret files
0600; a checkpoint that carries pickled code is refused without running it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tuneloop.config import LoopConfig
from tuneloop.credentials import ensure_secret, read_secret, redact, redact_text, restore_password

PASSWORD = "s3cr%40t-Pa55"  # percent-encoded '@' inside, as URL syntax requires
FEEDBACK = f"postgresql+psycopg://loop:{PASSWORD}@db.example:5432/tuneloop_ops"
OPTUNA = f"postgresql+psycopg://loop:{PASSWORD}@db.example:5432/tuneloop_optuna"


def test_redaction_hides_every_url_password_and_keeps_the_rest():
    line = f"connect {FEEDBACK} then http://bot:tok3n@mlflow.example/api and sqlite:///x.db, user@mail.example"
    shown = redact_text(line)
    assert PASSWORD not in shown and "tok3n" not in shown
    assert (
        "postgresql+psycopg://loop:***@db.example:5432/tuneloop_ops" in shown
        and "http://bot:***@mlflow.example/api" in shown
    )
    assert "sqlite:///x.db" in shown and "user@mail.example" in shown
    assert redact({"a": [FEEDBACK, 3], "b": (OPTUNA,)}) == {
        "a": [FEEDBACK.replace(PASSWORD, "***"), 3],
        "b": (OPTUNA.replace(PASSWORD, "***"),),
    }
    began = time.perf_counter()
    redact_text("a://" + "b" * 8000 + ":" + "c" * 8000)  # no @: nothing to redact, and no backtracking
    assert time.perf_counter() - began < 0.05


def test_config_urls_are_redacted_in_every_json_dump_and_restored_from_the_environment(monkeypatch):
    """What the loop logs as config.json, what Prefect stores as a (sub)flow run's parameters and what
    a deployment's flow run receives: the URLs without their password; the worker takes it back."""
    from fastapi.encoders import jsonable_encoder
    from prefect import flow

    config = LoopConfig(feedback_url=FEEDBACK, optuna_url=OPTUNA, lock_url=FEEDBACK)
    assert config.feedback_db == FEEDBACK  # the process itself connects with it

    @flow
    def takes(config: LoopConfig) -> None:
        pass

    dumps = {
        "config.json (loop.py)": str(config.model_dump(mode="json")),
        "model_dump_json": config.model_dump_json(),
        "prefect parameters": str(takes.serialize_parameters({"config": config})),
        "jsonable_encoder": str(jsonable_encoder(config)),
    }
    for where, text in dumps.items():
        assert PASSWORD not in text, where
        assert "loop:***@db.example:5432/tuneloop_ops" in text, where

    received = config.model_dump(mode="json")
    monkeypatch.setenv("TUNELOOP_FEEDBACK_URL", FEEDBACK)  # the worker's own environment
    monkeypatch.delenv("TUNELOOP_OPTUNA_URL", raising=False)
    on_worker = LoopConfig(**received)
    assert on_worker.feedback_db == FEEDBACK
    assert on_worker.optuna_db == "postgresql+psycopg://loop@db.example:5432/tuneloop_optuna"  # libpq: PGPASSFILE
    monkeypatch.setenv("TUNELOOP_FEEDBACK_URL", FEEDBACK.replace("tuneloop_ops", "elsewhere"))
    assert "***" not in restore_password(received["feedback_url"]) and PASSWORD not in restore_password(
        received["feedback_url"]
    )


def test_secret_files_are_owner_only(tmp_path, monkeypatch):
    from tuneloop.cli.stack_auth import FILES, Credentials

    monkeypatch.setenv("TUNELOOP_STACK_MLFLOW_PASSWORD", "the-teams-own-password")
    creds = Credentials.ensure(tmp_path / "secrets")
    assert creds.mlflow_service == "the-teams-own-password"
    assert creds.prefect_auth.startswith("tuneloop:") and len(creds.prefect_auth) > 40
    assert (creds.dir.stat().st_mode & 0o777) == 0o700
    for name, _ in FILES.values():
        assert ((creds.dir / name).stat().st_mode & 0o777) == 0o600, name
    assert (
        Credentials.ensure(creds.dir) == creds and Credentials.changes(creds.dir) == []
    )  # stable across stack up runs
    (creds.dir / FILES["prefect_auth"][0]).unlink()  # a rotation: stack up must not do it under running parts
    monkeypatch.setenv("TUNELOOP_STACK_MLFLOW_PASSWORD", "a-rotated-password")
    assert Credentials.changes(creds.dir) == ["prefect-auth-string", "mlflow-password"]
    leaky = tmp_path / "leaky"
    leaky.write_text("x")
    os.chmod(leaky, 0o644)
    with pytest.raises(PermissionError, match="readable or writable by others"):
        read_secret(leaky)
    assert ensure_secret(tmp_path / "fresh") != ensure_secret(tmp_path / "other")


class _Payload:
    """What a planted checkpoint would carry: unpickling it calls Path.touch (any callable would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_carrying_a_pickle_payload_is_refused_and_does_not_run(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneloop.modeling.training import CHECKPOINT, CheckpointError, _load_checkpoint, _save_checkpoint

    def fresh():
        torch.manual_seed(0)
        model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(r=2, target_modules=["0"]))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    model, optimizer, scheduler = fresh()
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    _save_checkpoint(tmp_path / "good", model, optimizer, scheduler, None, 7)
    assert _load_checkpoint(tmp_path / "good", *fresh(), None) == 7  # a real checkpoint loads as weights only

    marker = tmp_path / "payload-ran"
    planted = tmp_path / "planted"
    planted.mkdir()
    torch.save({"step": 3, "adapter": {"x": torch.zeros(1)}, "extra": _Payload(marker)}, planted / CHECKPOINT)
    with pytest.raises(CheckpointError, match="refusing checkpoint .*not only tensors"):
        _load_checkpoint(planted, *fresh(), None)
    assert not marker.exists()
