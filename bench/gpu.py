"""GPU training benchmark: the project's ``train()`` against a minimal hand-written bf16 peft loop, on
random-initialised models of real shapes built from their published configs (no weights needed).

python -m bench train --device cuda [--shapes smollm2-1.7b llama3-8b] [--compile] [--no-qlora] [--out PATH]
python -m bench train --device cpu --shapes tiny    # the same code path on a tiny shape, on the CPU
(``python -m bench.gpu ...`` takes the same options.) Default output: bench/results/train_gpu.json
(``--device cpu``: bench/results/train_gpu_cpu.json); a run updates the rows of its own shapes there.

Per shape (``SHAPES``: SmolLM2-135M, SmolLM2-1.7B, Llama-3-8B, tiny): ``AutoModelForCausalLM.from_config``
in bf16 under ``torch.device("cuda")`` (SDPA attention), LoRA r=16 (alpha 32) on attention q/k/v/o
through ``tuneloop.modeling.training.add_adapter``; batch 8 x 512 random tokens, loss on every token; 3
warm-up + 10 timed steps of ``tuneloop.modeling.training.train`` and of the hand-written loop (forward under
autocast, backward, AdamW, zero_grad; no per-step sync), on the same model and batches, alternating
over ``--rounds`` rounds. Reported: step time, tokens/s, ``speed_ratio`` (hand step / project step,
target >= 0.9), the share of the bf16 matmul rate measured in the same run (an 8192^3 matmul;
FLOPs counted as 4 x params x tokens for a frozen base; target >= 45 % at 8B), and
peak GPU memory. ``--compile``: ``torch.compile(model)`` then ``train()`` again: the first step's
time (mostly compilation) and the step time after it. QLoRA (CUDA; default for llama3-8b): the
random base is saved to a scratch folder and loaded 4-bit NF4 through ``tuneloop.modeling.models.load_base(...,
quantization="4bit")`` (bitsandbytes), prepared like a trial does (``prepare_model_for_kbit_training``),
and trained with ``train()`` without and with gradient checkpointing: peak memory and step time.
The row's ``reference`` holds a minimal hand-written bf16 LoRA loop's figures on one H100
(docs/models-and-hardware.md).

Imports torch, transformers, peft and tuneloop's core only (tuneloop.modeling.models, tuneloop.modeling.training,
tuneloop.config): no MLflow, Prefect or Optuna, so it runs on a GPU machine without the rest of the stack.

On a GPU machine without a package index that has torch, transformers,
peft and accelerate but no pydantic, pydantic-settings (tuneloop.config) or bitsandbytes (QLoRA).
Once, here, in the repo root (46 MB, 43 of them bitsandbytes; leave it out with ``--no-qlora``):
    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
      --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \\
      --platform manylinux2014_x86_64 -d .whl pydantic==2.14.3 pydantic-core==2.50.4 pydantic-settings==2.16.3 \\
      python-dotenv==1.2.4 typing-inspection==0.4.5 annotated-types==0.8.0 typing-extensions==4.16.0 \\
      bitsandbytes==0.50.2
Then ``run`` with carry [".whl"] (each command ends well inside the 10-minute limit):
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
      .whl/*.whl && export PYTHONPATH=/tmp/site || exit; PYTHONUNBUFFERED=1 python3 -m bench train \\
      --device cuda --out $OUT/train_gpu.json
(1.7B + 8B + QLoRA 8B, about 5 minutes: the 8B scratch copy is 16 GB on the machine's disk), and for
compilation, which takes about 2 minutes per shape, a second command with
``--shapes smollm2-1.7b --compile --no-qlora --out $OUT/train_gpu_compile.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# Published configs (LlamaForCausalLM), checked against the parameter counts the model cards give
# (PARAMS: 134.5M, 1.71B, 8.03B, which the built models reproduce exactly) and, for SmolLM2-135M,
# against the config of the bundled weights. rms_norm_eps 1e-5, SiLU and 8192 positions for all.
SHAPES: dict[str, dict] = {
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        rope_theta=100_000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "smollm2-1.7b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=24,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=49152,
        rope_theta=130_000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "llama3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500_000.0,
        tie_word_embeddings=False,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=4096,
        rope_theta=100_000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    ),
}
PARAMS = {"smollm2-135m": 134_515_008, "smollm2-1.7b": 1_711_376_384, "llama3-8b": 8_030_261_248}
# the hand-written loop on one H100, torch 2.11, peft 0.21, 2026-11-23 (docs/models-and-hardware.md)
REFERENCE = {
    "smollm2-135m": {"step_s": 0.139, "tokens_per_s": 29_600, "matmul_share": 0.02, "peak_gb": 5.6},
    "smollm2-1.7b": {
        "step_s": 0.130,
        "tokens_per_s": 31_400,
        "matmul_share": 0.27,
        "peak_gb": 16.1,
        "compiled_step_s": 0.081,
    },
    "llama3-8b": {"step_s": 0.356, "tokens_per_s": 11_500, "matmul_share": 0.47, "peak_gb": 46.1},
}
DEFAULT_SHAPES = ["smollm2-1.7b", "llama3-8b"]
QLORA_SHAPES = ["llama3-8b"]


def model_config(name: str):
    from transformers import LlamaConfig

    return LlamaConfig(
        **SHAPES[name],
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        initializer_range=0.02,
        attention_bias=False,
        mlp_bias=False,
        use_cache=False,
    )


# -- measuring -----------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def _autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, warmup: int = 3, repeats: int = 10) -> float:
    """FLOP/s of an n x n x n matmul in ``dtype`` (mean of ``repeats`` after ``warmup``)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(warmup):
        a @ b
    _sync(device)
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - began)


