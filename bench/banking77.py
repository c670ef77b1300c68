"""BANKING77 through the product's own path, beside a plain peft + torch script on the same data.

python -m bench banking77 [--settings FILE.json] [--skip-plain] [--skip-open-set] [--skip-closed-set] [--out FILE]
    -> bench/results/banking77.json

1. Closed set. The train split (10,003 utterances, 77 intents; ../shared/datasets/banking77, CC-BY-4.0,
   Casanueva et al. 2020) becomes router feedback: a weak router (the bundled MiniLM encoder zero-shot:
   each utterance goes to the intent whose name it is closest to) answers each utterance; thumbs-up when
   it is right, thumbs-down with the right intent otherwise. ``tuneloop import`` stores the file;
   ``tuneloop run --kind classification`` runs the whole loop with the classification defaults and the
   data-size settings below; the registered version, through the registry's pyfunc, labels the 3,080
   test utterances. Goal: >= 93.4 % (the data set paper's best full-data figure) with <= 10 CPU-minutes
   of training on 2 cores.
2. The plain loop: ``bench/router_study.py`` as a user would run it (every utterance of the train split,
   3 epochs, batches padded to their longest row, 2 threads), on the same test split.
3. Open set: a quarter of the intents (every fourth in sorted order: deterministic) never appear in the
   feedback; the loop trains on the rest, and its out-of-scope threshold is the product's calibration.
   On the whole test split: in-scope accuracy, out-of-scope recall and precision (the fallback label as
   the positive class), in-scope fallback rate. Goal: recall >= 80 % at <= 5 % in-scope fallback.
Reported: accuracies, training CPU-seconds (trials and final training, process CPU time) and examples
per second, the plain loop's, stage seconds. Figures: docs/benchmarks/classification.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DATA = ROOT.parent / "shared" / "datasets" / "banking77"

# The loop's settings for this run, as the environment a user would export (see README, BANKING77).
# Only what the data's size asks for: the recipe (targets, rank, rates, pooler, batch, length, retraining on
# train + validation) is the classification default (tuneloop/config/tune.py CLASSIFICATION_TUNE).
SETTINGS = {
    "TUNELOOP_HELDOUT_PERCENT": "5",  # 500 held-out utterances: the gate's CI about +-3 points, more to train on
    "TUNELOOP_VALIDATION_PERCENT": "5",  # ~500: half joins the final training, half sets the threshold
    "TUNELOOP_TUNE__N_TRIALS": "2",
    "TUNELOOP_TUNE__TRIAL_STEPS": "20",  # a trial sees 640 utterances (7 % of the train split): a divergence check
    "TUNELOOP_TUNE__EPOCHS": "3",  # 9,250 utterances x 3 at ~74 a CPU-second (attention): ~360 CPU-s (classification.md)
    "TUNELOOP_TUNE__VALIDATION_EXAMPLES": "250",
    "OMP_NUM_THREADS": "1",  # a second thread cost 2.4x to 5.7x the CPU time on shared cores (classification.md)
}
# The closed set has no out-of-scope input, so a user routing it switches the fallback off: with it on, the
# threshold sends the least confident 5 % of in-scope utterances to the fallback, and those count as wrong.
CLOSED_SET = {"TUNELOOP_FALLBACK_LABEL": ""}
PLAIN = ["--epochs", "3", "--bucket", "0", "--threads", "2", "--rank", "8", "--lr", "2e-3"]
FALLBACK = "out_of_scope"


def read(name: str) -> list[tuple[str, str]]:
    with open(DATA / name, newline="") as f:
        return [(row["text"], row["category"]) for row in csv.DictReader(f)]


def weak_router(texts: list[str], intents: list[str]) -> list[str]:
    """Zero-shot routing by the bundled encoder: the intent whose name is nearest (mean-pooled MiniLM)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tuneloop.modeling.models import resolve_base

    path = resolve_base("classification").path
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    @torch.inference_mode()
    def embed(batch: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(batch), 256):
            enc = tokenizer(batch[i : i + 256], padding=True, truncation=True, max_length=64, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1)
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out)

    names = embed([i.replace("_", " ") for i in intents])
    return [intents[j] for j in (embed(texts) @ names.T).argmax(-1).tolist()]


def unknown_intents(intents: list[str]) -> set[str]:
    """The open-set protocol's held-out quarter: every fourth intent in sorted order."""
    return {intent for i, intent in enumerate(sorted(intents)) if i % 4 == 3}


