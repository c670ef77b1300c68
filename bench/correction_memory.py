"""How far a memory of corrections would go: each question answered with the correction of the nearest
corrected question, when it is near enough.

python -m bench correction_memory [--sets game clinic ...] [--answers bench/results/generation-*.json ...]
    -> bench/results/correction_memory.json and a table

A study, not a product path. Per feedback set (``bench/feedback_sets.py``), the memory holds the set's
corrected questions with their majority correction (a contradiction is outvoted as the curate stage
outvotes it) and the thumbs-up answers; the bundled sentence encoder (all-MiniLM-L6-v2, mean-pooled, the
one the router's neighbour store reads) embeds questions and probes. Two memories: every imported
question, and the train split alone (the curate stage's hash split: the held-out and validation shares
never train, so they would not be stored either).

Reported per set and memory: the share of probes (never-imported phrasings) whose nearest stored
question carries the probe's fact; at each similarity threshold, the probes the memory answers right
and wrong, and the share of the gate's general-knowledge regression prompts, the shipped adversarial
prompts and the shipped rehearsal prompts that would be answered from the memory instead of by the
model (false hits: none of them is about the company). With ``--answers`` (``python -m bench
generation`` result files), the tuned model's own answers to the same probes: the memory where it
hits, the model elsewhere, against the model alone.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SUITES = ROOT / "eval_suites" / "data"
THRESHOLDS = (0.6, 0.7, 0.75, 0.8, 0.85, 0.9)


def memory_of(records: list[dict], train_only: bool) -> tuple[list[str], list[str]]:
    """(question, answer) pairs: each corrected question's majority correction, and liked answers."""
    from tuneloop.data.datasets import split_of
    from tuneloop.data.text import normalize

    votes: dict[str, Counter] = {}
    for r in records:
        answer = r.get("correction") or (r["output"] if r["rating"] == "up" else None)
        if answer:
            votes.setdefault(r["prompt"], Counter())[answer] += 1
    prompts = [p for p in votes if not train_only or split_of(normalize(p), 20, 10) == "train"]
    return prompts, [votes[p].most_common(1)[0][0] for p in prompts]


def encoder():
    """A function from texts to unit-length sentence embeddings: the product's (``sentence_encoder``)."""
    from tuneloop.modeling.memory import sentence_encoder

    encode, _ = sentence_encoder()
    return lambda texts: encode(texts).double().numpy()


def shipped_prompts() -> dict[str, list[str]]:
    def read(name: str, field: str) -> list[str]:
        rows = [json.loads(line) for line in (SUITES / name).read_text().splitlines() if line.strip()]
        return [r[field] for r in rows if r.get(field)]

    return {
        "regression": read("regression_generation.jsonl", "input"),
        "adversarial": read("adversarial_generation.jsonl", "input"),
        "rehearsal": read("replay_prompts_generation.jsonl", "prompt"),
    }


def study(name: str, encode, general: dict[str, np.ndarray], tuned: dict[str, bool] | None) -> dict:
    from bench.feedback_sets import build
    from tuneloop.eval_suites.facts import fact_accuracy

    built = build(name)
    probes = built.probes
    queries = encode([p["prompt"] for p in probes])
    out: dict = {"probes": len(probes)}
    for label, train_only in (("every imported question", False), ("train split", True)):
        questions, answers = memory_of(built.records, train_only)
        stored = encode(questions)
        sims = queries @ stored.T
        nearest, best = sims.max(1), sims.argmax(1)
        right = np.array(
            [bool(fact_accuracy(answers[b], p["answer"], p["prompt"])) for b, p in zip(best, probes)], dtype=bool
        )
        general_nearest = {k: (v @ stored.T).max(1) for k, v in general.items()}
        rows = []
        for t in THRESHOLDS:
            hit = nearest >= t
            row = {
                "threshold": t,
                "memory_right": round(float((hit & right).mean()), 3),
                "memory_wrong": round(float((hit & ~right).mean()), 3),
                **{f"{k}_hits": round(float((v >= t).mean()), 4) for k, v in general_nearest.items()},
            }
            if tuned is not None:
                model_right = np.array([tuned.get(p["prompt"], False) for p in probes], dtype=bool)
                row["model_alone"] = round(float(model_right.mean()), 3)
                row["memory_then_model"] = round(float(np.where(hit, right, model_right).mean()), 3)
            rows.append(row)
        out[label] = {
            "stored": len(questions),
            "nearest_is_right": round(float(right.mean()), 3),
            "nearest_similarity_median": {
                "right": round(float(np.median(nearest[right])), 3) if right.any() else None,
                "wrong": round(float(np.median(nearest[~right])), 3) if (~right).any() else None,
                **{k: round(float(np.median(v)), 3) for k, v in general_nearest.items()},
            },
            "thresholds": rows,
        }
    return out


def table(results: dict) -> str:
    lines = [
        "| set | memory | stored | nearest is right | at 0.8: memory right / wrong | memory then model (model alone) "
        "| at 0.8: regression / adversarial / rehearsal prompts hit |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        for label in ("every imported question", "train split"):
            m = result[label]
            row = next(r for r in m["thresholds"] if r["threshold"] == 0.8)
            combined = f"{row['memory_then_model']:.2f} ({row['model_alone']:.2f})" if "model_alone" in row else "-"
            lines.append(
                f"| {name} | {label} | {m['stored']} | {m['nearest_is_right']:.2f} | {row['memory_right']:.2f} / "
                f"{row['memory_wrong']:.2f} | {combined} | {row['regression_hits']:.3f} / "
                f"{row['adversarial_hits']:.3f} / {row['rehearsal_hits']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    from bench.feedback_sets import SETS

    parser = argparse.ArgumentParser(prog="python -m bench correction_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS))
    parser.add_argument("--answers", nargs="*", type=Path, default=[], help="python -m bench generation results")
    parser.add_argument("--out", type=Path, default=RESULTS / "correction_memory.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tuned: dict[str, dict[str, bool]] = {}
    for path in args.answers:
        for row in json.loads(path.read_text()).get("sets", []):
            if "answers" in row:
                tuned[row["set"]] = {a["prompt"]: a.get("right_model_alone", a["right"]) for a in row["answers"]}
    encode = encoder()
    general = {k: encode(v) for k, v in shipped_prompts().items()}
    results = {name: study(name, encode, general, tuned.get(name)) for name in args.sets}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