def random_examples(vocab: int, n: int, seq: int) -> list[dict]:
    """``n`` sequences of ``seq`` random tokens, the loss on every token (all the same length: no padding)."""
    ids = torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": row, "labels": row} for row in ids.tolist()]


def project_loop(
    model,
    encoded: list[dict],
    batch: int,
    warmup: int,
    steps: int,
    device: torch.device,
    first_step: list | None = None,
) -> float:
    """Seconds per step of ``tuneloop.modeling.training.train`` over the steps after ``warmup`` (its own
    optimizer, schedule, clipping, per-step collation and loss read-out included)."""
    from tuneloop.modeling.training import train

    stamps: dict[int, float] = {}

    def on_step(step: int, loss: float) -> None:
        if step in (1, warmup, warmup + steps):
            _sync(device)
            stamps[step] = time.perf_counter()

    began = time.perf_counter()
    result = train(
        model, encoded, pad_id=0, lr=1e-4, epochs=1, batch_size=batch, seed=0, max_steps=warmup + steps, on_step=on_step
    )
    assert result.steps_run == warmup + steps, result.steps_run
    if first_step is not None:
        first_step.append(stamps[1] - began)
    return (stamps[warmup + steps] - stamps[warmup]) / steps


def hand_loop(model, batches: list[dict], warmup: int, device: torch.device, dtype: torch.dtype) -> float:
    """The minimal bf16 LoRA loop a reader would write: autocast forward, backward, AdamW, zero_grad.
    Seconds per step after ``warmup``, timed over all of them (the CPU may run ahead of the GPU)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    for i, batch in enumerate(batches):
        if i == warmup:
            _sync(device)
            began = time.perf_counter()
        with _autocast(device, dtype):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    model.eval()
    return (time.perf_counter() - began) / (len(batches) - warmup)


def _figures(step_s: float, tokens: int, params: int, rate: float) -> dict:
    return {
        "step_s": round(step_s, 4),
        "tokens_per_s": round(tokens / step_s),
        "matmul_share": round(4 * params * tokens / step_s / rate, 3),
    }


# -- one shape -----------------------------------------------------------------------------------------


def build_base(name: str, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(model_config(name), dtype=dtype, attn_implementation="sdpa")


def bench_shape(name: str, args, device: torch.device, dtype: torch.dtype, rate: float, scratch: Path | None) -> dict:
    """Project vs hand loop (alternating rounds) on one shape; optionally compiled; saves the random
    base to ``scratch`` first when a QLoRA row will load it from there."""
    from tuneloop.modeling.batches import collate, epoch_batches
    from tuneloop.modeling.models import lora_targets
    from tuneloop.modeling.training import add_adapter

    _reset_peak(device)
    began = time.perf_counter()
    base = build_base(name, device, dtype)
    params = sum(p.numel() for p in base.parameters())
    built_s = time.perf_counter() - began
    if scratch is not None:
        save_base(base, scratch)
    targets = lora_targets(base, "attention")  # read off the plain base (the adapter wraps these layers)
    model = add_adapter(base, "generation", args.rank, seed=0, targets=targets)
    batch, seq = args.batch, args.seq_len
    encoded = random_examples(SHAPES[name]["vocab_size"], batch * (args.warmup + args.steps), seq)
    lengths = [len(e["input_ids"]) for e in encoded]
    batches = [collate([encoded[i] for i in rows], 0, device) for rows in epoch_batches(lengths, batch, 0, 0)]
    row: dict = {
        "params": params,
        "params_published": PARAMS.get(name),
        "build_s": round(built_s, 1),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "lora": {"rank": args.rank, "alpha": 2 * args.rank, "targets": targets},
        "batch": batch,
        "seq_len": seq,
        "dtype": str(dtype).removeprefix("torch."),
        "reference_hand_loop_h100": REFERENCE.get(name) if device.type == "cuda" and (batch, seq) == (8, 512) else None,
    }
    tokens = batch * seq
    project, hand, project_peak, hand_peak = [], [], [], []
    for _ in range(args.rounds):  # alternating, so a drift in clocks or a neighbour hits both alike
        _reset_peak(device)
        project.append(project_loop(model, encoded, batch, args.warmup, args.steps, device))
        project_peak.append(_peak_gb(device))
        _reset_peak(device)
        hand.append(hand_loop(model, batches, args.warmup, device, dtype))
        hand_peak.append(_peak_gb(device))
        print(
            json.dumps(
                {"shape": name, "round_project_step_s": round(project[-1], 4), "round_hand_step_s": round(hand[-1], 4)}
            ),
            flush=True,
        )
    p, h = min(project), min(hand)  # best round of each: the least disturbed
    row["project"] = {
        **_figures(p, tokens, params, rate),
        "rounds_step_s": [round(x, 4) for x in project],
        "peak_gpu_gb": max(project_peak) if device.type == "cuda" else None,
    }
    row["hand_written"] = {
        **_figures(h, tokens, params, rate),
        "rounds_step_s": [round(x, 4) for x in hand],
        "peak_gpu_gb": max(hand_peak) if device.type == "cuda" else None,
    }
    row["speed_ratio"] = round(h / p, 3)
    if args.compile:
        row["compiled"] = compiled_row(model, encoded, args, device, tokens, params, rate, p)
        torch._dynamo.reset()  # compiled code holds on to the weights: free them for the next shape
    del model, base, batches
    _reset_peak(device)
    return row


def compiled_row(model, encoded, args, device, tokens: int, params: int, rate: float, eager_s: float) -> dict:
    """``torch.compile`` of the LoRA model, then ``train()``: compile time (the first step) and the step after."""
    compiled = torch.compile(model)
    _reset_peak(device)
    first: list[float] = []
    step_s = project_loop(compiled, encoded, args.batch, args.warmup, args.steps, device, first_step=first)
    return {
        "first_step_s": round(first[0], 1),
        **_figures(step_s, tokens, params, rate),
        "speedup_over_eager_project": round(eager_s / step_s, 3),
        "peak_gpu_gb": _peak_gb(device),
        "pays_after_steps": round(first[0] / max(1e-9, eager_s - step_s)) if eager_s > step_s else None,
    }


# -- QLoRA ---------------------------------------------------------------------------------------------


def save_base(base, folder: Path) -> None:
    """The random base as a model folder ``load_base`` can read: weights, config and a stand-in tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    shutil.rmtree(folder, ignore_errors=True)
    base.save_pretrained(folder)
    word = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=word, unk_token="<unk>", eos_token="</s>", pad_token="</s>"
    ).save_pretrained(folder)


