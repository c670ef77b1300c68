"""What a service last knew it served, kept on disk, and how up to date it is.

After every successful registry read a service process writes the alias map and the content hash
of each served adapter's cached folder (replaced atomically). A process that starts while MLflow is
unreachable serves from that file, once each folder still matches its hash, and reports itself
stale: ``/readyz`` says "stale since T" in its body and ``/metrics`` carries the time in
``tuneloop_registry_stale_since_seconds`` (0 when up to date). The watch loop catches up when the
registry answers again. This is the "last ready revision keeps serving" of KServe and Seldon; ready
("can serve") and up to date are told apart as Kubernetes readiness does.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from tuneloop.config import LoopConfig
from tuneloop.data.cache_files import atomic_write_text, read_json, verified

log = logging.getLogger("tuneloop.serving")


def state_path(config: LoopConfig) -> Path:
    return config.home.resolve() / "serving" / f"known-{config.model_name}.json"


def save(config: LoopConfig, tracking_uri: str, served: dict[str, str], adapters: dict[str, dict[str, str]]) -> None:
    """Record what serves now: {alias: version} and {version: {"path", "sha256"}} of the adapters it needs."""
    needed = {v: adapters[v] for v in set(served.values()) if v in adapters}
    atomic_write_text(
        state_path(config),
        json.dumps(
            {
                "tracking_uri": tracking_uri,
                "served": served,
                "adapters": needed,
                "saved_at": datetime.now(UTC).isoformat(),
            },
            indent=1,
        ),
    )


def load(config: LoopConfig, tracking_uri: str) -> tuple[dict[str, str], dict[str, Path]]:
    """The last alias map this home's services served from ``tracking_uri`` and each version's folder,
    kept only where the folder still holds the recorded content; ({}, {}) when nothing is known."""
    state = read_json(state_path(config), {})
    if not isinstance(state, dict) or state.get("tracking_uri") != tracking_uri:
        return {}, {}
    served, folders = {}, {}
    for alias, version in (state.get("served") or {}).items():
        entry = (state.get("adapters") or {}).get(version) or {}
        path = Path(entry.get("path", ""))
        if entry.get("sha256") and verified(path, full=True) == entry["sha256"]:
            served[alias], folders[version] = version, path
        else:
            log.warning(
                "known state: the cached adapter of v%s (%s) is gone or altered; %s not served from it",
                version,
                path,
                alias,
            )
    return served, folders


class Freshness:
    """Whether this process's view of the registry is current; read by /readyz and /metrics."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stale_since: float | None = None  # wall time of the first failed read since the last good one
        self.reason = ""

    def failed(self, err: BaseException) -> None:
        with self.lock:
            if self.stale_since is None:
                self.stale_since = time.time()
                log.warning(
                    "registry unreachable (%s: %s); serving the last known versions",
                    type(err).__name__,
                    str(err).splitlines()[0][:200] if str(err) else "",
                )
            self.reason = f"{type(err).__name__}"
        _metrics().registry_failures.inc()
        _metrics().registry_stale_since.set(self.stale_since)

    def fresh(self) -> None:
        with self.lock:
            if self.stale_since is not None:
                log.info("registry reachable again after %.1f s; caught up", time.time() - self.stale_since)
            self.stale_since, self.reason = None, ""
        _metrics().registry_stale_since.set(0)

    def detail(self) -> dict:
        with self.lock:
            if self.stale_since is None:
                return {"stale_since": None, "detail": "up to date with the registry"}
            at = datetime.fromtimestamp(self.stale_since, UTC).isoformat(timespec="seconds")
            return {
                "stale_since": at,
                "detail": f"stale since {at}: the registry is unreachable ({self.reason}); "
                "serving the last known versions",
            }


def _metrics():
    from tuneloop.serving.live import metrics

    return metrics()


FRESHNESS = Freshness()  # one per process: each worker process holds one bank set and answers its own /readyz


class ReadyDetail:
    """ASGI middleware: /readyz answers with JSON detail (ready, stale since when, serving what) instead
    of an empty body, keeping BentoML's status code (200 ready, 503 not)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") != "http" or scope.get("path") != "/readyz":
            await self.app(scope, receive, send)
            return
        status = {}

        async def capture(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]

        await self.app(scope, receive, capture)
        code = status.get("code", 503)
        body = json.dumps({"ready": code == 200, **FRESHNESS.detail()}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
