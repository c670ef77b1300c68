"""The comparison server: a plain transformers pipeline behind a minimal FastAPI app, same model.

python -m bench.plain_app ADAPTER_DIR --kind classification|generation --port 8001
The adapter is merged into the base once; generation uses the service's system prompt, greedy
decoding and the same answer length, so both servers do the same work per request.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI
from peft import PeftModel
from pydantic import BaseModel
from transformers import pipeline

from tuneloop.models import load_base, load_tokenizer, read_labels
from tuneloop.sample_data import SYSTEM_PROMPT


class Query(BaseModel):
    text: str


def build_app(adapter_dir: str, kind: str, max_new_tokens: int) -> FastAPI:
    labels = read_labels(adapter_dir) if kind == "classification" else None
    model = PeftModel.from_pretrained(load_base(kind, labels=labels), adapter_dir).merge_and_unload().eval()
    task = "text-classification" if kind == "classification" else "text-generation"
    model_pipeline = pipeline(task, model=model, tokenizer=load_tokenizer(kind))
    app = FastAPI()

    @app.post("/predict")
    def predict(query: Query) -> dict:
        if kind == "classification":
            result = model_pipeline(query.text)[0]
            return {"output": result["label"], "confidence": result["score"]}
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": query.text}]
        result = model_pipeline(messages, max_new_tokens=max_new_tokens, do_sample=False)[0]
        return {"output": result["generated_text"][-1]["content"].strip()}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("adapter_dir")
    parser.add_argument("--kind", choices=["classification", "generation"], default="classification")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(build_app(args.adapter_dir, args.kind, args.max_new_tokens), host="127.0.0.1", port=args.port,
                log_level="warning")
