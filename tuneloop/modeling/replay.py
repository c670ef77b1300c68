"""Rehearsal: what training must keep while it learns the users' corrections.

Generation mixes into every training set the base model's own answers to a broad set of prompts
(self-distillation: ``eval_suites/data/replay_prompts_generation.jsonl``: short general-knowledge
questions whose facts the regression suite does not test, and general requests; none shares a fact
with the regression suite), at ``replay_ratio`` replay pairs per training pair, a ratio the search
may tune; a KL term holds the model to the frozen base on them (``tune.replay_kl``). A short question
is rehearsed only where the base answered it in one short sentence, as the system prompt asks: its
worked-out answers ("To find half of 34, you would divide...") taught the tuned model to work out
sums the regression suite wants answered, and it then forgot them within the suite's answer length.
Thumbs-up answers users liked are already in the dataset. The base's answers are
deterministic (greedy), so they are generated once per machine and base and cached. A replay prompt
that resembles a prompt of the training data is left out: the users' answer to it wins over the
base's. Classification
needs no replay set: the dataset holds every label's corrected and confirmed (thumbs-up) examples
since the first loop, so each retrain sees all the labels the champion learned.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import zlib
from collections.abc import Callable, Iterable
from functools import lru_cache
from importlib import resources
from itertools import islice
from pathlib import Path

from datasketch import MinHash, MinHashLSH
from filelock import FileLock

from tuneloop.config import LoopConfig
from tuneloop.data.dedupe import prompt_key
from tuneloop.modeling.inference import generate
from tuneloop.modeling.models import BaseModelInfo, cache_dir, load_base, load_tokenizer, resolve_device, resolve_dtype
from tuneloop.modeling.prompting import Prompting

# shipped beside the suites (eval_suites/data), which the regression suite's build keeps them apart from;
# found through the installed package so a checkout and a wheel read the same file
PROMPTS = Path(str(resources.files("tuneloop.eval_suites") / "data" / "replay_prompts_generation.jsonl"))
RECORDED = PROMPTS.with_name("replay_answers_generation.json")  # the bundled base's answers (``record``)
MAX_NEW_TOKENS = 48  # a general request's answer (cut to its last complete sentence)
SHORT_QA_TOKENS = 24  # a short question's: a one-sentence answer of SHORT_ANSWER_WORDS words ends well within it
SHORT_ANSWER_WORDS = 12


SIMILAR_WORDS = 0.5  # word-set Jaccard from which a training prompt and a replay prompt ask the same thing
SHORT_QA_SHARE = 1.0  # of any replay set: short questions in the regression suite's shape while they last, then
# general requests: rehearsing their long answers forgets more (on the demo, 53 short questions and 255 general
# requests forgot 0.106 of the regression suite, 282 short questions and 26 general requests 0.030)


@lru_cache(maxsize=1)
def _rows() -> list[dict]:  # read by every replay set (twice); the shipped file does not change in a process
    return [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]


def shipped_prompts(category: str) -> list[str]:
    """The shipped prompts of one category, in file order."""
    return [r["prompt"] for r in _rows() if r["category"] == category]


def replay_prompts(seed: int = 0, keep: Callable[[str], bool] = lambda prompt: True) -> list[str]:
    """The rehearsal prompts in a fixed shuffled order that a smaller replay set takes the first of:
    short questions first (``SHORT_QA_SHARE``), then general prompts. Short questions carry most of it:
    what a correction-tuned model forgets first is answering short questions under the same system
    prompt ("the capital of France is France"), and their answers are cheap to train on."""
    rows = [r for r in _rows() if keep(r["prompt"])]
    rng = random.Random(seed)
    qa = [r["prompt"] for r in rows if r["category"] == "short_qa"]
    general = [
        r["prompt"] for r in rows if r["category"] not in ("short_qa", "privacy")
    ]  # privacy: tuneloop/modeling/declining.py
    rng.shuffle(qa)
    rng.shuffle(general)
    out, n_qa = [], 0
    while qa or general:
        take_qa = bool(qa) and (not general or n_qa < SHORT_QA_SHARE * (len(out) + 1))
        out.append(qa.pop() if take_qa else general.pop())
        n_qa += take_qa
    return out


def _words(text: str) -> set[str]:
    return set(prompt_key(text).split())


def unlike(prompts: list[str], training_prompts: Iterable[str]) -> list[str]:
    """``prompts`` less those a training prompt resembles (half or more of their words in common,
    "Good morning!" and "Hey, good morning."): rehearsing the base's answer to a question users
    corrected would teach the model the answer they rejected. Streams the training prompts through a
    MinHash LSH index of ``prompts``, so 100,000 of them cost seconds."""

    def minhashes(word_sets: list[set[str]]) -> list[MinHash]:
        return MinHash.bulk(
            [sorted(w.encode() for w in ws) or [b""] for ws in word_sets], num_perm=64, hashfunc=zlib.crc32
        )

    words = [_words(p) for p in prompts]
    lsh = MinHashLSH(threshold=SIMILAR_WORDS, num_perm=64)
    for i, minhash in enumerate(minhashes(words)):
        lsh.insert(i, minhash)
    taken: set[int] = set()
    training = iter(training_prompts)
    while chunk := [_words(text) for text in islice(training, 1000)]:
        for mine, minhash in zip(chunk, minhashes(chunk)):
            taken.update(i for i in lsh.query(minhash) if len(mine & words[i]) >= SIMILAR_WORDS * len(mine | words[i]))
    return [p for i, p in enumerate(prompts) if i not in taken]


def rehearsable(answer: str, short: bool = False) -> str | None:
    """The answer up to its last complete sentence (one cut off at the length limit would teach
    stopping mid-sentence), or None when nothing worth rehearsing is left (empty, looping). ``short``
    (a short question's answer): the whole answer if it is one sentence of at most
    ``SHORT_ANSWER_WORDS`` words ("19 + 8 = 27" needs no full stop), else None."""
    if short:
        answer = answer.strip()
        one_sentence = 2 <= len(answer.split()) <= SHORT_ANSWER_WORDS and not re.search(r"[.!?]\s+\S|\n", answer)
        return answer if one_sentence and not _loops(answer) else None
    end = max(answer.rfind(c) for c in ".!?")
    answer = answer[: end + 1].strip() if end >= 0 else ""
    words = answer.split()
    if len(words) < 2 or len(words) - len(set(map(str.lower, words))) > len(words) // 2:
        return None
    return None if _loops(answer) else answer


def _loops(answer: str) -> bool:
    """One word four times in a row: a degenerate generation."""
    return bool(re.search(r"(\b\w+\b)( \1\b){3,}", answer))


def answers_cache(base: BaseModelInfo, prompting: Prompting, max_new_tokens: int) -> Path:
    """The JSON-lines file of [prompt, answer] the base gave under ``prompting``."""
    key = hashlib.sha256(json.dumps([base.id, prompting.system_prompt, prompting.template, max_new_tokens]).encode())
    return cache_dir() / "replay" / f"{key.hexdigest()[:16]}.jsonl"


def base_answers(
    config: LoopConfig, base: BaseModelInfo, prompting: Prompting, prompts: list[str], max_new_tokens: int
) -> dict[str, str]:
    """The base's greedy answers to ``prompts``: generated on first use, cached per base and prompting."""
    path = answers_cache(base, prompting, max_new_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):  # trials in other processes wait for one generation, not run their own
        known = recorded_answers(base, prompting, max_new_tokens)
        if path.exists():
            known = dict(tuple(json.loads(line)) for line in path.read_text().splitlines() if line.strip())
        missing = [p for p in prompts if p not in known]
        if missing:
            device = resolve_device(config.device)
            model = load_base(base, "generation", device=device, dtype=resolve_dtype(config.precision, device))
            answers = generate(model, load_tokenizer(base), missing, max_new_tokens, prompting)
            with open(path, "a") as f:
                for prompt, answer in zip(missing, answers):
                    f.write(json.dumps([prompt, answer]) + "\n")
                    known[prompt] = answer
    return {p: known[p] for p in prompts}


def replay_pairs(
    config: LoopConfig, base: BaseModelInfo, prompting: Prompting, n: int, training_prompts: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """Up to ``n`` (prompt, the base's own answer) pairs, none to a prompt like one of
    ``training_prompts``, a short question's only where its answer is short. Every short question is
    answered once (which answers are short is known only then), general prompts as far as needed."""
    if n <= 0 or config.kind != "generation":
        return []
    prompts = unlike(replay_prompts(config.tune.seed), training_prompts)
    short = {r["prompt"] for r in _rows() if r["category"] == "short_qa"}
    answers = base_answers(config, base, prompting, [p for p in prompts if p in short], SHORT_QA_TOKENS)
    good = {p: kept for p, a in answers.items() if (kept := rehearsable(a, short=True))}
    general = [p for p in prompts if p not in short][: max(0, n - len(good))]
    answers = base_answers(config, base, prompting, general, MAX_NEW_TOKENS)
    good.update((p, kept) for p, a in answers.items() if (kept := rehearsable(a)))
    return [(p, good[p]) for p in replay_prompts(config.tune.seed, keep=good.__contains__)[:n]]


@lru_cache(maxsize=1)
def _recorded() -> dict:  # read once per process, not at every base_answers call (111 KB)
    return json.loads(RECORDED.read_text()) if RECORDED.exists() else {}


def recorded_answers(base: BaseModelInfo, prompting: Prompting, max_new_tokens: int) -> dict[str, str]:
    """The bundled base's answers shipped beside the prompts, when ``base`` is that base and the
    system prompt and answer length are ones they were recorded with; else nothing (then they are
    generated once per machine: ~1 minute on 2 cores for the demo's replay set)."""
    recorded = _recorded()
    if base.tiny or base.sha256 != recorded.get("base_model_sha256"):
        return {}
    return recorded["answers"].get(prompting.system_prompt or "", {}).get(str(max_new_tokens), {})


def record(system_prompts: list[str]) -> None:
    """Write ``RECORDED``: the bundled generation base's greedy answers (CPU, fp32) to every short
    question and general prompt under each system prompt, at the lengths rehearsal asks for."""
    from tuneloop.modeling.models import resolve_base

    base = resolve_base("generation")
    model, tokenizer = load_base(base, "generation"), load_tokenizer(base)
    short = set(shipped_prompts("short_qa"))
    general = [p for p in replay_prompts() if p not in short]
    answers: dict[str, dict[str, dict[str, str]]] = {}
    for system_prompt in system_prompts:
        prompting = Prompting(system_prompt)
        answers[system_prompt] = {
            str(tokens): dict(zip(prompts, generate(model, tokenizer, prompts, tokens, prompting)))
            for prompts, tokens in ((sorted(short), SHORT_QA_TOKENS), (general, MAX_NEW_TOKENS))
        }
    RECORDED.write_text(
        json.dumps(
            {"base_model_sha256": base.sha256, "base_model_revision": base.revision, "answers": answers},
            indent=0,
            sort_keys=True,
        )
        + "\n"
    )


if __name__ == "__main__":  # python -m tuneloop.modeling.replay: re-record after changing the prompts or the base
    from tuneloop.data.sample_data import SYSTEM_PROMPT

    record([SYSTEM_PROMPT])
