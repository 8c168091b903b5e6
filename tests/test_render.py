"""Audio rendering: format, duration, loudness, timing, velocity, pedal, drums, errors, command."""

from __future__ import annotations

import ctypes.util
import sys
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile

from perceiver_ar_music import cli

from perceiver_ar_music.listening import render
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.listening.render import AudioUnavailable, render_midi
from perceiver_ar_music.tools.midi_factory import BAD_FILES, write_drums_only, write_performance

PEAK = 10 ** (-1 / 20)
LSB = 1 / 32768


@pytest.fixture
def needs_fluidsynth() -> None:
    """Skip a test that renders audio on a machine without FluidSynth."""
    try:
        render.load_fluidsynth()
    except AudioUnavailable as exc:
        pytest.skip(f"FluidSynth is not installed here: {exc}")


def write_simple(
    path: Path,
    notes: list[tuple[int, float, float, int]],
    pedal: list[tuple[float, int]] = (),
    pedal_track: bool = False,
) -> None:
    """Piano on channel 1 at 120 qpm (960 ticks per second): notes (pitch, start, end, velocity)
    and sustain-pedal values (time, value), times in seconds; with ``pedal_track`` the pedal is
    in a second track of its own, as some sequencers write it."""
    notes_events, pedal_events = [], []
    for pitch, start, end, velocity in notes:
        notes_events.append((round(start * 960), 1, mido.Message("note_on", note=pitch, velocity=velocity)))
        notes_events.append((round(end * 960), 0, mido.Message("note_off", note=pitch, velocity=0)))
    for time, value in pedal:
        pedal_events.append((round(time * 960), 0, mido.Message("control_change", control=64, value=value)))
    groups = [notes_events, pedal_events] if pedal_track else [notes_events + pedal_events]
    mid = mido.MidiFile(type=1, ticks_per_beat=480)
    for number, events in enumerate(groups):
        track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500_000, time=0)] if number == 0 else [])
        now = 0
        for tick, _, message in sorted(events, key=lambda event: event[:2]):
            track.append(message.copy(time=tick - now))
            now = tick
        mid.tracks.append(track)
    mid.save(str(path))


def rms(samples: np.ndarray, rate: int, start: float, end: float) -> float:
    window = samples[int(start * rate) : int(end * rate)]
    return float(np.sqrt(np.mean(window.astype(np.float64) ** 2)))


def test_wav_of_a_performance(tmp_path, needs_fluidsynth):
    truth = write_performance(tmp_path / "piece.mid", seed=3, num_notes=80, pedal=False)
    result = render_midi(tmp_path / "piece.mid", tmp_path / "piece.wav")
    info = soundfile.info(str(tmp_path / "piece.wav"))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", 44_100, 2)
    assert info.frames / 44_100 == pytest.approx(truth.seconds + render.DEFAULT_TAIL_SECONDS, abs=0.01)
    assert result.seconds == pytest.approx(info.frames / 44_100)
    samples, _ = soundfile.read(str(tmp_path / "piece.wav"))
    assert np.abs(samples).max() == pytest.approx(PEAK, abs=2 * LSB)
    assert rms(samples, 44_100, 0, truth.seconds) > 0.02
    assert not np.array_equal(samples[:, 0], samples[:, 1])  # real stereo (reverb, panning)


def test_flac_and_other_sample_rate(tmp_path, needs_fluidsynth):
    write_simple(tmp_path / "a.mid", [(60, 0.0, 1.0, 90), (64, 0.5, 2.0, 70)])
    render_midi(tmp_path / "a.mid", tmp_path / "a.flac", sample_rate=22_050, tail_seconds=0.5)
    info = soundfile.info(str(tmp_path / "a.flac"))
    assert (info.format, info.subtype, info.samplerate) == ("FLAC", "PCM_16", 22_050)
    assert info.frames == 22_050 * 2 + 22_050 // 2
    samples, _ = soundfile.read(str(tmp_path / "a.flac"))
    assert np.abs(samples).max() == pytest.approx(PEAK, abs=2 * LSB)


def test_note_timing(tmp_path, needs_fluidsynth):
    write_simple(tmp_path / "a.mid", [(60, 1.0, 1.5, 100)])
    render_midi(tmp_path / "a.mid", tmp_path / "a.wav")
    samples, rate = soundfile.read(str(tmp_path / "a.wav"))
    loud = np.flatnonzero(np.abs(samples).max(axis=1) > 0.01)
    assert 1.0 <= loud[0] / rate < 1.01  # FluidSynth starts notes on 64-sample blocks
    assert rms(samples, rate, 0.0, 0.99) == 0.0
    assert rms(samples, rate, 1.05, 1.45) > 0.05


