"""Deterministic sample feedback for the demo and tests: a support assistant for Brightwell, a
fictional smart-home company, so the facts are ones no base model can know and fine-tuning
measurably helps. Both kinds include duplicates, a conflicting correction, personal data to scrub,
bare thumbs-down, thumbs-up and a handful of malformed records.
"""

from __future__ import annotations

import random
from typing import Any

SYSTEM_PROMPT = "You are the Brightwell support assistant. Answer in one short sentence."

# (fact question stems, answer). Each stem is phrased several ways below.
FACTS: list[tuple[list[str], str]] = [
    (
        ["warranty on the Nimbus thermostat", "Nimbus thermostat warranty"],
        "The Nimbus thermostat has a 37-month warranty.",
    ),
    (["battery life of the Lumo doorbell", "Lumo doorbell battery life"], "The Lumo doorbell battery lasts 14 months."),
    (
        ["support phone line hours", "hours of the support line"],
        "The support line is open 7am to 9pm, Monday to Saturday.",
    ),
    (
        ["return window for Brightwell products", "Brightwell return period"],
        "Brightwell products can be returned within 45 days.",
    ),
    (["price of the Nimbus Pro", "Nimbus Pro cost"], "The Nimbus Pro costs 189 euros."),
    (["Wi-Fi band the Lumo doorbell uses", "Lumo doorbell Wi-Fi band"], "The Lumo doorbell only uses 2.4 GHz Wi-Fi."),
    (["app for Brightwell devices", "Brightwell companion app"], "Brightwell devices use the Brightwell Home app."),
    (
        ["reset the Nimbus thermostat", "factory reset for the Nimbus"],
        "Hold the Nimbus dial down for 12 seconds to reset it.",
    ),
    (["shipping time for orders", "order delivery time"], "Orders ship within 2 business days from Rotterdam."),
    (["Orbit camera storage", "cloud storage of the Orbit camera"], "The Orbit camera keeps 30 days of cloud video."),
    (
        ["Orbit camera resolution", "video resolution of the Orbit camera"],
        "The Orbit camera records in 2K at 25 frames per second.",
    ),
    (["Brightwell subscription price", "cost of Brightwell Plus"], "Brightwell Plus costs 4 euros a month."),
]

QUESTION_FORMS = [
    "What is the {}?",
    "Can you tell me the {}?",
    "I need to know the {}.",
    "Quick question: what's the {}?",
]

# Answers users liked (thumbs-up), each to several phrasings of one request: users say hello in many
# ways, and a greeting drawn into the held-out split is then a paraphrase of trained ones, like a fact
# (with three phrasings, two of the three greetings fell into the held-out split: one trained example).
GENERIC_GOOD = [
    (
        [
            "Hello!",
            "Hi there!",
            "Hey, good morning.",
            "Good afternoon!",
            "Hi, is anyone there?",
            "Hello, I have a question.",
        ],
        "Hello! How can I help you with your Brightwell device today?",
    ),
    (
        [
            "Thanks for the help.",
            "Thank you, that solved it.",
            "Cheers, that is all I needed.",
            "Great, thanks a lot!",
            "Thanks, that worked.",
            "Perfect, thank you so much.",
        ],
        "You're welcome! Let me know if there's anything else.",
    ),
    (
        [
            "Can I talk to a person?",
            "I want to speak to a human agent.",
            "Is there a real person I can talk to?",
            "Can I speak with someone from support?",
            "Please put me through to an agent.",
            "I'd rather talk to a human.",
        ],
        "Yes, I can connect you with a Brightwell support agent.",
    ),
    (
        ["Goodbye", "Bye for now.", "That is all, goodbye!", "See you later.", "Ok, bye.", "Have a good day, bye."],
        "Goodbye, and thank you for contacting Brightwell support.",
    ),
]

WRONG_ANSWERS = [
    "I'm not sure, please check the manual.",
    "It usually has a one-year warranty.",
    "I don't have that information.",
    "Please contact the manufacturer for details.",
]

PII_PROMPTS = [
    "My email is jane.doe@example.com, what is the {}?",
    "Call me on +44 20 7946 0958 about the {}.",
    "I paid with card 4111 1111 1111 1111, what is the {}?",
    "My IBAN is DE89 3704 0044 0532 0130 00, what is the {}?",
]

from tuneloop.data.sample_intents import CLOSERS, INTENTS, OPENERS, OUT_OF_SCOPE, PRODUCTS  # noqa: E402

OUT_OF_SCOPE_LABEL = "out_of_scope"  # LoopConfig.fallback_label's default: corrections to it train an explicit class


def _record(
    rng: random.Random, n: int, kind: str, prompt: str, output: str, rating: str, correction: str | None
) -> dict[str, Any]:
    record = {
        "request_id": f"sample-{kind[:3]}-{n:05d}",
        "user_id": f"user-{rng.randrange(60):03d}",
        "model_version": "base",
        "kind": kind,
        "prompt": prompt,
        "output": output,
        "rating": rating,
        "segment": rng.choice(["web", "mobile"]),
    }
    if correction is not None:
        record["correction"] = correction
    return record


