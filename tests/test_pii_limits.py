"""Personal-data scrubbing holds on hostile input: every pattern linear-time on 8,000 characters, and the
forms people actually type (lower-case or hyphenated IBANs, numbers glued to words, full-width digits,
zero-width characters) caught wherever user text is kept: curation, the shadow log, drift windows and
the evaluation tables."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import pytest

from tuneloop.data import pii
from tuneloop.data.pii import clean, scrub

N = 8000
# inputs that make a backtracking pattern try every start and every split: long runs of what a
# pattern accepts, ended by what it needs but cannot get
ADVERSARIAL = {
    "a*8000+@": "a" * N + "@",
    "a..a@b..b": "a" * (N // 2) + "@" + "b" * (N // 2),
    "a.a.a.": "a." * (N // 2),
    "a@b.a@b.": "a@b." * (N // 4),
    "digits": "1" * N,
    "23 digits+letter": ("1" * 23 + "a") * (N // 24),
    "1 1 1": "1 " * (N // 2),
    "12-12-": "12-" * (N // 3),
    "(12)(12)": "(12)" * (N // 4),
    "+1 +1": "+1 " * (N // 3),
    "DEDE": "DE" * (N // 2),
    "IBAN-ish": ("DE89" + " 3704" * 8 + "x") * (N // 45),
    "de12 de12": "de12 " * (N // 5),
    "1.2-3": "1.2-3 " * (N // 6),
    "A1A1": "A1" * (N // 2),
    "_@_@": "_@" * (N // 2),
    "(1.(1.": ".(1" * (N // 3),
    "11.11.": "11." * (N // 3),
}
PATTERNS = {name: value for name, value in vars(pii).items() if isinstance(value, re.Pattern)}


def worst_ms(pattern: re.Pattern) -> tuple[float, str]:
    """The slowest input for a pattern: the best of three timings each (a busy machine only adds time)."""
    worst = (0.0, "")
    for name, text in ADVERSARIAL.items():
        best = min(_time(pattern, text) for _ in range(3))
        worst = max(worst, (best * 1000, name))
    return worst


def _time(pattern: re.Pattern, text: str) -> float:
    began = time.perf_counter()
    list(pattern.finditer(text))
    return time.perf_counter() - began


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_every_pattern_is_linear_time_on_8000_characters(name):
    ms, on = worst_ms(PATTERNS[name])
    print(f"{name}: worst {ms:.2f} ms on {on!r}")
    assert ms < 50, f"{name} took {ms:.1f} ms on {on!r}"


def test_scrub_of_the_whole_adversarial_set_stays_fast():
    began = time.perf_counter()
    for text in ADVERSARIAL.values():
        clean(text)
    assert time.perf_counter() - began < 0.5


@pytest.mark.parametrize(
    "text, tag",
    [
        ("iban de89 3704 0044 0532 0130 00 please", "[IBAN]"),
        ("IBAN DE89-3704-0044-0532-0130-00", "[IBAN]"),
        ("gb82west12345698765432", "[IBAN]"),
        ("call5551234567now", "[PHONE]"),
        ("tel+442079460958", "[PHONE]"),
        ("card4111111111111111exp", "[CARD]"),
    ],
)
def test_the_forms_people_type_are_scrubbed(text, tag):
    assert tag in scrub(text), scrub(text)


def test_hex_identifiers_are_not_taken_for_numbers():
    """Digits may be glued to words, but hashes and request ids (hex) are kept as they are."""
    import hashlib
    import uuid

    ids = [uuid.uuid4().hex for _ in range(300)] + [hashlib.sha256(bytes([i])).hexdigest() for i in range(256)]
    ids += [str(uuid.uuid4()) for _ in range(100)]
    assert [i for i in ids if scrub(i) != i] == []
    assert scrub("request 9f86d081888 call5551234567now") == "request 9f86d081888 call[PHONE]now"


@pytest.mark.parametrize(
    "text, tag",
    [
        ("call ５５５-１２３-４５６７", "[PHONE]"),  # full-width digits
        ("call 555\u200b-123\u200b-4567", "[PHONE]"),  # zero-width spaces splitting the number
        ("mail jane\u200b.doe@example\u200b.com", "[EMAIL]"),
        ("ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ", "[EMAIL]"),
    ],
)
def test_clean_normalises_before_scrubbing(text, tag):
    assert tag in clean(text), clean(text)


def test_the_shadow_log_and_drift_windows_clean_like_curation(home):
    from conftest import tiny_config

    from tuneloop.release.drift import DriftMonitor
    from tuneloop.serving.live import Shadow, shadow_log

    hidden = "call me on 555\u200b-123\u200b-4567 or jane\u200b.doe@example.com"
    config = tiny_config(home, "generation")
    shadow = Shadow(config, lambda versions, inputs: ([f"you said: {t}" for t in inputs], None))
    request = SimpleNamespace(user_id="u-1", input=hidden, request_id="r-1")
    assert shadow.mirror("2", [request], [SimpleNamespace(request_id="r-1", output=hidden, model_version="1")])
    shadow.close()
    (row,) = shadow_log(config)
    for field in ("input", "live_output", "shadow_output"):
        assert "4567" not in row[field] and "jane" not in row[field] and "[PHONE]" in row[field], (field, row[field])

    monitor = DriftMonitor(config, lambda: "base", lambda version, result: None)
    monitor.add([hidden])
    assert list(monitor.window) == [clean(hidden)] and "4567" not in monitor.window[0]


def test_model_outputs_in_the_evaluation_tables_are_scrubbed():
    from tuneloop.eval_suites.suites import SuiteItem
    from tuneloop.flows.evaluate import SuiteScores, table_rows

    item = SuiteItem(
        id="h1", suite="heldout", category="fact", input="What is the support line?", reference="Call support."
    )
    leaked = SuiteScores(
        mean=0,
        metrics={},
        breakdown={},
        seconds_per_item=0,
        per_item=[0.0],
        outputs=["Call ５５５-１２３-４５６７ or write to help.desk@example.com"],
        reasons=[""],
    )
    (row,) = table_rows([item], leaked, leaked)
    for field in ("champion_output", "challenger_output"):
        assert "[PHONE]" in row[field] and "[EMAIL]" in row[field] and "example.com" not in row[field], row[field]