def test_velocity_sets_loudness(tmp_path, needs_fluidsynth):
    write_simple(tmp_path / "a.mid", [(60, 0.0, 1.0, 30), (60, 2.0, 3.0, 110)])
    render_midi(tmp_path / "a.mid", tmp_path / "a.wav")
    samples, rate = soundfile.read(str(tmp_path / "a.wav"))
    assert rms(samples, rate, 2.0, 2.5) > 2 * rms(samples, rate, 0.0, 0.5)


@pytest.mark.parametrize("pedal_track", [False, True])
def test_sustain_pedal_holds_notes(tmp_path, pedal_track, needs_fluidsynth):
    # Two identical short notes: the first with the pedal held to 2.0 s, the second without.
    notes = [(60, 0.0, 0.3, 90), (60, 3.0, 3.3, 90)]
    write_simple(tmp_path / "a.mid", notes, pedal=[(0.0, 127), (2.0, 0)], pedal_track=pedal_track)
    render_midi(tmp_path / "a.mid", tmp_path / "a.wav")
    samples, rate = soundfile.read(str(tmp_path / "a.wav"))
    assert rms(samples, rate, 1.0, 1.5) > 10 * rms(samples, rate, 4.0, 4.5)


def test_drums_render_on_the_percussion_bank(tmp_path, needs_fluidsynth):
    write_drums_only(tmp_path / "drums.mid")
    render_midi(tmp_path / "drums.mid", tmp_path / "drums.wav")
    samples, rate = soundfile.read(str(tmp_path / "drums.wav"))
    assert rms(samples, rate, 0.0, 2.0) > 0.02


def test_bundled_soundfont_is_the_fallback(tmp_path, monkeypatch, needs_fluidsynth):
    monkeypatch.setattr(render, "SYSTEM_SOUNDFONTS", ())
    sf2 = render.default_soundfont()
    assert sf2 == render.bundled_soundfont() and sf2.name == "TimGM6mb.sf2"
    assert render.check_soundfont(sf2) == sf2
    write_simple(tmp_path / "a.mid", [(60, 0.0, 0.5, 90)])
    assert render_midi(tmp_path / "a.mid", tmp_path / "a.wav").soundfont == sf2


def one_line_error(call) -> str:
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_bad_soundfonts(tmp_path):
    write_simple(tmp_path / "a.mid", [(60, 0.0, 0.5, 90)])
    missing = tmp_path / "missing.sf2"
    assert str(missing) in one_line_error(lambda: render_midi(tmp_path / "a.mid", tmp_path / "a.wav", soundfont=missing))
    (tmp_path / "fake.sf2").write_bytes(b"RIFF\0\0\0\0WAVEnot a soundfont")
    message = one_line_error(lambda: render_midi(tmp_path / "a.mid", tmp_path / "a.wav", soundfont=tmp_path / "fake.sf2"))
    assert "not a SoundFont" in message
    assert "not a file" in one_line_error(lambda: render_midi(tmp_path / "a.mid", tmp_path / "a.wav", soundfont=tmp_path))
    assert not (tmp_path / "a.wav").exists()


@pytest.mark.parametrize("kind", ["empty", "truncated", "random_bytes", "text", "no_notes"])
def test_bad_midi_files(tmp_path, kind, needs_fluidsynth):
    BAD_FILES[kind](tmp_path / "bad.mid")
    (tmp_path / "old.wav").write_bytes(b"previous render")
    message = one_line_error(lambda: render_midi(tmp_path / "bad.mid", tmp_path / "old.wav"))
    assert "bad.mid" in message or "no notes" in message
    assert (tmp_path / "old.wav").read_bytes() == b"previous render"  # untouched


def test_bad_options(tmp_path):
    write_simple(tmp_path / "a.mid", [(60, 0.0, 0.5, 90)])
    assert "must end in .flac, .ogg, .wav" in one_line_error(lambda: render_midi(tmp_path / "a.mid", tmp_path / "a.mp3"))
    assert "sample rate" in one_line_error(lambda: render_midi(tmp_path / "a.mid", tmp_path / "a.wav", sample_rate=100))
    assert "tail" in one_line_error(lambda: render_midi(tmp_path / "a.mid", tmp_path / "a.wav", tail_seconds=-1))


def simulate_missing_library(monkeypatch) -> None:
    """Make `import fluidsynth` run afresh and find no shared library, as on a bare machine."""
    monkeypatch.delitem(sys.modules, "fluidsynth", raising=False)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.delenv("HOMEBREW_PREFIX", raising=False)


