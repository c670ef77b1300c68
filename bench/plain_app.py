"""The comparison server: a plain transformers pipeline behind a minimal FastAPI app, same model.

python -m bench.plain_app ADAPTER_DIR --port 8001   (the adapter is merged into the base once)
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI
from peft import PeftModel
from pydantic import BaseModel
from transformers import pipeline

from tuneloop.models import load_base, load_tokenizer, read_labels


class Query(BaseModel):
    text: str


def build_app(adapter_dir: str) -> FastAPI:
    labels = read_labels(adapter_dir)
    model = PeftModel.from_pretrained(load_base("classification", labels=labels), adapter_dir).merge_and_unload().eval()
    classifier = pipeline("text-classification", model=model, tokenizer=load_tokenizer("classification"))
    app = FastAPI()

    @app.post("/predict")
    def predict(query: Query) -> dict:
        result = classifier(query.text)[0]
        return {"output": result["label"], "confidence": result["score"]}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("adapter_dir")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(build_app(args.adapter_dir), host="127.0.0.1", port=args.port, log_level="warning")
