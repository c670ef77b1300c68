"""A user's data can be deleted and reported on; operational records expire; imported feedback says so
in the dataset's lineage."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import mlflow
from conftest import jsonl, tiny_config
from mlflow import MlflowClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.data.feedback import FeedbackStore, QuarantineRow
from tuneloop.data.feedback_import import import_feedback
from tuneloop.data.ops_tables import DriftWindowRow, RolloutEventRow, ShadowRow
from tuneloop.data.pseudonyms import shadow_salt, user_hash
from tuneloop.data.sample_data import sample_feedback
from tuneloop.flows.curate import build_dataset, log_dataset


def _alice(n: int, start: int = 0) -> list[dict]:
    return [
        {
            "request_id": f"alice-{i}",
            "user_id": "alice",
            "model_version": "base",
            "kind": "generation",
            "prompt": f"Does the Nimbus Pro {i} ship to Norway?",
            "output": "No.",
            "rating": "down",
            "correction": "Yes, the Nimbus Pro ships to Norway within 5 days.",
        }
        for i in range(start, start + n)
    ]


def _shadow(config, user: str) -> ShadowRow:
    return ShadowRow(
        kind="generation",
        request_id="r",
        user_hash=user_hash(shadow_salt(config), user),
        input="i",
        live_version="1",
        live_output="o",
        shadow_version="2",
        shadow_output="o",
        agree=True,
    )


def test_forget_deletes_a_users_rows_and_reports_the_versions_trained_on_them(home):
    config = tiny_config(home, "generation")
    store = FeedbackStore(config.feedback_db)
    store.add_many_raw(sample_feedback("generation") + _alice(2), "generation")
    store.add_raw({"request_id": "alice-bad", "user_id": "alice", "rating": "meh"}, "generation")  # to be quarantined
    data = build_dataset(store, config)
    store.record_curation(
        "generation", data.last_feedback_id, data.dataset_hash, data.counts, jsonl(data.path / "quarantine.jsonl")
    )
    client = MlflowClient()
    client.create_registered_model(config.model_name)
    trained = client.create_model_version(
        config.model_name, source=str(home / "a"), tags={"dataset_hash": data.dataset_hash}
    )
    client.create_model_version(config.model_name, source=str(home / "b"), tags={"dataset_hash": "0123456789abcdef"})
    with Session(store.engine) as session, session.begin():
        session.add_all([_shadow(config, "alice"), _shadow(config, "alice"), _shadow(config, "bob")])
    others = store.count() - 3
    alice_ids = {r.id for r in store.rows("generation") if json.loads(r.payload).get("user_id") == "alice"}
    with Session(store.engine) as session:
        assert set(session.scalars(select(QuarantineRow.feedback_id))) & alice_ids  # one of hers is quarantined

    out = CliRunner().invoke(app, ["forget", "--user-id", "alice", "--kind", "generation", "--home", str(home)])
    assert out.exit_code == 0, out.output
    assert "deleted 3 feedback records (1 quarantined) and 2 shadow records" in out.output
    assert data.dataset_hash in out.output and f"{config.model_name}/{trained.version}" in out.output
    assert f"{config.model_name}/{int(trained.version) + 1}" not in out.output  # trained on another dataset
    assert not any(json.loads(r.payload).get("user_id") == "alice" for r in store.rows("generation"))
    assert store.count() == others  # nobody else's
    with Session(store.engine) as session:
        assert not set(session.scalars(select(QuarantineRow.feedback_id))) & alice_ids
        hashes = list(session.scalars(select(ShadowRow.user_hash)))
    assert hashes == [user_hash(shadow_salt(config), "bob")]


def test_the_trigger_applies_retention_to_operational_records(home):
    from tuneloop.flows.trigger import trigger

    config = tiny_config(home, "classification")
    config.min_new_corrections = 10_000  # a no-op run: retention happens whether or not the loop runs
    store = FeedbackStore(config.feedback_db)
    old = datetime.now(UTC) - timedelta(days=400)
    with Session(store.engine) as session, session.begin():
        for at in (old, None):
            stamp = {"at": at} if at else {}
            session.add(
                ShadowRow(
                    kind="classification",
                    request_id="r",
                    user_hash="h",
                    input="i",
                    live_version="1",
                    live_output="o",
                    shadow_version="2",
                    shadow_output="o",
                    agree=True,
                    **stamp,
                )
            )
            session.add(
                DriftWindowRow(
                    kind="classification", version="1", n=50, statistic=0.1, p_value=0.5, drifted=False, **stamp
                )
            )
            session.add(RolloutEventRow(model=config.model_name, version="1", action="canary", reason="10 %", **stamp))
    assert trigger(config).run is False
    with Session(store.engine) as session:
        for row in (ShadowRow, DriftWindowRow, RolloutEventRow):
            stamps = list(session.scalars(select(row.at)))
            assert len(stamps) == 1 and stamps[0].year == datetime.now(UTC).year, row.__tablename__


def test_imported_feedback_is_named_in_the_datasets_lineage(home, tmp_path):
    from tuneloop.data.records import FeedbackRecord

    config = tiny_config(home, "generation")
    store = FeedbackStore(config.feedback_db)
    records = sample_feedback("generation")
    path = tmp_path / "elsewhere.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records[:120]))
    assert import_feedback(store, path, "generation").stored == 120
    for r in records[120:130]:  # as /v1/feedback stores a record whose receipt verified
        store.add(FeedbackRecord.model_validate(r), source="api")
    mlflow.set_experiment("lineage")
    with mlflow.start_run() as run:
        ref = log_dataset(build_dataset(store, config))
    assert ref.counts["source.import"] == 120 and ref.counts["source.api"] == 10
    assert MlflowClient().get_run(run.info.run_id).data.params["imported_records"] == "120"
