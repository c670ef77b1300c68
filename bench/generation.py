"""Generation defaults on several feedback sets: does a user's data get learned, not only the demo's?

python -m bench generation [--sets software clinic ...] [--settings FILE.json] [--label NAME] [--tiny]
    -> bench/results/generation[-LABEL].json and a table

Per set (``bench/feedback_sets.py``), in a fresh home, through the product's own path:

1. ``tuneloop import`` of the set's JSONL (its assistant's system prompt in ``TUNELOOP_SYSTEM_PROMPT``,
   as a user configures their own);
2. ``tuneloop run --kind generation`` with default settings (or ``--settings``: TUNELOOP_* overrides);
3. the registered version through the registry's pyfunc (``models:/tuneloop-generation@challenger``)
   answers the set's probes, phrasings of each fact that were never imported; when the gate
   registered nothing, the loop's challenger adapter answers them the same way (``adapter_model.py``'s
   load and predict), so a refused challenger is scored too. The base answers them as well.

Reported per set: facts answered right on the probes (base; tuned, as served with its memory of corrections;
and the tuned model alone, the memory set aside), the gate's verdict with its
forgetting check (diff and CI on the regression items the base knows), whether a version went live
at the canary share, the loop's minutes and what the gate said it was missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MODEL = "tuneloop-generation"


def _env(home: Path, system_prompt: str, settings: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "TUNELOOP_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "PREFECT_HOME": str(home / "prefect"),
        "TUNELOOP_SYSTEM_PROMPT": system_prompt,
        **settings,
    }


def run_set(name: str, settings: dict[str, str], tiny: bool) -> dict:
    from bench.feedback_sets import build, write

    built = build(name)
    home = Path(tempfile.mkdtemp(prefix=f"tuneloop-gen-{name}-"))
    data, probes = write(built, home / "sets")
    env = _env(home, built.domain.system_prompt, settings)
    cli = [sys.executable, "-m", "tuneloop.cli.main"]
    log = home / "loop.log"
    with open(log, "w") as out:
        subprocess.run(
            [*cli, "import", str(data), "--kind", "generation", "--no-check-versions"],
            env=env,
            check=True,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        began, cpu = time.perf_counter(), os.times()
        loop = subprocess.run(
            [*cli, "run", "--kind", "generation", *(["--tiny"] if tiny else [])],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        after = os.times()
    row = {
        "set": name,
        "about": built.about,
        "records": len(built.records),
        "facts": len(built.domain.facts),
        "probes": len(built.probes),
        "home": str(home),
        "loop_exit": loop.returncode,
        "loop_minutes": round((time.perf_counter() - began) / 60, 2),
        "loop_cpu_minutes": round(
            ((after.children_user + after.children_system) - (cpu.children_user + cpu.children_system)) / 60, 2
        ),
    }
    if loop.returncode != 0:
        row["error"] = log.read_text()[-3000:]
        return row
    scored = subprocess.run(
        [sys.executable, "-m", "bench.generation", "--score", str(home), str(probes)] + (["--tiny"] if tiny else []),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if scored.returncode != 0:
        row["error"] = scored.stderr[-3000:]
        return row
    return row | json.loads(scored.stdout.strip().splitlines()[-1])


def score(home: Path, probes_file: Path, tiny: bool) -> dict:
    """In a fresh process: the loop's outcome from MLflow and the probes answered by base and tuned."""
    os.environ["TUNELOOP_TINY"] = str(tiny).lower()
    import mlflow
    import pandas as pd

    from tuneloop.config import LoopConfig, apply_environment
    from tuneloop.eval_suites.facts import fact_accuracy
    from tuneloop.release.flags import challenger_percent

    apply_environment(home)
    config = LoopConfig(kind="generation", home=home)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(config.model_name) or client.search_experiments()[0]
    loop = client.search_runs(
        [experiment.experiment_id], "tags.`tuneloop.stage` = 'loop'", order_by=["start_time DESC"], max_results=1
    )[0]
    gate = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(run_id=loop.info.run_id, artifact_path="evaluate/gate.json")
        ).read_text()
    )
    checks = {c["name"].split(" (")[0]: c for c in gate["checks"]}
    probes = [json.loads(line) for line in probes_file.read_text().splitlines()]
    prompts = pd.DataFrame({"input": [p["prompt"] for p in probes]})
    registered = gate.get("passed", False)
    if registered:
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@challenger")
        tuned = list(model.predict(prompts))
        served = model.unwrap_python_model()  # the same version with its memory of corrections set aside
        memory, served.memory = served.memory, None
        alone = list(model.predict(prompts))
        served.memory = memory
    else:
        tuned, alone = _adapter_answers(config, loop.data.tags["challenger_run_id"], list(prompts["input"]))
    base = _base_answers(config, list(prompts["input"]))

    def rate(answers: list[str]) -> float:
        return round(sum(fact_accuracy(a, p["answer"], p["prompt"]) for a, p in zip(answers, probes)) / len(probes), 4)

    regression = checks.get("regression", {})
    tune = client.get_run(loop.data.tags["search_run_id"]) if "search_run_id" in loop.data.tags else None
    return {
        "probe_facts_base": rate(base),
        "probe_facts_tuned": rate(tuned),
        "probe_facts_model_alone": rate(alone),  # the tuned model without its memory of corrections
        "heldout_challenger": round(loop.data.metrics.get("eval.challenger.heldout.fact_accuracy", float("nan")), 4),
        "verdict": gate["verdict"],
        "registered": registered,
        "canary_percent": challenger_percent(config) if registered else 0,
        "forgetting": {k: round(regression[k], 4) for k in ("diff_mean", "diff_low", "diff_high") if k in regression}
        | {"items": regression.get("diff_n_items")},
        "reasons": gate.get("reasons", []),
        "trials": {
            "complete": tune.data.metrics.get("tune.n_complete") if tune else None,
            "pruned": tune.data.metrics.get("tune.n_pruned") if tune else None,
        },
        "best": {k.removeprefix("best_"): v for k, v in loop.data.params.items() if k.startswith("best_")},
        "stage_seconds": {
            k.removeprefix("seconds."): round(v, 1) for k, v in loop.data.metrics.items() if k.startswith("seconds.")
        },
        "answers": [
            {
                "prompt": p["prompt"],
                "reference": p["answer"],
                "base": b,
                "tuned": a,
                "right": bool(fact_accuracy(a, p["answer"], p["prompt"])),
                "model_alone": m,
                "right_model_alone": bool(fact_accuracy(m, p["answer"], p["prompt"])),
            }
            for p, a, b, m in zip(probes, tuned, base, alone)
        ],
    }


