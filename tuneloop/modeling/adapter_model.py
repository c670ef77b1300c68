"""The pyfunc flavour of a registered version, logged as code (MLflow's models-from-code).

``mlflow.pyfunc.load_model("models:/<name>@champion")`` runs this file: the version's own base
model (named and hashed in its ``tuneloop.json``) and its adapter from the artifact store, on the
configured device. Logging the class as code instead of pickling an instance keeps versions
loadable across Python and library upgrades.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pandas as pd


class AdapterModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper so a version loads with ``mlflow.pyfunc.load_model``: its base + this adapter."""

    def load_context(self, context):
        from tuneloop.modeling.adapters import load_adapter
        from tuneloop.modeling.models import resolve_device, resolve_dtype

        device = resolve_device(os.environ.get("TUNELOOP_DEVICE", "auto"))
        dtype = resolve_dtype(os.environ.get("TUNELOOP_PRECISION", "auto"), device)
        folder = Path(context.artifacts["adapter"])
        self.model, self.tokenizer, self.meta, self.labels = load_adapter(folder, device, dtype)
        stored = folder / "calibration.json"  # classification: the out-of-scope threshold the gate fitted
        self.calibration = json.loads(stored.read_text()) if stored.exists() else None
        self.neighbours = None  # classification: its training utterances' votes beside its head
        self.memory = None  # generation: its training questions' answers
        if self.meta.kind == "classification":
            from tuneloop.modeling.neighbours import load_neighbours

            self.neighbours = load_neighbours(folder, len(self.labels))
        else:
            from tuneloop.modeling.memory import load_memory

            self.memory = load_memory(folder)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[str]:
        from tuneloop.modeling.inference import predict, predict_classes

        inputs = list(model_input["input"])
        if self.meta.kind != "classification":
            from tuneloop.modeling.memory import answered_from_memory

            outputs = predict(
                self.meta.kind,
                self.model,
                self.tokenizer,
                inputs,
                self.labels,
                self.meta.max_new_tokens,
                self.meta.prompting,
            )[0]
            return answered_from_memory(self.memory, inputs, outputs)
        answered = predict_classes(self.model, self.tokenizer, inputs, self.labels, neighbours=self.neighbours)
        if self.calibration:
            from tuneloop.modeling.calibration import Calibration

            return Calibration.from_dict(self.calibration).apply(*answered)
        return answered.labels


mlflow.models.set_model(AdapterModel())
