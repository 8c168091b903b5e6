"""Training and evaluation windows over prepared token sequences, as PyTorch datasets.

Each piece (ids without BOS/EOS) is read as the framed sequence ``[BOS] + ids + [EOS]``. A window
is ``seq_len + 1`` tokens of ONE framed piece (inputs ``tokens[:-1]``, targets ``tokens[1:]``);
when a piece is shorter, the window is LEFT-padded with PAD, because Perceiver AR scores the last
positions. ``target_mask[t]`` says whether target ``tokens[t + 1]`` counts in the loss.

``TrainWindows`` is map-style and stateless: item ``i`` is a pure function of ``(seed, i)``, where
``i`` is a *sample number* (any integer >= 0, not only below ``len()``). So the stream does not
depend on the number of DataLoader workers, and resuming is just continuing the sample numbers.
Feed it with ``WindowSampler``, which hands DDP rank ``r`` of ``w`` the numbers ``r, r + w, ...``
from a start offset: a run that has consumed ``n`` samples per rank (steps x per-rank batch x
gradient accumulation) resumes with ``WindowSampler(start=n, rank=r, world_size=w)``. (A plain
DataLoader sampler would repeat the same ``len()`` windows every epoch.)

``EvalWindows`` is the fixed tiling for validation/test: every target of every piece (its ids and
its EOS) is scored exactly once, by the last ``score_len`` positions of some window.
"""

from __future__ import annotations

import itertools
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from perceiver_ar_music.training.augment import AugmentConfig, Performance, perform, time_stretch, transpose
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.data.vocab import EventVocab


def framed_slice(piece: np.ndarray, start: int, stop: int, bos_id: int, eos_id: int) -> np.ndarray:
    """Tokens ``start:stop`` (0 <= start < stop <= len + 2) of ``[BOS] + piece + [EOS]``, as int64."""
    length = len(piece)
    out = np.empty(stop - start, dtype=np.int64)
    inner_start, inner_stop = max(start, 1), min(stop, length + 1)
    if inner_stop > inner_start:
        out[inner_start - start : inner_stop - start] = piece[inner_start - 1 : inner_stop - 1]
    if start == 0:
        out[0] = bos_id
    if stop == length + 2:
        out[-1] = eos_id
    return out


def _left_padded(tokens: np.ndarray, length: int, pad_id: int) -> np.ndarray:
    if len(tokens) == length:
        return tokens
    out = np.full(length, pad_id, dtype=np.int64)
    out[length - len(tokens) :] = tokens
    return out


def _framed_lengths(pieces: Sequence[np.ndarray]) -> np.ndarray:
    if len(pieces) == 0:
        raise UserError("no pieces to make windows from")
    return np.array([len(piece) + 2 for piece in pieces], dtype=np.int64)


def _check_seq_len(seq_len: int) -> None:
    if seq_len < 1:
        raise UserError(f"sequence length must be >= 1, got {seq_len}")


