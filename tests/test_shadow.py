"""Shadow logs are telemetry too: scrubbed of personal data, user ids replaced by a salted hash, kept in
the shadow_log table; the shadow predicts on a model of its own, so a slow shadow never holds up a
live answer. And the service's telemetry end to end: segments, cost per 1,000 answers and drift in
/metrics, shadow records in the table."""

from __future__ import annotations

import re
import threading
import time
from types import SimpleNamespace

import httpx
import mlflow
import pytest
from conftest import TOKEN, tiny_config

from devtools.localserver import tuneloop_service
from tuneloop.data.pii import find_pii
from tuneloop.release.drift import recent_windows, register_reference
from tuneloop.release.flags import set_challenger_percent
from tuneloop.serving.live import Shadow, shadow_log, user_hash

EMAIL, PHONE = "jane.doe@example.com", "+44 20 7946 0958"
PLANTED = [
    f"My email is {EMAIL}, what is the Nimbus Pro cost?",
    f"Call me on {PHONE} about the Lumo doorbell battery.",
    "Write to bob.smith@mail.example.org or 020 7946 0123 about my order",
]


def _requests(texts: list[str]) -> tuple[list, list]:
    requests = [
        SimpleNamespace(user_id=f"user-{i}@example.com", input=t, request_id=f"r{i}") for i, t in enumerate(texts)
    ]
    answers = [
        SimpleNamespace(request_id=f"r{i}", output=f"live answer for {t}", model_version="1")
        for i, t in enumerate(texts)
    ]
    return requests, answers


def _wait(condition, seconds: float, message: str) -> None:
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < seconds, message
        time.sleep(0.05)


def _no_planted_pii(rows: list[dict]) -> None:
    for row in rows:
        assert re.fullmatch(r"[0-9a-f]{64}", row["user_hash"]), row["user_hash"]
        for field in ("request_id", "user_hash", "input", "live_output", "shadow_output"):
            value = row[field]
            # A salted hash or a generated request id is hex and holds any four digits by chance ("7946"
            # about once in a thousand), so only text is searched for the planted phone digits.
            planted = ("jane.doe", "example.", "bob.smith") + (() if re.fullmatch(r"[0-9a-f]+", value) else ("7946",))
            assert not any(p in value for p in planted), (field, value)
            assert not find_pii(value), (field, value)


def test_shadow_records_are_scrubbed_and_user_ids_hashed(home):
    config = tiny_config(home, "generation")

    def echo(versions, inputs):  # a model that repeats what it was told: the worst case for a log
        return [f"you said: {text}" for text in inputs], None

    shadow = Shadow(config, echo)
    requests, answers = _requests(PLANTED)
    assert shadow.mirror("2", requests, answers)
    shadow.close()
    rows = shadow_log(config)
    assert len(rows) == 3
    _no_planted_pii(rows)
    assert {"[EMAIL]", "[PHONE]"} <= set(
        re.findall(r"\[[A-Z]+\]", " ".join(r["input"] + r["shadow_output"] for r in rows))
    )
    hashes = {r["user_hash"] for r in rows}
    assert len(hashes) == 3 and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)
    assert user_hash(shadow.salt, "user-0@example.com") in hashes  # same user, same hash (joinable), never the id
    assert Shadow(config, echo).salt == shadow.salt  # every replica hashes alike (salt kept in the database)
    assert not (home / "shadow").exists()  # nothing written to files


def test_a_slow_shadow_never_holds_up_a_live_answer(home):
    from tuneloop.serving.models import AdapterBank

    config = tiny_config(home, "generation")
    live, own = AdapterBank(config), AdapterBank(config)  # the service gives the shadow a bank of its own
    live.refresh()
    own.refresh()
    shadow = Shadow(config, own.predict)
    requests, answers = _requests(["What is the Nimbus Pro cost?"])
    with own.lock:  # the shadow is mid-forward (as slow as it likes) ...
        assert shadow.mirror("base", requests, answers)
        time.sleep(0.2)
        assert shadow_log(config) == []  # ... so nothing is logged yet
        done = threading.Event()
        threading.Thread(
            target=lambda: (live.predict(["base"], ["What is the Lumo doorbell battery life?"]), done.set()),
            daemon=True,
        ).start()
        assert done.wait(120), "a live prediction waited on the shadow's model"
    shadow.close()  # the shadow finishes once its model is free
    assert len(shadow_log(config)) == 1


def test_a_shadow_that_falls_behind_drops_instead_of_queueing_without_bound(home):
    config = tiny_config(home, "generation")
    gate = threading.Event()

    def stuck(versions, inputs):
        gate.wait(60)
        return list(inputs), None

    shadow = Shadow(config, stuck, max_backlog=2)
    requests, answers = _requests(["a question"])
    assert [shadow.mirror("2", requests, answers) for _ in range(4)] == [True, True, False, False]
    gate.set()
    shadow.close()
    assert len(shadow_log(config)) == 2


