"""Curation end to end: quarantine, normalisation, dedupe, conflicts, PII, split stability, import, migrations."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import mlflow
import pytest
from conftest import all_examples, jsonl, split_examples
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from tuneloop.config import LoopConfig
from tuneloop.data import migrations
from tuneloop.data.datasets import split_of
from tuneloop.data.dedupe import prompt_key
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.feedback_import import import_feedback
from tuneloop.data.sample_data import sample_feedback
from tuneloop.data.text import normalize
from tuneloop.flows.curate import build_dataset, curate, summary_markdown
from tuneloop.registry.tracking import use_experiment

SECRETS = {
    "email": "jane.doe@example.com",
    "email, full-width": "ｍａｒｙ＠ｅｘａｍｐｌｅ．ｏｒｇ",
    "email, zero-width split": "bob\u200b.smith@mail.example.net",
    "phone, international": "+44 20 7946 0958",
    "phone, US": "(555) 123-4567",
    "phone, dotted": "555.987.6543",
    "card, spaced": "4111 1111 1111 1111",
    "card, dashed": "5500-0000-0000-0004",
    "card, amex compact": "378282246310005",
    "iban": "DE89 3704 0044 0532 0130 00",
    "iban, compact": "GB82WEST12345698765432",
}
# what must not appear anywhere, in the forms a leak could take
FORBIDDEN = [
    "jane.doe@example.com",
    "mary@example.org",
    "ｍａｒｙ",
    "smith@mail.example.net",
    "7946 0958",
    "123-4567",
    "987.6543",
    "4111 1111 1111 1111",
    "4111111111111111",
    "5500-0000-0000-0004",
    "5500000000000004",
    "378282246310005",
    "DE89 3704",
    "DE89370400440532013000",
    "GB82WEST12345698765432",
]


def _record(
    n: int, prompt: str, rating: str = "down", correction: str | None = "fixed", output: str = "wrong", **extra
) -> dict:
    record = {
        "request_id": f"t-{n}",
        "user_id": f"u-{n % 7}",
        "model_version": "base",
        "prompt": prompt,
        "output": output,
        "rating": rating,
        **extra,
    }
    if correction is not None:
        record["correction"] = correction
    return record


def _store(tmp_path: Path, kind: str = "generation") -> tuple[LoopConfig, FeedbackStore]:
    config = LoopConfig(kind=kind, home=tmp_path)
    return config, FeedbackStore(config.feedback_db)


def test_planted_personal_data_never_reaches_mlflow_or_training_files(home):
    config, store = _store(home)
    records = sample_feedback("generation")
    for i, (what, secret) in enumerate(SECRETS.items()):
        records.append(
            _record(
                1000 + i,
                f"My {what.split(',')[0]} is {secret}, what is the return window?",
                correction=f"Returns within 45 days; we will contact you at {secret}.",
                segment=f"vip {secret}"[:64],
            )
        )
        records.append(
            _record(2000 + i, f"Hello, reach me at {secret}", rating="up", correction=None, output=f"Noted: {secret}")
        )
    store.add_many_raw(records, "generation")
    use_experiment(config)
    with mlflow.start_run() as run:
        data = curate(config)

    # the curated text carries typed placeholders instead
    pairs = " ".join(e.prompt + " " + e.target for e in all_examples(data, config))
    assert {"[EMAIL]", "[PHONE]", "[CARD]", "[IBAN]"} <= {
        tag for tag in ("[EMAIL]", "[PHONE]", "[CARD]", "[IBAN]") if tag in pairs
    }
    # every MLflow artifact, the tracking database itself, the dataset files and the markdown summary
    artifacts = Path(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="", dst_path=str(home / "dl"))
    )
    files = [p for p in artifacts.rglob("*") if p.is_file()] + [p for p in data.path.rglob("*") if p.is_file()]
    files += [p for p in home.glob("mlflow.db*")]
    assert any(p.name == "sample.json" for p in files) and any(p.name == "train.jsonl" for p in files)
    for path in files:
        content = path.read_bytes()
        for secret in FORBIDDEN:
            assert secret.encode() not in content, f"{secret!r} leaked into {path}"
    markdown = summary_markdown(data)
    assert not [s for s in FORBIDDEN if s in markdown]

    # and the run carries the dataset, its hash, counts per reason and a sample table
    logged = mlflow.get_run(run.info.run_id)
    assert logged.inputs.dataset_inputs[0].dataset.digest == data.dataset_hash
    assert logged.data.metrics["curate.quarantined"] == 6 and logged.data.metrics["curate.quarantined.prompt"] == 4
    summary = json.loads((artifacts / "curate" / "summary.json").read_text())
    assert summary["quarantine_reasons"]["correction: a thumbs-up cannot carry a correction"] == 1
    assert len(json.loads((artifacts / "curate" / "sample.json").read_text())["data"]) == sum(
        min(10, n) for n in data.sizes.values()
    )
    assert {p.name for p in (artifacts / "dataset").iterdir()} >= {"train.jsonl", "validation.jsonl", "heldout.jsonl"}


def test_quarantine_is_kept_countable_and_raw_rows_never_change(home):
    config, store = _store(home)
    store.add_many_raw(sample_feedback("generation"), "generation")
    raw_before = [tuple(r) for r in store.rows("generation")]
    use_experiment(config)
    with mlflow.start_run():
        first = curate(config)
    with mlflow.start_run():
        curate(config)  # a second curation adds no duplicate quarantine entries

    kept = store.quarantined("generation")
    assert len(kept) == 6 == first.counts["quarantined"]
    assert {q["reason"] for q in kept} == {q["reason"] for q in jsonl(first.path / "quarantine.jsonl")}
    assert all(q["curation_run_id"] == first.curation_run_id for q in kept)
    last = store.last_curation("generation")
    assert last.high_water_id == store.high_water("generation") and last.dataset_hash == first.dataset_hash
    assert [tuple(r) for r in store.rows("generation")] == raw_before
    with pytest.raises(Exception, match="immutable"), store.engine.begin() as conn:
        conn.execute(text("UPDATE feedback SET payload = '{}'"))


def test_exact_and_near_duplicates_collapse_and_follow_their_representative(tmp_path):
    config, store = _store(tmp_path)
    variants = [
        "Where is my Orbit camera?",
        "where is my orbit camera",
        "WHERE  is my Orbit camera!!",
        "Where is my Orbit\u200b camera?",
        "Ｗｈｅｒｅ is my Orbit camera?",  # zero-width, full-width
        "Wher is my Orbit camera?",
        "Where is my Orbit cameras?",
    ]  # typos: near duplicates
    distinct = ["Where is my Nimbus Pro?", "Where is my Nimbus thermostat?", "What does the Orbit camera cost?"]
    records = [_record(i, p, correction="It ships tomorrow.") for i, p in enumerate(variants)]
    records += [_record(100 + i, p, correction=f"answer {i}") for i, p in enumerate(distinct)]
    store.add_many_raw(records, "generation")
    data = build_dataset(store, config, check=False)  # four prompt clusters cannot fill three splits
    by_split = split_examples(data, config)
    examples = [e for es in by_split.values() for e in es]
    assert len(examples) == 1 + len(distinct)
    orbit = next(e for e in examples if e.target == "It ships tomorrow.")
    assert orbit.prompt == "Where is my Orbit camera?" and len(orbit.source_ids) == len(variants)
    assert data.counts["near_duplicates"] == 2 and data.counts["duplicates_removed"] == len(variants) - 1
    # each near duplicate sits on its representative's side, whatever its own hash says
    assert orbit.key == prompt_key("Where is my Orbit camera?")
    side = next(split for split, es in by_split.items() if orbit in es)
    assert side == split_of(orbit.key, config.heldout_percent, config.validation_percent)
    assert normalize("a\u200bb\u00a0 c\x07") == "ab c"


def test_conflicts_resolved_by_majority_else_most_recent_and_recorded(tmp_path):
    config, store = _store(tmp_path)
    store.add_many_raw(
        [
            _record(1, "How long is the warranty?", correction="37 months"),
            _record(2, "How long is the warranty?", correction="12 months"),
            _record(3, "how long is the warranty", correction="37 months"),
            _record(4, "Opening hours?", correction="9 to 5"),
            _record(5, "opening hours", correction="7 to 9"),  # a tie: the most recent wins
            _record(6, "Opening hours?", rating="down", correction=None),  # bare thumbs-down: counted only
            _record(7, "Say hi", rating="up", correction=None, output="Hi!"),  # thumbs-up: a positive example
        ],
        "generation",
    )
    data = build_dataset(store, config, check=False)  # three prompts cannot fill three splits
    by_key = {e.key: e for e in all_examples(data, config)}
    assert by_key["how long is the warranty"].target == "37 months"
    assert by_key["opening hours"].target == "7 to 9"
    assert by_key["say hi"].target == "Hi!" and by_key["say hi"].positive
    rules = {c["key"]: (c["rule"], c["votes"]) for c in jsonl(data.path / "conflicts.jsonl")}
    assert rules["how long is the warranty"] == ("majority", {"37 months": 2, "12 months": 1})
    assert rules["opening hours"][0] == "most recent"
    assert data.counts["conflicts_resolved"] == 2 and data.counts["outvoted"] == 2
    assert data.counts["thumbs_down_without_correction"] == 1 and data.counts["thumbs_up"] == 1


def test_split_never_moves_a_prompt_as_data_grows(tmp_path):
    config, store = _store(tmp_path, "classification")
    rng = random.Random(7)
    words = ["hub", "plug", "camera", "doorbell", "thermostat", "bill", "refund", "wifi", "app", "order"]
    prompts = [" ".join(rng.choice(words) for _ in range(5)) for _ in range(600)]
    prompts += [p.replace("a", "aa", 1) for p in prompts[:100]]  # late near duplicates of early prompts
    records = [_record(i, p, correction=rng.choice(["billing", "returns", "setup"])) for i, p in enumerate(prompts)]
    sides: dict[str, str] = {}
    for chunk in range(0, len(records), 175):
        store.add_many_raw(records[chunk : chunk + 175], "classification")
        data = build_dataset(store, config)
        by_split = split_examples(data, config)
        now = {e.key: split for split, es in by_split.items() for e in es}
        assert all(now[k] == side for k, side in sides.items()), "a prompt moved across the split"
        sides = now
    assert 0.1 < len(by_split["heldout"]) / len(now) < 0.3 and 0.04 < len(by_split["validation"]) / len(now) < 0.17


def test_batch_import_validates_reports_rejects_and_is_idempotent(home):
    good = _record(1, "What is the Nimbus Pro cost?", correction="189 euros")
    lines = [
        json.dumps(good),
        "",
        json.dumps({**good, "request_id": "t-2", "rating": "meh"}),
        "{not json",
        json.dumps({**good, "request_id": "t-3", "model_version": "7"}),
        json.dumps({**good, "request_id": "t-4", "prompt": "a" * 9000}),
    ]
    jsonl = home / "feedback.jsonl"
    jsonl.write_bytes("\n".join(lines).encode() + b"\n" + b'{"request_id": "t-\xff"}\n')
    config, store = _store(home)
    known = lambda version: version == "base"  # noqa: E731
    report = import_feedback(store, jsonl, "generation", known_version=known)
    assert (report.read, report.stored, report.duplicates) == (6, 1, 0)
    assert [(r.line, r.field) for r in report.rejected] == [
        (3, "rating"),
        (4, "body"),
        (5, "model_version"),
        (6, "prompt"),
        (7, "body"),
    ]
    assert "unknown version '7'" in report.rejected[2].reason and "not valid UTF-8" in report.rejected[4].reason
    again = import_feedback(store, jsonl, "generation", known_version=known)
    assert (again.stored, again.duplicates) == (0, 1) and store.count() == 1

    csv_file = home / "feedback.csv"
    csv_file.write_text(
        "request_id,user_id,model_version,prompt,output,rating,correction,segment\n"
        'c-1,u,base,"Multi-line,\nquoted prompt",o,down,fixed,\n'
        "c-2,u,base,p,o,up,,web\n"
        "c-3,u,base,p,o,up,should not be here,\n"
        "c-4,u,base,p,o\n"
        "c-5,u,base,p,o,down,x,y,extra\n"
    )
    result = CliRunner().invoke(
        __import__("tuneloop.cli.main", fromlist=["app"]).app,
        ["import", str(csv_file), "--kind", "generation", "--home", str(home), "--report", str(home / "rejects.jsonl")],
    )
    assert result.exit_code == 0, result.output
    assert "2 stored" in result.output and "3 rejected" in result.output
    rejects = [json.loads(line) for line in (home / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rejects] == [(5, "correction"), (6, "rating"), (7, "row")]
    assert store.get("c-1")["prompt"] == "Multi-line,\nquoted prompt" and store.get("c-2")["correction"] is None


def test_a_store_from_before_migrations_is_adopted_and_upgraded(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with create_engine(url).begin() as conn:  # what the first release's create_all made
        conn.execute(
            text(
                "CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id VARCHAR(128) UNIQUE, "
                "kind VARCHAR(32), received_at DATETIME, payload TEXT)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO feedback (request_id, kind, received_at, payload) VALUES ('old-1', 'generation', "
                "'2026-01-01 00:00:00', '{\"request_id\": \"old-1\"}')"
            )
        )
    store = FeedbackStore(url)
    assert migrations.current(store.engine) == migrations.head()
    assert store.get("old-1") == {"request_id": "old-1"} and store.last_curation("generation") is None


@pytest.mark.postgres
def test_migrations_and_store_on_postgres(postgres_url, tmp_path):
    engine = create_engine(postgres_url)
    # several processes opening a fresh database at once: one migrates, the others wait and find it done
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            FeedbackStore(postgres_url)
        except BaseException as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and migrations.current(engine) == migrations.head()

    migrations.downgrade(engine, "base")
    assert migrations.current(engine) is None
    store = FeedbackStore(postgres_url)
    assert {"feedback", "curation_runs", "quarantine", migrations.VERSION_TABLE} <= set(
        create_engine(postgres_url).dialect.get_table_names(engine.connect())
    )
    records = sample_feedback("generation")
    assert store.add_many_raw(records, "generation") == len(records)
    assert store.add_many_raw(records, "generation") == 0
    config = LoopConfig(kind="generation", home=tmp_path, feedback_url=postgres_url)
    data = build_dataset(store, config)
    run_id = store.record_curation(
        "generation", data.last_feedback_id, data.dataset_hash, data.counts, jsonl(data.path / "quarantine.jsonl")
    )
    assert store.last_curation("generation").id == run_id and len(store.quarantined("generation")) == 6
    with pytest.raises(Exception, match="immutable"), engine.begin() as conn:
        conn.execute(text("UPDATE feedback SET kind = 'x'"))


def test_curation_counts_answers_by_phrasings_and_those_it_cannot_train(tmp_path):
    """One phrasing per answer: some land only in held-out or validation, which the counts (and the
    loop's summary) say, instead of a silent gap in what the loop learns."""
    config, store = _store(tmp_path)
    rng = random.Random(0)
    names = ["".join(rng.choice("bcdfghjklmnpqrstvwxz") + rng.choice("aeiou") for _ in range(5)) for _ in range(50)]
    # distinct questions (prompts differing in one number would be merged as near duplicates)
    records = [
        _record(n, f"What does {names[n]} cost?", correction=f"{names[n].title()} costs {n} dollars.")
        for n in range(40)
    ]
    records += [
        _record(100 + 3 * n + k, form.format(names[n]), correction=f"Plan {names[n].title()} has {n} seats.")
        for n in range(40, 50)
        for k, form in enumerate(("How many seats does {} have?", "Seats of {}?", "Tell me the {} seat limit."))
    ]
    store.add_many_raw(records, "generation")
    ref = build_dataset(store, config)
    counts, splits = ref.counts, split_examples(ref, config)
    assert counts["answers"] == 50
    assert counts["answers_one_phrasing"] == 40
    held = {e.target for e in splits["heldout"] + splits["validation"]}
    trained = {e.target for e in splits["train"]}
    assert counts["answers_untrained"] == len(held - trained) > 0


def test_rare_labels_are_found_by_problem_and_each_policy_does_what_it_says(tmp_path):
    """The rare-label pieces alone: finding labels that cannot be both learned and judged, what each
    ``rare_labels`` policy does with them, and the split files rewritten without the dropped ones."""
    from collections import Counter

    from tuneloop.data.datasets import SPLITS
    from tuneloop.flows.curate import DatasetError, _apply_rare_label_policy, _drop_labels, _rare_labels

    splits = {
        "train": Counter(refund=5, lost_card=3, fx_rate=1),
        "validation": Counter(refund=1, lost_card=1),
        "heldout": Counter(refund=2, atm=2),
    }
    total = sum(splits.values(), Counter())
    found = _rare_labels(total, splits)
    assert found == {"once": ["fx_rate"], "no_heldout": ["lost_card"], "no_train": ["atm"]}

    config = LoopConfig(kind="classification", home=tmp_path)
    with pytest.raises(DatasetError, match="fx_rate.*TUNELOOP_RARE_LABELS=keep"):
        _apply_rare_label_policy(config.model_copy(update={"rare_labels": "error"}), tmp_path, Counter(), found)
    counts = Counter()
    assert _apply_rare_label_policy(config.model_copy(update={"rare_labels": "keep"}), tmp_path, counts, found) == set()
    assert counts["labels_unjudged"] == 2  # fx_rate and lost_card: the gate has nothing to judge them on
    assert json.loads((tmp_path / "rare_labels.json").read_text())["policy"] == "keep"
    dropped = _apply_rare_label_policy(config.model_copy(update={"rare_labels": "drop"}), tmp_path, Counter(), found)
    assert dropped == {"fx_rate", "lost_card", "atm"}

    for split in SPLITS:
        rows = [{"prompt": f"{label} {i}", "target": label} for label, n in splits[split].items() for i in range(n)]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _drop_labels(tmp_path, dropped) == {"train": 5, "validation": 1, "heldout": 2}
    assert {json.loads(line)["target"] for line in (tmp_path / "train.jsonl").read_text().splitlines()} == {"refund"}
    assert not list(tmp_path.glob("*.kept"))
