"""Greedy generation three ways, on the real SmolLM2 weights: the regression suite's prompts (16 tokens)
and the shipped adversarial prompts (24 tokens, some 1,500 characters long), under the demo's system
prompt.

- ``streams``: the default: 64 rows at once (``inference.generate``'s ``batch_size``), in CPU streams
  that split the cores (``inference.streams``): on 2 cores two one-thread streams of batches of up to
  32 rows, each within ``MAX_PADDED_CHARS``;
- ``64_a_stream``: the same streams with batches of up to 64 rows each;
- ``one_stream``: batches of up to 64 rows one after another, each with every thread (the reference).

python -m bench batching [--quick]   -> bench/results/batching.json

Each round of 128 prompts is answered all three ways in a rotating order, so a noisy neighbour hits
each alike; ``speed_ratio_<way>_*`` = that way's seconds / the default's, over all rounds;
``same_answers_<way>_*`` how many of its answers agree with the default's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROUND = 128  # prompts a round: two batches of 64, so that two streams have a batch each


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench batching")
    parser.add_argument("--quick", action="store_true", help="128 regression and 64 adversarial prompts, not all")
    args = parser.parse_args(argv)
    import torch

    from tuneloop.config import LoopConfig
    from tuneloop.data.datasets import Example
    from tuneloop.data.sample_data import SYSTEM_PROMPT
    from tuneloop.data.text import normalize
    from tuneloop.eval_suites.suites import adversarial_suite, regression_suite
    from tuneloop.modeling import inference
    from tuneloop.modeling.models import base_of, load_base, load_tokenizer
    from tuneloop.modeling.prompting import Prompting

    info = base_of(LoopConfig(kind="generation"))
    tokenizer, model = load_tokenizer(info), load_base(info, "generation")
    train = [
        Example(
            prompt="What is the Nimbus Pro cost?", target="The Nimbus Pro costs 189 euros.", key="k", source_ids=[1]
        )
    ]
    shipped = adversarial_suite("generation", [], system_prompt=SYSTEM_PROMPT, train_examples=train)
    suites = {
        "regression": ([it.input for it in regression_suite("generation", [], seed=0)], 16),
        "adversarial": ([normalize(it.input) for it in shipped], 24),
    }
    result: dict = {"model": info.id, "threads": torch.get_num_threads()}
    ways = {"streams": (64, inference.MAX_STREAMS), "64_a_stream": (128, inference.MAX_STREAMS), "one_stream": (64, 1)}
    for name, (prompts, tokens) in suites.items():
        prompts = prompts[: (128 if name == "regression" else 64) if args.quick else None]
        seconds, same = dict.fromkeys(ways, 0.0), dict.fromkeys(ways, 0)
        for n, start in enumerate(range(0, len(prompts), ROUND)):
            chunk, got = prompts[start : start + ROUND], {}
            for way in list(ways)[n % 3 :] + list(ways)[: n % 3]:
                rows, inference.MAX_STREAMS = ways[way]
                began = time.perf_counter()
                got[way] = inference.generate(
                    model, tokenizer, chunk, tokens, Prompting(SYSTEM_PROMPT), batch_size=rows
                )
                seconds[way] += time.perf_counter() - began
            for way in ways:
                same[way] += sum(a == b for a, b in zip(got[way], got["streams"]))
        others = [way for way in ways if way != "streams"]
        result |= {
            f"prompts_{name}": len(prompts),
            **{f"seconds_{way}_{name}": seconds[way] for way in ways},
            **{f"speed_ratio_{way}_{name}": seconds[way] / seconds["streams"] for way in others},
            **{f"same_answers_{way}_{name}": same[way] for way in others},
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batching.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
