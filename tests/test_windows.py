"""Training/evaluation windows: framing, padding, sampling, determinism, workers, ranks, tiling."""

from __future__ import annotations

from collections import Counter


import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import DataLoader

from perceiver_ar_music.training.augment import AugmentConfig, transpose
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.data.events import END, START, notes_to_ids
from perceiver_ar_music.data.vocab import NOTE_OFF, NOTE_ON, TIME_SHIFT
from perceiver_ar_music.training.windows import EvalWindows, TrainWindows, WindowSampler, framed_slice
from perceiver_ar_music.data.tokenizer import load_tokenizer

VOCAB = load_tokenizer().vocab  # the performance preset
PAD, BOS, EOS = VOCAB.pad_id, VOCAB.bos_id, VOCAB.eos_id


def performance(seed: int, notes: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    table = np.column_stack(
        [rng.integers(21, 109, notes), np.sort(rng.uniform(0, notes / 8, notes)), np.zeros(notes), rng.integers(1, 128, notes)]
    )
    table[:, END] = table[:, START] + rng.uniform(0.01, 2.5, notes)
    return notes_to_ids(table, VOCAB)


PIECES = [performance(seed, notes) for seed, notes in enumerate([400, 3, 150, 0, 900])]
FRAMED = [np.concatenate(([BOS], piece, [EOS])).astype(np.int64) for piece in PIECES]


def framed_offsets(window: np.ndarray, framed: np.ndarray) -> np.ndarray:
    """Where `window` occurs contiguously in `framed`."""
    if len(window) > len(framed):
        return np.zeros(0, dtype=np.int64)
    views = sliding_window_view(framed, len(window))
    return np.flatnonzero(np.all(views == window, axis=1))


def unpadded(tokens: np.ndarray) -> np.ndarray:
    """`tokens` without its PAD prefix; asserts PAD appears nowhere else."""
    content = tokens[np.argmax(tokens != PAD) :] if np.any(tokens != PAD) else tokens[:0]
    assert np.all(content != PAD)
    return content


def test_framed_slice_matches_concatenation():
    for length in range(6):
        piece = np.arange(10, 10 + length, dtype=np.uint16)
        framed = np.concatenate(([BOS], piece, [EOS]))
        for start in range(length + 2):
            for stop in range(start + 1, length + 3):
                got = framed_slice(piece, start, stop, BOS, EOS)
                assert got.dtype == np.int64
                assert got.tolist() == framed[start:stop].tolist()


def test_plain_windows_are_crops_of_one_framed_piece_or_a_left_padded_opening():
    seq_len = 64
    dataset = TrainWindows(PIECES, VOCAB, seq_len, augment=None, seed=5)
    for index in range(300):
        item = dataset[index]
        tokens = item["tokens"].numpy()
        assert item["tokens"].dtype == torch.long and tokens.shape == (seq_len + 1,)
        assert item["target_mask"].dtype == torch.bool
        assert item["target_mask"].numpy().tolist() == (tokens[1:] != PAD).tolist()
        content = unpadded(tokens)
        if len(content) < len(tokens):  # padded: the opening of one piece, from its BOS
            assert any(content.tolist() == framed[: len(content)].tolist() for framed in FRAMED)
        else:
            assert any(len(framed_offsets(content, framed)) for framed in FRAMED)


def test_pieces_are_chosen_in_proportion_to_their_length_and_crops_reach_both_ends():
    pieces = [np.full(n, 3 + i, dtype=np.uint16) for i, n in enumerate([98, 298, 598])]
    dataset = TrainWindows(pieces, VOCAB, 16, seed=0)
    samples = 3000
    counts = np.zeros(3)
    first_piece_starts = set()
    for index in range(samples):
        tokens = dataset.window(index)
        piece = int(tokens[np.isin(tokens, [3, 4, 5])][0]) - 3
        counts[piece] += 1
        if piece == 0:
            first_piece_starts.add((tokens[0] == BOS, tokens[-1] == EOS))
    np.testing.assert_allclose(counts / samples, [0.1, 0.3, 0.6], atol=0.04)
    assert {(True, False), (False, True)} <= first_piece_starts


def test_windows_are_deterministic_per_seed_and_sample_number():
    a = TrainWindows(PIECES, VOCAB, 48, AugmentConfig(), seed=11)
    b = TrainWindows(PIECES, VOCAB, 48, AugmentConfig(), seed=11)
    c = TrainWindows(PIECES, VOCAB, 48, AugmentConfig(), seed=12)
    order = [5, 0, 17, 3]
    assert [a.window(i).tolist() for i in order] == [b.window(i).tolist() for i in sorted(order, key=order.index)]
    assert [a.window(i).tolist() for i in range(20)] == [b.window(i).tolist() for i in range(20)]
    assert [a.window(i).tolist() for i in range(20)] != [c.window(i).tolist() for i in range(20)]
    assert len({tuple(a.window(i)) for i in range(20)}) > 15  # sample numbers give different windows


def _batches(dataset, sampler, workers: int) -> list[torch.Tensor]:
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=workers)
    return [batch["tokens"] for batch in loader]


