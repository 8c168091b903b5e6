"""The note rules read a long prompt at once: the same state as token by token, in a fraction of
a second for a primer of 200,000 tokens (a Python loop took minutes for millions)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from perceiver_ar_music.sampling.constraints import NoteRules
from perceiver_ar_music.data.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def vocab():
    return load_tokenizer().vocab


def random_ids(vocab, rows: int, length: int, seed: int) -> torch.Tensor:
    """Ids with many notes of few pitches (so a pitch is struck, released and struck again)."""
    rng = np.random.default_rng(seed)
    kinds = [vocab.note_on_id, vocab.note_off_id]
    ids = np.empty((rows, length), np.int64)
    shifts = [i for i, s in enumerate(vocab.shift_steps) if s > 0]
    for r in range(rows):
        for t in range(length):
            pick = rng.random()
            if pick < 0.3:
                ids[r, t] = kinds[0][int(rng.integers(60, 64))]
            elif pick < 0.55:
                ids[r, t] = kinds[1][int(rng.integers(60, 64))]
            elif pick < 0.9:
                ids[r, t] = int(rng.choice(shifts))
            else:
                ids[r, t] = int(rng.integers(0, len(vocab.kind)))
    return torch.as_tensor(ids)


@pytest.mark.parametrize("grammar, polyphony, steps", [(True, None, None), (False, 3, 40), (True, 2, 7)])
def test_a_prompt_at_once_equals_token_by_token(vocab, grammar, polyphony, steps):
    ids = random_ids(vocab, rows=3, length=400, seed=steps or 0)
    one, many = (NoteRules(vocab, grammar=grammar, max_polyphony=polyphony, max_note_steps=steps) for _ in range(2))
    for t in range(1, ids.shape[1] + 1):
        one.observe(ids[:, :t])
    many.observe(ids)
    for name in ("onset", "clock", "velocity_due"):
        assert torch.equal(getattr(one, name), getattr(many, name)), name
    assert torch.equal(one.allowed(), many.allowed())
    # and sampling goes on from there alike: a prompt read at once, then token by token
    more = random_ids(vocab, rows=3, length=50, seed=9)
    for t in range(1, more.shape[1] + 1):
        sequence = torch.cat([ids, more[:, :t]], dim=1)
        drawn = more[:, t - 1]
        assert torch.equal(one.amend(drawn, sequence[:, :-1]), many.amend(drawn, sequence[:, :-1]))
        one.observe(sequence), many.observe(sequence)
        assert torch.equal(one.allowed(), many.allowed())


def test_a_long_prompt_costs_little(vocab):
    ids = random_ids(vocab, rows=1, length=2000, seed=1).repeat(1, 100)  # 200,000 tokens
    rules = NoteRules(vocab, grammar=True, max_polyphony=8, max_note_steps=400)
    started = time.perf_counter()
    rules.observe(ids)
    rules.allowed()
    assert time.perf_counter() - started < 1.0
