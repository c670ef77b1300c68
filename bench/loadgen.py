"""A bounded closed-loop load generator, run as its own process (never import it into a server).

python -m bench.loadgen URL --clients 16 --seconds 10 --style service|plain --out FILE
Writes one JSON object: per-request (start, latency, ok, version) and totals.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import httpx

TEXTS = [
    "where is my Orbit camera",
    "I was charged twice for my hub",
    "cancel the plan for my smart plug",
    "my Lumo doorbell keeps going offline",
    "how do I install the Nimbus thermostat",
    "return label for Nimbus Pro",
]


def payload(style: str, worker: int, n: int) -> dict:
    text = TEXTS[(worker + n) % len(TEXTS)]
    if style == "service":
        return {"requests": [{"user_id": f"bench-{worker}-{n % 50}", "input": text, "request_id": f"b{worker}-{n}"}]}
    return {"text": text}


def run(url: str, clients: int, seconds: float, style: str) -> dict:
    records: list[tuple[float, float, bool, str | None]] = []
    lock = threading.Lock()
    began, wall_began = time.perf_counter(), time.time()
    deadline = began + seconds

    def client(worker: int) -> None:
        n = 0
        with httpx.Client(timeout=60) as http:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                version, ok = None, False
                try:
                    r = http.post(url, json=payload(style, worker, n))
                    ok = r.status_code == 200
                    if ok and style == "service":
                        version = r.json()[0]["model_version"]
                except httpx.HTTPError:
                    ok = False
                with lock:  # wall-clock start, so the caller can line requests up with its own events
                    records.append((wall_began + (start - began), time.perf_counter() - start, ok, version))
                n += 1

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    return {
        "clients": clients,
        "seconds": elapsed,
        "requests": len(records),
        "failed": sum(not ok for _, _, ok, _ in records),
        "records": records,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--style", choices=["service", "plain"], default="service")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.out, "w") as f:
        json.dump(run(args.url, args.clients, args.seconds, args.style), f)


if __name__ == "__main__":
    main()
