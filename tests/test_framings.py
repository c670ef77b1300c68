"""Framings of training questions: other surfaces of the same question, with the same answer."""

from __future__ import annotations

from tuneloop.data.framings import FRAMES, framed_pairs, framings


def test_framings_are_distinct_deterministic_and_keep_the_question():
    question = "What is the Team plan cost?"
    variants = framings(question, 4)
    assert len(variants) == 4 == len(set(variants))
    assert question not in variants
    assert variants == framings(question, 4)  # the same every time: a rerun trains on the same data
    assert all("team plan cost" in v.lower() for v in variants)
    assert len(framings(question, 99)) <= len(FRAMES)


def test_framed_pairs_answer_every_framing_alike():
    pairs = [("How long is the trial?", "The trial lasts 21 days."), ("Where is the office?", "It is in Tallinn.")]
    framed = framed_pairs(pairs, 2)
    assert len(framed) == 4
    assert {a for _, a in framed} == {a for _, a in pairs}
    assert all(answer == dict(pairs)[q] for q, answer in pairs)
    assert framed_pairs(pairs, 0) == []