def test_missing_library_is_one_clear_line(tmp_path, monkeypatch):
    write_simple(tmp_path / "a.mid", [(60, 0.0, 0.5, 90)])
    simulate_missing_library(monkeypatch)
    with pytest.raises(AudioUnavailable) as info:
        render_midi(tmp_path / "a.mid", tmp_path / "a.wav")
    message = str(info.value)
    assert "\n" not in message and "libfluidsynth3" in message
    assert not (tmp_path / "a.wav").exists()


def test_missing_binding_is_one_clear_line(tmp_path, monkeypatch):
    write_simple(tmp_path / "a.mid", [(60, 0.0, 0.5, 90)])
    monkeypatch.setitem(sys.modules, "fluidsynth", None)  # `import fluidsynth` -> ModuleNotFoundError
    with pytest.raises(AudioUnavailable, match="pip install pyfluidsynth"):
        render_midi(tmp_path / "a.mid", tmp_path / "a.wav")


def test_render_command(tmp_path, capsys, needs_fluidsynth):
    write_simple(tmp_path / "song.mid", [(60, 0.0, 0.5, 90), (67, 0.5, 1.0, 90)])
    assert cli.main(["render", str(tmp_path / "song.mid")]) == 0  # the compressed default format
    default = tmp_path / f"song.{render.DEFAULT_AUDIO_FORMAT}"
    assert soundfile.info(str(default)).duration == pytest.approx(2.5, abs=0.01)
    assert default.name in capsys.readouterr().out
    assert cli.main(["render", str(tmp_path / "song.mid"), "--audio-format", "wav"]) == 0
    assert soundfile.info(str(tmp_path / "song.wav")).frames == pytest.approx(44_100 * 2.5, abs=2)
    out = tmp_path / "x" / "song.flac"
    assert cli.main(["render", str(tmp_path / "song.mid"), "--out", str(out), "--sample-rate", "48000"]) == 0
    assert soundfile.info(str(out)).samplerate == 48_000


@pytest.mark.parametrize("fmt, container, subtype", [("flac", "FLAC", "PCM_16"), ("ogg", "OGG", "VORBIS"), ("wav", "WAV", "PCM_16")])
def test_every_audio_format(tmp_path, fmt, container, subtype, needs_fluidsynth):
    truth = write_performance(tmp_path / "piece.mid", seed=5, num_notes=40, pedal=False)
    render_midi(tmp_path / "piece.mid", tmp_path / f"piece.{fmt}")
    info = soundfile.info(str(tmp_path / f"piece.{fmt}"))
    assert (info.format, info.subtype, info.samplerate, info.channels) == (container, subtype, 44_100, 2)
    assert info.duration == pytest.approx(truth.seconds + render.DEFAULT_TAIL_SECONDS, abs=0.01)
    samples, _ = soundfile.read(str(tmp_path / f"piece.{fmt}"))
    assert rms(samples, 44_100, 0, truth.seconds) > 0.02


def test_the_default_format_is_compressed_and_listed():
    assert render.DEFAULT_AUDIO_FORMAT in render.AUDIO_FORMATS and render.DEFAULT_AUDIO_FORMAT != "wav"
    assert set(render.AUDIO_FORMATS) == {"flac", "ogg", "wav"}


