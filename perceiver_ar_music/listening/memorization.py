"""How much of a note sequence is copied from reference data: the longest shared passage.

Matching is on what survives a change of tempo and dynamics: the sequence of pitches in onset
order, with the notes of one onset (a chord: onsets less than ``CHORD_S`` apart, i.e. on the same
step of the 10 ms grid) in ascending pitch order. Timing and velocity are ignored, so a training
piece played slower, faster or softer still matches; a transposed one does not. Played faster, the
notes of a rolled chord (a few ms apart) can land on one step and so be reordered; a passage
therefore also continues through a block of up to ``BLOCK`` notes that holds the same pitches in
another order.

Search: every run of ``min_notes`` successive pitches of the reference (a shingle; none crosses a
piece boundary) is hashed once, as a multiset (a sum of random 64-bit keys per pitch, one cumulative
sum for all shingles, blind to order within the shingle), and the hashes sorted. A query's shingles
are looked up with a binary search; hits that continue each other on one diagonal (query position
i, reference position j, then i+1, j+1, ...) are runs. The ``CANDIDATES`` longest runs are then
extended note by note in both directions and checked against the pitches themselves, so a hash
collision cannot report a false match and a passage interrupted by a very common shingle (more than
``MAX_OCCURRENCES`` places in the reference, e.g. one note repeated, whose hits are not expanded)
is still found whole. Passages shorter than ``min_notes`` are not reported (length 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from perceiver_ar_music.listening.music_stats import checked_notes

if TYPE_CHECKING:
    from perceiver_ar_music.data.token_store import PreparedData

MIN_NOTES = 12
CHORD_S = 0.005  # below one 10 ms step of the grid: only onsets on the same step form a chord
MAX_OCCURRENCES = 500  # shingles found more often than this are not expanded into hits
CANDIDATES = 32  # longest diagonal runs extended and verified per query
BLOCK = 8  # the most notes of one reordered chord that a passage continues through
_PITCH_KEYS = np.random.default_rng(0x5EED).integers(0, 2**63, size=256, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def canonical_order(notes: np.ndarray, chord_s: float = CHORD_S) -> np.ndarray:
    """Indices of `notes` in onset order with each chord sorted by pitch (module docstring)."""
    notes = checked_notes(notes)
    by_onset = np.argsort(notes[:, 1], kind="stable")
    onsets = notes[by_onset, 1]
    chord = np.zeros(len(onsets), dtype=np.int64)
    chord[1:] = np.cumsum(np.diff(onsets) >= chord_s)
    return by_onset[np.lexsort((notes[by_onset, 0], chord))]


def shingle_hashes(pitches: np.ndarray, k: int) -> np.ndarray:
    """An order-blind uint64 hash of every run of `k` successive pitches (len(pitches) - k + 1)."""
    if k < 1:
        raise ValueError(f"shingle length must be at least 1, not {k}")
    keys = _PITCH_KEYS[np.asarray(pitches, dtype=np.uint8)]
    totals = np.zeros(len(keys) + 1, dtype=np.uint64)
    np.cumsum(keys, out=totals[1:])  # uint64 arithmetic wraps around: the sums are modulo 2**64
    return totals[k:] - totals[: max(len(keys) + 1 - k, 0)]


def agreement(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading notes `a` and `b` share, where a block of up to BLOCK notes may hold the
    same pitches in another order (the shortest such block is taken at each difference)."""
    length, done = min(len(a), len(b)), 0
    while done < length:
        chunk = min(length - done, 1024)
        same = a[done : done + chunk] == b[done : done + chunk]
        if same.all():
            done += chunk
            continue
        done += int(np.argmin(same))
        for size in range(2, min(BLOCK, length - done) + 1):
            if np.array_equal(np.sort(a[done : done + size]), np.sort(b[done : done + size])):
                done += size
                break
        else:
            return done
    return done


