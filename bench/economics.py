"""What it costs and whether the alarms mean what they say: the live guard's false-rollback rate in
simulated A/A canaries and its detection delay for a 2x worse challenger, the scheduled trigger's
measured no-op (idle) cost, the drift statistic on planted and same-domain windows, and the
crossover report for seed-like prices.

python -m bench economics [--quick] [--serve generation classification]   -> bench/results/economics.json
``--serve``: also the serving cost per 1,000 answers of each named kind on the real weights (the
service's own gauge after a closed-loop load, and the same from the measured throughput).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BANKING77 = ROOT.parent / "shared" / "datasets" / "banking77" / "banking77_test.csv"


def guard(quick: bool) -> dict:
    """A/A false-rollback rates (checked at every record) and detection delays, seeded and bounded."""
    from tuneloop.config import DeployConfig
    from tuneloop.release.sequential import simulate

    deploy = DeployConfig()
    runs = 300 if quick else 1000
    out: dict = {"tau": deploy.guard_mixture_scale, "min_samples": deploy.min_samples, "aa": [], "detection": []}
    for alpha in (0.05, deploy.guard_alpha):
        for rate, share in ((0.02, 0.1), (0.1, 0.1), (0.1, 0.5), (0.3, 0.1)):
            sim = simulate(
                rate,
                rate,
                share=share,
                observations=3000 if quick else 20000,
                runs=runs,
                alpha=alpha,
                tau=deploy.guard_mixture_scale,
                min_samples=deploy.min_samples,
                seed=11,
            )
            out["aa"].append(
                {
                    "alpha": alpha,
                    "rate": rate,
                    "share": share,
                    "runs": sim.runs,
                    "records": sim.observations,
                    "false_rollback_rate": sim.rollback_rate,
                    "repeated_z_test_rate": sim.rollback_rate_z,
                }
            )
            print(json.dumps(out["aa"][-1]), flush=True)
    for rate, share in ((0.05, 0.1), (0.1, 0.1), (0.1, 0.5), (0.2, 0.1)):
        sim = simulate(
            rate,
            2 * rate,
            share=share,
            observations=20000,
            runs=100 if quick else 300,
            alpha=deploy.guard_alpha,
            tau=deploy.guard_mixture_scale,
            min_samples=deploy.min_samples,
            seed=12,
        )
        out["detection"].append(
            {
                "alpha": deploy.guard_alpha,
                "champion_rate": rate,
                "challenger_rate": 2 * rate,
                "share": share,
                "runs": sim.runs,
                "rolled_back": sim.rollback_rate,
                "challenger_records_median": sim.median_delay_challenger,
                "challenger_records_p90": sim.p90_delay_challenger,
                "all_records_median": sim.median_delay,
            }
        )
        print(json.dumps(out["detection"][-1]), flush=True)
    return out


def trigger_idle(runs: int) -> dict:
    """The no-op trigger, each run in a fresh interpreter against one Prefect server (as a deployment runs
    it): the cost it records in trigger_runs (the flow body) and the whole process's CPU."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from tuneloop.config import LoopConfig
    from tuneloop.data.feedback import FeedbackStore
    from tuneloop.data.ops_tables import TriggerRunRow

    home = Path(tempfile.mkdtemp(prefix="tuneloop-bench-trigger-"))
    config = LoopConfig(kind="classification", home=home)
    FeedbackStore(config.feedback_db).add_many_raw(
        [
            {
                "request_id": f"r{i}",
                "user_id": "u",
                "model_version": "base",
                "kind": "classification",
                "prompt": f"where is parcel {i}",
                "output": "billing",
                "rating": "down",
                "correction": "shipping_status",
            }
            for i in range(20)
        ],
        "classification",
    )
    script = (
        "from tuneloop.flows.trigger import trigger; from tuneloop.config import LoopConfig; "
        f"trigger(LoopConfig(kind='classification', home={str(home)!r}))"
    )
    process_cpu, walls = [], []
    with prefect_test_harness(server_startup_timeout=120):
        env = {
            **os.environ,
            "PREFECT_API_URL": PREFECT_API_URL.value(),
            "TUNELOOP_HOME": str(home),
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        }
        for _ in range(runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            began = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", script], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300
            )
            walls.append(time.perf_counter() - began)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            process_cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    with Session(FeedbackStore(config.feedback_db).engine) as session:
        rows = list(session.scalars(select(TriggerRunRow).order_by(TriggerRunRow.id)))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    prices = config.cost
    body_usd = mean([r.cost_usd for r in rows])
    process_usd = mean(process_cpu) / 3600 * prices.cpu_hour
    return {
        "runs": runs,
        "recorded_cpu_s_mean": mean([r.cpu_seconds for r in rows]),
        "recorded_wall_s_mean": mean([r.wall_seconds for r in rows]),
        "recorded_usd_mean": body_usd,
        "process_cpu_s_mean": mean(process_cpu),
        "process_wall_s_mean": mean(walls),
        "process_usd_mean": process_usd,
        "cpu_hour": prices.cpu_hour,
        "runs_per_month": prices.trigger_runs_per_month,
        "usd_per_month_recorded": body_usd * prices.trigger_runs_per_month,
        "usd_per_month_whole_process": process_usd * prices.trigger_runs_per_month,
    }