def qlora_row(name: str, args, device: torch.device, dtype: torch.dtype, folder: Path | None) -> dict:
    """The saved random base loaded 4-bit through the project's loader, prepared as a trial prepares
    it, trained by ``train()`` without and with gradient checkpointing: peak memory and step time."""
    from tuneloop.modeling.models import (
        BaseModelInfo,
        ModelError,
        compute_dtype,
        load_base,
        lora_targets,
        quantization_config,
    )
    from tuneloop.modeling.training import add_adapter

    try:
        quantization_config("4bit", device, dtype)  # the project's refusal, before any work (CPU, no bitsandbytes)
    except ModelError as err:
        return {"skipped": str(err)}
    from peft import prepare_model_for_kbit_training

    info = BaseModelInfo(
        spec=str(folder), name=f"random {name}", path=str(folder), revision="random", sha256=f"random-{name}"
    )
    _reset_peak(device)
    began = time.perf_counter()
    base = load_base(info, "generation", device=device, dtype=dtype, quantization="4bit")
    row: dict = {
        "load_s": round(time.perf_counter() - began, 1),
        "weights_gpu_gb": round(torch.cuda.memory_allocated(device) / 2**30, 2),
        "quantization": "4bit nf4, double quantization, compute bf16 (tuneloop.modeling.models.quantization_config)",
    }
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)  # as flows/trial.py build_model
    model = add_adapter(base, "generation", args.rank, seed=0, targets=lora_targets(base, "attention"))
    row["train_autocast_dtype"] = str(compute_dtype(model)).removeprefix("torch.")  # what train() runs under
    encoded = random_examples(SHAPES[name]["vocab_size"], args.batch * (args.warmup + args.steps), args.seq_len)
    tokens = args.batch * args.seq_len
    for checkpointing in (False, True):
        if checkpointing:
            model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.get_base_model().enable_input_require_grads()
        _reset_peak(device)
        step_s = project_loop(model, encoded, args.batch, args.warmup, args.steps, device)
        row["gradient_checkpointing" if checkpointing else "no_checkpointing"] = {
            "step_s": round(step_s, 4),
            "tokens_per_s": round(tokens / step_s),
            "peak_gpu_gb": _peak_gb(device),
        }
        print(json.dumps({"shape": name, "qlora_checkpointing": checkpointing, **row}), flush=True)
    del model, base
    _reset_peak(device)
    return row