def test_dataloader_workers_ranks_and_resuming():
    dataset = TrainWindows(PIECES, VOCAB, 32, AugmentConfig(), seed=3)
    single = _batches(dataset, WindowSampler(num_samples=24), workers=0)
    parallel = _batches(dataset, WindowSampler(num_samples=24), workers=2)
    assert len(single) == 6 and all(torch.equal(x, y) for x, y in zip(single, parallel))

    resumed = _batches(dataset, WindowSampler(start=12, num_samples=12), workers=0)
    assert all(torch.equal(x, y) for x, y in zip(resumed, single[3:]))

    rank0 = _batches(dataset, WindowSampler(num_samples=12, rank=0, world_size=2), workers=0)
    rank1 = _batches(dataset, WindowSampler(num_samples=12, rank=1, world_size=2), workers=0)
    assert not any(torch.equal(x, y) for x, y in zip(rank0, rank1))


def test_window_sampler_numbers():
    assert list(WindowSampler(start=2, num_samples=4, rank=1, world_size=3)) == [7, 10, 13, 16]
    assert len(WindowSampler(num_samples=5)) == 5
    endless = iter(WindowSampler())
    assert [next(endless) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(TypeError):
        len(WindowSampler())
    for bad in ({"start": -1}, {"rank": 2, "world_size": 2}, {"world_size": 0}, {"num_samples": -1}):
        with pytest.raises(ValueError):
            WindowSampler(**bad)


def test_identity_augmentation_gives_the_plain_windows():
    plain = TrainWindows(PIECES, VOCAB, 40, None, seed=9)
    identity = TrainWindows(PIECES, VOCAB, 40, AugmentConfig(max_transpose=0, min_stretch=1.0, max_stretch=1.0), seed=9)
    for index in range(100):
        assert identity.window(index).tolist() == plain.window(index).tolist()


def test_windows_outside_the_stretched_share_are_the_plain_windows():
    plain = TrainWindows(PIECES, VOCAB, 40, None, seed=9)
    half = TrainWindows(PIECES, VOCAB, 40, AugmentConfig(max_transpose=0, min_stretch=0.7, max_stretch=1.4,
                                                         stretch_windows=0.5), seed=9)
    same = sum(half.window(index).tolist() == plain.window(index).tolist() for index in range(100))
    assert 30 <= same <= 75  # about half unstretched (a stretched window can also come out the same)


def test_velocity_variation_changes_only_the_velocities_of_the_same_windows():
    base = AugmentConfig(max_transpose=3, min_stretch=0.9, max_stretch=1.1)
    plain = TrainWindows(PIECES, VOCAB, 64, base, seed=2)
    varied = TrainWindows(PIECES, VOCAB, 64, AugmentConfig(3, 0.9, 1.1, velocity_windows=0.5), seed=2)
    changed = 0
    for index in range(60):
        a, b = plain.window(index), varied.window(index)
        is_velocity = np.array([VOCAB.velocity[t] >= 0 for t in a], dtype=bool)
        assert a[~is_velocity].tolist() == b[~is_velocity].tolist()
        assert all(VOCAB.velocity[t] >= 0 for t in b[is_velocity])
        changed += a[is_velocity].tolist() != b[is_velocity].tolist()
    assert 15 <= changed <= 45  # about half of the windows


def _events(tokens: np.ndarray) -> np.ndarray:
    return tokens[np.array([VOCAB.kind[t] for t in tokens]) != TIME_SHIFT]


@pytest.mark.parametrize("seq_len", [8, 100, 1500])
def test_stretched_windows_keep_full_length_and_the_events_of_one_crop(seq_len):
    config = AugmentConfig(max_transpose=0, min_stretch=0.7, max_stretch=1.4)
    dataset = TrainWindows(PIECES, VOCAB, seq_len, config, seed=2)
    framed_events = [_events(framed) for framed in FRAMED]
    for index in range(60):
        tokens = dataset.window(index)
        assert tokens.shape == (seq_len + 1,)
        content = unpadded(tokens)
        events = _events(content)
        if len(content) < len(tokens):
            assert content[0] == BOS  # padding only before the start of a piece
        # Cutting may split a run of shifts or drop events at the edge, never reorder or invent.
        assert any(len(framed_offsets(events, fe)) for fe in framed_events)


def test_transposed_windows_are_crops_moved_within_range():
    dataset = TrainWindows(PIECES, VOCAB, 64, AugmentConfig(max_transpose=3, min_stretch=1.0, max_stretch=1.0), seed=4)
    moved_by = set()
    for index in range(80):
        content = unpadded(dataset.window(index))
        matches = []
        for k in range(-3, 4):
            try:
                original = transpose(content, -k, VOCAB)
            except ValueError:
                continue
            if any(len(framed_offsets(original, framed)) for framed in FRAMED):
                matches.append(k)
        assert matches
        moved_by.update(matches)
    assert len(moved_by) >= 5


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=5),
    st.integers(1, 12),
    st.data(),
)
def test_eval_tiling_scores_every_target_once_with_full_context(lengths, seq_len, data):
    score_len = data.draw(st.integers(1, seq_len))
    pieces = [np.arange(3 + 50 * i, 3 + 50 * i + n, dtype=np.uint16) for i, n in enumerate(lengths)]
    framed = [np.concatenate(([BOS], p, [EOS])) for p in pieces]
    dataset = EvalWindows(pieces, VOCAB, seq_len, score_len)
    scored = [[] for _ in pieces]
    total = 0
    for index in range(len(dataset)):
        item = dataset[index]
        tokens, mask, piece = item["tokens"].numpy(), item["target_mask"].numpy(), int(item["piece_index"])
        assert tokens.shape == (seq_len + 1,) and mask.shape == (seq_len,)
        content = unpadded(tokens)
        begin = int(np.flatnonzero(framed[piece] == content[0])[0])
        assert content.tolist() == framed[piece][begin : begin + len(content)].tolist()
        padding = len(tokens) - len(content)
        assert padding == 0 or begin == 0  # padded only when the piece has no earlier tokens
        targets = np.flatnonzero(mask)
        assert np.all(targets >= seq_len - score_len)  # only the last score_len positions score
        scored[piece].extend((begin + targets + 1 - padding).tolist())
        total += int(mask.sum())
    assert total == sum(n + 1 for n in lengths)
    for positions, n in zip(scored, lengths):
        assert sorted(positions) == list(range(1, n + 2))