def drift(windows: int = 3, size: int = 40) -> dict:
    """MMD^2 and p-values of banking77 windows and of same-domain (Brightwell) windows against a
    reference of Brightwell prompts (skipped without banking77)."""
    if not BANKING77.exists():
        return {"skipped": f"banking77 not at {BANKING77}"}
    from tuneloop.data.sample_data import sample_feedback
    from tuneloop.release.drift import build_reference, mmd_test, shared_encoder

    prompts = sorted(
        {
            r["prompt"]
            for k in ("generation", "classification")
            for r in sample_feedback(k)
            if isinstance(r.get("prompt"), str) and r["prompt"].strip() and len(r["prompt"]) < 500
        }
    )
    random.Random(0).shuffle(prompts)
    with open(BANKING77, newline="") as f:
        bank = [row["text"] for row in csv.DictReader(f)]
    random.Random(0).shuffle(bank)
    encoder = shared_encoder()
    reference = build_reference(prompts[:130], encoder=encoder)
    out = {"reference": 130, "window": size, "same_domain": [], "banking77": []}
    for name, texts in (("same_domain", prompts[130:]), ("banking77", bank)):
        for w in range(windows):
            r = mmd_test(encoder.embed(texts[w * size : (w + 1) * size]), reference, 200, 0.01, seed=w)
            out[name].append({"mmd2": round(r.statistic, 5), "p_value": round(r.p_value, 4), "drifted": r.drifted})
    return out


def crossover_examples() -> dict:
    """The report for seed-like prices ($2,500 budget, hosted $0.005 a call, 200k calls a month)."""
    from tuneloop.costs.economics import crossover

    seed = crossover(2500, 5.0, 0.5, 200_000)
    with_loop = crossover(2500, 5.0, 0.5, 200_000, monthly_loop=60)
    return {
        "seed_like": {
            "summary": seed.summary(),
            "break_even_calls": seed.break_even_calls,
            "break_even_months": seed.break_even_months,
        },
        "seed_like_with_60_usd_a_month_loop": {
            "summary": with_loop.summary(),
            "break_even_months": with_loop.break_even_months,
        },
    }


