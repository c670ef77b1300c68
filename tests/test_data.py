"""Curation, scrubbing and the store: the data side of the loop."""

from __future__ import annotations

import json

import pytest
from conftest import all_examples, jsonl, split_examples

from tuneloop.config import LoopConfig
from tuneloop.data.datasets import split_of
from tuneloop.data.dedupe import prompt_key
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.pii import scrub
from tuneloop.data.records import FeedbackRecord
from tuneloop.data.sample_data import sample_feedback
from tuneloop.flows.curate import build_dataset


@pytest.mark.parametrize(
    "text, tag",
    [
        ("write to jane.doe@example.com please", "[EMAIL]"),
        ("call +44 20 7946 0958 tomorrow", "[PHONE]"),
        ("ring 555-123-4567", "[PHONE]"),
        ("card 4111 1111 1111 1111 was charged", "[CARD]"),
        ("card 4111-1111-1111-1111", "[CARD]"),
        ("IBAN DE89 3704 0044 0532 0130 00 please", "[IBAN]"),
        ("GB82WEST12345698765432", "[IBAN]"),
        ("mail a.b-c+d@sub.example.co.uk now", "[EMAIL]"),
        ("ring (555) 123-4567", "[PHONE]"),
        ("ring 555.987.6543", "[PHONE]"),
        ("tel: +1-202-555-0143", "[PHONE]"),
        ("card 5500-0000-0000-0004", "[CARD]"),
        ("amex 378282246310005", "[CARD]"),
    ],
)
def test_scrub_replaces_personal_data(text, tag):
    assert tag in scrub(text)


@pytest.mark.parametrize(
    "text",
    [
        "The Nimbus Pro costs 189 euros.",
        "Orders ship within 2 business days.",
        "order 1234 5678 9012 3456 failed Luhn",
        "2.4 GHz Wi-Fi",
        "delivered on 2026-11-22 at 10:30",
        "due 22.11.2026",
        "version 1.4.39",
        "costs 1,189.00 euros",
    ],
)
def test_scrub_leaves_ordinary_text(text):
    assert scrub(text) == text


def test_curation_quarantines_dedupes_resolves_and_scrubs(tmp_path):
    config = LoopConfig(kind="generation", home=tmp_path)
    store = FeedbackStore(config.feedback_db)
    store.add_many_raw(sample_feedback("generation"), "generation")
    data = build_dataset(store, config)
    quarantine = jsonl(data.path / "quarantine.jsonl")
    examples = all_examples(data, config)

    reasons = {q["reason"] for q in quarantine}
    assert len(quarantine) == 6
    assert any(r.startswith("prompt:") for r in reasons) and any(r.startswith("rating:") for r in reasons)
    assert any("thumbs-up cannot carry a correction" in r for r in reasons)
    nimbus = [e for e in examples if e.prompt == "What is the Nimbus thermostat warranty?"]
    assert (
        nimbus and nimbus[0].target == "The Nimbus thermostat has a 37-month warranty."
    )  # majority beat the 12-month one
    assert len({e.key for e in examples}) == len(examples)

    written = "".join(p.read_text() for p in data.path.glob("*.jsonl"))
    for secret in ("jane.doe@example.com", "4111 1111 1111 1111", "7946 0958", "DE89 3704"):
        assert secret not in written
    assert "[EMAIL]" in written and "[CARD]" in written


def test_split_is_stable_as_data_grows(tmp_path):
    config = LoopConfig(kind="classification", home=tmp_path)
    store = FeedbackStore(config.feedback_db)
    records = sample_feedback("classification", small=True)
    store.add_many_raw(records[:150], "classification")
    before = build_dataset(store, config)
    store.add_many_raw(records[150:], "classification")
    after = build_dataset(store, config)
    side_before = {e.key: split for split, es in split_examples(before, config).items() for e in es}
    side_after = {e.key: split for split, es in split_examples(after, config).items() for e in es}
    assert all(side_after[k] == side for k, side in side_before.items())
    assert len(side_after) > len(side_before)
    assert split_of(prompt_key("Where is my HUB??"), 20) == split_of(prompt_key("where is my hub"), 20)


def test_store_is_idempotent_on_request_id(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    record = FeedbackRecord(request_id="r1", user_id="u", model_version="base", prompt="p", output="o", rating="up")
    assert store.add(record)[1] is True
    assert store.add(record)[1] is False
    assert store.count("generation") == 1 and store.get("r1")["prompt"] == "p"


def test_record_schema_names_the_bad_field():
    with pytest.raises(ValueError, match="correction"):
        FeedbackRecord(
            request_id="r", user_id="u", model_version="1", prompt="p", output="o", rating="up", correction="c"
        )
    with pytest.raises(ValueError, match="rating"):
        FeedbackRecord.model_validate(
            {"request_id": "r", "user_id": "u", "model_version": "1", "prompt": "p", "output": "o", "rating": "meh"}
        )


@pytest.mark.postgres
def test_store_on_postgres(postgres_url):
    store = FeedbackStore(postgres_url)
    records = sample_feedback("classification", small=True)[:50]
    assert store.add_many_raw(records, "classification") == 50
    assert store.add_many_raw(records, "classification") == 0
    assert json.loads(store.rows("classification")[0].payload)["request_id"] == records[0]["request_id"]
