"""Training benchmark on the real weights (SmolLM2-135M-Instruct, all-MiniLM-L6-v2), on this CPU.

python -m bench train [--quick]   -> bench/results/train.json
python -m bench train --device cuda [--compile] [--shapes ...]   -> bench/results/train_gpu.json
    (the GPU benchmark on random-initialised models of real shapes: see ``bench/gpu.py``;
    ``--device cpu --shapes tiny`` runs that same path on a tiny shape on this CPU)

1. Step time of the project's ``tuneloop.modeling.training.train`` against a minimal hand-written PyTorch +
   peft loop (forward, backward, AdamW step), on the same LoRA model and the very same batches in
   the same order: train() groups examples of similar length into a batch (``epoch_batches``), and
   the hand-written loop is fed those batches, collated by the same ``collate``. ``speed_ratio`` =
   the median over steps of hand-written step time / train() step time for the same batch (target
   >= 0.9). Rounds alternate the two loops so that a noisy neighbour on the machine hits both alike.
   ``padding_share`` is the share of computed tokens that are padding, with and without grouping.
2. Achieved FLOP/s against this machine's fp32 matmul FLOP/s (a timed ``torch.matmul``). Estimate
   per step: forward 2*N*T plus backward 2*N*T (gradients of the activations only: the frozen base
   weights get none, LoRA's own weight gradients are negligible) = 4*N*T, with N the weights of
   every Linear layer (the matmuls; the tied LM head included) and T the tokens computed, padding
   included; summed over the timed steps and divided by their summed time. Attention score FLOPs
   are left out (small at these lengths).
3. Peak memory of LoRA against full fine-tuning: each (model, mode) in a fresh process running a few
   steps of ``train()``; resident memory after loading and the peak while training (sampled).
4. One search twice, with and without pruning (successive halving on the tune stage's default rungs),
   through the project's own search code: MiniLM on a banking77 subset (10 intents, 400 training and
   400 held-out utterances), 24 trials of 75 steps, for each of two seeds. The subset is a dataset
   version like the one curation writes (split files + manifest, passed as a ``DatasetRef``), with
   the 400 held-out utterances as its ``validation`` split, which trials are scored on. Best accuracy
   reached and the optimiser steps spent, in all and until the pruned search first came within a
   point of the unpruned best (target: within 1 point of the unpruned best on <= 40 % of its steps).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BANKING77 = ROOT.parent / "shared" / "datasets" / "banking77"
MODEL_NAMES = {"generation": "SmolLM2-135M-Instruct", "classification": "all-MiniLM-L6-v2"}
BATCH, MAX_LENGTH, RANK = 8, 64, 8


# -- data -------------------------------------------------------------------------------------------


def banking77(n_intents: int = 10, per_intent_train: int = 40, per_intent_test: int = 20):
    """(train, test) lists of (text, intent) for ``n_intents`` intents spread over the alphabet."""

    def read(name: str) -> list[tuple[str, str]]:
        with open(BANKING77 / name, newline="") as f:
            return [(row["text"], row["category"]) for row in csv.DictReader(f)]

    train, test = read("banking77_train.csv"), read("banking77_test.csv")
    intents = sorted({c for _, c in train})[:: 77 // n_intents][:n_intents]

    def take(rows, per):
        out = []
        for intent in intents:
            out += [r for r in rows if r[1] == intent][:per]
        return out

    return take(train, per_intent_train), take(test, per_intent_test)


def step_data(kind: str, info, n: int):
    """Token-encoded examples for the step-time runs, and the labels (classification)."""
    from tuneloop.modeling.batches import encode
    from tuneloop.modeling.models import load_tokenizer

    tokenizer = load_tokenizer(info)
    if kind == "classification":
        pairs, _ = (
            banking77(n_intents=10, per_intent_train=max(1, n // 10 + 1)) if BANKING77.exists() else _sample_pairs(kind)
        )
    else:
        pairs = _sample_pairs(kind)
    labels = sorted({t for _, t in pairs}) if kind == "classification" else []
    pairs = (pairs * (n // len(pairs) + 1))[:n]
    random.Random(0).shuffle(pairs)
    return encode(kind, tokenizer, pairs, labels, MAX_LENGTH), labels, tokenizer.pad_token_id


def _sample_pairs(kind: str) -> list[tuple[str, str]]:
    from tuneloop.data.sample_data import sample_feedback

    records = [r for r in sample_feedback(kind) if isinstance(r, dict) and r.get("prompt")]
    return [
        (r["prompt"], r.get("correction") or r["output"])
        for r in records
        if r.get("correction") or r.get("rating") == "up"
    ]


def lora_model(kind: str, labels: list[str] | None, info, rank: int = RANK):
    """The bundled base (fp32, CPU) with a fresh LoRA adapter on the kind's default module set."""
    from tuneloop.modeling.models import DEFAULT_TARGETS, load_base, lora_targets
    from tuneloop.modeling.training import add_adapter

    base = load_base(info, kind, labels or None)
    return add_adapter(base, kind, rank, seed=0, targets=lora_targets(base, DEFAULT_TARGETS[kind]))