def _malformed(kind: str) -> list[dict[str, Any]]:
    base = {"user_id": "user-bad", "model_version": "base", "kind": kind, "output": "x"}
    return [
        {**base, "request_id": f"bad-{kind[:3]}-1", "rating": "down", "correction": "y"},  # no prompt
        {**base, "request_id": f"bad-{kind[:3]}-2", "prompt": "hi", "rating": "meh"},  # unknown rating
        {
            **base,
            "request_id": f"bad-{kind[:3]}-3",
            "prompt": "hi",
            "rating": "up",
            "correction": "z",
        },  # correction on thumbs-up
        {
            **base,
            "request_id": f"bad-{kind[:3]}-4",
            "prompt": "   ",
            "rating": "down",
            "correction": "y",
        },  # blank prompt
        {**base, "request_id": f"bad-{kind[:3]}-5", "prompt": 42, "rating": "down", "correction": "y"},  # wrong type
        {
            **base,
            "request_id": f"bad-{kind[:3]}-6",
            "prompt": "a" * 9000,
            "rating": "down",
            "correction": "y",
        },  # oversize
    ]


def generation_feedback(seed: int = 0) -> list[dict[str, Any]]:
    """~270 records: corrections of product facts, plus duplicates, a conflict, PII and junk."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []

    def add(prompt: str, output: str, rating: str, correction: str | None = None) -> None:
        records.append(_record(rng, len(records), "generation", prompt, output, rating, correction))

    for stems, answer in FACTS:
        for stem in stems:
            for form in QUESTION_FORMS:
                prompt = form.format(stem)
                add(prompt, rng.choice(WRONG_ANSWERS), "down", answer)
                if rng.random() < 0.35:  # the same correction from another user: a duplicate
                    add(prompt, rng.choice(WRONG_ANSWERS), "down", answer)
                if rng.random() < 0.25:  # a bare thumbs-down: counted, not trained on
                    add(prompt, rng.choice(WRONG_ANSWERS), "down")
    stem, answer = FACTS[0][0][0], FACTS[0][1]
    add(
        QUESTION_FORMS[0].format(stem), WRONG_ANSWERS[1], "down", "The Nimbus thermostat has a 12-month warranty."
    )  # loses the vote
    for template, (stems, answer) in zip(PII_PROMPTS, FACTS[4:8]):
        add(template.format(stems[0]), rng.choice(WRONG_ANSWERS), "down", answer)
    for prompts, output in GENERIC_GOOD:
        for prompt in prompts:
            for _ in range(2):
                add(prompt, output, "up")
    rng.shuffle(records)
    return records + _malformed("generation")


def _phrasings(rng: random.Random, template: str, per_template: int) -> list[str]:
    """Distinct utterances from one template: products where it takes one, and openers/closers."""
    products = rng.sample(PRODUCTS, per_template) if "{}" in template else [None] * 2
    texts = []
    for product in products:
        text = template.format(product) if product else template
        texts.append(rng.choice(OPENERS) + text + rng.choice(CLOSERS))
    return list(dict.fromkeys(texts))


SMALL_INTENTS = 6  # ``small``: the first six intents, their first four templates with every product


def classification_feedback(seed: int = 0, small: bool = False) -> list[dict[str, Any]]:
    """~700 routed utterances over 30 intents (paraphrases of each) and 40 out-of-scope queries, from a
    weak router (right 40 % of the time), with duplicates, a conflict, PII and junk: the demo's data.

    ``small``: ~170 utterances over six intents with distinctive words and no out-of-scope queries, which
    the tests' tiny random-initialised models can learn in seconds (they cannot learn 30 paraphrased
    intents: a 2-layer model with random embeddings stays at chance)."""
    rng = random.Random(seed)
    intents = dict(list(INTENTS.items())[:SMALL_INTENTS]) if small else INTENTS
    labels = sorted(intents)
    records: list[dict[str, Any]] = []

    def add(prompt: str, output: str, rating: str, correction: str | None = None) -> None:
        records.append(_record(rng, len(records), "classification", prompt, output, rating, correction))

    for intent, templates in intents.items():
        for template in templates[:4] if small else templates:
            for text in [template.format(p) for p in PRODUCTS] if small else _phrasings(rng, template, 4):
                predicted = intent if rng.random() < 0.4 else rng.choice([other for other in labels if other != intent])
                if predicted == intent:
                    add(text, predicted, "up")
                else:
                    add(text, predicted, "down", intent)
                if rng.random() < 0.1:
                    add(text, predicted, "down")
    for text in [] if small else OUT_OF_SCOPE:  # the router guessed an intent; the user said none fits
        add(text, rng.choice(labels), "down", OUT_OF_SCOPE_LABEL)
    first = INTENTS["billing"][0].format(PRODUCTS[0])
    add(first, "billing", "down", "returns")  # a conflicting (losing) correction
    if not small:
        add(first, "billing", "up")
    add("my email is jane.doe@example.com and I was charged twice", "returns", "down", "billing")
    rng.shuffle(records)
    return records + _malformed("classification")


def sample_feedback(kind: str, seed: int = 0, small: bool = False) -> list[dict[str, Any]]:
    """The demo's sample feedback; ``small`` (classification): the set tiny models learn (tests, ``--tiny`` runs)."""
    return generation_feedback(seed) if kind == "generation" else classification_feedback(seed, small)
