"""Answers with the shared prompt prefix computed once equal the whole rows' answers."""

from __future__ import annotations

import functools
import os

import pytest
import torch

from tuneloop.modeling import inference
from tuneloop.modeling.models import load_base, load_tokenizer, lora_targets, resolve_base, usable_cores
from tuneloop.modeling.prompting import Prompting
from tuneloop.modeling.training import add_adapter

PROMPTS = [
    "What is the Nimbus Pro price?",
    "hi",
    "Can I talk to a person?",
    "Tell me, in as much detail as you can, how the Lumo doorbell's battery is charged and how long it lasts.",
    "What is 7 + 5?",
    "Name the capital of Spain.",
]


def _model():
    info = resolve_base("generation", tiny=True)
    base = load_base(info, "generation")
    model = add_adapter(base, "generation", 4, 0, targets=lora_targets(base, "attention"))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a trained-looking adapter: its part changes the cached keys and values too
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model.eval(), load_tokenizer(info)


def test_the_shared_prefix_gives_the_whole_rows_answers_and_goes_through_once(monkeypatch):
    model, tokenizer = _model()
    prompting = Prompting("You are the Brightwell support assistant. Answer in one short sentence.")
    whole = inference.generate(model, tokenizer, PROMPTS, 8, prompting, batch_size=3, share_prefix=False)
    calls = []
    forward = type(model.get_base_model()).forward

    @functools.wraps(forward)
    def counted(self, *args, **kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model.get_base_model()), "forward", counted)
    monkeypatch.setattr(inference, "MAX_STREAMS", 1)  # calls in order: a batch's prefix, then its rows
    shared = inference.generate(model, tokenizer, PROMPTS, 8, prompting, batch_size=3)
    assert shared == whole
    assert len(set(whole)) > 2  # the answers differ from prompt to prompt, so a row mix-up would show
    prefix_calls = [c for c in calls if c[0] == 1]
    assert len(prefix_calls) == 2 and prefix_calls[0] == prefix_calls[1]  # once per batch of 3, as one row
    n = prefix_calls[0][1]
    assert n >= 15  # the template and the system prompt
    longest = max(
        len(tokenizer(prompting.render(tokenizer, p), add_special_tokens=False)["input_ids"]) for p in PROMPTS
    )
    after = [calls[i + 1] for i, c in enumerate(calls) if c[0] == 1]
    assert all(rows == 3 and width <= longest - n for rows, width in after)  # the rows went on from the cached prefix


def test_a_prompt_cut_to_the_length_limit_is_answered_whole(monkeypatch):
    """A prompt longer than the limit loses its start (the prefix) to truncation: its batch runs whole."""
    model, tokenizer = _model()
    monkeypatch.setattr(inference, "MAX_PROMPT_TOKENS", 40)
    prompts = PROMPTS[:3] + [" ".join(["warranty"] * 60)]
    prompting = Prompting("You are the Brightwell support assistant. Answer in one short sentence.")
    whole = inference.generate(model, tokenizer, prompts, 6, prompting, batch_size=4, share_prefix=False)
    assert inference.generate(model, tokenizer, prompts, 6, prompting, batch_size=4) == whole


def test_an_architecture_outside_the_verified_ones_answers_whole_rows(monkeypatch):
    """Its generate is never handed a pre-filled cache (``tuneloop.modeling.fast.fast_paths``): the same answers."""
    from tuneloop.modeling.fast import fast_paths

    model, tokenizer = _model()
    prompting = Prompting("You are the Brightwell support assistant. Answer in one short sentence.")
    whole = inference.generate(model, tokenizer, PROMPTS, 6, prompting, batch_size=3, share_prefix=False)
    generate = type(model).generate

    def no_cache(self, *args, **kwargs):
        assert "cache" not in kwargs and "past_key_values" not in kwargs
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "generate", no_cache)
    monkeypatch.setattr(fast_paths, "VERIFIED", frozenset())
    assert inference.generate(model, tokenizer, PROMPTS, 6, prompting, batch_size=3) == whole


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # streams split torch's threads: a CI runner may have more or fewer cores
    yield
    torch.set_num_threads(threads)