def feedback_file(path: Path, unknown: set[str] = frozenset()) -> dict:
    train = [(t, c) for t, c in read("banking77_train.csv") if c not in unknown]
    intents = sorted({c for _, c in train})
    routed = weak_router([t for t, _ in train], intents)
    with open(path, "w") as f:
        for i, ((text, intent), answer) in enumerate(zip(train, routed)):
            record = {
                "request_id": f"b77-{i}",
                "user_id": f"user-{i % 997}",
                "model_version": "base",
                "kind": "classification",
                "prompt": text,
                "output": answer,
                "rating": "up" if answer == intent else "down",
            }
            if answer != intent:
                record["correction"] = intent
            f.write(json.dumps(record) + "\n")
    right = sum(a == c for a, (_, c) in zip(routed, train))
    return {"records": len(train), "intents": len(intents), "weak_router_accuracy": round(right / len(train), 4)}


def run(home: Path, settings: dict[str, str]) -> dict:
    env = {
        **os.environ,
        "TUNELOOP_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "PREFECT_HOME": str(home / "prefect"),
        **settings,
    }
    tuneloop = [sys.executable, "-m", "tuneloop.cli.main"]
    began = time.perf_counter()
    subprocess.run(
        [*tuneloop, "import", str(home / "feedback.jsonl"), "--kind", "classification", "--no-check-versions"],
        env=env,
        check=True,
        cwd=ROOT,
    )
    imported = time.perf_counter() - began
    began, cpu = time.perf_counter(), os.times()
    subprocess.run([*tuneloop, "run", "--kind", "classification"], env=env, check=True, cwd=ROOT)
    after = os.times()
    return {
        "import_seconds": round(imported, 1),
        "loop_seconds": round(time.perf_counter() - began, 1),
        "loop_cpu_seconds": round(
            (after.children_user + after.children_system) - (cpu.children_user + cpu.children_system), 1
        ),
    }


def open_set_metrics(truth: list[str], predicted: list[str], unknown: set[str], fallback: str = FALLBACK) -> dict:
    """In-scope accuracy (a fallback counts as wrong), in-scope fallback rate, and out-of-scope recall and
    precision with the fallback label as the positive class."""
    inside = [(t, p) for t, p in zip(truth, predicted) if t not in unknown]
    outside = [p for t, p in zip(truth, predicted) if t in unknown]
    flagged = [t for t, p in zip(truth, predicted) if p == fallback]
    share = lambda hits, n: round(hits / n, 4) if n else None  # noqa: E731
    return {
        "in_scope": len(inside),
        "out_of_scope": len(outside),
        "in_scope_accuracy": share(sum(t == p for t, p in inside), len(inside)),
        "in_scope_fallback_rate": share(sum(p == fallback for _, p in inside), len(inside)),
        "out_of_scope_recall": share(sum(p == fallback for p in outside), len(outside)),
        "out_of_scope_precision": share(sum(t in unknown for t in flagged), len(flagged)),
    }