def _adapter_answers(config, run_id: str, prompts: list[str]) -> tuple[list[str], list[str]]:
    """A challenger the gate refused, loaded and answering as a registered version would (adapter_model.py),
    and its model's answers without the memory of corrections."""
    from tuneloop.modeling.adapters import load_adapter
    from tuneloop.modeling.inference import predict
    from tuneloop.modeling.memory import answered_from_memory, load_memory
    from tuneloop.search.tracking import fetch_adapter

    folder = fetch_adapter(f"runs:/{run_id}/adapter", config.work_dir / "adapters")  # evaluate's copy: its memory too
    model, tokenizer, meta, labels = load_adapter(folder)
    answers = predict("generation", model, tokenizer, prompts, labels, meta.max_new_tokens, meta.prompting)[0]
    return answered_from_memory(load_memory(folder), prompts, answers), answers


def _base_answers(config, prompts: list[str]) -> list[str]:
    from tuneloop.modeling.inference import predict
    from tuneloop.modeling.models import base_of, load_base, load_tokenizer
    from tuneloop.modeling.prompting import Prompting

    info = base_of(config)
    model = load_base(info, "generation").eval()
    return predict(
        "generation",
        model,
        load_tokenizer(info),
        prompts,
        [],
        config.max_new_tokens,
        Prompting(config.system_prompt, config.prompt_template),
    )[0]


def table(rows: list[dict]) -> str:
    lines = [
        "| set | records | probes | facts on unseen phrasings: base -> tuned (model alone) | forgetting (CI) | verdict "
        "| live | minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['set']} | {r['records']} | {r['probes']} | error | | | | {r['loop_minutes']} |")
            continue
        f = r["forgetting"]
        forgetting = f"{f['diff_mean']:+.3f} [{f['diff_low']:+.3f}, {f['diff_high']:+.3f}]" if "diff_mean" in f else "-"
        alone = r.get("probe_facts_model_alone", float("nan"))
        lines.append(
            f"| {r['set']} | {r['records']} | {r['probes']} | {r['probe_facts_base']:.2f} -> "
            f"{r['probe_facts_tuned']:.2f} ({alone:.2f}) | {forgetting} | {r['verdict']} | {r['canary_percent']} % | "
            f"{r['loop_minutes']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    from bench.feedback_sets import SETS

    parser = argparse.ArgumentParser(prog="python -m bench generation", description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS))
    parser.add_argument("--settings", type=Path, help="JSON of TUNELOOP_* settings overriding the defaults")
    parser.add_argument("--label", default="", help="suffix of the result file (e.g. the settings' name)")
    parser.add_argument("--tiny", action="store_true", help="tiny random models: the path, not the quality")
    parser.add_argument("--score", nargs=2, type=Path, metavar=("HOME", "PROBES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.score:
        print(json.dumps(score(args.score[0], args.score[1], args.tiny)))
        return []
    settings = json.loads(args.settings.read_text()) if args.settings else {}
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "settings": settings,
        "tiny": args.tiny,
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_at_start": os.getloadavg()[0],
        },
        "sets": [],
    }
    out = RESULTS / f"generation{'-' + args.label if args.label else ''}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.sets:
        print(f"-- {name}", flush=True)
        row = run_set(name, settings, args.tiny)
        result["sets"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("answers", "error")}), flush=True)
        out.write_text(json.dumps(result, indent=2))  # after every set: a long run keeps what it measured
    print(table(result["sets"]))
    print(f"wrote {out}")
    return result["sets"]


if __name__ == "__main__":
    main()