def test_eval_windows_collate_and_reject_bad_settings():
    dataset = EvalWindows(PIECES, VOCAB, 128, 32)
    batch = next(iter(DataLoader(dataset, batch_size=8)))
    assert batch["tokens"].shape == (8, 129) and batch["piece_index"].shape == (8,)
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    with pytest.raises(UserError, match="score length"):
        EvalWindows(PIECES, VOCAB, 16, 17)
    with pytest.raises(UserError, match="score length"):
        EvalWindows(PIECES, VOCAB, 16, 0)
    with pytest.raises(UserError, match="no pieces"):
        EvalWindows([], VOCAB, 16, 8)
    with pytest.raises(UserError, match="sequence length"):
        TrainWindows(PIECES, VOCAB, 0)
    with pytest.raises(UserError, match="no pieces"):
        TrainWindows([], VOCAB, 16)
    with pytest.raises(IndexError):
        TrainWindows(PIECES, VOCAB, 16).window(-1)


def test_strong_shrinking_still_fills_windows_from_one_piece():
    """At factor 0.5 a crop loses many time shifts: the crop grows until it fills the window; a
    piece too short to fill one after stretching gives its (stretched) opening, left-padded."""
    config = AugmentConfig(max_transpose=0, min_stretch=0.5, max_stretch=0.5)
    long_piece = PIECES[4]
    dataset = TrainWindows([long_piece], VOCAB, 400, config, seed=1)
    for index in range(40):
        window = dataset.window(index)
        real = window[window != PAD]
        assert len(real) == len(window) or real[0] == BOS  # only a piece's opening is padded

    framed_len = 200
    short_piece = long_piece[: framed_len - 2]
    dataset = TrainWindows([short_piece], VOCAB, framed_len - 4, config, seed=1)
    whole = _events(FRAMED[4][: framed_len - 1]).tolist() + [EOS]
    for index in range(10):  # the piece's opening up to a random end, or all of it
        content = unpadded(dataset.window(index))
        events = _events(content).tolist()
        assert content[0] == BOS and events == whole[: len(events)]


