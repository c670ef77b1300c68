"""Text as the model sees it: the same normalisation for training data (curation), evaluation and serving.

Standard library only: the training path imports it.
"""

from __future__ import annotations

import sys
import unicodedata
from functools import lru_cache


@lru_cache(maxsize=1)
def _invisible() -> dict[int, None]:
    """Every control (Cc) and format (Cf) character but whitespace, for ``str.translate`` (built once)."""
    return {
        cp: None
        for cp in range(sys.maxunicode + 1)
        if unicodedata.category(chr(cp)) in ("Cc", "Cf") and not chr(cp).isspace()
    }


def normalize(text: str) -> str:
    """Unicode NFKC, control and invisible format characters removed, single spaces: what the model sees."""
    text = unicodedata.normalize("NFKC", text)
    if not text.isascii() or not text.isprintable():
        # zero-width and bidi characters (category Cf) and controls (Cc) hide duplicates and personal data
        text = text.translate(_invisible())
    return " ".join(text.split())
