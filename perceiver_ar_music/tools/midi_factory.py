"""Synthetic MIDI files for the tests and the benchmarks, written with mido, with their ground
truth in seconds.

``write_performance`` writes a piano performance (chords, jittered timing, varied velocities,
gaps longer than 1 s, sustain pedal with half-pedal CC values, tempo changes, several piano
tracks, an optional drum track on channel 9) and returns the notes a correct reader must find:
seconds computed exactly from the ticks through the tempo map, the sustain pedal folded in by a
slow event-by-event simulation (``fold_pedal_reference``), drums left out.
The ``write_*`` functions at the end write the bad files every loader must reject.

``from perceiver_ar_music.tools.midi_factory import write_performance``.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np

DRUM_CHANNEL = 9


@dataclass(frozen=True)
class GroundTruth:
    """The non-drum notes of a synthetic file after pedal folding, sorted by (start, pitch)."""

    start: np.ndarray  # float64 seconds
    end: np.ndarray  # float64 seconds
    pitch: np.ndarray  # int64
    velocity: np.ndarray  # int64
    duplicates: int  # notes written twice on the same tick (a reader keeps one of each pair)
    drum_notes: int

    def __len__(self) -> int:
        return len(self.start)

    @property
    def seconds(self) -> float:
        return float(self.end.max()) if len(self.end) else 0.0


class TempoMap:
    """Piecewise-constant tempo: ticks <-> seconds, exactly as a MIDI reader computes them."""

    def __init__(self, ticks_per_beat: int, changes: list[tuple[int, int]]) -> None:
        self.ticks_per_beat = ticks_per_beat
        self.ticks = np.array([tick for tick, _ in changes], dtype=np.int64)
        self.tempo = np.array([tempo for _, tempo in changes], dtype=np.float64)  # us per beat
        seconds_per_tick = self.tempo / 1e6 / ticks_per_beat
        self.seconds_at = np.concatenate([[0.0], np.cumsum(np.diff(self.ticks) * seconds_per_tick[:-1])])
        self.seconds_per_tick = seconds_per_tick

    def to_seconds(self, ticks: np.ndarray) -> np.ndarray:
        ticks = np.asarray(ticks, dtype=np.int64)
        seg = np.searchsorted(self.ticks, ticks, side="right") - 1
        return self.seconds_at[seg] + (ticks - self.ticks[seg]) * self.seconds_per_tick[seg]

    def to_ticks(self, seconds: np.ndarray) -> np.ndarray:
        seconds = np.asarray(seconds, dtype=np.float64)
        seg = np.searchsorted(self.seconds_at, seconds, side="right") - 1
        return self.ticks[seg] + np.rint((seconds - self.seconds_at[seg]) / self.seconds_per_tick[seg]).astype(np.int64)


def fold_pedal_reference(
    start: np.ndarray,
    end: np.ndarray,
    pitch: np.ndarray,
    track: np.ndarray,
    pedals: dict[int, list[tuple[float, float]]],
) -> np.ndarray:
    """Note ends after the sustain pedal, by simulating the performance event by event.

    A key released while its track's pedal is down keeps sounding until the pedal comes up; a
    note (any track: one piano) is cut when the same pitch is struck again; a pedal never
    released lets notes sound until the last note end. At equal times: pedal, key up, key down.
    """
    events = []
    for i in range(len(start)):
        events.append((start[i], 2, "on", i))
        events.append((end[i], 1, "off", i))
    for trk, intervals in pedals.items():
        for down, up in intervals:
            events.append((down, 0, "down", trk))
            if np.isfinite(up):
                events.append((up, 0, "up", trk))
    events.sort(key=lambda event: (event[0], event[1]))
    new_end = end.astype(np.float64).copy()
    sounding: dict[int, int] = {}  # pitch -> note index
    released: set[int] = set()
    pedal_down: set[int] = set()
    for time, _, kind, who in events:
        if kind == "down":
            pedal_down.add(who)
        elif kind == "up":
            pedal_down.discard(who)
            for p, i in list(sounding.items()):
                if i in released and track[i] == who:
                    new_end[i] = time
                    del sounding[p]
        elif kind == "on":
            previous = sounding.get(pitch[who])
            if previous is not None:
                new_end[previous] = time
            sounding[pitch[who]] = who
            released.discard(who)
        elif sounding.get(pitch[who]) == who:  # key up of a still-sounding note
            if track[who] in pedal_down:
                released.add(who)
            else:
                new_end[who] = time
                del sounding[pitch[who]]
    piece_end = float(end.max()) if len(end) else 0.0
    for i in sounding.values():
        new_end[i] = max(new_end[i], piece_end) if i in released else new_end[i]
    return new_end


def _random_onsets(rng: np.random.Generator, num_notes: int, long_gaps: bool, pace: float = 1.0) -> np.ndarray:
    """Onset times in seconds: chords (near-simultaneous), runs, phrases, and >1 s silences;
    `pace` scales the gaps between chords (2: half as many notes per second)."""
    kind = rng.random(num_notes)
    gaps = np.where(kind < 0.3, rng.uniform(0.0, 0.012, num_notes), pace * rng.gamma(2.0, 0.07, num_notes))
    if long_gaps:
        gaps = np.where(kind > 0.985, rng.uniform(1.1, 3.6, num_notes), gaps)
    gaps[0] = rng.uniform(0.0, 0.8)
    return np.cumsum(gaps)


def _random_pitches(rng: np.random.Generator, onsets: np.ndarray) -> np.ndarray:
    """A wandering pitch line (21..108) with same-pitch onsets at least 30 ms apart."""
    pitches = np.empty(len(onsets), dtype=np.int64)
    last_onset: dict[int, float] = {}
    centre = 60.0
    for i, onset in enumerate(onsets):
        centre = float(np.clip(centre + rng.normal(0, 2.5), 33, 96))
        p = int(np.clip(round(centre + rng.normal(0, 7)), 21, 108))
        while onset - last_onset.get(p, -1.0) < 0.03:
            p = p + 1 if p < 108 else 21
        pitches[i] = p
        last_onset[p] = onset
    return pitches


def _pedal_intervals(rng: np.random.Generator, total: float) -> list[tuple[float, float]]:
    intervals = []
    time = rng.uniform(0.0, 1.0)
    while time < total:
        down = time
        up = down + rng.uniform(0.4, 4.0)
        intervals.append((down, up))
        time = up + rng.uniform(0.03, 1.5)
    return intervals


def _tempo_changes(rng: np.random.Generator, ticks_per_beat: int, total_beats: float, vary: bool) -> list[tuple[int, int]]:
    changes = [(0, int(rng.integers(400_000, 700_000)) if vary else 500_000)]
    if vary:
        beat = 0.0
        while True:
            beat += rng.uniform(4.0, 24.0)
            if beat >= total_beats:
                break
            changes.append((int(beat * ticks_per_beat), int(rng.integers(250_000, 1_200_000))))
    return changes


def write_performance(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    num_notes: int = 300,
    ticks_per_beat: int = 480,
    tempo_changes: bool = True,
    pedal: bool = True,
    long_gaps: bool = True,
    piano_tracks: int = 1,
    drum_track: bool = False,
    duplicates: int = 0,
    release_pedal: bool = True,
    pace: float = 1.0,
) -> GroundTruth:
    """Write a synthetic piano performance and return its ground truth (see module docstring).

    ``duplicates`` notes are written a second time on the same tick, pitch and track (a doubled
    note): a reader keeps one of each pair. ``release_pedal=False``
    leaves the last pedal press unreleased. ``pace`` scales the gaps between chords (the default
    plays about 10 notes/s; 2.5 about 4).
    """
    rng = np.random.default_rng(seed)
    onsets = _random_onsets(rng, num_notes, long_gaps, pace)
    pitches = _random_pitches(rng, onsets)
    lengths = np.where(rng.random(num_notes) < 0.2, rng.uniform(0.5, 2.5, num_notes), rng.uniform(0.03, 0.5, num_notes))
    velocities = np.clip(np.rint(rng.normal(64, 22, num_notes)), 1, 127).astype(np.int64)
    tracks = rng.integers(0, piano_tracks, num_notes)

    total_seconds = float((onsets + lengths).max()) + 0.5
    tempo = TempoMap(ticks_per_beat, _tempo_changes(rng, ticks_per_beat, total_seconds * 4, tempo_changes))
    start_ticks = tempo.to_ticks(onsets)
    end_ticks = np.maximum(tempo.to_ticks(onsets + lengths), start_ticks + 1)
    end_ticks = _release_before_restrike(start_ticks, end_ticks, pitches, tracks)

    dup_index = rng.choice(num_notes, size=duplicates, replace=False) if duplicates else np.array([], dtype=np.int64)
    dup_tracks = tracks[dup_index]
    start_ticks = np.concatenate([start_ticks, start_ticks[dup_index]])
    end_ticks = np.concatenate([end_ticks, end_ticks[dup_index]])
    pitches = np.concatenate([pitches, pitches[dup_index]])
    velocities = np.concatenate([velocities, velocities[dup_index]])
    tracks = np.concatenate([tracks, dup_tracks])

    pedal_ticks: dict[int, list[tuple[int, int]]] = {}
    if pedal:
        for trk in range(piano_tracks):
            intervals = _pedal_intervals(rng, total_seconds)
            ticks = [(int(tempo.to_ticks(d)), int(tempo.to_ticks(u))) for d, u in intervals]
            pedal_ticks[trk] = [(d, u) for d, u in ticks if u > d]
            if not release_pedal and pedal_ticks[trk]:
                last_down = pedal_ticks[trk][-1][0]
                pedal_ticks[trk][-1] = (last_down, -1)

    start_s = tempo.to_seconds(start_ticks)
    end_s = tempo.to_seconds(end_ticks)
    pedal_seconds = {
        trk: [(float(tempo.to_seconds(d)), float(tempo.to_seconds(u)) if u >= 0 else np.inf) for d, u in ivs]
        for trk, ivs in pedal_ticks.items()
    }
    folded = fold_pedal_reference(start_s, end_s, pitches, tracks, pedal_seconds)

    mid = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)
    conductor = mido.MidiTrack()
    conductor.append(mido.MetaMessage("track_name", name="conductor", time=0))
    _append_absolute(conductor, [(tick, 0, mido.MetaMessage("set_tempo", tempo=us)) for tick, us in zip(tempo.ticks, tempo.tempo.astype(int))])
    mid.tracks.append(conductor)
    for trk in range(piano_tracks):
        channel = trk
        events: list[tuple[int, int, object]] = [(0, 0, mido.Message("program_change", channel=channel, program=0))]
        for down, up in pedal_ticks.get(trk, []):
            events.append((down, 1, mido.Message("control_change", channel=channel, control=64, value=int(rng.integers(64, 128)))))
            if up >= 0:
                middle = (down + up) // 2
                if middle > down:  # half-pedal wobble that stays down
                    events.append((middle, 1, mido.Message("control_change", channel=channel, control=64, value=int(rng.integers(64, 128)))))
                events.append((up, 1, mido.Message("control_change", channel=channel, control=64, value=int(rng.integers(0, 64)))))
        for i in np.flatnonzero(tracks == trk):
            events.append((int(start_ticks[i]), 3, mido.Message("note_on", channel=channel, note=int(pitches[i]), velocity=int(velocities[i]))))
            off = mido.Message("note_on", channel=channel, note=int(pitches[i]), velocity=0) if trk % 2 else mido.Message("note_off", channel=channel, note=int(pitches[i]), velocity=64)
            events.append((int(end_ticks[i]), 2, off))
        track = mido.MidiTrack()
        track.append(mido.MetaMessage("track_name", name=f"Piano {trk}", time=0))
        _append_absolute(track, events)
        mid.tracks.append(track)
    drum_notes = 0
    if drum_track:
        drum_events = []
        for tick in range(0, int(end_ticks.max()), ticks_per_beat):
            note = int(rng.choice([36, 38, 42]))
            drum_events.append((tick, 3, mido.Message("note_on", channel=DRUM_CHANNEL, note=note, velocity=100)))
            drum_events.append((tick + ticks_per_beat // 4, 2, mido.Message("note_off", channel=DRUM_CHANNEL, note=note, velocity=0)))
            drum_notes += 1
        track = mido.MidiTrack()
        _append_absolute(track, drum_events)
        mid.tracks.append(track)
    mid.save(str(path))

    order = np.lexsort((pitches, start_s))
    return GroundTruth(
        start=start_s[order],
        end=folded[order],
        pitch=pitches[order],
        velocity=velocities[order],
        duplicates=int(duplicates),
        drum_notes=drum_notes,
    )


def write_maestro_like(path: str | os.PathLike[str], *, seed: int = 0, num_notes: int = 5000) -> GroundTruth:
    """A MAESTRO-sized performance: one piano track, ~10 minutes, ~5,000 notes, sustain pedal."""
    return write_performance(path, seed=seed, num_notes=num_notes, ticks_per_beat=384, tempo_changes=False, pedal=True)


def _release_before_restrike(start: np.ndarray, end: np.ndarray, pitch: np.ndarray, track: np.ndarray) -> np.ndarray:
    """Within a track, end each key press no later than the next press of the same key: MIDI
    files cannot tell overlapping same-pitch notes of one channel apart (readers pair them by
    convention), so the ground truth would be ambiguous."""
    end = end.copy()
    order = np.lexsort((start, pitch, track))
    for a, b in zip(order[:-1], order[1:]):
        if pitch[a] == pitch[b] and track[a] == track[b]:
            end[a] = min(end[a], start[b])
    return end


def _append_absolute(track: mido.MidiTrack, events: list[tuple[int, int, object]]) -> None:
    """Append (tick, order, message) events as delta-timed messages (order breaks tick ties)."""
    now = 0
    for tick, _, message in sorted(events, key=lambda event: (event[0], event[1])):
        track.append(message.copy(time=int(tick) - now))
        now = int(tick)


# ----- bad files -----
def write_empty(path: str | os.PathLike[str]) -> None:
    """A 0-byte file."""
    Path(path).write_bytes(b"")


def write_truncated(path: str | os.PathLike[str]) -> None:
    """A real MIDI file cut in the middle of its track data."""
    full = Path(path).with_suffix(".full.mid")
    write_performance(full, seed=1, num_notes=50)
    data = full.read_bytes()
    full.unlink()
    Path(path).write_bytes(data[: len(data) // 2])


def write_random_bytes(path: str | os.PathLike[str], seed: int = 0) -> None:
    """Noise: 2 KB of random bytes (never starting with the MThd magic)."""
    data = np.random.default_rng(seed).integers(0, 256, 2048, dtype=np.uint8).tobytes()
    Path(path).write_bytes(b"\x00" + data[1:])


def write_text_file(path: str | os.PathLike[str]) -> None:
    """A text file renamed .mid."""
    Path(path).write_text("This is not a MIDI file, just some text with a .mid name.\n" * 20)


def write_no_notes(path: str | os.PathLike[str]) -> None:
    """A well-formed MIDI file with a tempo, a program change and a pedal, but no notes."""
    mid = mido.MidiFile(type=1, ticks_per_beat=480)
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=500_000, time=0))
    track.append(mido.Message("program_change", program=0, time=0))
    track.append(mido.Message("control_change", control=64, value=127, time=0))
    track.append(mido.Message("control_change", control=64, value=0, time=960))
    mid.tracks.append(track)
    mid.save(str(path))


def write_drums_only(path: str | os.PathLike[str]) -> None:
    """A MIDI file whose only notes are on the drum channel (10, i.e. 9 zero-based)."""
    mid = mido.MidiFile(type=1, ticks_per_beat=480)
    track = mido.MidiTrack()
    for beat in range(16):
        track.append(mido.Message("note_on", channel=DRUM_CHANNEL, note=36 + beat % 3, velocity=100, time=0 if beat == 0 else 360))
        track.append(mido.Message("note_off", channel=DRUM_CHANNEL, note=36 + beat % 3, velocity=0, time=120))
    mid.tracks.append(track)
    mid.save(str(path))


BAD_FILES = {
    "empty": write_empty,
    "truncated": write_truncated,
    "random_bytes": write_random_bytes,
    "text": write_text_file,
    "no_notes": write_no_notes,
    "drums_only": write_drums_only,
}


# ----- MIDI bombs -----
def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def _midi(events: list[bytes], ticks_per_beat: int = 1) -> bytes:
    track = b"".join(events) + b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, ticks_per_beat) + b"MTrk" + struct.pack(">I", len(track)) + track


LATE = 0x0FFFFFFF  # the largest delta time: 2**28 ticks
MIDI_BOMBS = {  # a few dozen bytes each, asking for hundreds of millions of tokens
    # 37 bytes: one note at tick 2**28, one tick per beat: 134M seconds of silence first
    "late_note": _midi([_vlq(LATE) + b"\x90\x3c\x40", b"\x00\x80\x3c\x40"]),
    # one note held for 2**28 beats
    "long_note": _midi([b"\x00\x90\x3c\x40", _vlq(LATE) + b"\x80\x3c\x40"]),
    # 44 bytes: the slowest tempo (16.7 s per beat) and a note 2**24 beats long
    "slow_tempo": _midi([b"\x00\xff\x51\x03\xff\xff\xff", b"\x00\x90\x3c\x40", _vlq(0x00FFFFFF) + b"\x80\x3c\x40"]),
    # a short note under a sustain pedal released at tick 2**28
    "endless_pedal": _midi([b"\x00\x90\x3c\x40\x00\xb0\x40\x7f\x01\x80\x3c\x40", _vlq(LATE) + b"\xb0\x40\x00"]),
}
