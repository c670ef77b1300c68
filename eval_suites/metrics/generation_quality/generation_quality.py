"""Exact match, token F1 (SQuAD normalisation) and ROUGE-L (rouge-score) per example and on average."""

import re
import string
from collections import Counter

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "Answer quality for short generated answers against a reference answer."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated answers.
    references: list of reference answers.
Returns:
    exact_match, token_f1, rouge_l: means in [0, 1];
    per_example: dict of the same three as lists, one value per example.
"""


def normalize_answer(text):
    text = text.casefold()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction, reference):
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GenerationQuality(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        per = {
            "exact_match": [float(normalize_answer(p) == normalize_answer(r)) for p, r in zip(predictions, references)],
            "token_f1": [token_f1(p, r) for p, r in zip(predictions, references)],
            "rouge_l": [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)],
        }
        means = {k: (sum(v) / len(v) if v else 0.0) for k, v in per.items()}
        return {**means, "per_example": per}
