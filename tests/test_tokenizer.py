"""The performance tokenizer: vocabulary, presets, MIDI loading, round trips, decoding, the command."""

from __future__ import annotations

import hashlib
import json
import pickle
import tempfile
from pathlib import Path

import mido
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perceiver_ar_music.data import events
from perceiver_ar_music.cli import main
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.data.midi_load import PerformanceNotes, read_score
from perceiver_ar_music.data.tokenizer import (
    EncodedPiece,
    MidiReadError,
    load_tokenizer,
    quantize_notes,
)
from perceiver_ar_music.data.vocab import NOTE_ON
from perceiver_ar_music.tools.midi_factory import BAD_FILES, write_maestro_like, write_performance

ROOT = Path(__file__).resolve().parents[1]
STEP = 0.01
HALF_STEP = STEP / 2 + 1e-4  # grid rounding, plus symusic's float32 seconds
VELOCITY_BIN = 4  # 32 bins over 1..127


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def performance_config(**overrides):
    from miditok import TokenizerConfig

    params = dict(
        pitch_range=(0, 127),
        beat_res={(0, 2): 50},
        num_velocities=32,
        special_tokens=["PAD", "BOS", "EOS"],
        use_time_signatures=False,
        use_tempos=False,
        use_programs=False,
        use_sustain_pedals=False,
        use_chords=False,
        use_rests=False,
        use_pitchdrum_tokens=False,
    )
    params.update(overrides)
    return TokenizerConfig(**params)


def saved_preset(directory: Path, name: str, **overrides) -> Path:
    from miditok import MIDILike

    path = directory / f"{name}.json"
    MIDILike(performance_config(**overrides)).save(path)
    return path


def sorted_by_pitch(start, end, pitch, velocity) -> np.ndarray:
    table = np.stack([start, end, pitch, velocity], axis=1).astype(np.float64)
    return table[np.lexsort((table[:, 0], table[:, 2]))]


def assert_faithful(tok, piece: EncodedPiece, truth) -> None:
    """Decoded notes match the ground truth: same notes, onsets/offsets within half a step,
    velocities within one bin, nothing lost but dropped same-pitch duplicates."""
    decoded = np.array(tok.decode_notes(piece.ids), dtype=np.float64)
    sounding = truth.end > truth.start  # a duplicate's twin is cut to zero length at its onset
    expected = sorted_by_pitch(truth.start[sounding], truth.end[sounding], truth.pitch[sounding], truth.velocity[sounding])
    assert piece.overlaps_dropped == truth.duplicates
    assert piece.num_notes == len(decoded) == len(expected) == len(truth) - truth.duplicates
    got = sorted_by_pitch(decoded[:, 0] * STEP, decoded[:, 1] * STEP, decoded[:, 2], decoded[:, 3])
    np.testing.assert_array_equal(got[:, 2], expected[:, 2])
    assert np.abs(got[:, 0] - expected[:, 0]).max() <= HALF_STEP
    assert np.abs(got[:, 1] - expected[:, 1]).max() <= HALF_STEP
    assert np.abs(got[:, 3] - expected[:, 3]).max() <= VELOCITY_BIN
    assert piece.seconds == pytest.approx(truth.seconds, abs=HALF_STEP)


# ----- vocabulary and presets -----
def test_performance_vocabulary_layout(tok):
    vocab = tok.vocab
    assert len(vocab) == 391
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2)
    assert [vocab.note_on_id[p] for p in (0, 127)] == [3, 130]
    assert [vocab.note_off_id[p] for p in (0, 127)] == [131, 258]
    velocity_ids = [i for i in range(len(vocab)) if vocab.velocity[i] >= 0]
    assert velocity_ids == list(range(259, 291))
    assert sorted(vocab.shift_id) == list(range(1, 101))
    assert vocab.shift_id[1] == 291 and vocab.shift_id[100] == 390
    assert vocab.seconds_per_step == pytest.approx(0.01)