@dataclass(frozen=True)
class Match:
    """The longest passage of a query found in the reference (notes == 0: none of min_notes)."""

    notes: int
    seconds: float = 0.0  # in the query: first matched onset to the last matched release
    query_note: int | None = None  # the passage's first note, in canonical order
    query_start_s: float | None = None
    piece: int | None = None  # the reference piece's index (in the prepared split's order)
    name: str | None = None
    piece_note: int | None = None  # the first matched note's index in that piece (canonical order)
    piece_start_s: float | None = None
    reference_seconds: float | None = None  # the same passage's length in the reference

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class ReferenceIndex:
    """The canonical pitch sequences of reference pieces, with their sorted shingle hashes."""

    def __init__(self, pieces: Iterable[np.ndarray], names: Sequence[str] | None = None,
                 min_notes: int = MIN_NOTES, chord_s: float = CHORD_S) -> None:
        """`pieces`: note arrays (N, 4); `names`: one per piece (default: their indices)."""
        pitches, onsets, ends, bounds = [], [], [], [0]
        for notes in pieces:
            notes = checked_notes(notes)
            order = canonical_order(notes, chord_s)
            pitches.append(notes[order, 0].astype(np.uint8))
            onsets.append(notes[order, 1].astype(np.float32))
            ends.append(notes[order, 2].astype(np.float32))
            bounds.append(bounds[-1] + len(order))
        self.min_notes, self.chord_s = min_notes, chord_s
        self.pitches = np.concatenate(pitches) if pitches else np.zeros(0, np.uint8)
        self.onsets = np.concatenate(onsets) if onsets else np.zeros(0, np.float32)
        self.ends = np.concatenate(ends) if ends else np.zeros(0, np.float32)
        self.bounds = np.asarray(bounds, dtype=np.int64)  # piece p holds notes bounds[p]:bounds[p + 1]
        self.names = list(names) if names is not None else [str(i) for i in range(len(bounds) - 1)]
        if len(self.names) != len(self.bounds) - 1:
            raise ValueError(f"{len(self.names)} names for {len(self.bounds) - 1} pieces")
        hashes = shingle_hashes(self.pitches, min_notes)
        starts = np.arange(len(hashes))
        piece_of = np.searchsorted(self.bounds, starts, side="right")
        inside = np.searchsorted(self.bounds, starts + min_notes - 1, side="right") == piece_of
        starts = starts[inside]
        order = np.argsort(hashes[inside], kind="stable")
        self.hashes, self.positions = hashes[inside][order], starts[order]

    @classmethod
    def from_prepared(cls, data: "PreparedData", split: str = "train", min_notes: int = MIN_NOTES) -> "ReferenceIndex":
        """Every piece of a prepared split, named by its manifest path."""
        from perceiver_ar_music.data.events import ids_to_notes

        names = [entry["path"] for entry in data.files(split)]
        return cls((ids_to_notes(piece, data.vocab) for piece in data.pieces(split)), names, min_notes)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_notes(self) -> int:
        return len(self.pitches)

    def longest_match(self, notes: np.ndarray) -> Match:
        """The longest passage of `notes` (canonical pitch order) found in the reference."""
        notes = checked_notes(notes)
        order = canonical_order(notes, self.chord_s)
        query = notes[order, 0].astype(np.uint8)
        k = self.min_notes
        if len(query) < k or not len(self.hashes):
            return Match(0)
        best = (0, 0, 0)  # length, query position, reference position
        for i, j in self._candidates(query):
            length, i, j = self._extend(query, i, j)
            if length > best[0]:
                best = (length, i, j)
        length, i, j = best
        if length < k:
            return Match(0)
        piece = int(np.searchsorted(self.bounds, j, side="right") - 1)
        played = notes[order[i : i + length]]
        first = int(self.bounds[piece])
        return Match(
            notes=length,
            seconds=float(played[:, 2].max() - played[:, 1].min()),
            query_note=int(i),
            query_start_s=float(played[:, 1].min()),
            piece=piece,
            name=self.names[piece],
            piece_note=int(j - first),
            piece_start_s=float(self.onsets[j]),
            reference_seconds=float(self.ends[j : j + length].max() - self.onsets[j : j + length].min()),
        )

    def _candidates(self, query: np.ndarray) -> list[tuple[int, int]]:
        """Starts (query position, reference position) of the longest diagonal runs of hits."""
        hashes = shingle_hashes(query, self.min_notes)
        low = np.searchsorted(self.hashes, hashes, side="left")
        high = np.searchsorted(self.hashes, hashes, side="right")
        counts = high - low
        counts[counts > MAX_OCCURRENCES] = 0
        total = int(counts.sum())
        if not total:
            return []
        query_pos = np.repeat(np.arange(len(hashes)), counts)
        within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        ref_pos = self.positions[np.repeat(low, counts) + within]
        diagonal = ref_pos - query_pos
        order = np.lexsort((query_pos, diagonal))
        query_pos, diagonal = query_pos[order], diagonal[order]
        new_run = np.ones(total, dtype=bool)
        new_run[1:] = (np.diff(diagonal) != 0) | (np.diff(query_pos) != 1)
        run_starts = np.flatnonzero(new_run)
        run_lengths = np.diff(np.append(run_starts, total))
        longest = run_starts[np.argsort(-run_lengths, kind="stable")[:CANDIDATES]]
        return [(int(query_pos[s]), int(query_pos[s] + diagonal[s])) for s in longest]

    def _extend(self, query: np.ndarray, i: int, j: int) -> tuple[int, int, int]:
        """The longest passage through query[i] ~ reference[j] on their diagonal, within j's piece:
        (length, its first query position, its first reference position)."""
        piece = int(np.searchsorted(self.bounds, j, side="right") - 1)
        first, last = int(self.bounds[piece]), int(self.bounds[piece + 1])
        behind = min(i, j - first)
        back = agreement(query[i - behind : i][::-1], self.pitches[j - behind : j][::-1])
        forward = agreement(query[i:], self.pitches[j:last])
        whole = agreement(query[i - back :], self.pitches[j - back : last])  # one pass from the clean start
        return max(back + forward, whole), i - back, j - back


