"""Shared prompt prefix: a training step with the batch's common prefix computed once, against the
same step computing every row whole, on the real SmolLM2 weights and the demo's training rows.

python -m bench prefix [--quick]   -> bench/results/prefix.json

The demo's rows (88 corrections and liked answers of the sample data under its system prompt, and
the rehearsal mix's share of them) start with the same 22 tokens of chat template and system prompt.
Each round runs ``loss_of`` + backward on the same batch both ways, alternating which goes first,
so a noisy neighbour hits both alike; ``speed_ratio`` = median(whole seconds / shared seconds).
Also reported: the largest difference in loss between the two ways (they compute the same thing).

Generation (``inference.generate``, the gate's and the service's answers) shares the prefix too: the
regression suite's prompts (96 with ``--quick``, else all) answered greedily both ways, alternating
which goes first per round of 32 prompts; ``generation_speed_ratio`` = whole seconds / shared seconds
over all rounds, and ``generation_same_answers`` how many answers agree (all, or the shared prefix changed one).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench prefix")
    parser.add_argument("--quick", action="store_true", help="6 batches instead of 20")
    args = parser.parse_args(argv)
    from tuneloop.config import LoopConfig
    from tuneloop.data.sample_data import SYSTEM_PROMPT, sample_feedback
    from tuneloop.modeling import training
    from tuneloop.modeling.fast import prefix
    from tuneloop.modeling.models import base_of, load_base, load_tokenizer, lora_targets

    torch.manual_seed(0)
    info = base_of(LoopConfig(kind="generation"))
    tokenizer = load_tokenizer(info)
    base = load_base(info, "generation")
    model = training.add_adapter(base, "generation", 8, 0, targets=lora_targets(base, "mlp"))
    pairs = [
        (r["prompt"], r.get("correction") or r["output"])
        for r in sample_feedback("generation", 0)
        if isinstance(r.get("prompt"), str) and (r.get("correction") or r.get("output"))
    ]
    rows = training.encode("generation", tokenizer, pairs, [], 512, training.Prompting(SYSTEM_PROMPT))
    for row in rows[::2]:
        row["rehearse"] = True  # the KL term's frozen forward shares the prefix too
    batches = training.epoch_batches([len(r["input_ids"]) for r in rows], 8, 0, 0)[: 6 if args.quick else 20]
    whole_s, shared_s, ratios, loss_gap = [], [], [], 0.0
    prefix_min = prefix.SHARED_PREFIX_MIN

    def step(batch, shared: bool) -> tuple[float, float]:
        prefix.SHARED_PREFIX_MIN = prefix_min if shared else 10**9
        model.zero_grad()
        began = time.perf_counter()
        loss = training.loss_of(model, batch, kl_weight=4.0)
        loss.backward()
        return time.perf_counter() - began, loss.item()

    model.eval()  # no dropout: both ways see the same network
    for n, indices in enumerate(batches):
        batch = training.collate([rows[i] for i in indices], tokenizer.pad_token_id)
        order = (True, False) if n % 2 else (False, True)
        got = {shared: step(batch, shared) for shared in order}
        shared_s.append(got[True][0])
        whole_s.append(got[False][0])
        ratios.append(got[False][0] / got[True][0])
        loss_gap = max(loss_gap, abs(got[True][1] - got[False][1]))
    prefix.SHARED_PREFIX_MIN = prefix_min
    first = training.collate(rows[:8], tokenizer.pad_token_id)
    result = {
        "model": info.id,
        "batches": len(batches),
        "batch_size": 8,
        "threads": torch.get_num_threads(),
        "median_step_s_whole": statistics.median(whole_s),
        "median_step_s_shared": statistics.median(shared_s),
        "speed_ratio": statistics.median(ratios),
        "max_loss_difference": loss_gap,
        "mean_row_tokens": statistics.mean(len(r["input_ids"]) for r in rows),
        "shared_prefix_tokens": prefix.shared_length(
            first["input_ids"], first["attention_mask"], first["labels"] != -100
        ),
    }
    RESULTS.mkdir(exist_ok=True)
    result |= _generation(model, tokenizer, args.quick)
    (RESULTS / "prefix.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def _generation(model, tokenizer, quick: bool) -> dict:
    from tuneloop.data.sample_data import SYSTEM_PROMPT
    from tuneloop.eval_suites.suites import regression_suite
    from tuneloop.modeling.inference import generate
    from tuneloop.modeling.prompting import Prompting

    prompts = [item.input for item in regression_suite("generation", [], seed=0)][: 96 if quick else None]
    prompting, seconds, same = Prompting(SYSTEM_PROMPT), {True: 0.0, False: 0.0}, 0
    for n, start in enumerate(range(0, len(prompts), 32)):
        chunk, got = prompts[start : start + 32], {}
        for shared in (True, False) if n % 2 else (False, True):
            began = time.perf_counter()
            got[shared] = generate(model, tokenizer, chunk, 16, prompting, share_prefix=shared)
            seconds[shared] += time.perf_counter() - began
        same += sum(a == b for a, b in zip(got[True], got[False]))
    return {
        "generation_prompts": len(prompts),
        "generation_s_whole": seconds[False],
        "generation_s_shared": seconds[True],
        "generation_speed_ratio": seconds[False] / seconds[True],
        "generation_same_answers": same,
    }


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
