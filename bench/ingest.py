"""Feedback ingest and curation benchmark.

1. Ingest: the real service on 127.0.0.1 (SQLite store, fsync on every commit), fed by a separate
   client process with 16 concurrent keep-alive clients; records/s and p50/p95/p99 latency, then a
   check that the store holds every acknowledged record. For scale, the same clients against the
   service's cheapest route (GET /livez) give the server's own ceiling on this machine.
2. Curation: ``build_dataset`` (validate, normalise, scrub, dedupe, resolve, split, write) on 10k and
   100k generated records; seconds each and the 100k/10k ratio (10 means linear).

python -m bench.ingest [--records 4000] [--clients 16] [--sizes 10000 100000]  -> bench/results/ingest.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from devtools.synthetic import DETAILS, PRODUCTS  # the same products and details as the synthetic feedback

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TOKEN = "bench-token"

QUESTIONS = [
    "what is the warranty on the {}",
    "how do I reset the {}",
    "why does my {} keep going offline",
    "where is my {} order",
    "can I return the {}",
    "how much does the {} cost",
    "pair the {} with the app",
    "the {} will not connect to wifi",
    "I was charged twice for the {}",
    "cancel the plan for my {}",
    "what battery does the {} use",
    "is the {} waterproof",
    "how long does the {} take to ship",
]
ANSWERS = [
    "The {} has a 37-month warranty.",
    "Hold the {} button for 12 seconds.",
    "Move the {} closer to the hub.",
    "Your {} ships within 2 business days.",
    "Yes, the {} can be returned within 45 days.",
]


def generate_feedback(n: int, seed: int = 0) -> list[dict]:
    """``n`` raw records shaped like production feedback: mostly distinct prompts (order numbers and
    details vary), 10 % exact repeats, 5 % typo'd near duplicates, conflicting corrections, bare
    thumbs-down, thumbs-up, personal data and 2 % malformed records."""
    rng = random.Random(seed)
    prompts: list[str] = []
    records = []
    for i in range(n):
        roll = rng.random()
        if prompts and roll < 0.10:
            prompt = rng.choice(prompts)
        elif prompts and roll < 0.15:
            base = list(rng.choice(prompts))
            base[rng.randrange(len(base))] = rng.choice("aeiourst")
            prompt = "".join(base)
        else:
            product = rng.choice(PRODUCTS)
            prompt = f"{rng.choice(QUESTIONS).format(product)} {rng.choice(DETAILS)} (order {rng.randrange(10**6):06d})"
            if rng.random() < 0.03:
                prompt += f" my email is user{rng.randrange(10**5)}@example.com"
            prompts.append(prompt)
        record = {
            "request_id": f"gen-{seed}-{i}",
            "user_id": f"user-{rng.randrange(5000)}",
            "model_version": "base",
            "kind": "generation",
            "prompt": prompt,
            "output": "I am not sure.",
            "rating": "down",
            "correction": rng.choice(ANSWERS).format(rng.choice(PRODUCTS)),
            "segment": rng.choice(["web", "mobile"]),
        }
        kind = rng.random()
        if kind < 0.10:
            del record["correction"]  # bare thumbs-down
        elif kind < 0.25:
            record.update(rating="up", output=record.pop("correction"))
        elif kind < 0.27:
            record["rating"] = rng.choice(["meh", 5, None])  # malformed: quarantined
        records.append(record)
    return records


def _insert_raw(store, records: list[dict]) -> None:
    """Bulk-load raw rows (valid or not) the way the store keeps them, bypassing per-row commits."""
    from tuneloop.data.feedback import FeedbackRow

    now = datetime.now(UTC)
    with store.engine.begin() as conn:
        for start in range(0, len(records), 5000):
            conn.execute(
                FeedbackRow.__table__.insert(),
                [
                    {"request_id": r["request_id"], "kind": r["kind"], "received_at": now, "payload": json.dumps(r)}
                    for r in records[start : start + 5000]
                ],
            )


def curation_times(sizes: list[int]) -> dict:
    """Seconds for ``build_dataset`` on each size, in a fresh SQLite store each."""
    from tuneloop.config import LoopConfig
    from tuneloop.data.feedback import FeedbackStore
    from tuneloop.flows.curate import build_dataset

    out: dict = {}
    for n in sizes:
        home = Path(tempfile.mkdtemp(prefix=f"tuneloop-bench-curate-{n}-"))
        config = LoopConfig(kind="generation", home=home)
        store = FeedbackStore(config.feedback_db)
        _insert_raw(store, generate_feedback(n))
        began = time.perf_counter()
        data = build_dataset(store, config)
        seconds = time.perf_counter() - began
        out[str(n)] = {
            "seconds": round(seconds, 2),
            "records_per_s": round(n / seconds),
            "train": len(data.train),
            "heldout": len(data.heldout),
            "counts": data.counts,
        }
        print(f"curation of {n} records: {seconds:.1f} s ({n / seconds:.0f} records/s)", flush=True)
    if len(sizes) >= 2:
        small, large = str(min(sizes)), str(max(sizes))
        out["ratio_large_to_small"] = round(out[large]["seconds"] / out[small]["seconds"], 2)
        out["size_ratio"] = max(sizes) // min(sizes)
    return out


# --- ingest ----------------------------------------------------------------------------------------


async def _clients(url: str, records: list[dict], clients: int) -> dict:
    """``clients`` concurrent keep-alive senders working through ``records``; per-request latency."""
    queue: asyncio.Queue = asyncio.Queue()
    for record in records:
        queue.put_nowait(record)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    acknowledged: list[str] = []
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as http:

        async def worker() -> None:
            while not queue.empty():
                record = queue.get_nowait()
                began = time.perf_counter()
                if record is None:  # the baseline: the server's cheapest route, no store behind it
                    response = await http.get("/livez")
                else:
                    response = await http.post("/v1/feedback", content=json.dumps(record))
                latencies.append(time.perf_counter() - began)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if record and response.status_code in (200, 201):
                    acknowledged.append(record["request_id"])

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - began
    ordered = sorted(latencies)
    pct = lambda p: ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000  # noqa: E731
    return {
        "requests": len(latencies),
        "clients": clients,
        "seconds": round(wall, 2),
        "records_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(pct(0.50), 1),
        "p95_ms": round(pct(0.95), 1),
        "p99_ms": round(pct(0.99), 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "acknowledged": acknowledged,
    }


def client_main(url: str, n: int, clients: int, out: Path) -> None:
    """The client process: a warm-up, then ``n`` fresh valid records from ``clients`` concurrent senders."""
    warm = [{**r, "request_id": f"warm-{i}"} for i, r in enumerate(_valid(generate_feedback(50, seed=1)))]
    asyncio.run(_clients(url, warm, clients))
    baseline = asyncio.run(_clients(url, [None] * (n // 2), clients))
    records = _valid(generate_feedback(int(n * 1.4), seed=2))[:n]
    result = asyncio.run(_clients(url, records, clients))
    result["baseline_livez"] = {k: baseline[k] for k in ("records_per_s", "p50_ms", "p95_ms")}
    out.write_text(json.dumps(result))


def _valid(records: list[dict]) -> list[dict]:
    """Records with a valid rating, each with the receipt the service would have given its answer
    (the key reaches this process through the environment, as it reaches the service)."""
    from tuneloop.access.receipts import ENV, sign

    key = os.environ[ENV].encode()
    return [
        {**r, "receipt": sign(key, r["request_id"], r["model_version"], r["user_id"], r.get("kind", "generation"))}
        for r in records
        if r["rating"] in ("up", "down")
    ]


def ingest(n: int, clients: int) -> dict:
    """Start the service on a fresh home, run the client process against it, check the store."""
    from devtools.localserver import tuneloop_service
    from tuneloop.access.receipts import ENV
    from tuneloop.data.feedback import FeedbackStore

    home = Path(tempfile.mkdtemp(prefix="tuneloop-bench-ingest-"))
    key = secrets.token_hex(32)  # the receipt key, shared with the client process through the environment
    # intake throughput is measured with the per-user rate limit lifted: generated records reuse few user ids
    with tuneloop_service(
        home,
        "generation",
        ready_path="/livez",
        TUNELOOP_TINY="true",
        TUNELOOP_API_TOKEN=TOKEN,
        TUNELOOP_LIMITS__FEEDBACK_PER_USER="100000000",
        **{ENV: key},
    ) as url:
        out = home / "client.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.ingest",
                "--client",
                url,
                "--records",
                str(n),
                "--clients",
                str(clients),
                "--client-out",
                str(out),
            ],
            cwd=ROOT,
            check=True,
            timeout=540,
            env={**os.environ, ENV: key},
        )
        result = json.loads(out.read_text())
    acknowledged = set(result.pop("acknowledged"))
    store = FeedbackStore(f"sqlite:///{home / 'feedback.db'}")
    missing = [rid for rid in acknowledged if store.get(rid) is None] if len(acknowledged) <= 20_000 else []
    result.update(store="sqlite (WAL, synchronous=FULL)", stored_acknowledged_missing=len(missing))
    print(
        f"ingest: {result['records_per_s']} records/s, p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms "
        f"with {clients} clients; {len(missing)} acknowledged records missing; "
        f"baseline GET /livez {result['baseline_livez']['records_per_s']} requests/s",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=4000, help="Feedback records to send in the ingest run.")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent clients.")
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000], help="Curation sizes.")
    parser.add_argument("--out", type=Path, default=RESULTS / "ingest.json")
    parser.add_argument("--client", help=argparse.SUPPRESS)  # internal: run as the client process against URL
    parser.add_argument("--client-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        client_main(args.client, args.records, args.clients, args.client_out)
        return
    from tuneloop.config import apply_environment

    apply_environment(Path(tempfile.mkdtemp(prefix="tuneloop-bench-")))
    began = time.perf_counter()
    results = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "ingest": ingest(args.records, args.clients),
        "curation": curation_times(args.sizes),
    }
    results["seconds_total"] = round(time.perf_counter() - began, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
