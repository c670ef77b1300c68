"""Serving benchmark on the real weights, for both task kinds: the tuneloop service vs a plain
transformers pipeline behind FastAPI on the same model (throughput, p50/p95 at 1/4/16 clients, and
whether both give the same answers); the routing+attribution overhead; and the time from a rollback
to the first answer by the champion under load, with failed requests counted.

python -m bench serve [--quick] [--kind classification generation] [--rounds 2]   -> bench/results/serve.json
Load generators run as separate processes against 127.0.0.1, each bounded in time. Each load level
runs ``--rounds`` times per server, service and plain app alternating, and the rounds are pooled.
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


def _summary(*runs: dict) -> dict:
    """Throughput and latency percentiles over one or more runs at one load level (pooled)."""
    latencies = sorted(r[1] for run in runs for r in run["records"] if r[2])
    pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else None  # noqa: E731
    seconds = sum(run["seconds"] for run in runs)
    return {"clients": runs[0]["clients"], "requests": sum(run["requests"] for run in runs),
            "failed": sum(run["failed"] for run in runs), "throughput_rps": round(len(latencies) / seconds, 2),
            "p50_ms": pct(0.50), "p95_ms": pct(0.95),
            "rounds_rps": [round(sum(r[2] for r in run["records"]) / run["seconds"], 2) for run in runs]}


def _register_versions(config) -> str:
    """Champion v1 and challenger v2 on the real weights: fresh LoRA adapters (serving cost does not
    depend on the adapter's values, so no training is needed to measure it)."""
    from tuneloop.models import load_base, save_labels
    from tuneloop.registry import log_adapter, move_alias
    from tuneloop.sample_data import INTENTS
    from tuneloop.training import add_adapter

    labels = sorted(INTENTS) if config.kind == "classification" else None
    for version, alias in (("1", "champion"), ("2", "challenger")):
        adapter = config.work_dir / f"bench-{config.kind}-adapter-{version}"
        add_adapter(load_base(config.kind, labels=labels), config.kind, 8, seed=int(version)).save_pretrained(adapter)
        if labels:
            save_labels(adapter, labels)
        mv = log_adapter(config, adapter, {"note": "bench"})
        move_alias(config.model_name, alias, str(mv.version), "bench")
    return str(config.work_dir / f"bench-{config.kind}-adapter-1")


def _same_answers(service: str, plain: str) -> dict:
    """Both servers answer the load's prompts alike (the champion is the plain app's model)."""
    from bench.loadgen import TEXTS

    agree = 0
    for i, text in enumerate(TEXTS):
        a = httpx.post(f"{service}/predict", json={"requests": [{"user_id": f"check-{i}", "input": text}]}, timeout=120).json()[0]
        b = httpx.post(f"{plain}/predict", json={"text": text}, timeout=120).json()
        agree += a["output"] == b["output"]
    return {"prompts": len(TEXTS), "same_answer": agree}


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


MODELS = {"classification": "all-MiniLM-L6-v2 + LoRA r=8 (6 labels)",
          "generation": "SmolLM2-135M-Instruct + LoRA r=8, greedy, {n} new tokens"}


def bench_kind(kind: str, seconds: float, work: Path, max_new_tokens: int, rounds: int = 2) -> dict:
    """Service vs plain pipeline at 1/4/16 clients for one task kind (champion = plain app's model)."""
    from tuneloop.config import LoopConfig
    from tuneloop.flags import set_challenger_percent

    config = LoopConfig(kind=kind, home=work, max_new_tokens=max_new_tokens)
    adapter = _register_versions(config)
    set_challenger_percent(config.flag_file, config.flag_key, 10)
    results: dict = {"model": MODELS[kind].format(n=max_new_tokens), "seconds_per_level": seconds, "rounds": rounds,
                     "levels": []}
    plain_port = free_port()
    plain = f"http://127.0.0.1:{plain_port}"
    env = dict(TUNELOOP_TINY="false", TUNELOOP_MAX_NEW_TOKENS=str(max_new_tokens))
    with tuneloop_service(work, kind, **env) as service:
        with server_process([sys.executable, "-m", "bench.plain_app", adapter, "--kind", kind, "--port", str(plain_port),
                             "--max-new-tokens", str(max_new_tokens)], dict(os.environ), f"{plain}/docs", work / f"plain-{kind}.log"):
            # 90 % of users are on the champion; the check pins answers to users that hash there
            set_challenger_percent(config.flag_file, config.flag_key, 0)
            time.sleep(0.5)
            results["answers"] = _same_answers(service, plain)
            set_challenger_percent(config.flag_file, config.flag_key, 10)
            for clients in (1, 4, 16):
                runs: dict[str, list] = {"service": [], "plain": []}
                for _ in range(rounds):  # alternating, so a noisy neighbour hits both alike
                    runs["service"].append(_load(f"{service}/predict", clients, seconds, "service", work))
                    runs["plain"].append(_load(f"{plain}/predict", clients, seconds, "plain", work))
                s, p = _summary(*runs["service"]), _summary(*runs["plain"])
                results["levels"].append({"clients": clients, "service": s, "plain": p,
                                          "throughput_ratio": round(s["throughput_rps"] / p["throughput_rps"], 2)})
                print(json.dumps({"kind": kind, **results["levels"][-1]}), flush=True)
        if kind == "classification":  # the rollback path is the same for both kinds; time it where answers are fast
            results["routing_overhead"] = routing_overhead(config)
            results["rollback"] = rollback_under_load(service, config, work)
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench serve")
    parser.add_argument("--quick", action="store_true", help="shorter load levels (5 s / 12 s instead of 15 s / 30 s)")
    parser.add_argument("--kind", nargs="*", choices=["classification", "generation"], default=["classification", "generation"])
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length for generation (both servers)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating service/plain runs per load level, pooled")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tuneloop-bench-serve-"))
    os.environ.update(TUNELOOP_HOME=str(work), MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
                      TUNELOOP_API_TOKEN="bench-token")
    from tuneloop.config import apply_environment

    apply_environment(work)
    results: dict = {"cpu_cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}
    for kind in args.kind:
        seconds = (5 if args.quick else 15) if kind == "classification" else (12 if args.quick else 30)
        results[kind] = bench_kind(kind, seconds, work, args.max_new_tokens, 1 if args.quick else args.rounds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "serve.json"
    if set(args.kind) != {"classification", "generation"} and path.exists():  # one kind updates its part of the last run
        results = {**json.loads(path.read_text()), **results}
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "levels"} if isinstance(v, dict) else v
                      for k, v in results.items()}, indent=2))
    return results


if __name__ == "__main__":
    main()