@dataclass(frozen=True)
class MemorizationReport:
    """Copying of a sample from the reference, its primer's part apart from its continuation's."""

    min_notes: int
    reference_pieces: int
    primer: Match | None  # None: the sample has no primer notes
    continuation: Match | None  # None: nothing was generated
    continuation_in_primer: int  # the longest passage of the continuation that replays the primer
    match_replays_primer: bool  # the continuation's match also occurs in the primer

    def as_dict(self) -> dict[str, object]:
        return {
            "min_notes": self.min_notes,
            "reference_pieces": self.reference_pieces,
            "primer": self.primer.as_dict() if self.primer else None,
            "continuation": self.continuation.as_dict() if self.continuation else None,
            "continuation_in_primer": self.continuation_in_primer,
            "match_replays_primer": self.match_replays_primer,
        }


def memorization_report(notes: np.ndarray, primer_notes: int, index: ReferenceIndex) -> MemorizationReport:
    """The longest copied passage of the primer (`notes[:primer_notes]`) and of the continuation
    (the rest), each matched alone; also how much of the continuation replays the primer, and
    whether the continuation's copied passage is one it could have taken from the primer."""
    notes = checked_notes(notes)
    primer, continuation = notes[:primer_notes], notes[primer_notes:]
    primer_match = index.longest_match(primer) if len(primer) else None
    continuation_match = index.longest_match(continuation) if len(continuation) else None
    in_primer, replays = 0, False
    if len(primer) and len(continuation):
        from_primer = ReferenceIndex([primer], ["primer"], index.min_notes, index.chord_s)
        in_primer = from_primer.longest_match(continuation).notes
        if continuation_match is not None and continuation_match.notes:
            order = canonical_order(continuation, index.chord_s)
            start = int(continuation_match.query_note)
            passage = continuation[order[start : start + continuation_match.notes]]
            replays = from_primer.longest_match(passage).notes >= continuation_match.notes
    return MemorizationReport(index.min_notes, len(index), primer_match, continuation_match, in_primer, replays)
