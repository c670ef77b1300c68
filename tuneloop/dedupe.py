"""Text normalisation and near-duplicate clustering of prompts, for curation.

Near duplicates are found with MinHash LSH (datasketch) over character 3-grams, which finds
candidates in roughly constant time per prompt, and confirmed with a rapidfuzz similarity ratio,
which keeps prompts that differ in a word that matters ("Nimbus" vs "Nimbus Pro") apart. Clusters
are built in arrival order and each prompt joins the cluster of the earliest similar
*representative*, so a prompt's cluster (and therefore its train/held-out side) depends only on
what arrived before it: adding data never moves an existing prompt.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from datasketch import MinHash, MinHashLSH
from rapidfuzz import fuzz

NUM_PERM = 64  # MinHash size: enough for a 0.5 Jaccard candidate threshold, cheap to compute
# LSH candidate threshold on 3-gram sets. Lower finds more one-typo variants of very short prompts
# (0.5: all, 0.7: ~85 % of those under 25 characters) but lets template-mates ("where is my X order
# 123") collide, and the candidates to check per prompt then grow with the data: measured 100k/10k
# time ratio 21 at 0.5, ~9 at 0.7 (linear is 10).
CANDIDATE_JACCARD = 0.7
MIN_SIMILARITY = 95.0  # rapidfuzz ratio (0-100) from which two prompt keys are the same prompt (typos, plurals);
# lower merges prompts that differ in one short word ("Nimbus thermostat" vs "Nimbus Pro" scores 90)
_PUNCT = re.compile(r"[^\w\s]")


def normalize(text: str) -> str:
    """Unicode NFKC, control and invisible format characters removed, single spaces: what the model sees."""
    text = unicodedata.normalize("NFKC", text)
    # zero-width and bidi characters (category Cf) and controls (Cc) hide duplicates and personal data
    text = "".join(ch if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf") else "" for ch in text)
    return " ".join(text.split())


def prompt_key(prompt: str) -> str:
    """Case-, punctuation- and spacing-blind key: exact duplicates up to those share it."""
    return " ".join(_PUNCT.sub(" ", prompt.casefold()).split())


def split_of(key: str, heldout_percent: int) -> str:
    """Stable by construction: a key's side depends on the key alone, never on what else arrived."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100
    return "heldout" if bucket < heldout_percent else "train"


def _shingles(key: str) -> list[bytes]:
    padded = f" {key} "
    return sorted({padded[i:i + 3].encode() for i in range(max(len(padded) - 2, 1))})


def cluster_keys(keys: list[str]) -> dict[str, str]:
    """Map each distinct key (in arrival order) to its cluster representative, the earliest similar key.

    Only representatives are indexed, so a cluster is a star around its first member: no chains
    that would merge "a" with "c" through "b", and each prompt needs one LSH query and one insert.
    """
    ordered = list(dict.fromkeys(keys))
    hashes = MinHash.bulk([_shingles(k) for k in ordered], num_perm=NUM_PERM)
    lsh = MinHashLSH(threshold=CANDIDATE_JACCARD, num_perm=NUM_PERM)
    position = {key: i for i, key in enumerate(ordered)}
    representative: dict[str, str] = {}
    for key, minhash in zip(ordered, hashes):
        similar = [c for c in lsh.query(minhash) if fuzz.ratio(key, c) >= MIN_SIMILARITY]
        if similar:
            representative[key] = min(similar, key=position.__getitem__)
        else:
            representative[key] = key
            lsh.insert(key, minhash)
    return representative
