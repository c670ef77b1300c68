"""`tuneloop import` of feedback whose answers came from outside tuneloop (``model_version:
external:<name>``), refusals that say what to do, and an MLflow that cannot be reached (reported as
unreachable, not as unknown versions). Real MLflow: SQLite in the test's home, and a port on
127.0.0.1 where nothing listens for the unreachable server."""

from __future__ import annotations

import json

import mlflow
from typer.testing import CliRunner

from devtools.localserver import free_port
from tuneloop.cli.main import app
from tuneloop.config import LoopConfig
from tuneloop.data.feedback import FeedbackStore
from tuneloop.flows.curate import build_dataset

runner = CliRunner()


def _record(n: int, version: str) -> dict:
    return {
        "request_id": f"x-{n}",
        "user_id": f"u-{n % 5}",
        "model_version": version,
        "kind": "generation",
        "prompt": f"How long does delivery to region {n} take?",
        "output": "I am not sure.",
        "rating": "down",
        "correction": f"Delivery to region {n} takes {n % 4 + 2} working days.",
    }


def _file(home, records: list[dict]):
    path = home / "hosted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_external_versions_are_stored_and_curated_with_their_lineage(home):
    records = [_record(n, "external:gpt-4o") for n in range(40)] + [
        _record(40, "base"),
        _record(41, "7"),
        _record(42, "external:"),
    ]
    out = runner.invoke(app, ["import", str(_file(home, records)), "--home", str(home)], terminal_width=300)
    assert out.exit_code == 0, out.output
    assert "43 read, 41 stored" in out.output and "2 rejected" in out.output
    # the unknown registry version: what is wrong and what to do
    assert "unknown version '7' of tuneloop-generation" in out.output and "external:<name>" in out.output
    assert "'external:' names no system" in out.output
    config = LoopConfig(kind="generation", home=home)
    assert FeedbackStore(config.feedback_db).count("generation") == 41
    data = build_dataset(FeedbackStore(config.feedback_db), config, check=False)
    assert data.counts["source.external"] == 40 and data.counts["source.import"] == 41


def test_an_unreachable_registry_is_reported_as_unreachable(home, monkeypatch):
    port = free_port()  # nothing listens there
    uri = f"http://reviewer:pw-9@127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # the home fixture set one explicitly; it sets it back
    path = _file(home, [_record(1, "3"), _record(2, "base")])
    out = runner.invoke(app, ["import", str(path), "--home", str(home)], terminal_width=300)
    assert out.exit_code == 1, out.output
    assert "unreachable" in out.output and "unknown version" not in out.output and "pw-9" not in out.output
    assert "--no-check-versions" in out.output
    config = LoopConfig(kind="generation", home=home)
    assert FeedbackStore(config.feedback_db).count("generation") == 0
    unchecked = runner.invoke(
        app, ["import", str(path), "--home", str(home), "--no-check-versions"], terminal_width=300
    )
    assert unchecked.exit_code == 0 and "2 stored" in unchecked.output, unchecked.output