# -- 1 + 2: step time and FLOP/s ----------------------------------------------------------------------


def matmul_flops(n: int, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of an n x n matmul on this machine (torch's default threads)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)  # warm-up
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def linear_weights(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def padding_share(batches: list[dict]) -> float:
    """Share of the computed tokens that are padding."""
    computed = sum(b["attention_mask"].numel() for b in batches)
    return round(1 - sum(int(b["attention_mask"].sum()) for b in batches) / computed, 4)


def step_times(kind: str, steps: int, rounds: int, warmup: int = 2) -> dict:
    """train() against the hand-written loop on one LoRA model, alternating, same batches in the same order."""
    from tuneloop.modeling.batches import collate, epoch_batches
    from tuneloop.modeling.models import resolve_base
    from tuneloop.modeling.training import train

    info = resolve_base(kind)
    encoded, labels, pad_id = step_data(kind, info, steps * BATCH)
    model = lora_model(kind, labels, info)
    lengths = [len(e["input_ids"]) for e in encoded]
    # exactly the batches train() builds for seed 0, epoch 0 (grouped by length, the default)
    order = epoch_batches(lengths, BATCH, seed=0, epoch=0, grouped=True)
    batches = [collate([encoded[i] for i in rows], pad_id) for rows in order]
    assert len(batches) == steps, (len(batches), steps)
    ungrouped = [
        collate([encoded[i] for i in rows], pad_id) for rows in epoch_batches(lengths, BATCH, 0, 0, grouped=False)
    ]
    tokens = [b["input_ids"].numel() for b in batches]
    project, hand = [], []  # per round, per step (the same batch at the same index)
    for _ in range(rounds):
        stamps = [time.perf_counter()]
        result = train(
            model,
            encoded,
            pad_id,
            lr=1e-4,
            epochs=1,
            batch_size=BATCH,
            seed=0,
            length_grouping=True,
            on_step=lambda step, loss, stamps=stamps: stamps.append(time.perf_counter()),
        )
        assert result.padded_tokens == sum(tokens), "train() computed other batches than the hand-written loop"
        project.append([b - a for a, b in zip(stamps, stamps[1:])])
        hand.append(hand_written_loop(model, batches))
    timed = range(warmup, steps)
    paired = [h[i] / p[i] for p, h in zip(project, hand) for i in timed]
    p_total = sum(p[i] for p in project for i in timed)
    h_total = sum(h[i] for h in hand for i in timed)
    t_total = rounds * sum(tokens[i] for i in timed)
    n = linear_weights(model)
    return {
        "model": MODEL_NAMES[kind],
        "batch": BATCH,
        "max_length": MAX_LENGTH,
        "lora_rank": RANK,
        "trainable_params": sum(x.numel() for x in model.parameters() if x.requires_grad),
        "linear_weights": n,
        "tokens_per_step_mean": round(statistics.mean(tokens[i] for i in timed), 1),
        "padding_share": padding_share(batches),
        "padding_share_ungrouped": padding_share(ungrouped),
        "measured_steps_each": len(paired),
        "train_step_s": round(statistics.median(p[i] for p in project for i in timed), 4),
        "hand_written_step_s": round(statistics.median(h[i] for h in hand for i in timed), 4),
        "speed_ratio": round(statistics.median(paired), 3),
        "speed_ratio_totals": round(h_total / p_total, 3),
        "flops_per_step_estimate_mean": round(4 * n * t_total / (rounds * len(timed))),
        "achieved_flops": round(4 * n * t_total / p_total),
        "hand_written_achieved_flops": round(4 * n * t_total / h_total),
    }


def hand_written_loop(model, batches: list[dict]) -> list[float]:
    """The minimal PyTorch + peft loop a reader would write: forward, backward, AdamW, zero_grad."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for batch in batches:
        began = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - began)
    model.eval()
    return times


# -- 3: memory ----------------------------------------------------------------------------------------


def memory_probe(kind: str, mode: str, steps: int) -> dict:
    """Run in a fresh process: load, (add LoRA | unfreeze everything), train ``steps`` steps."""
    from tuneloop.modeling.models import load_base, resolve_base
    from tuneloop.modeling.training import train
    from tuneloop.search.tracking import current_rss_mb, peak_memory

    info = resolve_base(kind)
    encoded, labels, pad_id = step_data(kind, info, steps * BATCH)
    if mode == "lora":
        model = lora_model(kind, labels, info)
    else:
        model = load_base(info, kind, labels or None)
        for p in model.parameters():
            p.requires_grad_(True)
    loaded = current_rss_mb()
    with peak_memory() as training:
        began = time.perf_counter()
        train(model, encoded, pad_id, lr=1e-5, epochs=1, batch_size=BATCH, seed=0)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "model": MODEL_NAMES[kind],
        "mode": mode,
        "steps": steps,
        "trainable_params": trainable,
        "grads_and_adamw_state_mb": round(trainable * 3 * 4 / 2**20),  # fp32 gradient + two moments, computed
        "rss_after_load_mb": round(loaded),
        "peak_rss_training_mb": round(training["peak_rss_mb"]),
        "training_overhead_mb": round(training["peak_rss_mb"] - loaded),
        "seconds_per_step": round((time.perf_counter() - began) / steps, 2),
    }


def memory(kinds: list[str], steps: int) -> list[dict]:
    out = []
    for kind in kinds:
        for mode in ("lora", "full"):
            proc = subprocess.run(
                [sys.executable, "-m", "bench.train", "--memory-probe", kind, mode, str(steps)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=900,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"memory probe {kind}/{mode} failed:\n{proc.stderr[-2000:]}")
            out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(out[-1]), flush=True)
        lora, full = out[-2], out[-1]
        lora["full_over_lora_training_overhead"] = round(
            full["training_overhead_mb"] / max(1, lora["training_overhead_mb"]), 1
        )
        lora["full_over_lora_peak"] = round(full["peak_rss_training_mb"] / lora["peak_rss_training_mb"], 2)
    return out


# -- 4: search with and without pruning --------------------------------------------------------------


def search_data(root: Path):
    """The search's data as a dataset version, written the way curation writes one (``flows/curate.py``):
    ``train/validation/heldout.jsonl`` (one ``Example`` a line), ``labels.json`` and ``manifest.json``
    (the ``DatasetRef``) in ``root/datasets/<hash>/``. Trials score the validation split: here the
    400 held-out utterances (the gate's ``heldout`` split is not used by a search and stays empty)."""
    from tuneloop.data.datasets import FILES, SPLITS, DatasetRef, Example, file_digest

    if BANKING77.exists():
        # 400 validation answers (the test split's 40 per intent): a point is 4 answers, not 2, so the
        # pruner's decisions and the best score rest less on chance
        train_rows, test_rows = banking77(10, 40, 40)
        source = f"banking77 subset: 10 intents, {len(train_rows)} train / {len(test_rows)} validation (banking77 test)"
    else:
        pairs = _sample_pairs("classification")
        train_rows, test_rows = pairs[: len(pairs) * 4 // 5], pairs[len(pairs) * 4 // 5 :]
        source = "project sample data (banking77 not found)"
    rows = {"train": train_rows, "validation": test_rows, "heldout": []}
    labels = sorted({c for _, c in train_rows + test_rows})
    scratch = root / "datasets" / f".building-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        with open(scratch / f"{split}.jsonl", "w") as f:
            for i, (text, label) in enumerate(rows[split]):
                f.write(
                    Example(
                        prompt=text, target=label, key=" ".join(text.lower().split()), source_ids=[i]
                    ).model_dump_json()
                    + "\n"
                )
    (scratch / FILES["labels"]).write_text(json.dumps(labels))
    digest = file_digest([scratch / f"{s}.jsonl" for s in SPLITS] + [scratch / FILES["labels"]])
    counts = {**{split: len(rows[split]) for split in SPLITS}, "labels": len(labels)}
    ref = DatasetRef(
        kind="classification", dataset_hash=digest, path=root / "datasets" / digest, counts=counts, n_labels=len(labels)
    )
    (scratch / FILES["counts"]).write_text(json.dumps(counts, indent=1, sort_keys=True))
    (scratch / FILES["manifest"]).write_text(ref.model_dump_json(indent=1))
    if (ref.path / FILES["manifest"]).exists():
        for path in scratch.iterdir():
            path.unlink()
        scratch.rmdir()
    else:
        scratch.replace(ref.path)
    return ref, source


def search(n_trials: int, seeds: list[int], jobs: int = 1, epochs: int = 3) -> dict:
    """The same seeded search with pruning off and on, through the tune stage's own worker loop, for
    each seed (the seed draws the trials, initialises the adapters and orders the data). ``jobs``
    seeds run at once, each process with its share of the cores (the figures do not depend on it)."""
    ref, source = search_data(Path(tempfile.mkdtemp(prefix="tuneloop-bench-data-")))
    out: dict = {
        "data": source,
        "dataset_hash": ref.dataset_hash,
        "n_trials": n_trials,
        "epochs": epochs,
        "jobs": jobs,
        "seeds": {},
    }
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(
            jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=torch.set_num_threads,
            initargs=(threads,),
        ) as pool:
            pairs = dict(
                zip(
                    seeds,
                    pool.map(_search_pair, [ref] * len(seeds), [n_trials] * len(seeds), seeds, [epochs] * len(seeds)),
                )
            )
    else:
        pairs = {seed: _search_pair(ref, n_trials, seed, epochs) for seed in seeds}
    for seed, runs in pairs.items():
        full, pruned = runs["none"], runs["successive_halving"]
        near = next(
            (
                t
                for t in pruned["trials"]
                if (t["value"] or 0) * 100 >= full["best_accuracy_pct"] - 1.0 and t["state"] == "COMPLETE"
            ),
            None,
        )
        spent = sum(t["steps"] or 0 for t in pruned["trials"] if near and t["number"] <= near["number"])
        out["seeds"][seed] = {
            "pruning_gap_points": round(full["best_accuracy_pct"] - pruned["best_accuracy_pct"], 2),
            "pruning_steps_fraction": round(pruned["steps_trained"] / full["steps_trained"], 3),
            "steps_fraction_until_within_1_point": round(spent / full["steps_trained"], 3) if near else None,
            "runs": runs,
        }
        print(json.dumps({"seed": seed, **{k: v for k, v in out["seeds"][seed].items() if k != "runs"}}), flush=True)
    per_seed = out["seeds"].values()
    out["pruning_gap_points_max"] = max(r["pruning_gap_points"] for r in per_seed)
    out["pruning_steps_fraction_mean"] = round(statistics.mean(r["pruning_steps_fraction"] for r in per_seed), 3)
    out["target_met_per_seed"] = [
        r["pruning_gap_points"] <= 1.0 and r["pruning_steps_fraction"] <= 0.40 for r in per_seed
    ]
    return out


def _search_pair(ref, n_trials: int, seed: int, epochs: int = 3) -> dict:
    return {
        pruner: _search_run(ref, pruner, n_trials, seed, epochs=epochs) for pruner in ("none", "successive_halving")
    }


def _search_run(ref, pruner: str, n_trials: int, seed: int, **tune_overrides) -> dict:
    import mlflow
    import optuna

    from tuneloop.config import LoopConfig, TuneConfig
    from tuneloop.flows.tune import open_search, search_worker, summarise
    from tuneloop.registry.tracking import use_experiment

    home = Path(tempfile.mkdtemp(prefix=f"tuneloop-bench-search-{pruner}-{seed}-"))
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    tune_overrides.setdefault("epochs", 3)
    tune = TuneConfig(
        n_trials=n_trials,
        ranks=[4, 8, 16, 32],
        lr_min=1e-5,
        lr_max=1e-2,
        batch_size=16,
        max_length=MAX_LENGTH,
        evals_per_trial=3,
        validation_examples=ref.sizes["validation"],
        pruner=pruner,
        startup_trials=4,
        seed=seed,
        **tune_overrides,
    )
    config = LoopConfig(kind="classification", home=home, tiny=False, device="cpu", tune=tune)
    parent = (
        mlflow.MlflowClient()
        .create_run(use_experiment(config), run_name=f"bench-search-{pruner}-seed{seed}")
        .info.run_id
    )
    began = time.perf_counter()
    name, search_run = open_search(config, ref, parent)
    search_worker(config, ref, search_run, name, None)
    result = summarise(config, ref, search_run, name, parent)
    trials = optuna.load_study(study_name=name, storage=config.optuna_db).trials
    run = {
        "best_accuracy_pct": round(100 * result.best.score, 2),
        "best_params": result.best.params,
        "best_adapter_uri": result.best.adapter_uri,
        "steps_trained": result.steps_trained,
        "n_complete": result.n_complete,
        "n_pruned": result.n_pruned,
        "seconds": round(time.perf_counter() - began, 1),
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "rank": t.params["rank"],
                "lr": round(t.params["lr"], 6),
                "value": t.value,
                "steps": t.user_attrs.get("steps_trained"),
                "scores": {str(k): round(v, 3) for k, v in sorted(t.intermediate_values.items())},
            }
            for t in trials
        ],
    }
    print(json.dumps({"seed": seed, pruner: {k: v for k, v in run.items() if k != "trials"}}), flush=True)
    return run


# -- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if any(a == "--device" or a.startswith(("--device=", "--shapes")) for a in argv):  # the GPU benchmark
        from bench import gpu

        return gpu.main(argv)
    parser = argparse.ArgumentParser(prog="python -m bench train", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and trials (about a third of the time)")
    parser.add_argument("--only", nargs="*", choices=["steps", "memory", "search"], help="run only these parts")
    parser.add_argument("--trials", type=int, default=None, help="trials per search (default 24, quick 8)")
    parser.add_argument(
        "--seeds", type=int, nargs="*", default=None, help="one search pair per seed (default 0 1, quick 0)"
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="seeds searched at once (default: one per core, at most one per seed)"
    )
    parser.add_argument(
        "--search-epochs", type=int, default=3, help="epochs per trial (3: 75 steps; fewer for a smoke run)"
    )
    parser.add_argument("--memory-probe", nargs=3, metavar=("KIND", "MODE", "STEPS"), help=argparse.SUPPRESS)
    parser.epilog = "GPU: python -m bench train --device cuda [--compile] (see python -m bench.gpu -h)"
    args = parser.parse_args(argv)
    from tuneloop.config import apply_environment

    apply_environment(Path(tempfile.mkdtemp(prefix="tuneloop-bench-")))
    if args.memory_probe:
        kind, mode, steps = args.memory_probe
        print(json.dumps(memory_probe(kind, mode, int(steps))))
        return {}
    parts = set(args.only or ["steps", "memory", "search"])
    began = time.perf_counter()
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average_at_start": os.getloadavg()[0],
            "quick": args.quick,
        }
    }
    results["machine"]["matmul_fp32_flops"] = round(matmul_flops(1024 if args.quick else 2048))
    print(json.dumps(results["machine"]), flush=True)
    if "steps" in parts:
        results["step_time"] = []
        for kind, steps, rounds in (
            ("classification", 12 if args.quick else 30, 2 if args.quick else 3),
            ("generation", 5 if args.quick else 8, 2),
        ):
            row = step_times(kind, steps, rounds)
            row["achieved_over_matmul_peak"] = round(row["achieved_flops"] / results["machine"]["matmul_fp32_flops"], 3)
            results["step_time"].append(row)
            print(json.dumps(row), flush=True)
    if "memory" in parts:
        results["memory"] = memory(["classification", "generation"], 3 if args.quick else 4)
    if "search" in parts:
        seeds = args.seeds or ([0] if args.quick else [0, 1])
        jobs = args.jobs or max(1, min(len(seeds), os.cpu_count() or 1))
        results["search"] = search(args.trials or (8 if args.quick else 24), seeds, jobs, args.search_epochs)
        print(json.dumps({k: v for k, v in results["search"].items() if k != "seeds"}), flush=True)
    results["seconds_total"] = round(time.perf_counter() - began, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.only and (RESULTS / "train.json").exists():  # a partial run updates its parts of the last full one
        merged = json.loads((RESULTS / "train.json").read_text())
        keys = {"steps": "step_time", "memory": "memory", "search": "search"}
        merged.update({keys[part]: results[keys[part]] for part in parts})
        merged.setdefault("partial_reruns", []).append(
            {"parts": sorted(parts), "machine": results["machine"], "seconds": results["seconds_total"]}
        )
        results = merged
    (RESULTS / "train.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {RESULTS / 'train.json'} ({round(time.perf_counter() - began, 1)} s)")
    return results


if __name__ == "__main__":
    main()