class TrainWindows(Dataset):
    """Random training windows: a piece chosen with probability proportional to its framed length
    (so every token is equally likely), then the (up to) ``seq_len + 1`` tokens ending at a
    uniformly drawn position, left-padded when that is near the piece's start, optionally
    time-stretched, transposed and (optionally) given other velocities (``AugmentConfig``). See the module doc for indexing.
    """

    def __init__(
        self,
        pieces: Sequence[np.ndarray],
        vocab: EventVocab,
        seq_len: int,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        samples_per_epoch: int | None = None,
    ) -> None:
        _check_seq_len(seq_len)
        if seed < 0:
            raise UserError(f"seed must be >= 0, got {seed}")
        self.pieces = list(pieces)
        self.vocab = vocab
        self.seq_len = seq_len
        self.augment = augment
        self.seed = seed
        self.framed_lengths = _framed_lengths(self.pieces)
        self._cumulative = np.cumsum(self.framed_lengths)
        total = int(self._cumulative[-1])
        self.samples_per_epoch = samples_per_epoch or max(1, total // seq_len)

    def __len__(self) -> int:
        """Nominal epoch size (total framed tokens / seq_len unless given); indices may go beyond."""
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        tokens = self.window(index)
        return {
            "tokens": torch.from_numpy(tokens),
            "target_mask": torch.from_numpy(tokens[1:] != self.vocab.pad_id),
        }

    def window(self, index: int) -> np.ndarray:
        """The int64 tokens (``seq_len + 1``) of sample number `index`."""
        index = int(index)
        if index < 0:
            raise IndexError(f"sample numbers are >= 0, got {index}")
        rng = np.random.default_rng((self.seed, index))
        piece_index = int(np.searchsorted(self._cumulative, rng.integers(self._cumulative[-1]), side="right"))
        piece = self.pieces[piece_index]
        framed_length = int(self.framed_lengths[piece_index])
        window_len = self.seq_len + 1
        # The window ENDS at a uniformly drawn position: Perceiver AR scores only the last
        # num_latents positions, so windows that merely start uniformly would never score the
        # first seq_len - num_latents tokens of a piece (its opening: what generation starts with).
        end = int(rng.integers(1, framed_length))  # index of the window's last token
        start = max(0, end - self.seq_len)
        if self.augment is None:
            tokens = self._slice(piece, start, end + 1)
        else:
            factor = self.augment.sample_stretch(rng)
            performance = self.augment.sample_performance(self.vocab, rng)
            tokens = self._retimed_crop(piece, start, factor, performance, end + 1 - start)
            tokens = transpose(tokens, self.augment.sample_transpose(tokens, self.vocab, rng), self.vocab)
            tokens = self.augment.vary_velocities(tokens, self.vocab, rng)
        return _left_padded(tokens, window_len, self.vocab.pad_id)

    def _slice(self, piece: np.ndarray, start: int, stop: int) -> np.ndarray:
        return framed_slice(piece, start, stop, self.vocab.bos_id, self.vocab.eos_id)

    def _retime(self, tokens: np.ndarray, factor: float, performance: Performance | None) -> np.ndarray:
        """`tokens` stretched by `factor`, then played as `performance` (if any)."""
        tokens = time_stretch(tokens, factor, self.vocab)
        return tokens if performance is None else perform(tokens, performance, self.vocab)

    def _retimed_crop(self, piece: np.ndarray, start: int, factor: float, performance: Performance | None,
                      window_len: int) -> np.ndarray:
        """At most `window_len` retimed tokens (`_retime`): from `start` on if the piece is long
        enough after retiming, else the last ones of the piece (retiming changes the length, so a
        slightly longer crop is retimed, then cut)."""
        framed_length = len(piece) + 2
        margin = window_len // 8 + 16
        while True:
            stop = min(framed_length, start + window_len + margin)
            tokens = self._retime(self._slice(piece, start, stop), factor, performance)
            if len(tokens) >= window_len:
                return tokens[:window_len]
            if stop == framed_length:
                break
            margin *= 2
        margin = window_len // 8 + 16
        while True:
            begin = max(0, framed_length - window_len - margin)
            tokens = self._retime(self._slice(piece, begin, framed_length), factor, performance)
            if len(tokens) >= window_len or begin == 0:
                return tokens[-window_len:]
            margin *= 2


class MixedWindows(Dataset):
    """Training windows of which a `share` come from `other` (another corpus' `TrainWindows`, e.g.
    a base model's data while fine-tuning), the rest from `main`. Sample number `i` picks its
    source from ``(seed, i)`` alone and keeps its number there, so the stream stays resumable."""

    def __init__(self, main: TrainWindows, other: TrainWindows, share: float) -> None:
        if not 0 <= share < 1:
            raise UserError(f"the mixed share must be in [0, 1), got {share}")
        self.main, self.other, self.share = main, other, share

    def __len__(self) -> int:
        return len(self.main)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        pick = np.random.default_rng((self.main.seed, int(index), 1)).random()
        return (self.other if pick < self.share else self.main)[index]


class WindowSampler(Sampler[int]):
    """Sample numbers for ``TrainWindows`` on one DDP rank: ``rank + world_size * k`` for
    ``k = start, start + 1, ...`` (`num_samples` of them, or endlessly when None)."""

    def __init__(self, start: int = 0, num_samples: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        if start < 0 or world_size < 1 or not 0 <= rank < world_size or (num_samples is not None and num_samples < 0):
            raise ValueError("need start >= 0, num_samples >= 0, world_size >= 1 and 0 <= rank < world_size")
        self.start = start
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[int]:
        counter = itertools.count(self.start)
        if self.num_samples is not None:
            counter = itertools.islice(counter, self.num_samples)
        return (self.rank + self.world_size * k for k in counter)

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError("an endless WindowSampler has no length")
        return self.num_samples


class EvalWindows(Dataset):
    """The deterministic validation/test tiling, without augmentation.

    Window ``k`` of a piece scores the framed positions ``1 + k*score_len`` up to
    ``(k+1)*score_len`` (targets ``tokens[1:]``, i.e. the ids then the EOS; the BOS is the given
    start) and ends on the last of them; the first windows are left-padded; the last window ends
    on the EOS and may overlap the previous one, so its ``target_mask`` only marks targets not
    scored before. Items also carry ``piece_index``.
    """

    def __init__(self, pieces: Sequence[np.ndarray], vocab: EventVocab, seq_len: int, score_len: int) -> None:
        _check_seq_len(seq_len)
        if not 1 <= score_len <= seq_len:
            raise UserError(f"score length must be in 1..{seq_len} (the sequence length), got {score_len}")
        self.pieces = list(pieces)
        self.vocab = vocab
        self.seq_len = seq_len
        self.score_len = score_len
        framed_lengths = _framed_lengths(self.pieces)
        counts = -(-(framed_lengths - 1) // score_len)
        self.piece_index = np.repeat(np.arange(len(self.pieces)), counts)
        first_window = np.repeat(np.cumsum(counts) - counts, counts)
        window_in_piece = np.arange(len(self.piece_index)) - first_window
        self.first_scored = 1 + window_in_piece * score_len
        self.end = np.minimum(self.first_scored + score_len, framed_lengths[self.piece_index])

    def __len__(self) -> int:
        return len(self.piece_index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"window {index} out of range 0..{len(self) - 1}")
        piece_index = int(self.piece_index[index])
        end = int(self.end[index])
        begin = max(0, end - self.seq_len - 1)
        tokens = framed_slice(self.pieces[piece_index], begin, end, self.vocab.bos_id, self.vocab.eos_id)
        tokens = _left_padded(tokens, self.seq_len + 1, self.vocab.pad_id)
        target_positions = end - self.seq_len + np.arange(self.seq_len)
        return {
            "tokens": torch.from_numpy(tokens),
            "target_mask": torch.from_numpy(target_positions >= self.first_scored[index]),
            "piece_index": torch.tensor(piece_index, dtype=torch.long),
        }