def score(home: Path, unknown: set[str] = frozenset()) -> dict:
    """The registered version (challenger, else champion) on the official test split, through its pyfunc."""
    os.environ.update(MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}", TUNELOOP_HOME=str(home))
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])  # the open-set run scores another home's registry
    client = mlflow.MlflowClient()
    model = client.get_registered_model("tuneloop-classification")
    alias = "challenger" if "challenger" in model.aliases else "champion"
    version = client.get_model_version_by_alias("tuneloop-classification", alias)
    test = read("banking77_test.csv")
    loaded = mlflow.pyfunc.load_model(f"models:/tuneloop-classification@{alias}")
    began, cpu = time.perf_counter(), time.process_time()
    predicted = list(loaded.predict(pd.DataFrame({"input": [t for t, _ in test]})))
    scoring_cpu = time.process_time() - cpu
    right = sum(p == c for p, (_, c) in zip(predicted, test))
    loop = mlflow.get_run(version.tags["loop_run_id"])
    search = mlflow.get_run(loop.data.tags["search_run_id"])
    children = mlflow.search_runs(
        [loop.info.experiment_id], f"tags.mlflow.parentRunId = '{search.info.run_id}'", output_format="list"
    )
    training = {r.info.run_name.split(" ")[0]: round(r.data.metrics.get("wall_seconds", 0), 1) for r in children}
    cpu = {r.info.run_name.split(" ")[0]: round(r.data.metrics.get("cpu_seconds", 0), 1) for r in children}
    rates = {r.info.run_name.split(" ")[0]: round(r.data.metrics.get("examples_per_second", 0), 1) for r in children}
    result = {
        "version": version.version,
        "alias": alias,
        "test_utterances": len(test),
        "test_accuracy": round(right / len(test), 4),
        "scoring_seconds": round(time.perf_counter() - began, 1),
        "scoring_examples_per_cpu_second": round(len(test) / scoring_cpu, 1) if scoring_cpu else None,
        "training_wall_seconds": training,
        "training_minutes": round(sum(training.values()) / 60, 2),
        "training_cpu_seconds": cpu,
        "training_cpu_minutes": round(sum(cpu.values()) / 60, 2),
        "training_examples_per_second": rates,
        "trials_complete": search.data.metrics.get("tune.n_complete"),
        "trials_pruned": search.data.metrics.get("tune.n_pruned"),
        "stage_seconds": {
            k.removeprefix("seconds."): round(v, 1) for k, v in loop.data.metrics.items() if k.startswith("seconds.")
        },
        # the neighbour store: one pass of the trained encoder over its training utterances, after training
        "neighbour_store_cpu_seconds": loop.data.metrics.get("neighbours.cpu_seconds"),
        "neighbour_store_utterances": loop.data.metrics.get("neighbours.utterances"),
        "training_and_store_cpu_minutes": round(
            (sum(cpu.values()) + loop.data.metrics.get("neighbours.cpu_seconds", 0)) / 60, 2
        ),
        "gate": loop.data.tags.get("gate"),
        "params": version.tags.get("params"),
    }
    if unknown:
        result["open_set"] = open_set_metrics([c for _, c in test], predicted, unknown)
    return result


def plain(out: Path) -> dict:
    """The plain peft + torch loop (bench/router_study.py) in its own process: its CPU time is its own."""
    subprocess.run(
        [sys.executable, "-m", "bench.router_study", *PLAIN, "--out", str(out)],
        check=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    log = json.loads(out.read_text())
    last = log["epochs"][-1]
    return {
        "settings": PLAIN,
        "test_accuracy": last["test_accuracy"],
        "training_cpu_seconds": last["train_cpu_s"],
        "training_cpu_minutes": round(last["train_cpu_s"] / 60, 2),
        "training_examples_per_cpu_second": last["train_examples_per_cpu_s"],
        "scoring_examples_per_cpu_second": log.get("scoring_examples_per_cpu_s"),
        "epochs": log["epochs"],
    }


def loop_on(home: Path, settings: dict[str, str], unknown: set[str] = frozenset()) -> dict:
    """Feedback, one loop, and the registered version scored on the test split."""
    out = {"feedback": feedback_file(home / "feedback.jsonl", unknown)}
    print(json.dumps(out["feedback"]), flush=True)
    out["run"] = run(home, settings)
    out["score"] = score(home, unknown)
    print(json.dumps(out["score"]), flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench banking77", description=__doc__.splitlines()[0])
    parser.add_argument("--settings", type=Path, help="JSON of TUNELOOP_* settings overriding the defaults above")
    parser.add_argument("--skip-plain", action="store_true", help="Do not run the plain peft + torch loop")
    parser.add_argument("--skip-open-set", action="store_true", help="Do not run the open-set protocol")
    parser.add_argument("--skip-closed-set", action="store_true", help="Do not run the closed-set loop")
    parser.add_argument("--out", type=Path, default=RESULTS / "banking77.json", help="Result file")
    args = parser.parse_args(argv)
    if not DATA.exists():
        sys.exit(f"BANKING77 not found at {DATA}")
    settings = {**SETTINGS, **(json.loads(args.settings.read_text()) if args.settings else {})}
    result = {"settings": settings, "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}}
    if not args.skip_closed_set:
        result["closed_set"] = loop_on(Path(tempfile.mkdtemp(prefix="tuneloop-banking77-")), {**settings, **CLOSED_SET})
    if not args.skip_plain:
        result["plain"] = plain(Path(tempfile.mkdtemp(prefix="tuneloop-banking77-plain-")) / "plain.json")
        print(json.dumps({k: v for k, v in result["plain"].items() if k != "epochs"}), flush=True)
    if not args.skip_open_set:
        unknown = unknown_intents(sorted({c for _, c in read("banking77_train.csv")}))
        result["open_set"] = loop_on(Path(tempfile.mkdtemp(prefix="tuneloop-banking77-open-")), settings, unknown)
        result["open_set"]["unknown_intents"] = sorted(unknown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
