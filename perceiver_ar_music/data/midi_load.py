"""Read any MIDI file into one piano stream of notes in wall-clock seconds.

symusic parses the file (C++) and converts ticks to seconds through the tempo map. Then, per
track, the sustain pedal (CC64 >= 64 = down) is folded into note durations: a note released
while the pedal is down sounds until the pedal comes up. Drum tracks are dropped and all other
tracks are merged. Everything after parsing is vectorized numpy.

symusic drops tracks without notes, and with them a sustain pedal that a file keeps on a track of
its own. When the parsed score has no pedal at all but the file holds CC64 events, the file is
re-read with mido, each such pedal track is merged into the note tracks of its channel (all
note tracks if none shares it), and the result is parsed again.

Every MIDI file the package reads comes through `read_score`, which checks what the file will
cost before anything is made of it: a regular file (never a FIFO or a device, which could block
forever), at most `MAX_FILE_BYTES`, and once parsed (C++, linear in the bytes) at most
`MAX_NOTES` notes and `MAX_SECONDS` of music. A file of 37 bytes can place one note at tick
2**28 with one tick per beat: 134M seconds, that is 134M time-shift tokens; it is refused in
well under a millisecond instead.
"""

from __future__ import annotations

import io
import math
import os
import stat
from dataclasses import dataclass

import numpy as np

SUSTAIN_CC = 64
PEDAL_DOWN_THRESHOLD = 64
MAX_FILE_BYTES = 16 * 2**20  # MAESTRO's largest file is 1.3 MB
MAX_NOTES = 1_000_000  # an hour of the densest piano is about 100,000
MAX_SECONDS = 4 * 3600.0  # music (notes and pedal) must end within 4 hours


class MidiReadError(Exception):
    """A MIDI file that cannot be used: unreadable, empty, no notes, drums only. Picklable."""


@dataclass(frozen=True)
class PerformanceNotes:
    """Notes of one piano stream, in seconds, pedal already folded into the ends."""

    start: np.ndarray  # float64 seconds
    end: np.ndarray  # float64 seconds, >= start
    pitch: np.ndarray  # int64 0..127
    velocity: np.ndarray  # int64 1..127

    def __len__(self) -> int:
        return len(self.start)


def read_score(path: str | os.PathLike[str]):
    """Parse a MIDI file into a ``symusic`` Score timed in seconds, or raise MidiReadError."""
    from symusic import Score

    head = _read_head(path)
    if not head:
        raise MidiReadError("empty file (0 bytes)")
    if not head.startswith(b"MThd"):
        if _looks_like_text(head):
            raise MidiReadError("not a MIDI file (text)")
        raise MidiReadError("not a MIDI file (no MThd header)")
    try:
        score = Score(str(path), ttype="second")
    except Exception as exc:  # symusic raises RuntimeError with a parser message
        detail = str(exc).replace("MiniMidi: ", "").replace(": iostream error", "")
        raise MidiReadError(f"corrupt or truncated MIDI ({detail})") from None
    check_size(score)
    if not _has_sustain(score):
        adopted = adopt_pedal_tracks(path)
        if adopted is not None:
            score = Score.from_midi(adopted, ttype="second")
            check_size(score)
    return score


def _read_head(path: str | os.PathLike[str]) -> bytes:
    """The first bytes of a regular file of at most MAX_FILE_BYTES, or a MidiReadError. The file
    is checked before it is opened (opening a FIFO for reading waits for a writer)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise MidiReadError("file not found") from None
    except OSError as exc:
        raise MidiReadError(f"cannot open file ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise MidiReadError("not a file (a directory)")
    if not stat.S_ISREG(info.st_mode):
        raise MidiReadError("not a regular file (a pipe, socket or device)")
    if info.st_size > MAX_FILE_BYTES:
        raise MidiReadError(f"too large for a MIDI file ({info.st_size / 2**20:.1f} MB; the limit is "
                            f"{MAX_FILE_BYTES / 2**20:g} MB)")
    try:
        with open(path, "rb") as handle:
            return handle.read(256)
    except OSError as exc:
        raise MidiReadError(f"cannot open file ({exc.strerror})") from None


def check_size(score) -> None:
    """A MidiReadError unless a parsed Score (timed in seconds) stays within MAX_NOTES notes and
    MAX_SECONDS of music: the bounds of everything made from it (tokens, notes, audio)."""
    notes = score.note_num()
    if notes > MAX_NOTES:
        raise MidiReadError(f"too many notes ({notes:,}; the limit is {MAX_NOTES:,})")
    end = float(score.end())
    if not math.isfinite(end) or end > MAX_SECONDS:
        shown = f"{end / 3600:,.0f} hours" if math.isfinite(end) else "forever"
        raise MidiReadError(f"too long (its events run {shown}; the limit is {MAX_SECONDS / 3600:g} hours)")


def _has_sustain(score) -> bool:
    return any(
        len(track.controls) and bool((track.controls.numpy()["number"] == SUSTAIN_CC).any()) for track in score.tracks
    )


def adopt_pedal_tracks(path: str | os.PathLike[str]) -> bytes | None:
    """The file's bytes with note-less pedal tracks merged into note tracks, or None if it has none.

    A cheap byte search ("control change, controller 64" with an explicit status byte) decides
    whether mido needs to read the file at all.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    if not any(bytes((0xB0 | channel, SUSTAIN_CC)) in data for channel in range(16)):
        return None
    import mido

    try:
        midi = mido.MidiFile(file=io.BytesIO(data))
    except Exception:  # symusic read it; mido's stricter parser may not: keep symusic's reading
        return None
    channels = [{m.channel for m in track if m.type in ("note_on", "note_off")} for track in midi.tracks]
    changed = False
    for index, track in enumerate(midi.tracks):
        pedal_channels = {m.channel for m in track if m.type == "control_change" and m.control == SUSTAIN_CC}
        if channels[index] or not pedal_channels:
            continue
        targets = [j for j, chans in enumerate(channels) if chans & pedal_channels] or [
            j for j, chans in enumerate(channels) if chans
        ]
        for target in targets:
            # the pedal's own channels where they have notes here, else the target's channels
            # (symusic splits tracks by channel: a pedal on another channel would be dropped again)
            shared = channels[target] & pedal_channels
            sustain = _sustain_events(track, shared or pedal_channels, None if shared else sorted(channels[target]))
            midi.tracks[target] = mido.merge_tracks([midi.tracks[target], sustain])
            changed = True
    if not changed:
        return None
    out = io.BytesIO()
    midi.save(file=out)
    return out.getvalue()


