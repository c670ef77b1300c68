"""What runs beside the answers: Prometheus metrics, the live guard and shadow mirroring."""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

from tuneloop.config import LoopConfig
from tuneloop.feedback import FeedbackStore
from tuneloop.flags import challenger_percent
from tuneloop.rollout import judge, negative_rates, roll_back

log = logging.getLogger("tuneloop.serving")


@lru_cache(maxsize=None)
def metrics() -> SimpleNamespace:
    """Created on first use: BentoML sets PROMETHEUS_MULTIPROC_DIR after importing the service module."""
    import prometheus_client as prom

    return SimpleNamespace(
        requests=prom.Counter("tuneloop_requests", "Answered requests", ["version", "variant"]),
        latency=prom.Histogram("tuneloop_request_seconds", "Model time of each batch, by the versions in it", ["version"],
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)),
        batch=prom.Histogram("tuneloop_batch_size", "Requests per model call", buckets=(1, 2, 4, 8, 16, 32, 64)),
        feedback=prom.Gauge("tuneloop_feedback_records", "Feedback records stored, by version", ["version"],
                            multiprocess_mode="mostrecent"),
        negative_rate=prom.Gauge("tuneloop_negative_feedback_rate", "Thumbs-down share, by version", ["version"],
                                 multiprocess_mode="mostrecent"),
        shadow=prom.Counter("tuneloop_shadow_comparisons", "Shadow answers, by agreement with the live one", ["agree"]),
    )


def guard(config: LoopConfig, served: callable, interval_s: float, stop: threading.Event) -> threading.Thread:
    """Every ``interval_s``: publish per-version feedback rates, and roll back a significantly worse canary."""
    store = FeedbackStore(config.feedback_db)

    def check_once() -> None:
        current = served()
        champion, challenger = current.get("champion", "base"), current.get("challenger")
        rates = negative_rates(store, config.kind, {champion} | ({challenger} if challenger else set()))
        for version, rate in rates.items():
            metrics().feedback.labels(version).set(rate.n)
            metrics().negative_rate.labels(version).set(rate.value)
        if challenger and challenger_percent(config.flag_file, config.flag_key) > 0:
            verdict = judge(rates[champion], rates[challenger], config.deploy)
            if verdict.action == "rollback":
                roll_back(config, challenger, f"live guard: {verdict.reason}")
                log.warning("live guard rolled back v%s: %s", challenger, verdict.reason)

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                check_once()
            except Exception:  # the guard must outlive a database hiccup
                log.exception("live guard check failed")

    thread = threading.Thread(target=loop, name="tuneloop-live-guard", daemon=True)
    thread.start()
    return thread


class Shadow:
    """Mirrors answered requests to the challenger off the request path; logs both answers as JSONL."""

    def __init__(self, log_file: Path):
        self.log_file = log_file
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneloop-shadow")
        self.write_lock = threading.Lock()

    def mirror(self, predict: callable, version: str, requests: list, answers: list) -> None:
        self.pool.submit(self._run, predict, version, requests, answers)

    def _run(self, predict: callable, version: str, requests: list, answers: list) -> None:
        try:
            outputs, _ = predict([version] * len(requests), [r.input for r in requests])
        except Exception:
            log.exception("shadow prediction failed")
            return
        with self.write_lock, open(self.log_file, "a") as f:
            for request, answer, shadow_output in zip(requests, answers, outputs):
                agree = shadow_output == answer.output
                metrics().shadow.labels(str(agree).lower()).inc()
                f.write(json.dumps({"request_id": answer.request_id, "user_id": request.user_id, "input": request.input,
                                    "live_version": answer.model_version, "live_output": answer.output,
                                    "shadow_version": version, "shadow_output": shadow_output, "agree": agree},
                                   ensure_ascii=False) + "\n")
