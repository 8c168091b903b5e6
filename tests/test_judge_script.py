"""scripts/judge_model.py's summary of `stats` JSON: the figures, the targets and the card's table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from perceiver_ar_music.listening.music_stats import music_stats, reference_figures, sample_report, write_stats_json

from perceiver_ar_music.tools import judge



def voices(start: float, seconds: float, per_second: float, count: int, length: float) -> list[tuple]:
    """`count` voices striking together `per_second` times a second, each note `length` long."""
    step = 1.0 / per_second
    return [(60 + 3 * v, start + i * step, start + i * step + length, 80)
            for i in range(int(seconds * per_second)) for v in range(count)]


def table(rows: list[tuple]) -> np.ndarray:
    return np.array(sorted(rows, key=lambda r: (r[1], r[0])), dtype=np.float64)


def write_stats(path: Path, samples: dict[str, tuple[list, list]], reference, copied: int) -> dict:
    """A `stats --json` file of (primer, continuation) note lists, as the command writes it."""
    reports = {}
    for name, (primer, continuation) in samples.items():
        memo = {"continuation": {"notes": copied, "seconds": copied * 0.5}}
        reports[name] = sample_report(table(primer + continuation), len(primer), 10.0 if primer else 0.0,
                                      window_s=30.0, reference=reference, memorization=memo)
    write_stats_json(path, reports, {"reference": reference.as_dict()})
    return json.loads(path.read_text())


@pytest.fixture
def reference():
    """Pieces of four voices, one chord a second: 4 notes/s, polyphony 4 (a fraction less: gaps)."""
    return reference_figures([music_stats(table(voices(0, 60, 1.0, 4, 0.9))) for _ in range(3)], "test")


def test_a_continuation_like_the_data_meets_every_target(tmp_path, reference):
    primer = voices(0, 10, 1.0, 4, 0.9)
    samples = {f"sample-0{i}": (primer, voices(10, 120, 1.0, 4, 0.9)) for i in range(1, 4)}
    stats = write_stats(tmp_path / "s.json", samples, reference, copied=7)
    summary = judge.set_summary([stats], [stats])
    assert summary["samples"] == 3
    assert summary["notes_per_second"] == pytest.approx(reference.median["notes_per_second"], rel=0.02)
    assert summary["long_note_fraction"] == 0.0 and summary["longest_copy_notes"] == 7
    assert summary["copy_notes_per_sample"] == [7, 7, 7]
    assert summary["vs_primer_notes_per_second"] == pytest.approx(1.0, rel=0.02)
    assert summary["vs_primer_mean_polyphony"] == pytest.approx(1.0, rel=0.02)
    assert all(summary["checks"].values()), summary["checks"]


def test_dense_stacked_held_drifting_samples_miss_each_target(tmp_path, reference):
    primer = voices(0, 10, 1.0, 4, 0.9)
    dense = voices(10, 60, 2.0, 4, 0.45) + voices(70, 60, 4.0, 4, 0.2)  # 8 then 16 notes/s: drift
    held = [(30 + k, 10 + 2 * k, 130.0, 60) for k in range(24)]  # 24 notes held to the end
    stats = write_stats(tmp_path / "s.json", {"sample-01": (primer, dense + held)}, reference, copied=0)
    summary = judge.set_summary([stats], [stats])
    assert summary["checks"] == {"density": False, "polyphony": False, "long_notes": False, "no_drift": False}
    assert summary["long_note_fraction"] == pytest.approx(24 / (len(dense) + 24))
    assert summary["vs_primer_notes_per_second"] > 2


def test_the_card_table_names_the_sampling_and_the_missed_targets(tmp_path, reference):
    primer = voices(0, 10, 1.0, 4, 0.9)
    good = write_stats(tmp_path / "good.json", {"sample-01": (primer, voices(10, 120, 1.0, 4, 0.9))}, reference, 3)
    nothing = write_stats(tmp_path / "nothing.json", {"sample-01": ([], voices(0, 120, 4.0, 4, 0.2))}, reference, 3)
    summary = {"checkpoint": "checkpoints/default", "sampling": "--top-p 0.9",
               "test": {"data/x": {"nats_per_token": 0.9, "nats_per_note": 3.1, "nats_per_second": 10.4,
                                   "targets": 100, "pieces": 2}},
               "sets": {"from nothing": judge.set_summary([nothing], [nothing]),
                        "primer continuations": judge.set_summary([good], [good])}}
    text = judge.markdown(summary)
    assert text.startswith("Checkpoint `checkpoints/default`, sampling `--top-p 0.9`")
    assert "0.9000 nats/token" in text
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["notes/s, continuation / primer"].rstrip(" |").endswith("| - | 1.00")  # no primer: a dash
    assert rows["targets missed"].endswith("| density | all met |")
    assert "Longest passage each sample copies from training (from nothing, notes): 3." in text


def test_seeds_are_pooled_and_the_figures_get_bootstrap_intervals(tmp_path, reference):
    primer = voices(0, 10, 1.0, 4, 0.9)
    slow = {f"sample-0{i}": (primer, voices(10, 120, 1.0, 4, 0.9)) for i in range(1, 5)}
    fast = {f"sample-0{i}": (primer, voices(10, 120, 2.0, 4, 0.45)) for i in range(1, 3)}
    seed0 = write_stats(tmp_path / "seed0.json", slow, reference, copied=5)
    seed1 = write_stats(tmp_path / "seed1.json", fast, reference, copied=9)
    pooled = judge.set_summary([seed0, seed1], [seed0, seed1])
    assert pooled["samples"] == 6 and pooled["copy_notes_per_sample"] == [5, 5, 5, 5, 9, 9]
    assert pooled["median_copy_notes"] == 5 and pooled["longest_copy_notes"] == 9
    low, high = pooled["intervals"]["notes_per_second"]
    assert low == pytest.approx(pooled["notes_per_second"], rel=0.02)  # two thirds of the samples play 4/s
    assert high == pytest.approx(2 * low, rel=0.02)  # a resample of mostly fast samples: 8/s
    assert pooled["intervals"]["long_note_fraction"] == [0.0, 0.0]
    one = write_stats(tmp_path / "one.json", {"s": slow["sample-01"]}, reference, 5)
    one = judge.set_summary([one], [one])
    assert "notes_per_second" not in one["intervals"]  # one sample: no interval
    summary = {"checkpoint": "c", "seeds": [0, 1], "test": {}, "sets": {"primer continuations": pooled},
               "validation_copying": {"pieces": 3, "seconds": 120, "median_notes": 12, "max_notes": 20}}
    text = judge.markdown(summary)
    median = reference.median["notes_per_second"]
    assert f"| notes per second | {median:.2f} | {pooled['notes_per_second']:.2f} ({low:.2f}-{high:.2f}) |" in text
    assert "| longest passage copied from training (notes) | 20 | 9 |" in text
    assert "| passage copied from training, median per sample (notes) | 12 | 5 (5-9) |" in text
    assert "Seeds 0, 1, pooled: 6 samples primer continuations." in text


def test_the_validation_pieces_own_copying_is_the_copy_rows_yardstick(tmp_path):
    import pretty_midi

    from perceiver_ar_music.data.store_builder import prepare

    def piece(name: str, pitches: list[int]) -> None:
        midi, piano = pretty_midi.PrettyMIDI(), pretty_midi.Instrument(0)
        for i, pitch in enumerate(pitches):
            piano.notes.append(pretty_midi.Note(velocity=80, pitch=pitch, start=0.5 * i, end=0.5 * i + 0.4))
        midi.instruments.append(piano)
        midi.write(str(tmp_path / "midi" / name))

    (tmp_path / "midi").mkdir()
    tune = [60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65, 64, 62, 60, 59, 57, 55, 57, 59]
    rng = np.random.default_rng(1)
    for i in range(12):  # the split hashes the path: enough pieces that both splits get some
        piece(f"p{i:02d}.mid", tune[:16] + [int(p) for p in rng.integers(40, 90, 30)])
    prepare(tmp_path / "midi", tmp_path / "prepared", workers=1, split_ratios=(0.5, 0.5, 0), progress=False)
    copying = judge.validation_copying(tmp_path / "prepared", seconds=120)
    assert copying["pieces"] >= 1
    assert copying["median_notes"] == copying["max_notes"] == 16  # the shared opening, nothing more
    # only the first `seconds` of a piece count: the shared opening lasts 8 s
    assert judge.validation_copying(tmp_path / "prepared", seconds=5)["max_notes"] == 0


def test_the_validation_pieces_own_drift_is_the_drift_targets_yardstick(tmp_path):
    import pretty_midi

    from perceiver_ar_music.data.store_builder import prepare

    def piece(name: str, seconds: float, faster_after: float | None) -> None:
        midi, piano, t = pretty_midi.PrettyMIDI(), pretty_midi.Instrument(0), 0.0
        while t < seconds:
            step = 0.5 if faster_after is not None and t >= faster_after else 1.0
            piano.notes.append(pretty_midi.Note(velocity=80, pitch=60 + int(t) % 12, start=t, end=t + 0.4))
            t += step
        midi.instruments.append(piano)
        midi.write(str(tmp_path / "midi" / name))

    (tmp_path / "midi").mkdir()
    piece("steady.mid", 150, None)  # 1 note/s throughout: drift 1
    piece("faster.mid", 150, 30)  # 1 note/s for 30 s, then 2: drift 2
    piece("short.mid", 60, None)  # shorter than the samples: left out
    prepare(tmp_path / "midi", tmp_path / "prepared", workers=1, split_ratios=(0, 1, 0), progress=False)
    drift = judge.validation_drift(tmp_path / "prepared", seconds=120)
    assert drift["seconds"] == 120
    assert drift["pieces"] == 2
    assert drift["notes_per_second"] == pytest.approx(1.5, rel=0.05)
    assert drift["mean_polyphony"] == pytest.approx(1.0)
    table = judge.markdown({"checkpoint": "c", "test": {}, "validation_drift": drift, "sets": {"from nothing": FIGURES}})
    assert f"| drift, notes/s (last 30 s / first) | {drift['notes_per_second']:.2f} | 1.10 |" in table
    assert "| drift, polyphony (last 30 s / first) | 1.00 | 1.20 |" in table
    assert "| re-struck notes (a pitch again within 0.25 s of its release) |  | - |" in table  # stats from before it
    table = judge.markdown({"checkpoint": "c", "test": {}, "validation_drift": drift,
                            "sets": {"from nothing": dict(FIGURES, restrike_fraction=0.27)}})
    assert "| re-struck notes (a pitch again within 0.25 s of its release) |  | 27% |" in table


FIGURES = {"samples": 1, "notes_per_second": 2.0, "mean_polyphony": 3.0, "max_polyphony": 4, "note_length_mean_s": 1.0,
           "long_note_fraction": 0.0, "drift_notes_per_second": 1.1, "drift_mean_polyphony": 1.2,
           "vs_primer_notes_per_second": None, "vs_primer_mean_polyphony": None, "longest_copy_notes": 0,
           "longest_copy_seconds": 0.0, "reference_notes_per_second": 2.0, "reference_mean_polyphony": 3.0,
           "checks": {"density": True}}


def test_the_primers_collection_is_a_second_yardstick_for_the_continuations(tmp_path):
    import pretty_midi

    from perceiver_ar_music.data.store_builder import prepare

    def piece(path: Path, per_second: float, voices_: int) -> None:
        midi, piano = pretty_midi.PrettyMIDI(), pretty_midi.Instrument(0)
        for i in range(int(60 * per_second)):
            for v in range(voices_):
                start = i / per_second
                piano.notes.append(pretty_midi.Note(velocity=80, pitch=50 + 5 * v, start=start, end=start + 0.9 / per_second))
        midi.instruments.append(piano)
        path.parent.mkdir(parents=True, exist_ok=True)
        midi.write(str(path))

    for i in range(3):
        piece(tmp_path / "midi" / "bach" / f"b{i}.mid", 2.0, 4)  # 8 notes/s, 4 voices
        piece(tmp_path / "midi" / "palestrina" / f"p{i}.mid", 1.0, 3)  # 3 notes/s, 3 voices
    prepare(tmp_path / "midi", tmp_path / "prepared", workers=1, split_ratios=(0, 1, 0), progress=False)
    style = judge.validation_collection(tmp_path / "prepared", "bach")
    assert style["pieces"] == 3
    assert style["notes_per_second"] == pytest.approx(8.0, rel=0.05)
    assert style["mean_polyphony"] == pytest.approx(4.0, rel=0.1)
    assert judge.validation_collection(tmp_path / "prepared", "mozart")["pieces"] == 0
    continuations = dict(FIGURES, notes_per_second=6.5, mean_polyphony=2.8)
    text = judge.markdown({"checkpoint": "c", "test": {}, "primer_collection": style,
                           "sets": {"from nothing": FIGURES, "primer continuations": continuations}})
    line = next(line for line in text.splitlines() if line.startswith("Against the validation pieces"))
    assert "(bach, 3 pieces: median " in line
    assert f"play {6.5 / style['notes_per_second']:.2f} times their density" in line
    assert line.endswith("(density within 25%, polyphony outside 25%).")  # 0.81 and 0.70
    assert "Against the validation" not in judge.markdown({"checkpoint": "c", "test": {}, "sets": {"from nothing": FIGURES}})
