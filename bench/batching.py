"""Generation batches of up to 64 rows against up to 32 (``inference.generate``'s ``batch_size``; both
within ``MAX_PADDED_CHARS``), on the real SmolLM2 weights: the regression suite's prompts (16 tokens)
and the shipped adversarial prompts (24 tokens, some 1,500 characters long), greedy, under the demo's
system prompt.

python -m bench batching [--quick]   -> bench/results/batching.json

Each round of 64 prompts is answered both ways, alternating which goes first, so a noisy neighbour
hits both alike; ``speed_ratio_*`` = seconds with 32 / seconds with 64 over all rounds, and
``same_answers_*`` how many answers agree.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench batching")
    parser.add_argument("--quick", action="store_true", help="128 regression and 64 adversarial prompts, not all")
    args = parser.parse_args(argv)
    import torch

    from tuneloop.config import LoopConfig
    from tuneloop.datasets import Example
    from tuneloop.eval_suites.suites import adversarial_suite, regression_suite
    from tuneloop.inference import generate
    from tuneloop.models import base_of, load_base, load_tokenizer
    from tuneloop.sample_data import SYSTEM_PROMPT
    from tuneloop.text import normalize
    from tuneloop.training import Prompting

    info = base_of(LoopConfig(kind="generation"))
    tokenizer, model = load_tokenizer(info), load_base(info, "generation")
    train = [Example(prompt="What is the Nimbus Pro cost?", target="The Nimbus Pro costs 189 euros.", key="k", source_ids=[1])]
    shipped = adversarial_suite("generation", [], system_prompt=SYSTEM_PROMPT, train_examples=train)
    suites = {"regression": ([it.input for it in regression_suite("generation", [], seed=0)], 16),
              "adversarial": ([normalize(it.input) for it in shipped], 24)}
    result: dict = {"model": info.id, "threads": torch.get_num_threads()}
    for name, (prompts, tokens) in suites.items():
        prompts = prompts[: (128 if name == "regression" else 64) if args.quick else None]
        seconds, same = {32: 0.0, 64: 0.0}, 0
        for n, start in enumerate(range(0, len(prompts), 64)):
            chunk, got = prompts[start:start + 64], {}
            for rows in ((32, 64) if n % 2 else (64, 32)):
                began = time.perf_counter()
                got[rows] = generate(model, tokenizer, chunk, tokens, Prompting(SYSTEM_PROMPT), batch_size=rows)
                seconds[rows] += time.perf_counter() - began
            same += sum(a == b for a, b in zip(got[32], got[64]))
        result |= {f"prompts_{name}": len(prompts), f"seconds_32_{name}": seconds[32], f"seconds_64_{name}": seconds[64],
                   f"speed_ratio_{name}": seconds[32] / seconds[64], f"same_answers_{name}": same}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batching.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
