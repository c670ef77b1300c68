"""Run a server as its own process on 127.0.0.1 until it answers, then stop it (tests and benchmarks)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


_given: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 now, below the kernel's ephemeral range. A port from bind(0) is one the
    kernel hands out again at once to the next bind(0): BentoML reserves its arbiter's control port
    that way, can get the port just chosen for its HTTP server and then fails to start ("Address
    already in use")."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default; macOS's range starts at 49152
    rng = random.Random()  # not the global one, which tests may seed alike in several processes
    for _ in range(200):
        port = rng.randrange(10_000, max(10_001, low))
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    with socket.socket() as s:  # nothing free below the range: the kernel's choice after all
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_process(
    args: list[str], env: dict, ready_url: str, log_path: Path, timeout_s: float = 180
) -> Iterator[subprocess.Popen]:
    """Start ``args`` in a new process group; yield once ``ready_url`` answers 200; always stop the group."""
    log = open(log_path, "w")
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}): {Path(log_path).read_text()[-3000:]}")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{ready_url} not answering after {timeout_s:.0f} s: {Path(log_path).read_text()[-3000:]}"
                )
            time.sleep(0.3)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@contextmanager
def tuneloop_service(home: Path, kind: str, ready_path: str = "/readyz", **env_extra: str) -> Iterator[str]:
    """``bentoml serve tuneloop.serving.service:Tuneloop`` on a free port for ``home``; yields its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "TUNELOOP_HOME": str(home),
        "TUNELOOP_KIND": kind,
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "BENTOML_HOME": str(home / "bentoml"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **env_extra,
    }
    if "TUNELOOP_FEEDBACK_URL" not in env_extra:
        env.pop("TUNELOOP_FEEDBACK_URL", None)  # the home's own store, not the caller's
    base = f"http://127.0.0.1:{port}"
    args = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "tuneloop.serving.service:Tuneloop",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--working-dir",
        str(ROOT),
    ]
    with server_process(args, env, base + ready_path, Path(home) / f"service-{port}.log"):
        yield base