def test_preset_file_is_the_documented_config(tok):
    from miditok import MIDILike

    saved = json.loads((ROOT / "tokenization" / "performance.json").read_text())
    assert saved["tokenization"] == "MIDILike"
    documented = json.loads(json.dumps(MIDILike(performance_config()).to_dict()))
    assert saved["config"] == documented["config"]
    assert tok.config_dict()["config"] == saved["config"]


def test_save_load_round_trip_and_hash(tok, tmp_path):
    path = tmp_path / "sub" / "copy.json"
    tok.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["copy.json"]  # no temp left behind
    assert json.loads(path.read_text()) == tok.config_dict()
    again = load_tokenizer(path)
    assert again.hash == tok.hash == load_tokenizer("performance").hash
    assert again.vocab.tokens == tok.vocab.tokens
    # The hash is the sha256 of the sorted-keys JSON of the format (library versions left out).
    fmt = {k: v for k, v in json.loads(path.read_text()).items() if not k.endswith("_version")}
    canonical = json.dumps(fmt, sort_keys=True, separators=(",", ":"))
    assert tok.hash == hashlib.sha256(canonical.encode()).hexdigest()
    other = load_tokenizer(saved_preset(tmp_path, "coarse", num_velocities=16))
    assert other.hash != tok.hash and len(other.vocab) == 391 - 16


