"""Answers from a model: greedy generation for generation, label and probability for classification.

Batches are grouped by length (little padding) and capped in padded size; several LoRA adapters can
answer in one batch (``adapter_names``), which the service uses to serve versions side by side.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import NamedTuple, TypeVar

import torch
from transformers import PreTrainedTokenizerBase

from tuneloop.config import Kind
from tuneloop.data.text import normalize
from tuneloop.modeling.fast.prefix import SHARED_PREFIX_MIN, base_class, cache_argument, prefix_first, sharable_cache
from tuneloop.modeling.models import compute_dtype
from tuneloop.modeling.neighbours import Neighbours, mean_pooled
from tuneloop.modeling.prompting import Prompting

MAX_PROMPT_TOKENS = 512  # longer prompts are cut from the left
T = TypeVar("T")


EMPTY_INPUT_ANSWER = "Please type a question."  # a generation answer to an empty or blank input


def _adapters(adapter_names: Sequence[str] | None, rows: list[int]) -> dict:
    """peft's per-row adapter choice for these rows ("__base__": adapters off), or nothing."""
    return {"adapter_names": [adapter_names[i] for i in rows]} if adapter_names is not None else {}


MAX_PADDED_CHARS = 12_800  # a batch's rows x its longest text stay within this


def _by_length(texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Batches of indices of similar length (less padding), longest first, at most ``batch_size`` rows
    and, padded, ``MAX_PADDED_CHARS`` characters: short prompts share a batch of up to 64 (a decoding
    step costs about the same for 32 rows as for 64 on 2 cores: the regression suite 121 -> 94 ms per
    item), while a few very long prompts get a batch of their own instead of padding 25 short ones to
    their length (the adversarial suite's seven 1,500-character prompts made it cost 2.5x the
    regression suite per item; with 64 rows' worth of characters per batch, 12 % more than with 32)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    batches: list[list[int]] = []
    for i in order:
        if (
            batches
            and len(batches[-1]) < batch_size
            and (len(batches[-1]) + 1) * len(texts[batches[-1][0]]) <= MAX_PADDED_CHARS
        ):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _inference_autocast(model):
    device, dtype = next(model.parameters()).device, compute_dtype(model)
    if device.type in ("cuda", "mps") and dtype != torch.float32:
        return torch.autocast(device.type, dtype=dtype)
    return nullcontext()


@torch.inference_mode()
def generate(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    prompting: Prompting = Prompting(),
    batch_size: int = 64,
    adapter_names: Sequence[str] | None = None,
    share_prefix: bool = True,
) -> list[str]:
    """Greedy answers; prompts are batched by length with left padding so answers start together.

    ``adapter_names`` (one per prompt) runs several LoRA adapters in one batch: the base model's
    work is shared and each adapter adds its part to its own rows only. Without it, the prompt
    prefix every row shares (template and system prompt) goes through the model once per batch
    (``tuneloop.modeling.fast.prefix``, ``share_prefix``): the same answers, 1.3x faster on the regression suite;
    and on a CPU the batches run in streams that split the cores (``streams``).
    """
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"  # an over-long prompt keeps its question's end and the answer's header
    device = next(model.parameters()).device
    texts = [prompting.render(tokenizer, p) for p in prompts]
    prefix = _common_prefix(tokenizer, texts) if share_prefix and adapter_names is None else None
    settings = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    count = stream_count(device, shared_model=adapter_names is None)
    # batch_size rows at once in all streams together; fewer prompts are shared out evenly (27: 14 and 13
    # rows, 1.12x faster than one batch of 27 on 2 cores)
    batches = _by_length(texts, max(1, min(batch_size // count, -(-len(texts) // count))))
    # tokenized here, not in the streams: a fast tokenizer shared by threads fails ("Already borrowed")
    encoded = [
        tokenizer(
            [texts[i] for i in rows],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
            truncation=True,
            max_length=MAX_PROMPT_TOKENS,
        ).to(device)
        for rows in batches
    ]

    def answer(n: int) -> torch.Tensor:
        batch, rows = encoded[n], batches[n]
        relaid = prefix_first(batch["input_ids"], batch["attention_mask"], prefix) if prefix is not None else None
        with _inference_autocast(model):  # the prefix's keys and values in the dtype the rows compute in
            cache = sharable_cache(model, relaid[0][:1, : prefix.shape[-1]], len(rows)) if relaid is not None else None
            if cache is not None:
                out = _from_prefix(model, relaid, cache, settings)
            else:
                out = model.generate(**batch, **_adapters(adapter_names, rows), **settings)
        return out[:, batch["input_ids"].shape[1] :]

    outs = streams(answer, len(batches), count)
    answers: list[str] = [""] * len(texts)
    for rows, out in zip(batches, outs):
        for i, text in zip(rows, tokenizer.batch_decode(out, skip_special_tokens=True)):
            answers[i] = text.strip()
    return answers


MAX_STREAMS = 4  # measured with 2 (2 cores); more cores get several threads a stream, not a stream a core


def stream_count(device: torch.device, shared_model: bool = True) -> int:
    """How many streams ``streams`` should split a CPU's threads into: up to ``MAX_STREAMS`` on a CPU,
    one elsewhere, and one where peft switches adapters per row (``shared_model`` False): it does so
    by hooks on the shared model, which a second stream's call would see."""
    return min(torch.get_num_threads(), MAX_STREAMS) if device.type == "cpu" and shared_model else 1


def streams(work: Callable[[int], T], n: int, count: int) -> list[T]:
    """``work(0) .. work(n - 1)`` in up to ``count`` threads that split torch's threads among them,
    each taking the next job when done. A greedy decoding step's matrix products use two cores at only
    ~1.5x one core's speed, so two one-thread streams of 32 rows answer the demo's suites ~1.18x faster
    than one two-thread stream of 64 (``python -m bench batching``), with the same answers."""
    threads, count = torch.get_num_threads(), min(n, count)
    if count < 2:
        return [work(i) for i in range(n)]
    results: list = [None] * n
    jobs, lock = iter(range(n)), threading.Lock()

    def stream() -> None:
        torch.set_num_threads(threads // count)  # this thread's share (torch's setting is per thread)
        with torch.inference_mode():  # per thread too: the caller's does not reach here
            while True:
                with lock:
                    i = next(jobs, None)
                if i is None:
                    return
                results[i] = work(i)

    try:
        with ThreadPoolExecutor(count, thread_name_prefix="tuneloop-stream") as pool:
            for future in [pool.submit(stream) for _ in range(count)]:
                future.result()  # a stream's error, raised here
    finally:
        torch.set_num_threads(threads)  # torch also keeps the last setting for threads started later
    return results


def _from_prefix(model, relaid: tuple[torch.Tensor, torch.Tensor], cache, settings: dict) -> torch.Tensor:
    """Generation from the shared prefix's cache (only on the architectures ``tuneloop.modeling.fast.fast_paths``
    verifies: ``sharable_cache`` gives None elsewhere)."""
    return model.generate(
        input_ids=relaid[0], attention_mask=relaid[1], **{cache_argument(base_class(model)): cache}, **settings
    )


def _common_prefix(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> torch.Tensor | None:
    """The token ids every text starts with (one row), short of each text's last token; None if fewer
    than ``SHARED_PREFIX_MIN`` or fewer than two texts."""
    if len(texts) < 2:
        return None
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    n = min(len(row) for row in ids) - 1
    for row in ids[1:]:
        n = next((k for k in range(n) if row[k] != ids[0][k]), n)
    return torch.tensor([ids[0][:n]]) if n >= SHARED_PREFIX_MIN else None


class Classified(NamedTuple):
    """Per text: the predicted label, its probability, the energy score (log-sum-exp of the logits: lower
    for inputs unlike the training data) and, with a neighbour store, the cosine similarity of the nearest
    stored utterance (None without one): the out-of-scope scores the calibration can use."""

    labels: list[str]
    confidences: list[float]
    energies: list[float]
    similarities: list[float | None] | None = None


NeighbourChoice = Neighbours | Sequence[Neighbours | None] | None  # one store for every row, or one per row


def _encoded(model, tokenizer, texts, batch_size, max_length, adapter_names=None, hidden=False):
    """Per length-grouped batch: its rows, the model's output (with hidden states if ``hidden``) and its
    attention mask; the one forward loop of classifying and embedding."""
    device = next(model.parameters()).device
    for rows in _by_length(texts, batch_size):
        batch = tokenizer(
            [texts[i] for i in rows], return_tensors="pt", padding=True, truncation=True, max_length=max_length
        ).to(device)
        with _inference_autocast(model):
            out = model(**batch, **_adapters(adapter_names, rows), output_hidden_states=hidden)
        yield rows, out, batch["attention_mask"]


@torch.inference_mode()
def classify(
    model,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[str],
    batch_size: int = 64,
    max_length: int = 128,
    adapter_names: Sequence[str] | None = None,
    neighbours: NeighbourChoice = None,
) -> Classified:
    """Predicted label, its probability and its energy per text (``adapter_names``: as for ``generate``).
    With ``neighbours`` (``tuneloop.modeling.neighbours``), the probabilities are the head's blended with
    the nearest training utterances' votes; the energy stays the head's own."""
    predictions, confidences, energies = [""] * len(texts), [0.0] * len(texts), [0.0] * len(texts)
    similarities: list[float | None] = [None] * len(texts)
    per_row = list(neighbours) if isinstance(neighbours, Sequence) else [neighbours] * len(texts)
    for rows, out, mask in _encoded(model, tokenizer, texts, batch_size, max_length, adapter_names, any(per_row)):
        stores = [per_row[i] for i in rows]
        logits = out.logits.float()
        probabilities = logits.softmax(-1)
        if any(stores):
            queries = mean_pooled(out.hidden_states[-1], mask).cpu()
            for store in {id(s): s for s in stores if s is not None}.values():
                at = [n for n, s in enumerate(stores) if s is store]
                mixed, nearest = store.mix(probabilities[at].cpu(), queries[at])
                probabilities[at] = mixed.to(probabilities.device)
                for n, similarity in zip(at, nearest.tolist()):
                    similarities[rows[n]] = similarity
        conf, idx = probabilities.max(-1)
        for i, c, j, e in zip(rows, conf.tolist(), idx.tolist(), logits.logsumexp(-1).tolist()):
            predictions[i], confidences[i], energies[i] = labels[j], c, e
    return Classified(predictions, confidences, energies, similarities if any(per_row) else None)


@torch.inference_mode()
def embed(
    model, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 64, max_length: int = 128
) -> torch.Tensor:
    """Unit-length sentence embeddings (the mean of the last hidden states) of ``texts``, normalised as
    ``predict`` normalises its inputs: what a classifier's neighbour store holds and is queried with."""
    texts = [normalize(text) for text in texts]
    order, pooled = [], []
    for rows, out, mask in _encoded(model, tokenizer, texts, batch_size, max_length, hidden=True):
        order += rows
        pooled.append(mean_pooled(out.hidden_states[-1], mask).cpu())
    embeddings = torch.cat(pooled) if pooled else torch.zeros(0, 0)
    return embeddings[torch.argsort(torch.tensor(order))] if order else embeddings


def predict_classes(
    model,
    tokenizer: PreTrainedTokenizerBase,
    inputs: Sequence[str],
    labels: Sequence[str],
    adapter_names: Sequence[str] | None = None,
    batch_size: int | None = None,
    neighbours: NeighbourChoice = None,
) -> Classified:
    """``classify`` on inputs normalised as ``predict`` normalises them: for callers that apply a fallback
    threshold and so need the energies too."""
    return classify(
        model,
        tokenizer,
        [normalize(text) for text in inputs],
        list(labels),
        batch_size=batch_size or 64,
        adapter_names=adapter_names,
        neighbours=neighbours,
    )


def predict(
    kind: Kind,
    model,
    tokenizer: PreTrainedTokenizerBase,
    inputs: Sequence[str],
    labels: Sequence[str],
    max_new_tokens: int,
    prompting: Prompting = Prompting(),
    adapter_names: Sequence[str] | None = None,
    batch_size: int | None = None,
) -> tuple[list[str], list[float] | None]:
    """Outputs for either kind (answers, or labels with their probabilities), for inputs normalised the
    way curation normalised the training data (full-width letters, zero-width and control characters)."""
    inputs = [normalize(text) for text in inputs]
    if kind == "generation":
        # nothing asked, nothing to answer: a tuned model given an empty prompt says something it was tuned
        # on ("Skyreach is rated rated."), so it is never asked
        asked = [i for i, text in enumerate(inputs) if text]
        answers = [EMPTY_INPUT_ANSWER] * len(inputs)
        generated = (
            generate(
                model,
                tokenizer,
                [inputs[i] for i in asked],
                max_new_tokens,
                prompting,
                batch_size=batch_size or 64,
                adapter_names=[adapter_names[i] for i in asked] if adapter_names is not None else None,
            )
            if asked
            else []
        )
        for i, answer in zip(asked, generated):
            answers[i] = answer
        return answers, None
    classified = classify(
        model, tokenizer, inputs, list(labels), batch_size=batch_size or 64, adapter_names=adapter_names
    )
    return classified.labels, classified.confidences
