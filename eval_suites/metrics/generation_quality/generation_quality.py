"""Exact match, token F1 (SQuAD normalisation), fact accuracy and ROUGE-L (rouge-score), per example and
on average. The text rules live in ``tuneloop.eval_suites`` so suites and this module judge alike."""

import datasets
import evaluate
from rouge_score import rouge_scorer

from tuneloop.eval_suites.facts import fact_accuracy
from tuneloop.eval_suites.matching import normalize_answer, token_f1

_DESCRIPTION = "Answer quality for short generated answers against a reference answer."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated answers.
    references: list of reference answers.
    prompts: optional list of the questions; fact accuracy then does not require facts the question
        itself states (the product a question names).
Returns:
    exact_match, token_f1, fact_accuracy, rouge_l: means in [0, 1];
    per_example: dict of the same four as lists, one value per example.
    fact_accuracy is 1 when every fact-bearing token of the reference (numbers, words with digits,
    capitalised names not starting a sentence) is in the answer (see tuneloop.eval_suites.facts).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GenerationQuality(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, prompts=None):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        asked = prompts if prompts is not None else [None] * len(predictions)
        per = {
            "exact_match": [float(normalize_answer(p) == normalize_answer(r)) for p, r in zip(predictions, references)],
            "token_f1": [token_f1(p, r) for p, r in zip(predictions, references)],
            "fact_accuracy": [fact_accuracy(p, r, q) for p, r, q in zip(predictions, references, asked)],
            "rouge_l": [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)],
        }
        means = {k: (sum(v) / len(v) if v else 0.0) for k, v in per.items()}
        return {**means, "per_example": per}
