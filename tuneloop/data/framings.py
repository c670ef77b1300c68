"""Training questions in more than one framing: the same question with a greeting, a thanks, a
prefix or another casing, answered the same way.

Users ask one fact in many ways, and feedback holds only the few ways someone corrected. A model
tuned on those few learns the questions' surface as well as their content; framings that change
the surface but not the content teach it to answer from the content. The framings are generic
(any support assistant's users greet, thank and abbreviate), deterministic per question, and never
touch the answer.
"""

from __future__ import annotations

import hashlib
import random

FRAMES = [
    "Hi, {q}",
    "{q} Thanks!",
    "Quick question: {q}",
    "Hello! {q}",
    "{q} Please answer briefly.",
    "Can you help? {q}",
    "{lower}",
    "{bare}",
    "hey {lower}",
]


def framings(prompt: str, n: int) -> list[str]:
    """Up to ``n`` other framings of ``prompt``, distinct from it and from each other, the same every time."""
    q = prompt.strip()
    bare = q.rstrip("?.! ")
    values = {"q": q, "lower": q[:1].lower() + q[1:], "bare": bare}
    rng = random.Random(hashlib.sha256(q.encode()).digest())
    out: list[str] = []
    for frame in rng.sample(FRAMES, len(FRAMES)):
        text = frame.format(**values)
        if text != q and text not in out:
            out.append(text)
        if len(out) == n:
            break
    return out


def framed_pairs(pairs: list[tuple[str, str]], n: int) -> list[tuple[str, str]]:
    """``n`` framings of each (question, answer) pair's question, with its answer."""
    return [(variant, answer) for prompt, answer in pairs for variant in framings(prompt, n)] if n > 0 else []
