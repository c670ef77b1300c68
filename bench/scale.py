"""The whole loop at real sizes: 15,000 and 100,000 generated feedback records of each kind, plus
curation of a million, on this machine.

python -m bench scale [--sizes 15000 100000] [--kinds classification generation] [--million]
    -> bench/results/scale.json

Per (kind, size), in a fresh process and home: ``tuneloop import`` of a JSONL file, then the loop on
tiny models (the pipeline's own cost, not the model's: a fixed trial budget, the winner then trained
on the whole split) with seconds and peak resident memory per stage, and what Prefect stored: the
flow runs' parameter bytes and the growth of Prefect's database during the run. The per-stage
ratios 100k/15k are printed next to the records ratio (linear growth: the same ratio; tune grows
with its final training over the whole split, which is linear in the records, while the trials stay
within their budget). ``--million`` also curates 1,000,000 generation records alone (seconds and
peak memory), to show memory stays bounded.
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

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _tune(kind: str) -> dict:
    """A fixed budget whatever the data size: 3 trials of 40 steps at batch 64, one epoch for the winner."""
    return dict(
        n_trials=3,
        trial_steps=40,
        min_trial_coverage=0.001,
        batch_size=64,
        epochs=1,
        ranks=[8, 16],
        first_trial={"rank": 8, "lr": 0.02},
        lr_min=0.005,
        lr_max=0.05,
        evals_per_trial=2,
        validation_examples=64,
    )


def run_one(kind: str, n: int, out: Path) -> None:
    """In this (fresh) process: import, then the loop, measuring each stage."""
    from tuneloop.config import LoopConfig, TuneConfig, apply_environment

    home = apply_environment(Path(tempfile.mkdtemp(prefix=f"tuneloop-scale-{kind}-{n}-")))
    from prefect.testing.utilities import prefect_test_harness

    from devtools import synthetic
    from tuneloop.data.feedback import FeedbackStore
    from tuneloop.data.feedback_import import import_feedback
    from tuneloop.search.tracking import current_rss_mb, peak_memory

    config = LoopConfig(
        kind=kind,
        home=home,
        tiny=True,
        max_new_tokens=8,
        tune=TuneConfig(**_tune(kind)),
        gate={"max_heldout_examples": 1000},
    )
    source = home / "feedback.jsonl"
    with open(source, "w") as f:
        for record in synthetic.feedback(kind, n, seed=3):
            f.write(json.dumps(record) + "\n")
    row: dict = {"kind": kind, "records": n, "stages": {}}
    with peak_memory() as memory:
        began = time.perf_counter()
        report = import_feedback(FeedbackStore(config.feedback_db), source, kind)
        row["stages"]["import"] = {"seconds": round(time.perf_counter() - began, 2)}
    row["stages"]["import"]["peak_rss_mb"] = round(memory["peak_rss_mb"])
    row["imported"] = {"stored": report.stored, "rejected": len(report.rejected)}
    with prefect_test_harness(server_startup_timeout=180):
        from prefect.settings import PREFECT_HOME

        db = Path(PREFECT_HOME.value()) / "prefect.db"
        db_before = _size(db)
        from tuneloop.flows import loop as loop_module

        stage_memory = _instrument(loop_module, peak_memory)
        began = time.perf_counter()
        result = loop_module.loop(config)
        row["loop_seconds"] = round(time.perf_counter() - began, 1)
        row["prefect"] = {"db_dump_growth_bytes": _size(db) - db_before, "flow_run_parameter_bytes": _parameter_bytes()}
    for stage, seconds in result.seconds.items():
        row["stages"][stage] = {"seconds": round(seconds, 2), "peak_rss_mb": round(stage_memory.get(stage, 0))}
    row["dataset"] = result.data.sizes | {"labels": result.data.n_labels}
    row["tune"] = {
        "complete": result.tuned.n_complete,
        "pruned": result.tuned.n_pruned,
        "steps_trained_in_trials": result.tuned.steps_trained,
    }
    row["gate"] = {"passed": result.report.passed, "reasons": result.report.reasons}
    row["rss_end_mb"] = round(current_rss_mb())
    out.write_text(json.dumps(row))


def _instrument(loop_module, peak_memory) -> dict[str, float]:
    """Wrap the loop's stage functions so each stage's peak resident memory is recorded."""
    seen: dict[str, float] = {}

    def wrap(stage: str, fn):
        def measured(*args, **kwargs):
            with peak_memory() as memory:
                out = fn(*args, **kwargs)
            seen[stage] = memory["peak_rss_mb"]
            return out

        return measured

    for stage in ("curate", "tune", "evaluate", "register", "deploy"):
        setattr(loop_module, stage, wrap(stage, getattr(loop_module, stage)))
    return seen


def _size(path: Path) -> int:
    """Bytes of what Prefect's database holds: the length of its SQL dump (file sizes move in whole pages)."""
    import sqlite3

    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        return sum(len(line) for line in db.iterdump())


