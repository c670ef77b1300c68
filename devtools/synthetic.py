"""Generated feedback at the sizes real users have (thousands to a million records), for tests and benchmarks.

Shaped like production traffic rather than the demo's 270 records: mostly distinct prompts (order
numbers and details vary), exact repeats, typo'd near duplicates, conflicting corrections, bare
thumbs-down, thumbs-up, personal data and about 2 % malformed records. The targets follow the
prompt's content (question type and product, or intent), so a model can learn them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

PRODUCTS = [
    "Nimbus thermostat",
    "Nimbus Pro",
    "Lumo doorbell",
    "Orbit camera",
    "smart plug",
    "hub",
    "Aura bulb",
    "Vista sensor",
    "Halo speaker",
    "Terra lock",
    "Breeze fan",
    "Pulse meter",
    "Echo chime",
    "Flow valve",
]
QUESTIONS = [
    ("what is the warranty on the {}", "The {} has a {n}-month warranty."),
    ("how do I reset the {}", "Hold the {} button for {n} seconds to reset it."),
    ("why does my {} keep going offline", "Move the {} within {n} metres of the hub."),
    ("how much does the {} cost", "The {} costs {n} euros."),
    ("how long does the {} take to ship", "The {} ships within {n} business days."),
    ("what battery does the {} use", "The {} uses a {n}-hour rechargeable battery."),
]
OPENERS = ["", "", "hi,", "hello", "please help:", "urgent:", "quick question,", "hey team,", "good morning,"]
CLOSERS = ["", "", "thanks", "asap", "please", "today if possible", "any idea?", "it's the second time"]
DETAILS = [
    "in the kitchen",
    "after the update",
    "since yesterday",
    "at my office",
    "for my parents",
    "in the garage",
    "every morning",
    "on the second floor",
    "with the new router",
    "during the night",
    "",
    "",
    "",
]
INTENT_VERBS = [
    ("track_order", "where is my {}"),
    ("return", "I want to return the {}"),
    ("connectivity", "the {} will not connect"),
    ("double_charge", "I was charged twice for the {}"),
    ("setup", "how do I set up the {}"),
    ("cancel_plan", "cancel the plan for my {}"),
    ("damaged", "the {} arrived broken"),
    ("change_address", "change the address for the {}"),
    ("noise", "my {} makes a noise"),
    ("firmware", "update the firmware on the {}"),
    ("refund", "can I get a refund for the {}"),
    ("slow", "the {} is too slow"),
]


def _typo(text: str, rng: random.Random) -> str:
    chars = list(text)
    chars[rng.randrange(len(chars))] = rng.choice("aeiourst")
    return "".join(chars)


def _envelope(rng: random.Random, i: int, kind: str, seed: int) -> dict[str, Any]:
    return {
        "request_id": f"{kind[:3]}-{seed}-{i}",
        "user_id": f"user-{rng.randrange(5000)}",
        "model_version": "base",
        "kind": kind,
        "segment": rng.choice(["web", "mobile", "partner"]),
    }


def intents(n_labels: int) -> list[tuple[str, str, str]]:
    """Up to 168 intents, product-specific actions: (label, utterance template, product)."""
    table = [
        (f"{name}_{product.replace(' ', '_').lower()}", verb, product)
        for product in PRODUCTS
        for name, verb in INTENT_VERBS
    ]
    if n_labels > len(table):
        raise ValueError(f"n_labels: at most {len(table)} generated intents, asked for {n_labels}")
    return table[:n_labels]


def feedback(kind: str, n: int, seed: int = 0, n_labels: int = 150) -> Iterator[dict[str, Any]]:
    """``n`` raw records of ``kind`` (generation: corrected answers; classification: corrected intents)."""
    rng = random.Random(seed)
    seen: list[str] = []
    table = intents(n_labels)
    for i in range(n):
        record = _envelope(rng, i, kind, seed)
        roll = rng.random()
        if kind == "classification":
            label, verb, product = table[rng.randrange(len(table))]
            prompt = " ".join(
                filter(None, [rng.choice(OPENERS), verb.format(product), rng.choice(DETAILS), rng.choice(CLOSERS)])
            )
            target = label
            wrong = table[rng.randrange(len(table))][0]
        else:
            q = rng.randrange(len(QUESTIONS))
            question, answer = QUESTIONS[q]
            product = rng.choice(PRODUCTS)
            prompt = " ".join(
                filter(None, [question.format(product), rng.choice(DETAILS), f"(order {rng.randrange(10**6):06d})"])
            )
            target = answer.format(product, n=10 + (PRODUCTS.index(product) * 7 + q) % 50)
            wrong = "I am not sure."
        if seen and roll < 0.10:
            prompt = rng.choice(seen)  # an exact repeat (its target may conflict: the vote decides)
        elif seen and roll < 0.15:
            prompt = _typo(rng.choice(seen), rng)  # a near duplicate
        else:
            if rng.random() < 0.03:
                prompt += f" my email is user{rng.randrange(10**5)}@example.com"
            if len(seen) < 50_000:
                seen.append(prompt)
        rating = rng.random()
        if rating < 0.60:  # thumbs-up: the model was right
            record.update(prompt=prompt, output=target, rating="up")
        elif rating < 0.66:
            record.update(prompt=prompt, output=wrong, rating="down")  # bare thumbs-down: counted, not trained on
        else:
            record.update(prompt=prompt, output=wrong, rating="down", correction=target)
        if rng.random() < 0.02:
            record["rating"] = rng.choice(["meh", 5, None])  # malformed: quarantined
        yield record
