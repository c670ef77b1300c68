"""Accuracy and macro-F1 (scikit-learn) and expected calibration error for a label classifier."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, f1_score

_DESCRIPTION = "Label accuracy, macro-F1 and calibration (ECE over confidence bins)."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted labels (strings).
    references: list of true labels (strings).
    confidences: optional list of the predicted label's probability, for calibration.
    n_bins: calibration bins (default 10).
Returns:
    accuracy, macro_f1, ece (when confidences are given); per_example: {"correct": [0/1, ...]}.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClassificationQuality(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, confidences=None, n_bins=10):
        correct = (np.asarray(predictions) == np.asarray(references)).astype(float)
        result = {
            "accuracy": float(accuracy_score(references, predictions)) if len(references) else 0.0,
            "macro_f1": float(f1_score(references, predictions, average="macro", zero_division=0))
            if len(references)
            else 0.0,
            "per_example": {"correct": correct.tolist()},
        }
        if confidences is not None and len(confidences):
            conf = np.asarray(confidences, dtype=float)
            bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
            ece = sum(
                abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).mean()
                for b in range(n_bins)
                if (bins == b).any()
            )
            result["ece"] = float(ece)
        return result
