"""What runs beside the answers: Prometheus metrics, the live guard, serving cost, drift and shadow mirroring."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from functools import cache
from types import SimpleNamespace

from tuneloop.config import LoopConfig
from tuneloop.costs.cost import cost_per_1k, worker_price_per_hour
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.pii import clean
from tuneloop.data.pseudonyms import shadow_salt, user_hash  # noqa: F401 (the shadow's names for them)
from tuneloop.release.flags import challenger_percent
from tuneloop.release.operations import roll_back
from tuneloop.release.rollout import Guard, Verdict, negative_rates, segment_rates

log = logging.getLogger("tuneloop.serving")
NO_SEGMENT = "none"  # label of requests and feedback that carry no segment
OTHER_SEGMENT = "other"  # label of segments past deploy.max_segment_labels


@cache
def metrics() -> SimpleNamespace:
    """Created on first use: BentoML sets PROMETHEUS_MULTIPROC_DIR after importing the service module."""
    import prometheus_client as prom

    latest = dict(multiprocess_mode="mostrecent")  # gauges written by the one guard thread of a service
    return SimpleNamespace(
        requests=prom.Counter("tuneloop_requests", "Answered requests", ["version", "variant", "segment"]),
        latency=prom.Histogram(
            "tuneloop_request_seconds",
            "Model time of each batch, by the versions in it",
            ["version"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        ),
        busy=prom.Counter(
            "tuneloop_model_busy_seconds",
            "Model time spent on each version's rows (a batch's time split by its rows)",
            ["version"],
        ),
        batch=prom.Histogram("tuneloop_batch_size", "Requests per model call", buckets=(1, 2, 4, 8, 16, 32, 64)),
        feedback=prom.Gauge("tuneloop_feedback_records", "Feedback records stored, by version", ["version"], **latest),
        negative_rate=prom.Gauge(
            "tuneloop_negative_feedback_rate", "Thumbs-down share, by version", ["version"], **latest
        ),
        segment_feedback=prom.Gauge(
            "tuneloop_segment_feedback_records",
            "Feedback records stored, by version and segment",
            ["version", "segment"],
            **latest,
        ),
        segment_negative_rate=prom.Gauge(
            "tuneloop_segment_negative_feedback_rate",
            "Thumbs-down share, by version and segment",
            ["version", "segment"],
            **latest,
        ),
        guard_p=prom.Gauge(
            "tuneloop_guard_p_value",
            "Always-valid p-value of 'the challenger is worse', overall and per tested segment",
            ["version", "segment"],
            **latest,
        ),
        cost_per_1k=prom.Gauge(
            "tuneloop_cost_per_1k_inferences_usd",
            "USD per 1,000 answers, from measured model busy time and the worker's price (cost.*), by version",
            ["version"],
            **latest,
        ),
        drift_mmd=prom.Gauge(
            "tuneloop_drift_mmd2",
            "MMD^2 of the last window of live inputs vs the version's training prompts",
            ["version"],
            **latest,
        ),
        drift_p=prom.Gauge(
            "tuneloop_drift_p_value", "Permutation p-value of the last drift window", ["version"], **latest
        ),
        drift_windows=prom.Counter(
            "tuneloop_drift_windows", "Drift windows tested, by outcome", ["version", "drifted"]
        ),
        shadow=prom.Counter("tuneloop_shadow_comparisons", "Shadow answers, by agreement with the live one", ["agree"]),
        shadow_dropped=prom.Counter("tuneloop_shadow_dropped", "Requests not mirrored because the shadow was behind"),
        registry_stale_since=prom.Gauge(
            "tuneloop_registry_stale_since_seconds",
            "Unix time since which a worker has "
            "not reached the registry (serving the last known versions); 0: up to date",
            multiprocess_mode="livemax",
        ),
        registry_failures=prom.Counter("tuneloop_registry_refresh_failures", "Registry reads that failed"),
        adapter_load_failures=prom.Counter(
            "tuneloop_adapter_load_failures",
            "Versions an alias points to that could not be loaded (skipped; the other aliases still move)",
            ["alias", "version"],
        ),
    )


class SegmentLabels:
    """Segment label values for /metrics: the first ``limit`` distinct segments a worker sees keep their
    name, later ones are 'other' (segments are client-supplied; label values must stay bounded)."""

    def __init__(self, limit: int):
        self.limit, self.known, self.lock = limit, set(), threading.Lock()

    def __call__(self, segment: str | None) -> str:
        if not segment:
            return NO_SEGMENT
        if segment in self.known:
            return segment
        with self.lock:
            if len(self.known) < self.limit:
                self.known.add(segment)
                return segment
        return OTHER_SEGMENT


def record_batch(versions: Sequence[str], variants: Sequence[str], segments: Sequence[str], elapsed_s: float) -> None:
    """Count one answered batch: requests by version/variant/segment, and the model time by version
    (split by rows: the versions of one batch share its forward pass)."""
    m = metrics()
    m.batch.observe(len(versions))
    for version in set(versions):
        rows = sum(v == version for v in versions)
        m.latency.labels(version).observe(elapsed_s)
        m.busy.labels(version).inc(elapsed_s * rows / len(versions))
    for version, variant, segment in zip(versions, variants, segments):
        m.requests.labels(version, variant, segment).inc()


def _aggregated(names: set[str]) -> dict[str, dict[tuple, float]]:
    """Counter totals summed over every worker process of the service (metric -> labels -> value)."""
    from prometheus_client import REGISTRY, CollectorRegistry

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    out: dict[str, dict[tuple, float]] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name in names:
                key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pid"))
                bucket = out.setdefault(sample.name, {})
                bucket[key] = bucket.get(key, 0.0) + sample.value
    return out


def serving_costs(config: LoopConfig, cores_per_worker: float, gpus_per_worker: int = 0) -> dict[str, dict[str, float]]:
    """Per version: answers, model busy seconds and USD per 1,000 answers (all workers together), priced
    at one worker's share of the instance (``cost.instance_hour``, else its cores and GPU)."""
    totals = _aggregated({"tuneloop_requests_total", "tuneloop_model_busy_seconds_total"})
    requests: dict[str, float] = {}
    for labels, value in totals.get("tuneloop_requests_total", {}).items():
        version = dict(labels)["version"]
        requests[version] = requests.get(version, 0.0) + value
    price = worker_price_per_hour(config.cost, cores_per_worker, gpus_per_worker)
    out = {}
    for labels, busy in totals.get("tuneloop_model_busy_seconds_total", {}).items():
        version = dict(labels)["version"]
        usd = cost_per_1k(busy, int(requests.get(version, 0)), price)
        if usd is not None:
            out[version] = {
                "requests": requests[version],
                "busy_s": busy,
                "usd_per_1k": usd,
                "worker_usd_per_hour": price,
            }
    return out


