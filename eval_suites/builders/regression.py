"""Builds ``data/regression_generation.jsonl``: the candidates of ``regression_candidates`` that the
bundled base model answers correctly, with its own verified answers.

    nice -n 5 .venv/bin/python -m tuneloop.eval_suites.builders.regression

Each candidate is answered greedily (``inference.generate``, the chat template) under every system
prompt in ``SYSTEM_PROMPTS``, with ``MAX_NEW_TOKENS`` new tokens; an answer is also judged cut to its
first 16 and 24 tokens (greedy decoding makes those exactly the shorter runs' answers, up to
re-tokenisation). An answer is correct when it holds an accepted answer, no known wrong one, and
no repetition loop.
Kept: the candidates correct under every system prompt at every checked length; when fewer than
``MIN_ITEMS`` are, those correct under the demo's prompt (at every length) join them and say so.
Writes the suite (each item with the base's answer under each system prompt and the prompts it was
verified under), every candidate with its answers and verdicts (``regression_generation_candidates.jsonl``)
and a summary with the base model's SHA-256 (``regression_generation.build.json``). ``--reselect``
judges the recorded answers again (after a change to the rules) without generating.
Minutes of CPU: run it once in a while, never in tests.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from tuneloop.eval_suites.builders.regression_candidates import candidates
from tuneloop.eval_suites.matching import contains_any, normalize_answer

DATA = Path(__file__).resolve().parent.parent / "data"
SYSTEM_PROMPTS = {
    "brightwell": "You are the Brightwell support assistant. Answer in one short sentence.",
    "generic": "You are a helpful assistant. Answer in one short sentence.",
}
PRIMARY = "brightwell"
MAX_NEW_TOKENS = 32
CHECK_LENGTHS = (16, 24, 32)
MIN_ITEMS = 200


def degenerate(answer: str) -> bool:
    """A repetition loop ("der Welt: Berlin, der Welt: Berlin, ..."): some word 3-gram occurs twice.
    Such an answer may hold the fact by luck; it is not one to keep as the base's verified answer."""
    words = normalize_answer(answer).split()
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return len(grams) != len(set(grams))


def correct(answer: str, accepted: list[str], wrong: list[str]) -> bool:
    """An accepted answer is in it, no known wrong answer is, and it is not a repetition loop."""
    return contains_any(answer, accepted) and not contains_any(answer, wrong) and not degenerate(answer)


def answer_candidates(pool: list[dict]) -> tuple[list[dict], dict, dict[str, float]]:
    """Every candidate with the base model's answer under each system prompt: (rows, base info, seconds)."""
    import torch

    from tuneloop.modeling.inference import generate
    from tuneloop.modeling.models import load_base, load_tokenizer, resolve_base
    from tuneloop.modeling.prompting import Prompting

    torch.set_num_threads(2)
    info = resolve_base("generation")
    model = load_base(info, "generation")
    model.eval()
    tokenizer = load_tokenizer(info)
    timings, answers = {}, {}
    for name, system_prompt in SYSTEM_PROMPTS.items():
        began = time.perf_counter()
        answers[name] = generate(model, tokenizer, [c["input"] for c in pool], MAX_NEW_TOKENS, Prompting(system_prompt))
        timings[name] = round(time.perf_counter() - began, 1)
        print(f"{name}: {len(pool)} answers in {timings[name]} s", flush=True)
    rows = [{**c, "answers": {name: answers[name][i] for name in SYSTEM_PROMPTS}} for i, c in enumerate(pool)]
    base = {"base_model": info.name, "base_model_revision": info.revision, "base_model_sha256": info.sha256}
    return rows, base, timings