# --- the service, end to end -------------------------------------------------------------------------------


def register_tiny_versions(config) -> tuple[str, str]:
    """Champion v1 and challenger v2: fresh LoRA adapters on the tiny generation base (no training needed here)."""
    from tuneloop.modeling.adapters import write_meta
    from tuneloop.modeling.models import DEFAULT_TARGETS, base_of, load_base, lora_targets
    from tuneloop.modeling.training import add_adapter
    from tuneloop.registry.versions import log_adapter, move_alias

    info = base_of(config)
    versions = []
    for seed, alias in ((1, "champion"), (2, "challenger")):
        base = load_base(info, "generation")
        adapter = config.work_dir / f"adapter-{seed}"
        add_adapter(
            base, "generation", 4, seed=seed, targets=lora_targets(base, DEFAULT_TARGETS["generation"])
        ).save_pretrained(adapter)
        write_meta(adapter, config, info)
        version = str(log_adapter(config, adapter, {"note": "shadow test"}).version)
        move_alias(config.model_name, alias, version, "test", config=config)
        versions.append(version)
    return versions[0], versions[1]


@pytest.mark.real_weights  # the drift encoder is the real all-MiniLM-L6-v2
def test_the_service_scrubs_shadow_records_and_reports_segments_cost_and_drift(home):
    config = tiny_config(home, "generation")
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    champion, challenger = register_tiny_versions(config)
    set_challenger_percent(config, 0)
    register_reference(
        config,
        champion,
        [
            "What is the Nimbus Pro cost?",
            "What is the Lumo doorbell battery life?",
            "Can you tell me the Orbit camera resolution?",
            "What is the Brightwell return period?",
            "Quick question: what's the order delivery time?",
            "I need to know the support phone line hours.",
        ],
    )
    env = dict(
        TUNELOOP_TINY="true",
        TUNELOOP_API_TOKEN=TOKEN,
        TUNELOOP_REGISTRY_POLL_S="0.5",
        TUNELOOP_DEPLOY__SHADOW="true",
        TUNELOOP_DEPLOY__SERVE_WORKERS="1",
        TUNELOOP_DEPLOY__GUARD_INTERVAL_S="0.5",
        TUNELOOP_DRIFT__WINDOW="12",
        TUNELOOP_DRIFT__MIN_WINDOW="10",
        TUNELOOP_DRIFT__CHECK_INTERVAL_S="0.5",
        TUNELOOP_MAX_NEW_TOKENS="4",
    )
    with tuneloop_service(home, "generation", **env) as base:
        texts = PLANTED * 2 + [
            "I am still waiting on my card?",
            "How do I top up by bank transfer?",
            "My exchange rate looks wrong",
            "Why was my transfer declined?",
            "Can I get a virtual card?",
            "My PIN is blocked",
        ]
        payload = {
            "requests": [
                {"user_id": f"user-{i}@example.com", "input": t, "segment": "mobile" if i % 2 else "web"}
                for i, t in enumerate(texts)
            ]
        }
        answers = httpx.post(f"{base}/predict", json=payload, timeout=120).json()
        assert {a["model_version"] for a in answers} == {champion}  # shadow mode: everyone gets the champion
        _wait(lambda: len(shadow_log(config)) >= len(texts), 60, "shadow answers not logged")
        rows = shadow_log(config)
        _no_planted_pii(rows)
        assert {r["shadow_version"] for r in rows} == {challenger} and {r["live_version"] for r in rows} == {champion}

        def metrics() -> str:
            return httpx.get(f"{base}/metrics", timeout=10).text

        _wait(
            lambda: "tuneloop_cost_per_1k_inferences_usd{" in metrics() and "tuneloop_drift_mmd2{" in metrics(),
            90,
            "cost per 1k or drift not in /metrics",
        )
        text = metrics()
        mobile = [
            line
            for line in text.splitlines()
            if line.startswith("tuneloop_requests_total{")
            and 'segment="mobile"' in line
            and f'version="{champion}"' in line
        ]
        assert len(mobile) == 1 and mobile[0].endswith(" 6.0"), text
        cost = float(re.search(r'tuneloop_cost_per_1k_inferences_usd\{version="%s"\} (\S+)' % champion, text).group(1))
        assert 0 < cost < 1  # a tiny model on a CPU core: fractions of a cent per 1,000 answers
        assert re.search(r'tuneloop_drift_p_value\{version="%s"\}' % champion, text)
        [window] = recent_windows(config)
        assert window["version"] == champion and window["n"] == 12