def _sustain_events(track, from_channels: set[int], to_channels: list[int] | None):
    """A mido track with the CC64 events of `track` on `from_channels`, absolute times kept,
    copied onto each of `to_channels` if given."""
    import mido

    kept, now, last = mido.MidiTrack(), 0, 0
    for message in track:
        now += message.time
        if message.type == "control_change" and message.control == SUSTAIN_CC and message.channel in from_channels:
            for channel in to_channels or [message.channel]:
                kept.append(message.copy(time=now - last, channel=channel))
                last = now
    return kept


def _looks_like_text(head: bytes) -> bool:
    """Plain ASCII text (printable characters and whitespace only)."""
    return all(32 <= byte < 127 or byte in b"\t\n\r" for byte in head)


def pedal_intervals(times: np.ndarray, values: np.ndarray, piece_end: float) -> tuple[np.ndarray, np.ndarray]:
    """Sustain-down intervals [down, up) from time-sorted CC64 events; a pedal never released
    lasts until ``piece_end`` (the last note end of the piece)."""
    down = (values >= PEDAL_DOWN_THRESHOLD).astype(np.int8)
    change = np.diff(down, prepend=np.int8(0))
    downs = times[change == 1]
    ups = times[change == -1]
    if len(ups) < len(downs):
        ups = np.append(ups, max(piece_end, downs[-1]))
    return downs, ups


def fold_sustain(end: np.ndarray, downs: np.ndarray, ups: np.ndarray) -> np.ndarray:
    """Extend every note end that falls inside a pedal-down interval [down, up) to its up."""
    if len(downs) == 0:
        return end
    which = np.searchsorted(downs, end, side="right") - 1
    safe = np.maximum(which, 0)
    held = (which >= 0) & (end < ups[safe])
    return np.where(held, ups[safe], end)


def _last_note_end(track) -> float:
    notes = track.notes.numpy()
    return float((notes["time"].astype(np.float64) + notes["duration"]).max())


def _track_notes(track, piece_end: float) -> tuple[np.ndarray, ...]:
    notes = track.notes.numpy()
    start = notes["time"].astype(np.float64)
    end = start + notes["duration"].astype(np.float64)
    if len(track.controls):
        controls = track.controls.numpy()
        is_sustain = controls["number"] == SUSTAIN_CC
        if is_sustain.any():
            order = np.argsort(controls["time"][is_sustain], kind="stable")
            times = controls["time"][is_sustain][order].astype(np.float64)
            values = controls["value"][is_sustain][order]
            end = fold_sustain(end, *pedal_intervals(times, values, piece_end))
    return start, end, notes["pitch"].astype(np.int64), notes["velocity"].astype(np.int64)


def performance_notes(score) -> PerformanceNotes:
    """All non-drum notes of a symusic Score (any time unit) merged into one pedal-folded stream."""
    from symusic.core import ScoreSecond

    if not isinstance(score, ScoreSecond):
        score = score.to("second")
    tracks = [track for track in score.tracks if len(track.notes)]
    if not tracks:
        raise MidiReadError("no notes")
    melodic = [track for track in tracks if not track.is_drum]
    if not melodic:
        raise MidiReadError("only drum tracks")
    piece_end = max(_last_note_end(track) for track in melodic)
    parts = [_track_notes(track, piece_end) for track in melodic]
    start, end, pitch, velocity = (np.concatenate(column) for column in zip(*parts))
    if not (np.isfinite(start).all() and np.isfinite(end).all()):
        raise MidiReadError("invalid timing (non-finite note times)")
    valid = (pitch >= 0) & (pitch <= 127)  # a corrupt data byte can read as a negative int8
    return PerformanceNotes(start=start[valid], end=end[valid], pitch=pitch[valid], velocity=velocity[valid])