def _parameter_bytes() -> dict[str, int]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {f"{run.name}": len(json.dumps(run.parameters, default=str).encode()) for run in client.read_flow_runs()}


def curate_million(n: int, out: Path) -> None:
    """Curation alone on ``n`` generation records (bulk-loaded raw rows), with its peak memory."""
    from tuneloop.config import LoopConfig, apply_environment

    home = apply_environment(Path(tempfile.mkdtemp(prefix=f"tuneloop-scale-curate-{n}-")))
    from devtools import synthetic
    from tuneloop.data.feedback import FeedbackRow, FeedbackStore
    from tuneloop.flows.curate import build_dataset
    from tuneloop.search.tracking import peak_memory

    config = LoopConfig(kind="generation", home=home)
    store = FeedbackStore(config.feedback_db)
    batch: list[dict] = []
    with store.engine.begin() as conn:
        for record in synthetic.feedback("generation", n, seed=5):
            batch.append({"request_id": record["request_id"], "kind": "generation", "payload": json.dumps(record)})
            if len(batch) == 10_000:
                conn.execute(FeedbackRow.__table__.insert(), batch)
                batch = []
        if batch:
            conn.execute(FeedbackRow.__table__.insert(), batch)
    with peak_memory() as memory:
        began = time.perf_counter()
        ref = build_dataset(store, config)
        seconds = time.perf_counter() - began
    out.write_text(
        json.dumps(
            {
                "records": n,
                "seconds": round(seconds, 1),
                "peak_rss_mb": round(memory["peak_rss_mb"]),
                "sizes": ref.sizes,
                "counts": ref.counts,
            }
        )
    )


def _in_process(args: list[str], timeout: float = 7200) -> dict:
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    subprocess.run(
        [sys.executable, "-m", "bench.scale", *args, "--out-row", str(out)], cwd=ROOT, check=True, timeout=timeout
    )
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[15_000, 100_000])
    parser.add_argument("--kinds", nargs="*", default=["classification", "generation"])
    parser.add_argument("--million", action="store_true", help="also curate 1,000,000 generation records")
    parser.add_argument("--curate-sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: KIND N in a fresh process
    parser.add_argument("--curate-only", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out-row", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run_one(args.one[0], int(args.one[1]), args.out_row)
        return {}
    if args.curate_only:
        curate_million(args.curate_only, args.out_row)
        return {}
    began = time.perf_counter()
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]},
        "trial_budget": _tune("classification"),
        "runs": [],
    }
    for kind in args.kinds:
        for n in args.sizes:
            row = _in_process(["--one", kind, str(n)])
            results["runs"].append(row)
            print(json.dumps({k: row[k] for k in ("kind", "records", "loop_seconds", "stages", "prefect")}), flush=True)
        rows = [r for r in results["runs"] if r["kind"] == kind]
        if len(rows) >= 2:
            small, large = rows[0], rows[-1]
            results.setdefault("ratios", {})[kind] = {
                "records": round(large["records"] / small["records"], 2),
                **{
                    stage: round(large["stages"][stage]["seconds"] / max(small["stages"][stage]["seconds"], 1e-3), 2)
                    for stage in large["stages"]
                    if stage in small["stages"]
                },
            }
            print(json.dumps({"ratios": results["ratios"][kind], "kind": kind}), flush=True)
    if args.million:
        results["curation"] = [_in_process(["--curate-only", str(n)]) for n in args.curate_sizes]
        for row in results["curation"]:
            print(json.dumps({k: row[k] for k in ("records", "seconds", "peak_rss_mb")}), flush=True)
    results["seconds_total"] = round(time.perf_counter() - began, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS / 'scale.json'}")
    return results


if __name__ == "__main__":
    main()