def judge_rows(rows: list[dict]) -> None:
    """Adds each row's verdicts: per system prompt and answer length, and the two summaries."""
    from tuneloop.modeling.models import load_tokenizer, resolve_base

    tokenizer = load_tokenizer(resolve_base("generation"))

    def cut(answer: str, n: int) -> str:
        ids = tokenizer.encode(answer, add_special_tokens=False)
        return tokenizer.decode(ids[:n], skip_special_tokens=True) if len(ids) > n else answer

    for r in rows:
        r["correct"] = {
            name: {
                str(n): correct(cut(r["answers"][name], n), r["must_contain_any"], r["must_not_contain"])
                for n in CHECK_LENGTHS
            }
            for name in SYSTEM_PROMPTS
        }
        r["all_prompts"] = all(all(v.values()) for v in r["correct"].values())
        r["primary"] = all(r["correct"][PRIMARY].values())


def select(rows: list[dict]) -> list[dict]:
    """Correct under every system prompt at every length; topped up from the demo prompt's below MIN_ITEMS."""
    kept = [r for r in rows if r["all_prompts"]]
    if len(kept) < MIN_ITEMS:
        kept += [r for r in rows if r["primary"] and not r["all_prompts"]]
    return sorted(kept, key=lambda r: r["id"])


def summarise(rows: list[dict], kept: list[dict], base: dict, timings: dict) -> dict:
    def count(pred) -> int:
        return sum(1 for r in rows if pred(r))

    return {
        **base,
        "system_prompts": SYSTEM_PROMPTS,
        "max_new_tokens": MAX_NEW_TOKENS,
        "candidates": len(rows),
        "correct": {
            name: {str(n): count(lambda r, name=name, n=n: r["correct"][name][str(n)]) for n in CHECK_LENGTHS}
            for name in SYSTEM_PROMPTS
        },
        "correct_under_all_prompts_all_lengths": count(lambda r: r["all_prompts"]),
        "correct_under_primary_all_lengths": count(lambda r: r["primary"]),
        "correct_at_16_but_not_32": {
            name: count(lambda r, name=name: r["correct"][name]["16"] and not r["correct"][name]["32"])
            for name in SYSTEM_PROMPTS
        },
        "correct_at_32_but_not_16": {
            name: count(lambda r, name=name: r["correct"][name]["32"] and not r["correct"][name]["16"])
            for name in SYSTEM_PROMPTS
        },
        "kept": len(kept),
        "kept_under_all_prompts": sum(1 for r in kept if r["all_prompts"]),
        "kept_per_category": dict(sorted(Counter(r["category"] for r in kept).items())),
        "kept_clusters": len({r["cluster"] for r in kept}),
        "candidates_per_category": dict(sorted(Counter(r["category"] for r in rows).items())),
        "seconds": timings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="first N candidates only (a quick look)")
    parser.add_argument("--out", type=Path, default=DATA)
    parser.add_argument(
        "--reselect",
        action="store_true",
        help="judge and select again from the answers in the candidates file (no generation)",
    )
    args = parser.parse_args()
    candidates_path = args.out / "regression_generation_candidates.jsonl"
    summary_path = args.out / "regression_generation.build.json"
    if args.reselect:
        rows = [json.loads(line) for line in candidates_path.read_text().splitlines() if line.strip()]
        previous = json.loads(summary_path.read_text())
        base = {k: previous[k] for k in ("base_model", "base_model_revision", "base_model_sha256")}
        timings = previous.get("seconds", {})
    else:
        rows, base, timings = answer_candidates(candidates()[: args.limit])
    judge_rows(rows)
    kept = select(rows)
    with (args.out / "regression_generation.jsonl").open("w") as f:
        for r in kept:
            f.write(
                json.dumps(
                    {
                        "id": r["id"],
                        "category": r["category"],
                        "cluster": r["cluster"],
                        "input": r["input"],
                        "must_contain_any": r["must_contain_any"],
                        "must_not_contain": r["must_not_contain"],
                        "answer": r["answers"][PRIMARY],
                        "answers": {SYSTEM_PROMPTS[n]: a for n, a in r["answers"].items()},
                        "verified_under": [SYSTEM_PROMPTS[n] for n in SYSTEM_PROMPTS if all(r["correct"][n].values())],
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    with candidates_path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    summary = summarise(rows, kept, base, timings)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
