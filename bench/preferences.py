"""Learning from thumbs alone (KTO) and from what a correction rejected (DPO), on the real base.

python -m bench preferences [--quick] [--tiny] [--weight W] [--beta B] [--out NAME]
    -> bench/results/preferences.json (or NAME.json) and a table

1. The base (SmolLM2-135M-Instruct from its wheel) answers general prompts (the rehearsal prompt
   list), two sampled answers each (temperature 1, top-p 0.95, fixed seeds).
2. A deterministic simulated user likes an answer that follows a hidden rule, **concise: at most
   RULE_WORDS words**, and dislikes the rest; no corrections. Prompts split by hash: train / held-out.
3. Three models answer the held-out prompts greedily: the base; SFT on the liked answers (the loop's
   ``sft``); SFT + KTO on every rated answer (the loop's ``kto``, beta BETA). Reported: the share of
   answers that follow the rule, with a 95 % Wilson interval, and the forgetting check (the share of
   the bundled regression items, short facts the base answers, still answered).
4. Corrections: for train prompts whose greedy base answer breaks the rule, the user's correction
   is a concise sampled answer. SFT on the corrections vs SFT + DPO (chosen = correction, rejected =
   the served greedy answer): how often the tuned model still gives the rejected answer (its first
   RULE_WORDS words) on those prompts.

Training is the product's loop (``tuneloop.modeling.training.train`` with ``tuneloop.modeling.objectives``), LoRA on
the top half of the layers, the same steps for every model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import time
from pathlib import Path

import torch

from bench.machine import stamp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RULE_WORDS = 12
BETA = 0.1
MAX_NEW = 32


def follows(answer: str) -> bool:
    return 0 < len(answer.split()) <= RULE_WORDS


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [0.0, 0.0]
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(max(0.0, centre - half), 3), round(min(1.0, centre + half), 3)]


def rate(flags: list[bool]) -> dict:
    return {"rate": round(sum(flags) / max(1, len(flags)), 3), "ci95": wilson(sum(flags), len(flags)), "n": len(flags)}


def sample(model, tokenizer, prompting, prompts: list[str], seed: int, batch: int = 16) -> list[str]:
    """Sampled answers (temperature 1, top-p 0.95), reproducible from ``seed``."""
    tokenizer.padding_side = "left"
    out: list[str] = []
    for start in range(0, len(prompts), batch):
        texts = [prompting.render(tokenizer, p) for p in prompts[start : start + batch]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(seed * 100_003 + start)
        with torch.no_grad():
            ids = model.generate(
                **enc,
                max_new_tokens=MAX_NEW,
                do_sample=True,
                temperature=1.0,
                top_p=0.95,
                pad_token_id=tokenizer.pad_token_id,
            )
        out += [
            t.strip() for t in tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        ]
    return out


def held_out(prompt: str) -> bool:
    return int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % 100 < 30


def main(argv: list[str]) -> None:
    from tuneloop.config import TuneConfig
    from tuneloop.data.preference import PreferencePair, Unpaired
    from tuneloop.eval_suites.scoring import judge_all
    from tuneloop.eval_suites.suites import general_knowledge_suite, replay_prompts
    from tuneloop.modeling.batches import encode
    from tuneloop.modeling.inference import predict
    from tuneloop.modeling.models import load_base, load_tokenizer, lora_targets, resolve_base
    from tuneloop.modeling.objectives import PreferenceTerm, pair_rows, unpaired_rows
    from tuneloop.modeling.prompting import Prompting
    from tuneloop.modeling.training import add_adapter, top_layers, train

    parser = argparse.ArgumentParser(prog="python -m bench preferences")
    parser.add_argument("--quick", action="store_true", help="fewer prompts and steps")
    parser.add_argument("--tiny", action="store_true", help="tiny random model (a smoke test of the script)")
    parser.add_argument(
        "--weight",
        type=float,
        default=TuneConfig().preference_weight,
        help="weight of the KTO and DPO terms beside the supervised loss (tune.preference_weight)",
    )
    parser.add_argument("--beta", type=float, default=BETA, help="KTO's and DPO's beta")
    parser.add_argument("--out", default=None, help="result file name in bench/results (default preferences)")
    args = parser.parse_args(argv)
    n_prompts, steps, n_regression = (80, 12, 40) if args.quick or args.tiny else (160, 24, 60)
    began = time.perf_counter()
    info = resolve_base("generation", tiny=args.tiny)
    tokenizer, prompting = load_tokenizer(info), Prompting()
    base = load_base(info, "generation")
    prompts = [p for p in replay_prompts() if len(p.split()) >= 4][:n_prompts]
    answers = [sample(base, tokenizer, prompting, prompts, seed) for seed in (1, 2)]
    greedy, _ = predict("generation", base, tokenizer, prompts, [], MAX_NEW, prompting)
    sampled_s = time.perf_counter() - began
    train_prompts = [p for p in prompts if not held_out(p)]
    test_prompts = [p for p in prompts if held_out(p)]
    thumbs = [
        Unpaired(prompt=p, answer=a[i], liked=follows(a[i]), key=p, source_ids=[0])
        for a in answers
        for i, p in enumerate(prompts)
        if not held_out(p) and a[i]
    ]
    liked = [(t.prompt, t.answer) for t in thumbs if t.liked]
    corrections = []
    for i, p in enumerate(prompts):
        concise = next((a[i] for a in answers if follows(a[i])), None)
        if not held_out(p) and not follows(greedy[i]) and concise:
            corrections.append(PreferencePair(prompt=p, chosen=concise, rejected=greedy[i], key=p, source_ids=[0]))
    regression = general_knowledge_suite()[:n_regression]

    def tuned(supervised: list[tuple[str, str]], term=None):
        model = add_adapter(
            load_base(info, "generation"),
            "generation",
            16,
            0,
            targets=lora_targets(base, "mlp"),
            layers=top_layers(base, 0.5),
        )
        rows = encode("generation", tokenizer, supervised, [], 96, prompting)
        epochs = max(1, math.ceil(steps * 8 / max(1, len(rows))))
        t0 = time.perf_counter()
        train(
            model,
            rows,
            tokenizer.pad_token_id,
            lr=1e-3,
            epochs=epochs,
            batch_size=8,
            seed=0,
            max_steps=steps,
            extra_loss=term,
        )
        return model, time.perf_counter() - t0

    def judge(model) -> dict:
        out, _ = predict("generation", model, tokenizer, test_prompts, [], MAX_NEW, prompting)
        reg, _ = predict("generation", model, tokenizer, [r.input for r in regression], [], 16, prompting)
        scores = judge_all("generation", regression, reg)[0]
        return {
            "rule": rate([follows(a) for a in out]),
            "regression": rate([s >= 0.5 for s in scores]),
            "mean_words": round(sum(len(a.split()) for a in out) / max(1, len(out)), 1),
        }

    def term(objective: str, rows):
        return PreferenceTerm(
            objective,
            rows,
            beta=args.beta,
            weight=args.weight,
            batch_size=4,
            seed=0,
            pad_id=tokenizer.pad_token_id,
            max_length=96,
        )

    results = {"base": judge(base)}
    if not liked:  # (a tiny random model never follows the rule) nothing to tune on: report the base alone
        liked = [(t.prompt, t.answer) for t in thumbs[:8]]
        results["note"] = "no liked answer: SFT and KTO trained on the first 8 answers instead (smoke test only)"
    sft, sft_s = tuned(liked)
    results["sft_liked"] = {**judge(sft), "train_seconds": round(sft_s)}
    del sft
    kto_term = term("kto", unpaired_rows(tokenizer, thumbs, 96, prompting))
    kto, kto_s = tuned(liked, kto_term)
    results["kto"] = {
        **judge(kto),
        "train_seconds": round(kto_s),
        "kto_loss_first_last": [round(kto_term.history[0], 4), round(kto_term.history[-1], 4)],
    }
    del kto

    def still_rejected(model) -> dict:
        if not corrections:
            return rate([])
        out, _ = predict("generation", model, tokenizer, [c.prompt for c in corrections], [], MAX_NEW, prompting)
        head = lambda text: " ".join(text.split()[:RULE_WORDS])  # noqa: E731
        return rate([head(o) == head(c.rejected) for o, c in zip(out, corrections)])

    fixes = [(c.prompt, c.chosen) for c in corrections]
    pref = {"base": still_rejected(base)}
    if corrections:
        model, seconds = tuned(fixes)
        pref["sft"] = {**still_rejected(model), "train_seconds": round(seconds)}
        del model
        model, seconds = tuned(fixes, term("dpo", pair_rows(tokenizer, corrections, 96, prompting)))
        pref["dpo"] = {**still_rejected(model), "train_seconds": round(seconds)}
    report = {
        **stamp(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "base": info.id,
        "tiny": args.tiny,
        "quick": args.quick,
        "rule": f"answer of at most {RULE_WORDS} words",
        "beta": args.beta,
        "weight": args.weight,
        "steps": steps,
        "lr": 1e-3,
        "rank": 16,
        "prompts": len(prompts),
        "train_prompts": len(train_prompts),
        "heldout_prompts": len(test_prompts),
        "thumbs": len(thumbs),
        "liked": len(liked),
        "corrections": len(corrections),
        "sampling_seconds": round(sampled_s),
        "thumbs_alone": results,
        "corrections_rejected_answer": pref,
        "seconds": round(time.perf_counter() - began),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = args.out or "preferences" + ("-tiny" if args.tiny else "")  # a --quick run says so inside
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
