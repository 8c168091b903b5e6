"""Reading MIDI into one pedal-folded piano stream: a sustain pedal kept on a track of its own."""

from __future__ import annotations

import mido
import numpy as np
import pytest

from perceiver_ar_music.data import midi_load
from perceiver_ar_music.data.midi_load import adopt_pedal_tracks, performance_notes, read_score

TICKS_PER_SECOND = 960  # 480 ticks per beat at the default 120 qpm


def track_of(events: list[tuple[float, mido.Message]]) -> mido.MidiTrack:
    """A mido track from (seconds, message) pairs."""
    track, now = mido.MidiTrack(), 0
    for seconds, message in sorted(events, key=lambda e: e[0]):
        tick = round(seconds * TICKS_PER_SECOND)
        track.append(message.copy(time=tick - now))
        now = tick
    return track


def note(start: float, end: float, pitch: int, channel: int = 0) -> list[tuple[float, mido.Message]]:
    return [(start, mido.Message("note_on", note=pitch, velocity=80, channel=channel)),
            (end, mido.Message("note_off", note=pitch, channel=channel))]


def pedal(down: float, up: float | None, channel: int = 0) -> list[tuple[float, mido.Message]]:
    events = [(down, mido.Message("control_change", control=64, value=127, channel=channel))]
    if up is not None:
        events.append((up, mido.Message("control_change", control=64, value=0, channel=channel)))
    return events


def write(path, *tracks: list[tuple[float, mido.Message]]) -> None:
    midi = mido.MidiFile(ticks_per_beat=480)
    midi.tracks.append(mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500_000, time=0)]))
    midi.tracks.extend(track_of(events) for events in tracks)
    midi.save(path)


def ends_by_pitch(path) -> dict[int, float]:
    notes = performance_notes(read_score(path))
    return {int(p): round(float(e), 3) for p, e in zip(notes.pitch, notes.end)}


def test_a_pedal_on_its_own_track_sustains_the_notes_of_its_channel(tmp_path):
    path = tmp_path / "separate.mid"
    write(path, note(0.0, 0.25, 60) + note(0.5, 0.75, 64), pedal(0.1, 2.0))
    assert ends_by_pitch(path) == {60: 2.0, 64: 2.0}


def test_the_same_pedal_in_the_note_track_reads_the_same(tmp_path):
    write(tmp_path / "inline.mid", note(0.0, 0.25, 60) + note(0.5, 0.75, 64) + pedal(0.1, 2.0))
    write(tmp_path / "separate.mid", note(0.0, 0.25, 60) + note(0.5, 0.75, 64), pedal(0.1, 2.0))
    assert ends_by_pitch(tmp_path / "inline.mid") == ends_by_pitch(tmp_path / "separate.mid")
    assert adopt_pedal_tracks(tmp_path / "inline.mid") is None  # nothing to adopt


def test_a_pedal_track_follows_its_channel(tmp_path):
    path = tmp_path / "channels.mid"
    write(path, note(0.0, 0.25, 60, channel=0), note(0.0, 0.25, 72, channel=1), pedal(0.1, 1.5, channel=1))
    assert ends_by_pitch(path) == {60: 0.25, 72: 1.5}


def test_a_pedal_on_a_channel_without_notes_applies_to_every_note_track(tmp_path):
    path = tmp_path / "elsewhere.mid"
    write(path, note(0.0, 0.25, 60, channel=0), note(0.0, 0.25, 72, channel=1), pedal(0.1, 1.5, channel=5))
    assert ends_by_pitch(path) == {60: 1.5, 72: 1.5}


def test_a_pedal_never_released_lasts_to_the_last_note_end(tmp_path):
    path = tmp_path / "held.mid"
    write(path, note(0.0, 0.25, 60) + note(1.0, 3.0, 64), pedal(0.1, None))
    assert ends_by_pitch(path) == {60: 3.0, 64: 3.0}


def test_files_without_a_pedal_are_not_reread(tmp_path, monkeypatch):
    path = tmp_path / "plain.mid"
    write(path, note(0.0, 0.25, 60))
    assert adopt_pedal_tracks(path) is None
    calls = []
    monkeypatch.setattr(midi_load, "adopt_pedal_tracks", lambda p: calls.append(p))
    write(tmp_path / "inline.mid", note(0.0, 0.25, 60) + pedal(0.1, 1.0))
    read_score(tmp_path / "inline.mid")  # its pedal is found by symusic: no second reading
    assert calls == []
    read_score(path)
    assert len(calls) == 1


@pytest.mark.parametrize("seed", range(3))
def test_adopted_pedal_matches_the_inline_pedal_on_random_performances(tmp_path, seed):
    rng = np.random.default_rng(seed)
    notes, pedals = [], []
    for _ in range(40):
        start = float(rng.uniform(0, 10))
        notes += note(round(start, 3), round(start + float(rng.uniform(0.05, 1.0)), 3), int(rng.integers(40, 90)))
    for down in np.sort(rng.uniform(0, 10, 6))[::2]:
        pedals += pedal(round(float(down), 3), round(float(down) + 0.8, 3))
    write(tmp_path / "inline.mid", notes + pedals)
    write(tmp_path / "separate.mid", notes, pedals)
    a = performance_notes(read_score(tmp_path / "inline.mid"))
    b = performance_notes(read_score(tmp_path / "separate.mid"))
    order_a, order_b = np.lexsort((a.pitch, a.start)), np.lexsort((b.pitch, b.start))
    np.testing.assert_allclose(a.end[order_a], b.end[order_b], atol=1e-6)
    np.testing.assert_array_equal(a.pitch[order_a], b.pitch[order_b])