def publish_serving_costs(
    config: LoopConfig, cores_per_worker: float, gpus_per_worker: int = 0
) -> dict[str, dict[str, float]]:
    """Set the cost-per-1k gauge and keep the figures in the settings table (``serving_cost:<model>``),
    where ``tuneloop economics`` reads the measured serving cost."""
    from datetime import datetime

    from sqlalchemy.orm import Session

    from tuneloop.data.ops_tables import SettingRow

    costs = serving_costs(config, cores_per_worker, gpus_per_worker)
    for version, figures in costs.items():
        metrics().cost_per_1k.labels(version).set(figures["usd_per_1k"])
    if costs:
        value = json.dumps({"at": datetime.now(UTC).isoformat(timespec="seconds"), "versions": costs})
        with Session(FeedbackStore(config.feedback_db).engine) as session, session.begin():
            session.merge(SettingRow(key=f"serving_cost:{config.model_name}", value=value))
    return costs


def guard_once(config: LoopConfig, store: FeedbackStore, served: dict[str, str], state: Guard) -> Verdict | None:
    """One look: publish per-version and per-segment feedback rates, and roll back a challenger that is
    significantly worse overall or in one segment. The verdict (None without a live challenger)."""
    champion, challenger = served.get("champion", "base"), served.get("challenger")
    versions = {champion} | ({challenger} if challenger else set())
    rates = negative_rates(store, config.kind, versions)
    for version, rate in rates.items():
        metrics().feedback.labels(version).set(rate.n)
        metrics().negative_rate.labels(version).set(rate.value)
    by_segment = segment_rates(store, config.kind, versions)
    busiest = sorted(by_segment, key=lambda s: -sum(r.n for r in by_segment[s].values()))[
        : config.deploy.max_segment_labels
    ]
    for segment in busiest:
        for version, rate in by_segment[segment].items():
            metrics().segment_feedback.labels(version, segment).set(rate.n)
            metrics().segment_negative_rate.labels(version, segment).set(rate.value)
    if not challenger or challenger_percent(config, challenger) == 0:  # a share given to another version is not its
        return None
    pairs = {s: (r[champion], r[challenger]) for s, r in by_segment.items()}
    verdict = state.judge(challenger, rates[champion], rates[challenger], pairs)
    if verdict.p_value is not None:
        metrics().guard_p.labels(challenger, verdict.segment or "all").set(verdict.p_value)
    if verdict.action == "rollback":
        roll_back(
            config, f"live guard: {verdict.reason}", version=challenger, segment=verdict.segment, actor="live guard"
        )
        log.warning("live guard rolled back v%s: %s", challenger, verdict.reason)
    return verdict