def test_every_position_of_a_long_piece_gets_scored_including_its_opening():
    """Perceiver AR scores the last num_latents positions: windows must also END early in a piece."""
    seq_len, num_latents, length = 64, 16, 300
    piece = (3 + np.arange(length)).astype(np.uint16)  # distinct ids: a token tells its position
    dataset = TrainWindows([piece], VOCAB, seq_len, seed=1)
    scored = np.zeros(length + 2, dtype=int)  # per framed position (BOS at 0, EOS at length + 1)
    for index in range(3000):
        tokens = dataset.window(index)
        end = length + 1 if tokens[-1] == EOS else int(tokens[-1]) - 3 + 1
        first_real = end - int((tokens != PAD).sum()) + 1
        scored[max(first_real + 1, end - num_latents + 1) : end + 1] += 1
    assert (scored[1:] > 0).all()  # every target, the opening included, is trained on
    opening, rest = scored[1 : seq_len - num_latents].mean(), scored[seq_len:length].mean()
    assert opening > 0.5 * rest  # and not much more rarely than the rest


@pytest.mark.parametrize("seq_len", [8, 100, 1500])
def test_played_windows_keep_full_length_and_the_notes_of_one_crop(seq_len):
    """Performance-like windows: full length, padding only before a piece's start, and (velocities
    and order within a moment aside) the events of one crop of one piece."""
    plain_config = AugmentConfig(max_transpose=0, min_stretch=1.0, max_stretch=1.0)
    played_config = AugmentConfig(max_transpose=0, min_stretch=1.0, max_stretch=1.0, perform_windows=1.0)
    plain = TrainWindows(PIECES, VOCAB, seq_len, plain_config, seed=4)
    played = TrainWindows(PIECES, VOCAB, seq_len, played_config, seed=4)
    framed_notes = [sorted(t for t in framed if VOCAB.kind[t] in (NOTE_ON, NOTE_OFF)) for framed in FRAMED]
    changed = 0
    for index in range(40):
        tokens = played.window(index)
        assert tokens.shape == (seq_len + 1,)
        content = unpadded(tokens)
        if len(content) < len(tokens):
            assert content[0] == BOS
        notes = sorted(t for t in content if VOCAB.kind[t] in (NOTE_ON, NOTE_OFF))
        assert any(not (Counter(notes) - Counter(whole)) for whole in framed_notes)  # no note invented
        changed += tokens.tolist() != plain.window(index).tolist()
    assert changed >= 30


def test_windows_without_played_ones_draw_as_before():
    before = TrainWindows(PIECES, VOCAB, 64, AugmentConfig(3, 0.9, 1.1, velocity_windows=0.5), seed=3)
    now = TrainWindows(PIECES, VOCAB, 64, AugmentConfig(3, 0.9, 1.1, velocity_windows=0.5, perform_windows=0.0,
                                                        onset_jitter=0.05, pedal_hold=2.0), seed=3)
    assert all(before.window(i).tolist() == now.window(i).tolist() for i in range(50))
