"""A live local stack under load while its parts fail in turn: what is lost, what fails, how long to recover.

python -m bench faults [--seconds 12] -> bench/results/faults.json and docs/benchmarks/faults.md

One home, tiny models: an ``mlflow server`` (SQLite backend), a ``prefect server``, the BentoML
service (two worker processes) and the operations database on a 64 MB tmpfs. Four clients send
/predict and, for every second answer, feedback with its receipt. In turn, each for ``--seconds``:
1. the MLflow server is killed (SIGKILL), then restarted;
2. the Prefect server is killed while a loop runs (``tuneloop run``), then restarted;
3. a trial worker process of a loop with two search workers is killed;
4. one service worker process is killed (BentoML starts another);
5. the tmpfs holding the feedback database is filled (a real full disk), then freed.
Per fault: requests failed (/predict not 200, feedback 5xx other than the store's 503), feedback
acknowledged (200/201) vs found in the store at the end, the loop's outcome, and the seconds from
the repair (restart, free space) to the stack answering as before.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import httpx

from bench.machine import describe

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TOKEN = "faults-bench-token"
TEXTS = ["where is my card", "I was charged twice", "cancel my plan", "my refund is late"]


class Server:
    """A server process (its own group) that can be killed and started again on the same port."""

    def __init__(self, name: str, args: list[str], env: dict, ready_url: str, log: Path):
        self.name, self.args, self.env, self.ready_url, self.log, self.proc = name, args, env, ready_url, log, None

    def start(self, timeout: float = 240) -> float:
        began = time.monotonic()
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=ROOT,
            stdout=open(self.log, "a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.ready_url, timeout=2).status_code == 200:
                    return time.monotonic() - began
            except httpx.HTTPError:
                pass
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"{self.name} not ready: {self.log.read_text()[-2000:]}")
            time.sleep(0.3)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class Load:
    """Closed-loop clients: /predict, then feedback on every second answer; every outcome timestamped."""

    def __init__(self, base: str, clients: int = 4, pause_s: float = 0.1):
        # a pause between a client's calls: steady traffic that leaves the loops some of the 2 cores
        self.base, self.clients, self.pause_s, self.stop = base, clients, pause_s, threading.Event()
        self.events: list[tuple[float, str, int]] = []  # (time, "predict"|"feedback", status; 0: no answer)
        self.acked: set[str] = set()
        self.lock = threading.Lock()

    def _client(self, worker: int) -> None:
        n = 0
        with httpx.Client(timeout=30) as http:
            while not self.stop.wait(self.pause_s):
                n += 1
                rid, user = f"L{worker}-{n}", f"user-{worker}-{n % 20}"
                status, answer = self._post(
                    http, "/predict", {"requests": [{"user_id": user, "input": TEXTS[n % 4], "request_id": rid}]}
                )
                self._note("predict", status)
                if status != 200 or n % 2:
                    continue
                record = {
                    "request_id": rid,
                    "user_id": user,
                    "model_version": answer[0]["model_version"],
                    "kind": "classification",
                    "prompt": TEXTS[n % 4],
                    "output": answer[0]["output"],
                    "rating": "up",
                    "receipt": answer[0]["receipt"],
                }
                status, _ = self._post(http, "/v1/feedback", record, {"Authorization": f"Bearer {TOKEN}"})
                self._note("feedback", status)
                if status in (200, 201):
                    with self.lock:
                        self.acked.add(rid)

    def _post(self, http, path, body, headers=None):
        try:
            r = http.post(self.base + path, json=body, headers=headers)
            return r.status_code, (r.json() if r.status_code == 200 else None)
        except (httpx.HTTPError, ValueError):
            return 0, None

    def _note(self, what: str, status: int) -> None:
        with self.lock:
            self.events.append((time.time(), what, status))

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._client, args=(w,), daemon=True) for w in range(self.clients)]
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def between(self, t0: float, t1: float) -> dict:
        with self.lock:
            window = [e for e in self.events if t0 <= e[0] <= t1]
        predict = [s for _, w, s in window if w == "predict"]
        feedback = [s for _, w, s in window if w == "feedback"]
        return {
            "requests": len(predict) + len(feedback),
            "predict_failed": sum(s != 200 for s in predict),
            "feedback_acked": sum(s in (200, 201) for s in feedback),
            "feedback_503": sum(s == 503 for s in feedback),
            "feedback_failed": sum(s not in (200, 201, 503) for s in feedback),
        }


def _wait(condition, timeout: float) -> float | None:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if condition():
            return time.monotonic() - began
        time.sleep(0.2)
    return None


def _fresh(base: str) -> bool:
    """Every /readyz of a few in a row up to date (two workers answer them in turn)."""
    try:
        return all(httpx.get(f"{base}/readyz", timeout=5).json().get("stale_since") is None for _ in range(6))
    except (httpx.HTTPError, ValueError):
        return False


def _serving(base: str) -> bool:
    try:
        return all(
            httpx.post(
                f"{base}/predict", json={"requests": [{"user_id": f"probe-{i}", "input": "hi"}]}, timeout=10
            ).status_code
            == 200
            for i in range(10)
        )
    except httpx.HTTPError:
        return False


# --- the stack ---------------------------------------------------------------------------------------


def _mount_small_disk(path: Path, size: str = "64m") -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


def _environment(home: Path, disk: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "TUNELOOP_"))}
    return {
        **env,
        "TUNELOOP_HOME": str(home),
        "TUNELOOP_KIND": "classification",
        "TUNELOOP_TINY": "true",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
        "TUNELOOP_FEEDBACK_URL": f"sqlite:///{disk / 'ops.db'}?timeout=2",
        "PREFECT_API_URL": f"http://127.0.0.1:{ports['prefect']}/api",
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "TUNELOOP_API_TOKEN": TOKEN,
        "TUNELOOP_REGISTRY_POLL_S": "1",
        "TUNELOOP_DEPLOY__SERVE_WORKERS": "2",
        "TUNELOOP_DEPLOY__GUARD_INTERVAL_S": "30",
        "TUNELOOP_LIMITS__FEEDBACK_PER_USER": "100000",
        "BENTOML_HOME": str(home / "bentoml"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _servers(home: Path, env: dict, ports: dict[str, int]) -> dict[str, Server]:
    bindir = Path(sys.executable).parent
    return {
        "mlflow": Server(
            "mlflow",
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["mlflow"]),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{home / 'mlflow.db'}",
                "--artifacts-destination",
                str(home / "mlartifacts"),
            ],
            env,
            f"http://127.0.0.1:{ports['mlflow']}/health",
            home / "mlflow.log",
        ),
        "prefect": Server(
            "prefect",
            [str(bindir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(ports["prefect"])],
            env,
            f"http://127.0.0.1:{ports['prefect']}/api/health",
            home / "prefect.log",
        ),
        "service": Server(
            "service",
            [
                sys.executable,
                "-m",
                "bentoml",
                "serve",
                "tuneloop.serving.service:Tuneloop",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["service"]),
                "--working-dir",
                str(ROOT),
            ],
            env,
            f"http://127.0.0.1:{ports['service']}/readyz",
            home / "service.log",
        ),
    }


def _seed(env: dict) -> None:
    """The sample feedback and a champion (an untrained tiny adapter), in a child process with the stack's settings."""
    code = (
        "from tuneloop.config import LoopConfig, apply_environment; apply_environment()\n"
        "from tuneloop.data.feedback import FeedbackStore; from tuneloop.data.sample_data import sample_feedback\n"
        "from bench.faults import register_champion\n"
        "config = LoopConfig()\n"
        "FeedbackStore(config.feedback_db).add_many_raw(sample_feedback('classification'), 'classification')\n"
        "register_champion(config)\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, timeout=600)


def register_champion(config) -> str:
    from peft import LoraConfig, get_peft_model

    from tuneloop.modeling.adapters import write_meta
    from tuneloop.modeling.models import base_of, load_base, lora_targets, save_labels
    from tuneloop.registry.versions import log_adapter, move_alias

    folder = config.home / "seed-adapter"
    labels = ["order_status", "lost_card", "refund"]
    info = base_of(config)
    model = load_base(info, "classification", labels)
    get_peft_model(model, LoraConfig(r=4, target_modules=lora_targets(model, "qv"))).save_pretrained(folder)
    write_meta(folder, config, info)
    save_labels(folder, labels)
    version = str(log_adapter(config, folder, {"note": "fault run seed"}).version)
    move_alias(config.model_name, "champion", version, "fault run seed", config=config)
    return version


def _loop(home: Path, env: dict, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "tuneloop"),
            "run",
            "--kind",
            "classification",
            "--tiny",
            "--trials",
            extra.pop("trials", "1"),
            "--home",
            str(home),
        ],
        env={**env, **extra},
        cwd=ROOT,
        stdout=open(home / "loops.log", "a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _outcome(proc: subprocess.Popen, timeout: float = 420) -> str:
    try:
        return "completed" if proc.wait(timeout=timeout) == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return f"did not finish in {timeout:.0f} s"


# --- the faults -------------------------------------------------------------------------------------


def fault_mlflow(s: dict[str, Server], base: str, seconds: float, **_) -> dict:
    began = time.time()
    s["mlflow"].kill()
    time.sleep(seconds)  # the outage: the service serves what it knows
    s["mlflow"].start()
    repaired = time.time()
    return {
        "began": began,
        "repaired": repaired,
        "recovery_s": _wait(lambda: _fresh(base), 120),
        "loop": "-",
        "note": "recovery: until every worker's /readyz is up to date again",
    }


def fault_prefect(s: dict[str, Server], base: str, seconds: float, home: Path, env: dict, **_) -> dict:
    loop = _loop(home, env)
    time.sleep(8)  # the loop is talking to the server by now
    began = time.time()
    s["prefect"].kill()
    time.sleep(seconds)
    s["prefect"].start()
    repaired = time.time()
    outcome = _outcome(loop)
    if outcome != "completed":  # what an operator (or the trigger) does next
        outcome += "; rerun: " + _outcome(_loop(home, env))
    return {
        "began": began,
        "repaired": repaired,
        "recovery_s": time.time() - repaired,
        "loop": outcome,
        "note": "recovery: from the restart until a loop completed",
    }


def fault_trial_worker(s: dict[str, Server], base: str, seconds: float, home: Path, env: dict, **_) -> dict:
    import psutil

    loop = _loop(home, env, trials="2", TUNELOOP_TUNE__N_WORKERS="2")
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and loop.poll() is None:
        for child in psutil.Process(loop.pid).children(recursive=True):
            try:
                cmd = " ".join(child.cmdline())
                if "multiprocessing" in cmd and "resource_tracker" not in cmd and sum(child.cpu_times()[:2]) > 3:
                    victim = child
                    break
            except psutil.Error:
                continue
        time.sleep(0.5)
    began = time.time()
    if victim is None:
        return {
            "began": began,
            "repaired": began,
            "recovery_s": None,
            "loop": _outcome(loop),
            "note": "no trial worker process was seen running",
        }
    victim.kill()
    outcome = _outcome(loop)
    if outcome != "completed":
        outcome += "; rerun: " + _outcome(_loop(home, env, trials="2", TUNELOOP_TUNE__N_WORKERS="2"))
    return {
        "began": began,
        "repaired": began,
        "recovery_s": time.time() - began,
        "loop": outcome,
        "note": "recovery: from the kill until a loop completed",
    }


def fault_service_worker(s: dict[str, Server], base: str, seconds: float, **_) -> dict:
    import psutil

    workers = [
        c
        for c in psutil.Process(s["service"].proc.pid).children(recursive=True)
        if "worker" in " ".join(c.cmdline()) or "_service_worker" in " ".join(c.cmdline())
    ]
    began = time.time()
    if not workers:
        return {"began": began, "repaired": began, "recovery_s": None, "loop": "-", "note": "no worker process found"}
    workers[0].kill()
    return {
        "began": began,
        "repaired": began,
        "recovery_s": _wait(lambda: _serving(base), 300),
        "loop": "-",
        "note": "recovery: from the kill until 10 predictions in a row succeed",
    }


def fault_disk_full(s: dict[str, Server], base: str, seconds: float, home: Path, load: Load, **_) -> dict:
    filler = home / "disk" / "filler"
    began = time.time()
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    # SQLite reuses its write-ahead log's space after a checkpoint, so writes can go on for a while on a
    # full disk (durably): the disk stays full until the log must grow and the store refuses (or 90 s)
    _wait(lambda: time.time() - began >= seconds and load.between(began, time.time())["feedback_503"] > 0, 90)
    filler.unlink()
    repaired = time.time()
    return {
        "began": began,
        "repaired": repaired,
        "recovery_s": _wait(lambda: _feedback_ok(base), 60),
        "loop": "-",
        "note": "real full disk (64 MB tmpfs), kept full until the store refused a write (at most 90 s); recovery: "
        "from freeing space until feedback is stored again",
    }


def _feedback_ok(base: str) -> bool:
    r = httpx.post(f"{base}/predict", json={"requests": [{"user_id": "probe", "input": "hi"}]}, timeout=10)
    if r.status_code != 200:
        return False
    a = r.json()[0]
    record = {
        "request_id": a["request_id"],
        "user_id": "probe",
        "model_version": a["model_version"],
        "kind": "classification",
        "prompt": "hi",
        "output": a["output"],
        "rating": "up",
        "receipt": a["receipt"],
    }
    return httpx.post(
        f"{base}/v1/feedback", json=record, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    ).status_code in (200, 201)


FAULTS = {
    "mlflow server killed": fault_mlflow,
    "prefect server killed": fault_prefect,
    "trial worker killed": fault_trial_worker,
    "service worker killed": fault_service_worker,
    "feedback disk full": fault_disk_full,
}


# --- the run -----------------------------------------------------------------------------------------


def _stored_ids(db: Path) -> set[str]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT request_id FROM feedback WHERE kind = 'classification'")}


def run(seconds: float, only: list[str] | None = None) -> dict:
    from devtools.localserver import free_port

    home = Path(tempfile.mkdtemp(prefix="tuneloop-faults-"))
    disk = home / "disk"
    if not _mount_small_disk(disk):
        raise SystemExit(
            "the fault run needs to mount a 64 MB tmpfs for the feedback database (run it as root, or in a "
            "container with CAP_SYS_ADMIN)"
        )
    ports = {name: free_port() for name in ("mlflow", "prefect", "service")}
    env = _environment(home, disk, ports)
    servers = _servers(home, env, ports)
    started = time.monotonic()
    results: list[dict] = []
    load = None
    try:
        startup = {name: round(servers[name].start(), 1) for name in ("mlflow", "prefect")}
        _seed(env)
        startup["service"] = round(servers["service"].start(), 1)
        base = f"http://127.0.0.1:{ports['service']}"
        load = Load(base)
        load.start()
        time.sleep(seconds)  # a baseline under load
        results.append(
            {
                "fault": "none (baseline)",
                **load.between(time.time() - seconds, time.time()),
                "recovery_s": None,
                "loop": "-",
                "note": f"{seconds:g} s of load with everything up",
            }
        )
        for name, fault in FAULTS.items():
            if only and not any(o in name for o in only):
                continue
            print(f"fault: {name}", flush=True)
            outcome = fault(servers, base, seconds, home=home, env=env, load=load)
            settled = min(time.time(), outcome["repaired"] + (outcome["recovery_s"] or 0))  # fault to recovered
            stats = load.between(outcome["began"], settled + 1)
            recovery = outcome["recovery_s"]
            results.append(
                {
                    "fault": name,
                    **stats,
                    "recovery_s": round(recovery, 1) if recovery is not None else None,
                    "loop": outcome["loop"],
                    "note": outcome["note"],
                }
            )
            print(json.dumps(results[-1]), flush=True)
            time.sleep(2)
        load.finish()
        stored = _stored_ids(disk / "ops.db")
        lost = sorted(load.acked - stored)
        return {
            "date": date.today().isoformat(),
            "machine": describe(),
            "seconds_per_fault": seconds,
            "startup_s": startup,
            "faults": results,
            "feedback_acknowledged": len(load.acked),
            "acknowledged_but_lost": len(lost),
            "lost_examples": lost[:10],
            "total_s": round(time.monotonic() - started, 1),
        }
    finally:
        if load is not None:
            load.finish()
        for server in servers.values():
            if server.proc is not None and server.proc.poll() is None:
                os.killpg(server.proc.pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", str(disk)], check=False)


def write_page(result: dict, path: Path) -> None:
    context = f" {result['context']}." if result.get("context") else ""
    rows = "\n".join(
        f"| {f['fault']} | {f['requests']} | {f['predict_failed']} | {f['feedback_failed']} | "
        f"{f['feedback_503']} | {f['feedback_acked']} | {f['recovery_s'] if f['recovery_s'] is not None else '-'} | "
        f"{f['loop']} |"
        for f in result["faults"]
    )
    path.write_text(f"""# Faults under load

Measured {result["date"]}, {result["machine"]}, with `python -m bench faults --seconds {result["seconds_per_fault"]:g}`
(tiny models; total {result["total_s"]:.0f} s).{context} A live local stack: `mlflow server` (SQLite), `prefect server`, the
service with two worker processes, the operations database on a 64 MB tmpfs; four clients send /predict (0.1 s
apart) and feedback on every second answer while each part fails in turn ({result["seconds_per_fault"]:g} s per outage).
Raw figures: `bench/results/faults.json`.

| fault | requests in the window | /predict failed | feedback failed (5xx, no answer) | feedback refused 503 (not acknowledged) | feedback acknowledged | recovery s | loop |
|---|---|---|---|---|---|---|---|
{rows}

Feedback acknowledged over the whole run: {result["feedback_acknowledged"]}; acknowledged but not in the store at
the end: **{result["acknowledged_but_lost"]}**.

How to read it: the window runs from the fault to the stack answering as before. A 503 from /v1/feedback is a
refusal the client retries (nothing was acknowledged); a failed request is one that got no answer or a
server error. Recovery: MLflow, until every worker's `/readyz` is up to date again (they served the last known
versions meanwhile, "stale since" in `/readyz` and `tuneloop_registry_stale_since_seconds`); Prefect and the
trial worker, until a loop completed (the rerun resumes the search from its study and checkpoints); the service
worker, until ten predictions in a row succeed (BentoML restarts the worker); the full disk, from freeing space
until feedback is stored again. Notes per fault are in the JSON.
""")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench faults")
    parser.add_argument("--seconds", type=float, default=12, help="Length of each outage and of the baseline.")
    parser.add_argument("--quick", action="store_true", help="6 s outages.")
    parser.add_argument("--only", nargs="*", help="Run only the faults whose name contains one of these words.")
    parser.add_argument("--context", default="", help="What else the machine was doing, for the page.")
    args = parser.parse_args(argv)
    result = {**run(6 if args.quick else args.seconds, args.only), "context": args.context}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "faults.json").write_text(json.dumps(result, indent=1))
    write_page(result, ROOT / "docs" / "benchmarks" / "faults.md")
    print(json.dumps({k: v for k, v in result.items() if k != "faults"}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
