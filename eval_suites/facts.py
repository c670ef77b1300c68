"""Fact accuracy for generated answers: exact facts in the answer, not only overlapping words.

A reference answer's *fact-bearing tokens* are
- every number ("37", "2.4", "189"), also inside a word ("37-month" -> 37, "7am" -> 7, "2K" -> 2);
- every word with a digit in it, as written without spaces or punctuation ("7am", "2k", "37month"),
  so "7am" does not match "7pm" and "2K" does not match "4K";
- every capitalised word that does not start a sentence (names: "Nimbus", "Lumo", "Rotterdam",
  "GHz", "Monday"; "Wi-Fi" is one word, "wifi"), except the pronoun "I".
The first word of a sentence is left out because capitals there carry no information ("The",
"Orders", "Hold"). An answer is factually right when every fact-bearing token of the reference
appears in it (tokens the question itself holds excepted, when it is given): numbers as whole numbers (37 is not in 137), the rest as a substring of the answer
written without spaces or punctuation ("7 a.m." holds "7am", "Wi Fi" holds "wifi").

A reference with no fact-bearing token ("You're welcome!") has no fact to check: there fact accuracy
falls back to token F1 >= ``NO_FACT_F1`` so the score stays a 0/1 judgement of the answer.
Not caught: an answer that states the fact and contradicts it ("not 37 months") or hedges between
two values; those still need the token-level metrics and a reviewer's eye.
"""

from __future__ import annotations

import re

from tuneloop.eval_suites.matching import fold, token_f1

NO_FACT_F1 = 0.5
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SENTENCE_END = re.compile(r"[.!?:;]$")
_EDGE_PUNCT = "\"'()[]{}<>,.;:!?"


def _squash(text: str) -> str:
    return re.sub(r"[\W_]+", "", fold(text))


def _numbers(text: str) -> set[str]:
    return {n.replace(",", ".") for n in _NUMBER.findall(fold(text))}


def fact_tokens(reference: str) -> dict[str, set[str]]:
    """The reference's fact-bearing tokens: ``{"numbers": {...}, "words": {...}}`` (words squashed
    and folded; numbers as written, with "," read as a decimal point)."""
    numbers, words = set(), set()
    raw = reference.split()
    for n, token in enumerate(raw):
        starts_sentence = n == 0 or bool(_SENTENCE_END.search(raw[n - 1]))
        core = token.strip(_EDGE_PUNCT)
        if not core:
            continue
        if any(ch.isdigit() for ch in core):
            numbers |= _numbers(core)
            squashed = _squash(core)
            if not squashed.isdigit():  # "7am", "2k", "37month": keep the unit with its number
                words.add(squashed)
        elif core[0].isupper() and not starts_sentence and core != "I":
            words.add(_squash(core))
    return {"numbers": numbers, "words": {w for w in words if w}}


def fact_accuracy(prediction: str, reference: str, prompt: str | None = None) -> float:
    """1.0 when every fact-bearing token of ``reference`` is in ``prediction``, else 0.0 (see module).

    With ``prompt``, tokens the question already holds are not required: asked "What is the Nimbus
    thermostat warranty?", "It has a 37-month warranty." states the fact without naming the Nimbus.
    """
    facts = fact_tokens(reference)
    numbers, words = facts["numbers"], facts["words"]
    if prompt:
        asked_words = {_squash(w) for w in prompt.split()}
        numbers = numbers - _numbers(prompt)
        words = words - asked_words
    if not numbers and not words:
        return float(token_f1(prediction, reference) >= NO_FACT_F1)
    if not numbers <= _numbers(prediction):
        return 0.0
    answer_squashed = _squash(prediction)
    return float(all(w in answer_squashed for w in words))
