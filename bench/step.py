"""A generation training step three ways, on the real SmolLM2 weights and the demo's rows (two in
three rehearsal rows, as in the demo's mix), side by side:

- ``frozen``: the KL term's base distribution from a frozen forward pass at every step (the reference);
- ``teacher``: the base's top-64 tokens computed once (``tuneloop.modeling.teacher``), adapters in every layer;
- ``top_half``: the same with adapters in the top half of the layers only (``tune.adapter_layers``,
  generation's default): the backward pass stops below them;
- ``kept``: the same with the rows' states below the adapters kept from an earlier step
  (``tuneloop.modeling.fast.trunk``, ``tune.trunk_cache_mb``): the lower half's forward pass is skipped too.

python -m bench step [--quick]   -> bench/results/step.json

Each round runs ``loss_of`` + backward on the same batch all four ways, in a rotating order, so a
noisy neighbour hits each alike; ratios are medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench step")
    parser.add_argument("--quick", action="store_true", help="6 batches instead of 20")
    args = parser.parse_args(argv)
    from tuneloop.config import LoopConfig
    from tuneloop.data.sample_data import SYSTEM_PROMPT, sample_feedback
    from tuneloop.modeling import teacher, training
    from tuneloop.modeling.fast.trunk import open_trunk
    from tuneloop.modeling.models import base_of, load_base, load_tokenizer, lora_targets

    info = base_of(LoopConfig(kind="generation"))
    tokenizer = load_tokenizer(info)
    pairs = [
        (r["prompt"], r.get("correction") or r["output"])
        for r in sample_feedback("generation", 0)
        if isinstance(r.get("prompt"), str) and (r.get("correction") or r.get("output"))
    ]
    rows = training.encode("generation", tokenizer, pairs, [], 512, training.Prompting(SYSTEM_PROMPT))
    for i, row in enumerate(rows):
        row["rehearse"] = i % 3 != 0
    plain = [{k: v for k, v in row.items() if not k.startswith("teacher")} for row in rows]
    batches = training.epoch_batches([len(r["input_ids"]) for r in rows], 8, 0, 0)[: 6 if args.quick else 20]

    models = {}
    for name, share in (("frozen", 1.0), ("teacher", 1.0), ("top_half", 0.5), ("kept", 0.5)):
        base = load_base(info, "generation")
        models[name] = training.add_adapter(
            base, "generation", 16, 0, targets=lora_targets(base, "mlp"), layers=training.top_layers(base, share)
        ).eval()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        teacher.attach(models["teacher"], rows, tokenizer.pad_token_id, info.id, Path(cache))
    attach_s = time.perf_counter() - began
    kept_mass = torch.cat([r["teacher_logp"].float().exp().sum(-1) for r in rows if r["rehearse"]])

    trunk = open_trunk(models["kept"], rows, 1024)
    for indices in batches:  # each row's states kept from an earlier step, as from a search's first epoch
        batch = training.collate([rows[i] for i in indices], tokenizer.pad_token_id)
        with trunk.batch([rows[i] for i in indices], batch["attention_mask"]):
            training.loss_of(models["kept"], batch, kl_weight=4.0)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for n, indices in enumerate(batches):
        names = list(models)[n % len(models) :] + list(models)[: n % len(models)]
        for name in names:
            source = plain if name == "frozen" else rows
            batch = training.collate([source[i] for i in indices], tokenizer.pad_token_id)
            models[name].zero_grad()
            start = time.perf_counter()
            with trunk.batch([rows[i] for i in indices], batch["attention_mask"]) if name == "kept" else nullcontext():
                loss = training.loss_of(models[name], batch, kl_weight=4.0)
            loss.backward()
            seconds[name].append(time.perf_counter() - start)
    trunk.close()
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(seconds[a], seconds[b]))  # noqa: E731
    result = {
        "model": info.id,
        "batches": len(batches),
        "batch_size": 8,
        "threads": torch.get_num_threads(),
        "rehearsal_rows": sum(r["rehearse"] for r in rows),
        "rows": len(rows),
        "teacher_attach_s": attach_s,
        "teacher_kept_mass_mean": kept_mass.mean().item(),
        "teacher_kept_mass_p05": kept_mass.quantile(0.05).item(),
        **{f"median_step_s_{name}": statistics.median(s) for name, s in seconds.items()},
        "speedup_teacher_vs_frozen": ratio("frozen", "teacher"),
        "speedup_top_half_vs_teacher": ratio("teacher", "top_half"),
        "speedup_top_half_vs_frozen": ratio("frozen", "top_half"),
        "speedup_kept_vs_top_half": ratio("top_half", "kept"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "step.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