def _fresh_versions(config) -> str:
    """Champion v1 on the kind's real base: a fresh LoRA adapter (serving cost does not depend on its values)."""
    from tuneloop.data.sample_data import INTENTS
    from tuneloop.modeling.adapters import write_meta
    from tuneloop.modeling.models import DEFAULT_TARGETS, base_of, load_base, lora_targets, save_labels
    from tuneloop.modeling.training import add_adapter
    from tuneloop.registry.versions import log_adapter, move_alias

    info = base_of(config)
    labels = sorted(INTENTS) if config.kind == "classification" else None
    base = load_base(info, config.kind, labels)
    adapter = config.work_dir / "bench-economics-adapter"
    add_adapter(base, config.kind, 8, seed=1, targets=lora_targets(base, DEFAULT_TARGETS[config.kind])).save_pretrained(
        adapter
    )
    write_meta(adapter, config, info)
    if labels:
        save_labels(adapter, labels)
    version = str(log_adapter(config, adapter, {"note": "bench economics"}).version)
    move_alias(config.model_name, "champion", version, "bench economics", config=config)
    return version


def serving(kind: str, seconds: float, clients: int = 4, max_new_tokens: int = 16) -> dict:
    """USD per 1,000 answers of the real service for ``kind`` under a closed-loop load of ``clients``:
    the service's own gauge (model busy time x one worker's price) and the whole machine's price over
    the measured throughput."""
    import re

    import httpx

    from devtools.localserver import tuneloop_service
    from tuneloop.config import LoopConfig
    from tuneloop.costs.cost import cost_per_1k_from_throughput, machine_price_per_hour

    work = Path(tempfile.mkdtemp(prefix=f"tuneloop-bench-econ-{kind}-"))
    os.environ.update(TUNELOOP_HOME=str(work), MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    config = LoopConfig(kind=kind, home=work, max_new_tokens=max_new_tokens)
    version = _fresh_versions(config)
    out_file = work / "load.json"
    with tuneloop_service(
        work,
        kind,
        TUNELOOP_TINY="false",
        TUNELOOP_MAX_NEW_TOKENS=str(max_new_tokens),
        TUNELOOP_DEPLOY__GUARD_INTERVAL_S="1",
        TUNELOOP_API_TOKEN="bench",
    ) as base:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.loadgen",
                f"{base}/predict",
                "--clients",
                str(clients),
                "--seconds",
                str(seconds),
                "--style",
                "service",
                "--out",
                str(out_file),
            ],
            cwd=ROOT,
            check=True,
            timeout=seconds + 300,
        )
        time.sleep(2.5)  # the guard thread publishes the gauge every second
        text = httpx.get(f"{base}/metrics", timeout=10).text
    load = json.loads(out_file.read_text())
    ok = sum(1 for r in load["records"] if r[2])
    rps = ok / load["seconds"]
    gauge = re.search(r'tuneloop_cost_per_1k_inferences_usd\{version="%s"\} (\S+)' % version, text)
    price = machine_price_per_hour(config.cost)
    return {
        "kind": kind,
        "clients": clients,
        "seconds": load["seconds"],
        "answers": ok,
        "failed": load["failed"],
        "throughput_rps": round(rps, 2),
        "max_new_tokens": max_new_tokens if kind == "generation" else None,
        "usd_per_1k_service_gauge": float(gauge.group(1)) if gauge else None,
        "usd_per_1k_machine_over_throughput": cost_per_1k_from_throughput(rps, price),
        "machine_usd_per_hour": price,
        "cpu_hour": config.cost.cpu_hour,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench economics")
    parser.add_argument("--quick", action="store_true", help="smaller simulations and fewer trigger runs")
    parser.add_argument(
        "--serve",
        nargs="*",
        choices=["classification", "generation"],
        default=[],
        help="also measure the serving cost per 1,000 answers of these kinds on the real weights",
    )
    args = parser.parse_args(argv)
    results = {"cpu_cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0], "guard": guard(args.quick)}
    results["trigger_idle"] = trigger_idle(2 if args.quick else 5)
    print(json.dumps(results["trigger_idle"]), flush=True)
    results["drift"] = drift()
    print(json.dumps(results["drift"]), flush=True)
    results["crossover"] = crossover_examples()
    results["serving"] = [serving(kind, 20 if args.quick else 60) for kind in args.serve]
    for figures in results["serving"]:
        print(json.dumps(figures), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "economics.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results["crossover"], indent=2))
    return results


if __name__ == "__main__":
    main()