def test_bad_presets_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown tokenizer preset 'nope'"):
        load_tokenizer("nope")
    with pytest.raises(UserError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        load_tokenizer(broken)
    remi = tmp_path / "remi.json"
    remi.write_text(json.dumps({"tokenization": "REMI", "config": {}}))
    with pytest.raises(UserError, match="only miditok MIDILike"):
        load_tokenizer(remi)
    with pytest.raises(UserError, match="use_programs"):
        load_tokenizer(saved_preset(tmp_path, "programs", use_programs=True))


def test_velocity_bins_match_miditok(tok):
    from miditok.utils.utils import np_get_closest

    velocities = np.arange(128)
    expected = np_get_closest(tok.miditok.velocities, velocities)
    table = events.tables(tok.vocab)
    for given in (velocities, velocities.astype(np.float64)):  # the table lookup and the search
        got = np.array([tok.vocab.velocity[i] for i in events.nearest_velocity_ids(given, table)])
        np.testing.assert_array_equal(got, expected)


# ----- reading MIDI -----
@pytest.mark.parametrize(
    "options",
    [
        dict(seed=0),
        dict(seed=1, ticks_per_beat=96),
        dict(seed=2, ticks_per_beat=960, piano_tracks=3),
        dict(seed=3, ticks_per_beat=1000, tempo_changes=True, long_gaps=True),
        dict(seed=4, ticks_per_beat=384, tempo_changes=False, pedal=False),
        dict(seed=5, piano_tracks=2, drum_track=True),
        dict(seed=6, duplicates=9, piano_tracks=2),
        dict(seed=7, release_pedal=False),
    ],
    ids=lambda options: ",".join(f"{k}={v}" for k, v in options.items()),
)
def test_round_trip_is_faithful(tok, tmp_path, options):
    truth = write_performance(tmp_path / "piece.mid", num_notes=400, **options)
    piece = tok.encode_file(tmp_path / "piece.mid")
    assert piece.ids.dtype == np.uint16
    assert not np.isin(piece.ids, [tok.vocab.pad_id, tok.vocab.bos_id, tok.vocab.eos_id]).any()
    assert_faithful(tok, piece, truth)


def test_maestro_sized_round_trip(tok, tmp_path):
    truth = write_maestro_like(tmp_path / "long.mid")
    assert len(truth) == 5000 and truth.seconds > 500
    assert_faithful(tok, tok.encode_file(tmp_path / "long.mid"), truth)


def test_any_tempo_map_and_resolution_lands_on_the_seconds_grid(tok, tmp_path):
    """Whatever the tempo map and ticks per quarter, onsets become their wall-clock grid step."""
    for tpq, tempo_changes in [(480, False), (96, True), (960, True), (1000, False)]:
        path = tmp_path / f"{tpq}.mid"
        truth = write_performance(path, seed=11, num_notes=200, ticks_per_beat=tpq, tempo_changes=tempo_changes, pedal=False)
        decoded = np.array(tok.decode_notes(tok.encode_file(path).ids))
        got = decoded[np.lexsort((decoded[:, 0], decoded[:, 2]))]
        exact = (truth.start / STEP)[np.lexsort((truth.start, truth.pitch))]
        # The rounded step; on an exact half step (float32 seconds) either neighbour.
        off = got[:, 0] != np.rint(exact)
        assert np.all(np.abs(got[off, 0] - exact[off]) == pytest.approx(0.5, abs=1e-3))


def test_gaps_longer_than_a_second_become_repeated_shifts(tok, tmp_path):
    mid = mido.MidiFile(ticks_per_beat=480)  # 120 qpm: 960 ticks per second
    track = mido.MidiTrack()
    track.append(mido.Message("note_on", note=60, velocity=64, time=0))
    track.append(mido.Message("note_off", note=60, time=480))
    track.append(mido.Message("note_on", note=62, velocity=64, time=int(2.73 * 960)))  # 2.73 s gap
    track.append(mido.Message("note_off", note=62, time=480))
    mid.tracks.append(track)
    mid.save(tmp_path / "gap.mid")
    piece = tok.encode_file(tmp_path / "gap.mid")
    names = [tok.vocab.tokens[i] for i in piece.ids]
    longest = tok.vocab.tokens[tok.vocab.shift_id[100]]
    assert names == [
        "NoteOn_60", "Velocity_63", "TimeShift_1.0.50", "NoteOff_60",
        longest, longest, tok.vocab.tokens[tok.vocab.shift_id[73]],
        "NoteOn_62", "Velocity_63", "TimeShift_1.0.50", "NoteOff_62",
    ]  # fmt: skip
    assert piece.seconds == pytest.approx(3.73)


def test_sustain_pedal_is_folded_into_durations(tok, tmp_path):
    """CC64 >= 64 is down; a key released under the pedal sounds until the pedal is up; a
    re-struck key ends its previous note; a pedal never released lasts to the last note end."""
    seconds = 960  # ticks per second at 480 tpq, 120 qpm
    script = [  # (time s, message)
        (0.00, mido.Message("note_on", note=60, velocity=64)),
        (0.25, mido.Message("control_change", control=64, value=100)),
        (0.50, mido.Message("note_off", note=60)),
        (0.50, mido.Message("note_on", note=62, velocity=64)),
        (0.75, mido.Message("control_change", control=64, value=64)),  # still down
        (0.75, mido.Message("note_off", note=62)),
        (1.00, mido.Message("note_on", note=62, velocity=64)),  # re-strike under the pedal
        (1.00, mido.Message("note_on", note=67, velocity=64)),
        (1.25, mido.Message("note_off", note=62)),
        (1.50, mido.Message("control_change", control=64, value=63)),  # up
        (1.50, mido.Message("note_off", note=67)),  # released with the pedal
        (2.00, mido.Message("note_on", note=64, velocity=64)),
        (2.25, mido.Message("control_change", control=64, value=127)),  # never released
        (2.50, mido.Message("note_off", note=64)),
        (2.50, mido.Message("note_on", note=65, velocity=64)),
        (3.00, mido.Message("note_off", note=65)),
    ]
    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    now = 0
    for time, message in script:
        tick = round(time * seconds)
        track.append(message.copy(time=tick - now))
        now = tick
    mid.tracks.append(track)
    mid.save(tmp_path / "pedal.mid")
    notes = tok.decode_notes(tok.encode_file(tmp_path / "pedal.mid").ids)
    assert [(pitch, start, end) for start, end, pitch, _ in notes] == [
        (60, 0, 150),
        (62, 50, 100),
        (62, 100, 150),
        (67, 100, 150),
        (64, 200, 300),
        (65, 250, 300),
    ]


def test_drum_tracks_are_dropped(tok, tmp_path):
    truth = write_performance(tmp_path / "band.mid", seed=3, num_notes=150, drum_track=True)
    assert truth.drum_notes > 0
    assert tok.encode_file(tmp_path / "band.mid").num_notes == len(truth)


def test_encode_score_accepts_any_time_unit(tok, tmp_path):
    write_performance(tmp_path / "piece.mid", seed=8, num_notes=120)
    from symusic import Score

    expected = tok.encode_file(tmp_path / "piece.mid").ids
    for ttype in ("tick", "quarter", "second"):
        np.testing.assert_array_equal(tok.encode_score(Score(tmp_path / "piece.mid", ttype=ttype)).ids, expected)


def test_bad_files_raise_distinct_reasons(tok, tmp_path):
    reasons = {}
    for name, write in BAD_FILES.items():
        path = tmp_path / f"{name}.mid"
        write(path)
        with pytest.raises(MidiReadError) as info:
            tok.encode_file(path)
        reasons[name] = str(info.value)
    assert len(set(reasons.values())) == len(BAD_FILES), reasons
    assert reasons["empty"] == "empty file (0 bytes)"
    assert reasons["no_notes"] == "no notes"
    assert reasons["drums_only"] == "only drum tracks"
    assert reasons["truncated"].startswith("corrupt or truncated MIDI")
    assert reasons["text"] == "not a MIDI file (text)"
    assert reasons["random_bytes"] == "not a MIDI file (no MThd header)"
    with pytest.raises(MidiReadError, match="file not found"):
        tok.encode_file(tmp_path / "missing.mid")
    with pytest.raises(MidiReadError, match="directory"):
        tok.encode_file(tmp_path)


def test_midi_read_error_pickles():
    error = pickle.loads(pickle.dumps(MidiReadError("no notes")))
    assert isinstance(error, MidiReadError) and str(error) == "no notes"


# ----- normalization and the fast encoder -----
def performance(notes) -> PerformanceNotes:
    table = np.array(notes, dtype=np.float64).reshape(-1, 4)
    return PerformanceNotes(table[:, 0], table[:, 1], table[:, 2].astype(np.int64), table[:, 3].astype(np.int64))


def test_same_pitch_overlaps_are_resolved():
    every_pitch = np.ones(128, dtype=bool)
    grid = quantize_notes(
        performance(
            [
                (0.000, 0.500, 60, 50),
                (0.002, 0.900, 60, 90),  # same grid step: the longer one is kept
                (0.300, 0.400, 64, 70),
                (0.350, 0.800, 64, 71),  # re-strike: the first 64 ends at 0.35
                (1.000, 1.001, 67, 80),  # shorter than a step: lasts one step
            ]
        ),
        STEP,
        every_pitch,
    )
    assert grid.overlaps_dropped == 1
    assert list(zip(grid.start, grid.end, grid.pitch, grid.velocity)) == [
        (0, 90, 60, 90),
        (30, 35, 64, 70),
        (35, 80, 64, 71),
        (100, 101, 67, 80),
    ]


def random_performance(draw_notes) -> PerformanceNotes:
    return performance([(start, start + length, pitch, velocity) for start, length, pitch, velocity in draw_notes])


note_lists = st.lists(
    st.tuples(
        st.floats(0, 30, allow_nan=False),
        st.floats(0, 3, allow_nan=False),
        st.integers(0, 127),
        st.integers(1, 127),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=120, deadline=None)
@given(note_lists)
def test_fast_encoder_matches_miditok(tok, notes):
    grid = tok.quantize(random_performance(notes))
    reference = tok.miditok.encode(tok.reference_score(grid))
    assert len(reference) == 1
    np.testing.assert_array_equal(tok.encode_grid(grid), reference[0].ids)


@settings(max_examples=120, deadline=None)
@given(note_lists)
def test_decoder_matches_miditok_on_valid_sequences(tok, notes):
    ids = tok.encode_grid(tok.quantize(random_performance(notes))).tolist()
    theirs = tok.miditok.decode([ids])
    their_notes = sorted((n.start, n.end, n.pitch, n.velocity) for track in theirs.tracks for n in track.notes)
    assert their_notes == tok.decode_notes(ids)


@settings(max_examples=60, deadline=None)
@given(note_lists)
def test_grid_encoder_and_notes_to_ids_agree(tok, notes):
    """Both encoders are the one core: seconds of normalized grid notes give the same ids."""
    from perceiver_ar_music.data.events import notes_to_ids

    grid = tok.quantize(random_performance(notes))
    seconds = np.stack([grid.pitch, grid.start * STEP, grid.end * STEP, grid.velocity], 1).astype(np.float64)
    assert notes_to_ids(seconds, tok.vocab).tolist() == tok.encode_grid(grid).tolist()


def test_other_time_grid_and_pitch_range(tmp_path, tok):
    """A preset with 20 ms steps and the 88 piano keys: the fast encoder still equals miditok."""
    coarse = load_tokenizer(saved_preset(tmp_path, "coarse", beat_res={(0, 4): 25}, pitch_range=(21, 108)))
    assert coarse.vocab.seconds_per_step == pytest.approx(0.02) and coarse.vocab.max_shift_steps == 100
    truth = write_performance(tmp_path / "piece.mid", seed=9, num_notes=300)
    grid = coarse.quantize(performance(np.stack([truth.start, truth.end, truth.pitch, truth.velocity], 1).tolist() + [(1.0, 2.0, 10, 64)]))
    assert len(grid) == len(truth)  # the out-of-range pitch 10 is left out
    np.testing.assert_array_equal(coarse.encode_grid(grid), coarse.miditok.encode(coarse.reference_score(grid))[0].ids)


# ----- decoding -----
def test_decode_is_seconds_accurate_and_re_encodes_identically(tok, tmp_path):
    write_performance(tmp_path / "piece.mid", seed=10, num_notes=300, ticks_per_beat=384)
    piece = tok.encode_file(tmp_path / "piece.mid")
    tok.decode_to_midi(piece.ids, tmp_path / "decoded.mid")
    seconds = read_score(tmp_path / "decoded.mid").tracks[0].notes.numpy()["time"]
    steps = np.array([note[0] for note in tok.decode_notes(piece.ids)])
    np.testing.assert_allclose(np.sort(seconds), steps * STEP, atol=1e-5)
    np.testing.assert_array_equal(tok.encode_file(tmp_path / "decoded.mid").ids, piece.ids)


def test_decode_edge_cases(tok):
    on, off, shift = tok.vocab.note_on_id, tok.vocab.note_off_id, tok.vocab.shift_id
    velocity_100 = next(i for i in range(len(tok.vocab)) if tok.vocab.velocity[i] == 99)
    assert tok.decode_notes([]) == []
    assert tok.decode_notes([off[60], shift[10], 0, 1, 2, 9999, -3]) == []  # orphan off, specials, junk
    # A NoteOn without a Velocity after it takes the last velocity seen (64 before any).
    assert tok.decode_notes([on[60], shift[5], off[60], velocity_100, on[62], shift[20]]) == [
        (0, 5, 60, 64),
        (5, 25, 62, 99),  # never released: ends at the end
    ]
    assert tok.decode_notes([on[70], velocity_100, off[70]]) == [(0, 1, 70, 99)]  # at least one step
    # The one rule (events): a re-struck pitch ends its sounding note; a NoteOff of a silent
    # pitch is ignored. Same-pitch notes never overlap.
    assert tok.decode_notes([on[60], shift[1], on[60], shift[2], off[60], shift[3], off[60]]) == [
        (0, 1, 60, 64),
        (1, 3, 60, 64),
    ]
    empty = tok.decode([])
    assert sum(len(track.notes) for track in empty.tracks) == 0
    assert empty.tempos[0].qpm == pytest.approx(120.0)


ANY_IDS = st.lists(st.integers(-3, 395), max_size=300)


@settings(max_examples=300, deadline=None)
@given(ANY_IDS)
def test_decode_never_fails(tok, ids):
    notes = tok.decode_notes(ids)
    in_range = [i for i in ids if 0 <= i < len(tok.vocab)]
    assert len(notes) == sum(tok.vocab.kind[i] == NOTE_ON for i in in_range)
    total = sum(tok.vocab.shift_steps[i] for i in in_range)
    for start, end, pitch, velocity in notes:
        assert 0 <= start < end <= max(total, start + 1)
        assert 0 <= pitch <= 127 and 1 <= velocity <= 127
    score = tok.decode(np.array(ids, dtype=np.int64))
    assert sum(len(track.notes) for track in score.tracks) == len(notes)


@settings(max_examples=300, deadline=None)
@given(ANY_IDS)
def test_the_tokenizer_decodes_with_the_one_note_decoder(tok, ids):
    """`tokenize --roundtrip` and `generate` read the same ids as the same notes."""
    steps = events.ids_to_note_steps(ids, tok.vocab)
    expected = sorted(
        (int(start), max(int(end), int(start) + 1), int(pitch), int(velocity))
        for pitch, start, end, velocity in steps.tolist()
    )
    assert tok.decode_notes(ids) == expected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_IDS)
def test_decode_to_midi_always_writes_a_valid_file(tok, ids):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "out.mid"
        tok.decode_to_midi(ids, path)
        parsed = mido.MidiFile(path)  # an independent parser
        note_ons = [m for track in parsed.tracks for m in track if m.type == "note_on" and m.velocity > 0]
        assert len(note_ons) == len(tok.decode_notes(ids))
        assert sum(len(track.notes) for track in read_score(path).tracks) == len(note_ons)


# ----- the command -----
def test_tokenize_command(tmp_path, capsys):
    write_performance(tmp_path / "piece.mid", seed=12, num_notes=200, duplicates=2)
    code = main(["tokenize", str(tmp_path / "piece.mid"), "--roundtrip", str(tmp_path / "rt.mid"), "--json", str(tmp_path / "out.json")])
    out = capsys.readouterr().out
    assert code == 0
    assert "200 notes" in out and "2 overlapping same-pitch notes dropped" in out
    assert "notes lost 2 (2 of them overlapping" in out
    onset_ms = float(out.split("max onset error ")[1].split(" ms")[0])
    assert onset_ms <= 5.0
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["num_notes"] == 200 and record["num_tokens"] == len(record["ids"]) == len(record["token_names"])
    assert record["roundtrip"]["notes_lost"] == 2 and record["roundtrip"]["max_velocity_error"] <= 2
    tok = load_tokenizer()
    assert record["tokenizer_hash"] == tok.hash
    np.testing.assert_array_equal(tok.encode_file(tmp_path / "rt.mid").ids, record["ids"])


@pytest.mark.parametrize("bad", ["text", "empty", "drums_only"])
def test_tokenize_command_bad_input(tmp_path, capsys, bad):
    path = tmp_path / "bad.mid"
    BAD_FILES[bad](path)
    assert main(["tokenize", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("perceiver-music tokenize: error:") and "\n" not in err


def test_tokenize_command_unknown_preset(capsys):
    assert main(["tokenize", str(ROOT / "examples" / "primer.mid"), "--preset", "nope"]) == 2
    assert "unknown tokenizer preset" in capsys.readouterr().err


def test_example_primer(tok):
    path = ROOT / "examples" / "primer.mid"
    assert path.stat().st_size < 64 * 1024
    piece = tok.encode_file(path)
    assert 20 <= piece.seconds <= 40 and piece.num_notes > 100 and piece.overlaps_dropped == 0
    from perceiver_ar_music.tools import example_primer

    assert example_primer.primer_bytes() == path.read_bytes()  # the committed file is what the script makes