def _thread_names(monkeypatch, model) -> list[str]:
    import threading

    names: list[str] = []
    forward = type(model.get_base_model()).forward

    @functools.wraps(forward)
    def recorded(self, *args, **kwargs):
        names.append(threading.current_thread().name)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model.get_base_model()), "forward", recorded)
    return names


def test_cpu_streams_give_one_streams_answers_and_leave_the_thread_setting(monkeypatch, two_threads):
    import threading

    model, tokenizer = _model()
    prompting = Prompting("You are the Brightwell support assistant. Answer in one short sentence.")
    prompts = PROMPTS * 3
    monkeypatch.setattr(inference, "MAX_STREAMS", 1)
    one = inference.generate(model, tokenizer, prompts, 8, prompting, batch_size=2)  # 2 rows a batch
    monkeypatch.setattr(inference, "MAX_STREAMS", 4)
    names = _thread_names(monkeypatch, model)
    assert inference.generate(model, tokenizer, prompts, 8, prompting, batch_size=4) == one  # 2 rows in each of 2
    assert len(set(one)) > 2  # answers differ by prompt: a batch written to another's rows would show
    assert len({n for n in names if n.startswith("tuneloop-stream")}) == 2  # both streams answered batches
    assert torch.get_num_threads() == 2
    seen = []  # a thread started afterwards gets the whole setting again, not a stream's share
    later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    later.start()
    later.join()
    assert seen == [2]


def test_a_stream_error_reaches_the_caller_and_adapters_per_row_stay_in_one_stream(monkeypatch, two_threads):
    def work(i: int) -> int:
        if i == 3:
            raise ValueError("batch 3 failed")
        return i

    with pytest.raises(ValueError, match="batch 3"):
        inference.streams(work, 6, 2)
    assert torch.get_num_threads() == 2
    model, tokenizer = _model()
    names = _thread_names(monkeypatch, model)
    inference.generate(model, tokenizer, PROMPTS, 4, batch_size=2, adapter_names=["default", "__base__"] * 3)
    assert names and not any(n.startswith("tuneloop-stream") for n in names)  # peft's per-row hooks are per call


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is a Linux feature")
def test_the_cores_split_between_workers_are_the_ones_this_process_may_use(monkeypatch):
    """A container's cpuset or ``taskset`` leaves a process fewer cores than the machine has: the search
    workers and the service's workers split those (as torch's own default counts them), not all of them."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # a thread limit is its own test, below
    cores = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cores)})
        assert usable_cores() == 1
    finally:
        os.sched_setaffinity(0, cores)
    assert usable_cores() == len(cores)


def test_a_thread_limit_in_omp_num_threads_is_kept(monkeypatch):
    """Two loops told OMP_NUM_THREADS=1 on a two-core machine take one thread each, not two each."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = usable_cores()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert usable_cores() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "4096")
    assert usable_cores() == cores  # a limit above the cores this process may use is no help
    for unusable in ("", "0", "two"):  # not a limit: the cores the process may use
        monkeypatch.setenv("OMP_NUM_THREADS", unusable)
        assert usable_cores() == cores


def test_an_empty_input_is_answered_without_asking_the_model(monkeypatch):
    model, tokenizer = _model()
    asked: list[tuple] = []
    real = inference.generate
    monkeypatch.setattr(
        inference,
        "generate",
        lambda m, t, prompts, *a, **k: (
            asked.append((list(prompts), k.get("adapter_names"))) or real(m, t, prompts, *a, **k)
        ),
    )
    inputs = ["", "  \n\t ", "\u200b", PROMPTS[0]]
    answers, _ = inference.predict("generation", model, tokenizer, inputs, [], 8, adapter_names=["default"] * 4)
    assert answers[:3] == [inference.EMPTY_INPUT_ANSWER] * 3 and answers[3] != inference.EMPTY_INPUT_ANSWER
    assert asked == [([PROMPTS[0]], ["default"])]  # only the question went to the model, with its own adapter name
    assert inference.predict("generation", model, tokenizer, [""], [], 8)[0] == [inference.EMPTY_INPUT_ANSWER]
