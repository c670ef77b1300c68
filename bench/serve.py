"""Serving benchmark on the real MiniLM weights: the tuneloop service vs a plain transformers
pipeline behind FastAPI (throughput, p50/p95 at 1/4/16 clients), the routing+attribution overhead,
and the time from a rollback to the first answer by the champion under load (with failures counted).

python -m bench serve [--quick]   -> bench/results/serve.json
Load generators run as separate processes against 127.0.0.1, each bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tuneloop.localserver import free_port, server_process, tuneloop_service

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _load(url: str, clients: int, seconds: float, style: str, work: Path) -> dict:
    out = work / f"load-{style}-{clients}-{time.monotonic_ns()}.json"
    subprocess.run([sys.executable, "-m", "bench.loadgen", url, "--clients", str(clients), "--seconds", str(seconds),
                    "--style", style, "--out", str(out)], cwd=ROOT, check=True, timeout=seconds + 120)
    return json.loads(out.read_text())


def _summary(run: dict) -> dict:
    latencies = sorted(r[1] for r in run["records"] if r[2])
    pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else None  # noqa: E731
    return {"clients": run["clients"], "requests": run["requests"], "failed": run["failed"],
            "throughput_rps": round(len(latencies) / run["seconds"], 2), "p50_ms": pct(0.50), "p95_ms": pct(0.95)}


def _register_versions(config) -> str:
    """Champion v1 and challenger v2 on the real MiniLM: fresh LoRA adapters (serving cost does not
    depend on the adapter's values, so no training is needed to measure it)."""
    from tuneloop.models import load_base, save_labels
    from tuneloop.registry import log_adapter, move_alias
    from tuneloop.sample_data import INTENTS
    from tuneloop.training import add_adapter

    labels = sorted(INTENTS)
    for version, alias in (("1", "champion"), ("2", "challenger")):
        adapter = config.work_dir / f"bench-adapter-{version}"
        add_adapter(load_base("classification", labels=labels), "classification", 8, seed=int(version)).save_pretrained(adapter)
        save_labels(adapter, labels)
        mv = log_adapter(config, adapter, {"note": "bench"})
        move_alias(config.model_name, alias, str(mv.version), "bench")
    return str(config.work_dir / "bench-adapter-1")


def routing_overhead(config, n: int = 5000) -> dict:
    """Per-request cost of routing (flag evaluation) and attribution (version lookup, answer object)."""
    from serving.models import AdapterBank
    from serving.service import Answer
    from tuneloop.flags import Router

    router, bank = Router(config.flag_file, config.flag_key), AdapterBank.__new__(AdapterBank)
    bank.served = {"champion": "1", "challenger": "2"}
    timings = []
    for i in range(n):
        began = time.perf_counter()
        version = bank.version_of(router.variant(f"user-{i}"))
        Answer(request_id=f"r{i}", output="x", model_version=version, variant="champion")
        timings.append(time.perf_counter() - began)
    timings.sort()
    return {"n": n, "p50_ms": timings[n // 2] * 1000, "p95_ms": timings[int(n * 0.95)] * 1000}


def rollback_under_load(base: str, config, work: Path, clients: int = 4) -> dict:
    """All users on the challenger, load running; roll back and time the first champion answer."""
    from tuneloop.flags import set_challenger_percent

    set_challenger_percent(config.flag_file, config.flag_key, 100)
    time.sleep(1)
    out = work / "rollback-load.json"
    load = subprocess.Popen([sys.executable, "-m", "bench.loadgen", f"{base}/predict", "--clients", str(clients),
                             "--seconds", "8", "--style", "service", "--out", str(out)], cwd=ROOT)
    time.sleep(3)
    issued = time.time()
    r = httpx.post(f"{base}/v1/admin/rollback", headers={"Authorization": f"Bearer {os.environ['TUNELOOP_API_TOKEN']}"}, timeout=10)
    r.raise_for_status()
    load.wait(timeout=120)
    run = json.loads(out.read_text())
    ends = [(start + latency, version) for start, latency, ok, version in run["records"] if ok]
    first_champion = min(end for end, v in ends if v == "1" and end > issued)
    last_challenger = max((end for end, v in ends if v == "2"), default=issued)
    return {"requests": run["requests"], "failed": run["failed"],
            "seconds_to_first_champion_answer": round(first_champion - issued, 3),
            "seconds_to_last_challenger_answer": round(max(0.0, last_challenger - issued), 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench serve")
    parser.add_argument("--quick", action="store_true", help="5 s per load level instead of 15 s")
    args = parser.parse_args(argv)
    seconds = 5 if args.quick else 15
    work = Path(tempfile.mkdtemp(prefix="tuneloop-bench-serve-"))
    os.environ.update(TUNELOOP_HOME=str(work), MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
                      TUNELOOP_API_TOKEN="bench-token", TUNELOOP_KIND="classification")
    from tuneloop.config import LoopConfig, apply_environment

    apply_environment(work)
    config = LoopConfig(kind="classification", home=work)
    adapter = _register_versions(config)
    from tuneloop.flags import set_challenger_percent

    set_challenger_percent(config.flag_file, config.flag_key, 10)
    results: dict = {"model": "all-MiniLM-L6-v2 + LoRA r=8 (classification, 6 labels)", "seconds_per_level": seconds,
                     "cpu_cores": os.cpu_count(), "routing_overhead": routing_overhead(config), "levels": []}
    plain_port = free_port()
    with tuneloop_service(work, "classification", TUNELOOP_TINY="false") as service:
        with server_process([sys.executable, "-m", "bench.plain_app", adapter, "--port", str(plain_port)], dict(os.environ),
                            f"http://127.0.0.1:{plain_port}/docs", work / "plain.log"):
            for clients in (1, 4, 16):
                s = _summary(_load(f"{service}/predict", clients, seconds, "service", work))
                p = _summary(_load(f"http://127.0.0.1:{plain_port}/predict", clients, seconds, "plain", work))
                results["levels"].append({"clients": clients, "service": s, "plain": p,
                                          "throughput_ratio": round(s["throughput_rps"] / p["throughput_rps"], 2)})
                print(json.dumps(results["levels"][-1]))
        results["rollback"] = rollback_under_load(service, config, work)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "levels"}, indent=2))
    return results


if __name__ == "__main__":
    main()