def guard(
    config: LoopConfig,
    served: Callable[[], dict[str, str]],
    interval_s: float,
    stop: threading.Event,
    cores_per_worker: float = 1.0,
    gpus_per_worker: int = 0,
) -> threading.Thread:
    """Every ``interval_s``: publish rates and serving cost, and roll back a significantly worse canary."""
    store = FeedbackStore(config.feedback_db)
    state = Guard(config.deploy)

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                guard_once(config, store, dict(served()), state)
            except Exception:  # the guard must outlive a database hiccup
                log.exception("live guard check failed")
            try:
                publish_serving_costs(config, cores_per_worker, gpus_per_worker)
            except Exception:  # noqa: BLE001  cost figures are telemetry: never fatal
                log.exception("serving cost update failed")

    thread = threading.Thread(target=loop, name="tuneloop-live-guard", daemon=True)
    thread.start()
    return thread


def publish_drift(version: str, result) -> None:
    """The drift monitor's callback: the last window's figures as gauges."""
    metrics().drift_mmd.labels(version).set(result.statistic)
    metrics().drift_p.labels(version).set(result.p_value)
    metrics().drift_windows.labels(version, str(result.drifted).lower()).inc()


# --- shadow -----------------------------------------------------------------------------------------


class Shadow:
    """Mirrors answered requests to the challenger off the request path, on a model of its own.

    The shadow predicts with ``predict`` (the service gives it a second AdapterBank with its own lock),
    so a slow shadow forward never holds up a live one. Inputs and outputs are scrubbed of personal
    data and the user id replaced by a salted hash before anything is written to the ``shadow_log``
    table. At most ``max_backlog`` batches wait; beyond that requests are not mirrored (counted in
    ``tuneloop_shadow_dropped_total``) rather than queued without bound.
    """

    def __init__(self, config: LoopConfig, predict: Callable, max_backlog: int = 64):
        self.config = config
        self.predict = predict
        self.store = FeedbackStore(config.feedback_db)
        self.salt = shadow_salt(config)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneloop-shadow")
        self.pending = threading.BoundedSemaphore(max_backlog)

    def mirror(self, version: str, requests: list, answers: list) -> bool:
        """Queue one answered batch for the shadow; False when it was dropped (the shadow is behind)."""
        if not self.pending.acquire(blocking=False):
            metrics().shadow_dropped.inc(len(requests))
            return False
        self.pool.submit(self._run, version, requests, answers)
        return True

    def _run(self, version: str, requests: list, answers: list) -> None:
        from sqlalchemy.orm import Session

        from tuneloop.data.ops_tables import ShadowRow

        try:
            outputs, _ = self.predict([version] * len(requests), [r.input for r in requests])
            rows = []
            for request, answer, shadow_output in zip(requests, answers, outputs):
                agree = shadow_output == answer.output
                metrics().shadow.labels(str(agree).lower()).inc()
                # cleaned as curation cleans (normalised, then scrubbed): zero-width or full-width characters
                # must not carry personal data past the patterns into the log
                rows.append(
                    ShadowRow(
                        kind=self.config.kind,
                        request_id=clean(answer.request_id)[:128],
                        user_hash=user_hash(self.salt, request.user_id),
                        input=clean(request.input),
                        live_version=answer.model_version,
                        live_output=clean(answer.output),
                        shadow_version=version,
                        shadow_output=clean(shadow_output),
                        agree=agree,
                    )
                )
            with Session(self.store.engine) as session, session.begin():
                session.add_all(rows)
        except Exception:
            log.exception("shadow prediction failed")
        finally:
            self.pending.release()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def shadow_log(config: LoopConfig, limit: int = 1000) -> list[dict]:
    """The kind's newest shadow records (newest first), as stored."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from tuneloop.data.ops_tables import ShadowRow

    with Session(FeedbackStore(config.feedback_db).engine) as session:
        rows = session.scalars(
            select(ShadowRow).where(ShadowRow.kind == config.kind).order_by(ShadowRow.id.desc()).limit(limit)
        )
        return [
            {
                c: getattr(r, c)
                for c in (
                    "request_id",
                    "user_hash",
                    "input",
                    "live_version",
                    "live_output",
                    "shadow_version",
                    "shadow_output",
                    "agree",
                )
            }
            for r in rows
        ]