def test_unwritable_outputs_fail_before_the_work(tmp_path, capsys, monkeypatch):
    write_simple(tmp_path / "a.mid", [(60, 0.0, 0.5, 90)])
    monkeypatch.setattr(render, "synthesize", lambda *args: pytest.fail("rendered before checking the output"))
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder.ogg").mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    cases = [
        (tmp_path / "file" / "a.ogg", "is not a folder"),
        (tmp_path / "folder.ogg", "is a folder"),
    ]
    import os

    if os.geteuid() != 0:  # root writes anywhere
        cases.append((locked / "a.ogg", "cannot write"))
    for out, words in cases:
        assert cli.main(["render", str(tmp_path / "a.mid"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("perceiver-music render: error: ") and words in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mid", "file", "folder.ogg", "locked"]


@pytest.mark.parametrize("flags, words", [
    (["--sample-rate", "100"], "--sample-rate"),
    (["--sample-rate", "4.4e4"], "--sample-rate"),
    (["--tail", "nan"], "--tail"),
    (["--tail", "-1"], "--tail"),
    (["--audio-format", "mp3"], "--audio-format"),
])
def test_numeric_and_format_flags_are_checked_up_front(tmp_path, capsys, flags, words):
    assert cli.main(["render", str(tmp_path / "missing.mid"), *flags]) == 2
    err = capsys.readouterr().err
    assert f"argument {words}" in err and "Traceback" not in err


def test_out_and_audio_format_must_agree(tmp_path, capsys):
    write_simple(tmp_path / "a.mid", [(60, 0.0, 0.5, 90)])
    assert cli.main(["render", str(tmp_path / "a.mid"), "--out", str(tmp_path / "a.wav"), "--audio-format", "ogg"]) == 2
    assert "is a .wav file but --audio-format is ogg" in capsys.readouterr().err


def test_render_command_errors(tmp_path, capsys, monkeypatch):
    def error_line(argv: list[str], code: int) -> str:
        assert cli.main(argv) == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("perceiver-music render: error: ")
        return err

    assert "not found" in error_line(["render", str(tmp_path / "nope.mid")], 2)
    (tmp_path / "same.wav").write_bytes(b"x")
    assert "overwrite the input" in error_line(["render", str(tmp_path / "same.wav"), "--audio-format", "wav"], 2)
    write_simple(tmp_path / "a.mid", [(60, 0.0, 0.5, 90)])
    assert "not found" in error_line(["render", str(tmp_path / "a.mid"), "--soundfont", str(tmp_path / "no.sf2")], 2)
    simulate_missing_library(monkeypatch)
    assert "libfluidsynth3" in error_line(["render", str(tmp_path / "a.mid")], AudioUnavailable.exit_code)


def test_to_pcm16_normalizes_the_peak_and_keeps_silence():
    samples = np.array([[0.0, 0.0], [0.01, -0.02], [0.005, 0.0]], dtype=np.float32)
    pcm = render.to_pcm16(samples.copy())
    target = round(PEAK * 32767)
    assert pcm.dtype == np.int16
    assert pcm.tolist() == [[0, 0], [round(target / 2), -target], [round(target / 4), 0]]
    assert render.to_pcm16(np.zeros((4, 2), dtype=np.float32)).tolist() == [[0, 0]] * 4


def test_program_changes_pick_the_instrument(tmp_path, needs_fluidsynth):
    def render_with(program: int) -> np.ndarray:
        path = tmp_path / f"p{program}.mid"
        write_simple(path, [(72, 0.0, 1.0, 100)])
        mid = mido.MidiFile(str(path))
        mid.tracks[0].insert(1, mido.Message("program_change", program=program, time=0))
        mid.save(str(path))
        render_midi(path, tmp_path / f"p{program}.wav")
        return soundfile.read(str(tmp_path / f"p{program}.wav"))[0]

    piano, flute, piano_again = render_with(0), render_with(73), render_with(0)
    np.testing.assert_array_equal(piano, piano_again)  # deterministic
    assert piano.shape == flute.shape and np.abs(piano - flute).max() > 0.1


def test_silent_render_is_an_error(tmp_path, monkeypatch):
    write_simple(tmp_path / "a.mid", [(60, 0.0, 0.5, 90)])
    monkeypatch.setattr(render, "synthesize", lambda events, *args: np.full((100, 2), 1e-8, np.float32))
    assert "silence" in one_line_error(lambda: render_midi(tmp_path / "a.mid", tmp_path / "a.wav"))
    assert not (tmp_path / "a.wav").exists()


def test_absurdly_long_files_are_refused(tmp_path, monkeypatch):
    write_simple(tmp_path / "a.mid", [(60, 0.0, 0.5, 90), (62, 20.0, 21.0, 90)])
    monkeypatch.setattr(render, "MAX_SECONDS", 10)
    assert "too long" in one_line_error(lambda: render_midi(tmp_path / "a.mid", tmp_path / "a.wav"))


def test_mido_parser_errors_are_one_line(tmp_path):
    write_simple(tmp_path / "a.mid", [(60, 0.0, 0.5, 90)])
    mid = mido.MidiFile(str(tmp_path / "a.mid"))
    mid.type = 2  # asynchronous tracks: symusic reads it, mido cannot merge the tracks
    mid.save(str(tmp_path / "b.mid"))
    message = one_line_error(lambda: render.read_events(tmp_path / "b.mid"))
    assert "b.mid: unreadable MIDI (can't merge tracks" in message


def test_minutes_of_audio_write_in_every_format(tmp_path):
    """libsndfile 1.2's Vorbis encoder crashes the process on 4 minutes written in one call."""
    rng = np.random.default_rng(0)
    samples = (rng.standard_normal((44_100 * 240, 2)) * 300).astype(np.int16)
    for fmt in render.AUDIO_FORMATS:
        render.write_audio(tmp_path / f"long.{fmt}", samples, 44_100, fmt)
        assert soundfile.info(str(tmp_path / f"long.{fmt}")).frames == len(samples)
