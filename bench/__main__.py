"""``python -m bench [NAME ...] [--quick]``: run the named benchmarks (all of them when none is named).

Each benchmark is a module ``bench/NAME.py`` with ``main(argv)`` that writes ``bench/results/NAME.json``
and prints its figures. Options after the names go to each benchmark that knows them; ``--quick``
asks for a smaller, faster run. Run one module alone for its own options: ``python -m bench.ingest -h``.
"""

from __future__ import annotations

import importlib
import sys

# name -> (what it measures, whether it takes --quick)
BENCHMARKS = {
    "train": (
        "training step time vs a hand-written loop, FLOP/s, LoRA vs full memory, search with/without pruning",
        True,
    ),
    "prefix": ("a training step with the shared prompt prefix computed once vs every row whole", True),
    "step": (
        "a generation step: the KL term's base from a frozen forward vs computed once, adapters in all vs the top half of the layers",
        True,
    ),
    "batching": (
        "greedy generation in CPU streams of up to 32 rows vs streams of 64 vs one stream of 64 (regression and adversarial prompts)",
        True,
    ),
    "serve": ("the service vs a plain pipeline under load, routing overhead, rollback under load", True),
    "ingest": ("feedback ingest through the service, curation at 10k/100k records", False),
    "economics": (
        "guard false rollbacks (A/A) and detection delay, trigger idle cost, drift statistic, crossover",
        True,
    ),
    "generation": (
        "default settings on six generation feedback sets: facts answered on never-imported phrasings, forgetting, the gate's verdict",
        False,
    ),
    "correction_memory": (
        "a study: the generation sets' probes answered with the nearest corrected question's correction, and the suites' prompts it would wrongly answer",
        False,
    ),
    "banking77": (
        "BANKING77 through import and the loop (closed and open set) beside a plain peft loop, on the 3,080 test utterances",
        False,
    ),
    "stack": (
        "the same loop on the team stack (deployment run by a worker, MLflow server, PostgreSQL) vs embedded",
        False,
    ),
    "hostile": (
        "a hostile client against a live service (and a running stack's servers): unauthenticated writes, wrong-scope tokens, forged receipts, oversized bodies",
        False,
    ),
    "faults": (
        "a live stack under load while MLflow, Prefect, a trial worker and a service worker are killed and the feedback disk fills: failed requests, acknowledged vs stored, recovery seconds",
        True,
    ),
    "preferences": (
        "learning from thumbs alone (KTO) vs SFT on liked answers, and from corrections (DPO vs SFT): rule-following, rejected-answer rate, forgetting",
        True,
    ),
    "scale": (
        "the whole loop on 15k and 100k generated records of each kind: stage seconds, peak memory, Prefect bytes",
        False,
    ),
}


def main(argv: list[str]) -> None:
    split = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    names, options = argv[:split], argv[split:]
    if any(a in ("-h", "--help") for a in options) and not names:
        print(__doc__)
        for name, (what, _) in BENCHMARKS.items():
            print(f"  {name:7s} {what}")
        return
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")
    for name in names or list(BENCHMARKS):
        print(f"== bench {name} ==", flush=True)
        takes_quick = BENCHMARKS[name][1]
        importlib.import_module(f"bench.{name}").main([o for o in options if takes_quick or o != "--quick"])


if __name__ == "__main__":
    main(sys.argv[1:])