# -- main ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m bench train --device cuda", description=" ".join(__doc__.split("\n\n")[0].split())
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument(
        "--shapes",
        nargs="+",
        choices=sorted(SHAPES),
        default=None,
        help=f"model shapes (default on cuda: {' '.join(DEFAULT_SHAPES)}; on cpu: tiny)",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 512; tiny: 64)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per loop and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of project and hand loop")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the model and time train() on it")
    parser.add_argument("--no-qlora", action="store_true", help="skip the QLoRA row(s)")
    parser.add_argument(
        "--qlora-shapes",
        nargs="*",
        default=QLORA_SHAPES,
        choices=sorted(SHAPES),
        help=f"shapes that get a QLoRA row (default {' '.join(QLORA_SHAPES)}; on cpu it records the refusal)",
    )
    parser.add_argument(
        "--scratch", type=Path, default=None, help="where QLoRA's random base is saved (default: a temp dir)"
    )
    parser.add_argument(
        "--quick", action="store_true", help=argparse.SUPPRESS
    )  # python -m bench passes it on; no effect
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(
            f"bench train --device cuda: CUDA is not available here (torch {torch.__version__}, "
            "torch.cuda.is_available() is False). Run it on a GPU machine (the command is in bench/gpu.py's "
            "docstring), or run the same code path on a tiny shape on the CPU: --device cpu --shapes tiny"
        )
    from tuneloop.modeling.models import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype("auto", device)  # bf16 on a GPU that has it, fp32 on the CPU
    shapes = args.shapes or (DEFAULT_SHAPES if device.type == "cuda" else ["tiny"])
    args.seq_len = args.seq_len or (64 if shapes == ["tiny"] else 512)
    qlora = [] if args.no_qlora else [s for s in shapes if s in args.qlora_shapes or s == "tiny"]
    out = args.out or RESULTS / ("train_gpu.json" if device.type == "cuda" else "train_gpu_cpu.json")
    results = json.loads(out.read_text()) if out.exists() else {}
    import peft
    import transformers

    machine = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "dtype": str(dtype).removeprefix("torch."),
    }
    n = 8192 if device.type == "cuda" else 1024
    rate = matmul_rate(device, dtype, n)
    machine[f"matmul_{machine['dtype']}_tflops"] = round(rate / 1e12, 2 if device.type == "cuda" else 4)
    machine["matmul_size"] = n
    print(json.dumps(machine), flush=True)
    results["machine"] = machine
    results["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "scratch", "quick", "shapes")}
    results.setdefault("shapes", {})
    results.setdefault("qlora", {})
    scratch_root = Path(tempfile.mkdtemp(prefix="tuneloop-bench-gpu-", dir=args.scratch))
    began = time.perf_counter()
    try:
        for name in shapes:
            folder = scratch_root / name if name in qlora and device.type == "cuda" else None
            row = bench_shape(name, args, device, dtype, rate, folder)
            results["shapes"][name] = {**row, "machine": machine}
            print(
                json.dumps(
                    {"shape": name, **{k: row[k] for k in ("params", "speed_ratio", "project", "hand_written")}}
                ),
                flush=True,
            )
            _write(out, results)
            if name in qlora:
                results["qlora"][name] = {**qlora_row(name, args, device, dtype, folder), "machine": machine}
                shutil.rmtree(scratch_root / name, ignore_errors=True)
                print(json.dumps({"qlora": name, **results["qlora"][name]}), flush=True)
                _write(out, results)
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - began, 1)
    if device.type == "cpu":
        results["peak_rss_mb_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    _write(out, results)
    print(f"wrote {out} ({results['seconds']} s)")
    return results


def _write(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
