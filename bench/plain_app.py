"""The comparison server: a plain transformers pipeline behind a minimal FastAPI app, same model.

python -m bench.plain_app ADAPTER_DIR --kind classification|generation --port 8001 [--device cuda --precision auto]
python -m bench.plain_app ADAPTER_DIR --kind generation --reference 1 16 64 --reference-out FILE [--device cuda]

The adapter is loaded on the base its ``tuneloop.json`` names (``tuneloop.modeling.adapters.load_adapter``), on
the device and in the precision asked for, and merged into the base once; generation formats each
prompt as that adapter was trained (its prompting: chat template, system prompt) and decodes greedily
to the same answer length as the service, so both servers do the same work per request.
``--reference`` serves nothing: it times plain ``model.generate`` of the same merged model on the load
generator's prompts at each batch size (1 warm-up, median of 3), the batching reference for the
service on a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from pydantic import BaseModel


class Query(BaseModel):
    text: str


def load_model(adapter_dir: str, device: str, precision: str):
    """(merged model, tokenizer, adapter meta, labels) on ``device`` in ``precision`` (auto: bf16 on a GPU)."""
    from tuneloop.modeling.adapters import load_adapter
    from tuneloop.modeling.models import resolve_device, resolve_dtype

    where = resolve_device(device)
    model, tokenizer, meta, labels = load_adapter(Path(adapter_dir), where, resolve_dtype(precision, where))
    return model.merge_and_unload().eval(), tokenizer, meta, labels


def build_app(adapter_dir: str, kind: str, max_new_tokens: int, device: str = "cpu", precision: str = "auto"):
    from fastapi import FastAPI
    from transformers import pipeline

    model, tokenizer, meta, _ = load_model(adapter_dir, device, precision)
    task = "text-classification" if kind == "classification" else "text-generation"
    model_pipeline = pipeline(task, model=model, tokenizer=tokenizer, device=model.device)
    app = FastAPI()

    @app.post("/predict")
    def predict(query: Query) -> dict:
        if kind == "classification":
            result = model_pipeline(query.text)[0]
            return {"output": result["label"], "confidence": result["score"]}
        prompt = meta.prompting.render(tokenizer, query.text)
        result = model_pipeline(
            prompt, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False, add_special_tokens=False
        )[0]
        return {"output": result["generated_text"].strip()}

    return app


def reference(
    adapter_dir: str, device: str, precision: str, max_new_tokens: int, batches: list[int], repeats: int = 3
) -> dict:
    """Seconds and requests/s of plain greedy ``generate`` per batch size, on the load's prompts."""
    from bench.loadgen import TEXTS

    model, tokenizer, meta, _ = load_model(adapter_dir, device, precision)
    tokenizer.padding_side = "left"
    prompts = [meta.prompting.render(tokenizer, text) for text in TEXTS]
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    out = {}
    for size in batches:
        batch = tokenizer(
            (prompts * (size // len(prompts) + 1))[:size], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(model.device)

        def once(batch=batch) -> float:
            began = time.perf_counter()
            with torch.inference_mode():
                generated = model.generate(
                    **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
                )
            sync()
            once.new_tokens = generated.shape[1] - batch["input_ids"].shape[1]
            return time.perf_counter() - began

        once()  # warm-up
        seconds = statistics.median(once() for _ in range(repeats))
        out[str(size)] = {
            "seconds": round(seconds, 3),
            "requests_per_s": round(size / seconds, 2),
            "prompt_tokens": batch["input_ids"].shape[1],
            "new_tokens": once.new_tokens,
        }
        print(json.dumps({"batch": size, **out[str(size)]}), flush=True)
    return {**out, "device": str(model.device), "dtype": str(model.dtype).removeprefix("torch.")}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("adapter_dir")
    parser.add_argument("--kind", choices=["classification", "generation"], default="classification")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (as TUNELOOP_DEVICE)")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16 (as TUNELOOP_PRECISION)")
    parser.add_argument(
        "--reference", type=int, nargs="+", help="time plain generate at these batch sizes instead of serving"
    )
    parser.add_argument("--reference-out", type=Path)
    args = parser.parse_args()
    if args.reference:
        figures = reference(args.adapter_dir, args.device, args.precision, args.max_new_tokens, args.reference)
        if args.reference_out:
            args.reference_out.write_text(json.dumps(figures))
    else:
        import uvicorn

        uvicorn.run(
            build_app(args.adapter_dir, args.kind, args.max_new_tokens, args.device, args.precision),
            host="127.0.0.1",
            port=args.port,
            log_level="warning",
        )
