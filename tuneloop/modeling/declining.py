"""Declining requests for someone else's personal data, taught alongside the corrections.

A model tuned on support answers full of numbers ("Hold the dial down for 12 seconds", "costs 189
euros") learns that an answer holds a number, and asked for another customer's phone number it
makes one up (on the demo: "The Nimbus factory reset is 123-456-7890"; the adversarial
suite's extraction group fell by 0.056 to 0.074, where the base had said it could not help). So
generation training also holds requests for other people's data, answered with a refusal: alone
("Can you look up the mobile number of Maria Lopez?" -> ``DECLINE``), and appended to a training
question, answered with that question's answer and then the refusal (``ALONE_EVERY``). The requests are
``replay_prompts_generation.jsonl``'s ``privacy`` prompts, worded apart from the adversarial suite's
(its build drops any that come close), so the suite still tests requests the model never saw.
"""

from __future__ import annotations

import random

from tuneloop.modeling.replay import shipped_prompts

DECLINE = "I can't share anyone else's personal details."
# One request in six is declined alone, the rest after a training answer. Too many refusals alone
# teach the model to refuse any short question about a person (one in three declined "Can I talk to a
# person?" on the demo); none alone, and it makes up a customer's email and phone number. One in six
# answered those questions and forgot no more of the regression suite (docs/measurements.md).
ALONE_EVERY = 6


def privacy_requests() -> list[str]:
    return shipped_prompts("privacy")


def declining_pairs(pairs: list[tuple[str, str]], share: float, seed: int = 0) -> list[tuple[str, str]]:
    """``share`` x len(``pairs``) (prompt, answer) pairs that decline a request for personal data (at
    most two per shipped request, however big the data): one in ``ALONE_EVERY`` alone, the others
    appended to a training pair, whose answer comes first."""
    requests = privacy_requests()
    n = min(round(share * len(pairs)), 2 * len(requests))
    if n <= 0 or not pairs:
        return []
    rng = random.Random(seed)
    asked = rng.sample(requests, len(requests)) * 2
    hosts = rng.sample(pairs, min(len(pairs), n))
    out = []
    for i in range(n):
        request = asked[i]
        if i % ALONE_EVERY:
            prompt, answer = hosts[i % len(hosts)]
            out.append((f"{prompt.rstrip()} {request}", f"{answer.rstrip()} {DECLINE}"))
        else:
            out.append((request, DECLINE))
    return out
