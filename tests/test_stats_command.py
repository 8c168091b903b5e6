"""`perceiver-music stats` end to end: a generate output folder against a prepared reference that
holds its primer, plain MIDI files, data folders, and every bad input (one line, exit 2)."""

from __future__ import annotations

import json

import pytest

from perceiver_ar_music.cli import main
from perceiver_ar_music.data.events import ids_to_notes
from perceiver_ar_music.listening.music_stats import music_stats
from perceiver_ar_music.data.store_builder import prepare
from perceiver_ar_music.data.token_store import PreparedData
from perceiver_ar_music.data.tokenizer import load_tokenizer
from perceiver_ar_music.tools import midi_factory
from tests.tiny import write_tiny_checkpoint


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    """A MIDI folder (the primer among four pieces, so each is whole in its split), its prepared
    folder, and a generate output."""
    root = tmp_path_factory.mktemp("stats")
    midi_dir = root / "midi"
    midi_dir.mkdir()
    for seed in (1, 2, 3, 4):
        midi_factory.write_performance(midi_dir / f"piece-{seed}.mid", seed=seed, num_notes=60)
    primer = midi_dir / "piece-3.mid"
    prepare(midi_dir, root / "prepared", workers=1, progress=False)

    checkpoint = write_tiny_checkpoint(root / "ckpt", tokenizer)
    out = root / "generated"
    assert main(["generate", "--no-progress", "--checkpoint", str(checkpoint), "--primer", str(primer),
                 "--length", "200", "--num-samples", "2", "--seed", "0", "--no-audio", "--out", str(out)]) == 0
    return {"midi": midi_dir, "primer": primer, "prepared": root / "prepared", "generated": out}


def run_stats(*args: str) -> int:
    return main(["stats", *map(str, args)])


def test_generate_folder_against_a_prepared_reference(world, tmp_path, capsys, tokenizer):
    data = PreparedData.open(world["prepared"])
    split = next(e["split"] for e in data.manifest["files"] if e["path"] == "piece-3.mid")
    out = tmp_path / "stats.json"
    assert run_stats(world["generated"], "--reference", world["prepared"], "--split", split,
                     "--window", "1", "--json", out) == 0
    printed = capsys.readouterr().out
    assert "sample-01.mid" in printed and "sample-02.mid" in printed and "primer" in printed
    assert "last / first" in printed and "reference median" in printed and "piece-3.mid" in printed
    report = json.loads(out.read_text())
    assert report["format"] == "perceiver-ar-music/stats" and report["details"]["window_s"] == 1.0
    samples = report["samples"]
    assert len(samples) == 2
    sample = samples[str(world["generated"] / "sample-01.mid")]
    primer_notes = ids_to_notes(tokenizer.encode_file(world["primer"]).ids, tokenizer.vocab)
    assert sample["primer_notes"] == len(primer_notes)
    # the primer's figures as the command reads them back equal those of the tokenized primer
    assert sample["primer"] == pytest.approx(music_stats(primer_notes).as_dict(), abs=1e-6)
    assert sample["continuation"]["note_count"] > 0
    windows = sample["windows"]
    assert len(windows) >= 2 and windows[0]["start_s"] == pytest.approx(sample["boundary_s"])
    assert all(w["end_s"] - w["start_s"] <= 1.0 + 1e-9 for w in windows)
    assert sum(w["note_count"] for w in windows) == sample["continuation"]["note_count"]
    # the primer is a piece of the reference split: copied whole, from that piece; the continuation apart
    memo = sample["memorization"]
    assert memo["primer"]["name"] == "piece-3.mid" and memo["primer"]["notes"] == len(primer_notes)
    assert memo["primer"]["piece_note"] == 0 and memo["continuation"] is not None
    assert report["details"]["reference"]["pieces"] >= 1
    assert set(sample["vs_reference"]) == {"primer", "continuation"}


def test_plain_files_and_data_folders(world, capsys):
    assert run_stats(world["primer"], world["midi"], world["prepared"]) == 0
    printed = capsys.readouterr().out
    assert "no primer" in printed and "piece" in printed
    assert f"{world['midi']}: 4 pieces" in printed and f"{world['prepared']}: 4 pieces" in printed
    assert "median" in printed and "90th pct" in printed
    # a raw MIDI folder as the reference: figures, no memorisation
    assert run_stats(world["generated"] / "sample-02.mid", "--reference", world["midi"]) == 0
    printed = capsys.readouterr().out
    assert "reference median" in printed and "copied" not in printed


def bad(capsys, *args) -> str:
    assert run_stats(*args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("perceiver-music stats: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(world, tmp_path, capsys):
    assert "no such file" in bad(capsys, tmp_path / "missing.mid")
    truncated = tmp_path / "truncated.mid"
    midi_factory.write_truncated(truncated)
    assert "truncated.mid" in bad(capsys, truncated)
    text = tmp_path / "notes.mid"
    midi_factory.write_text_file(text)
    assert "not a MIDI file" in bad(capsys, text)
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    assert "no MIDI files" in bad(capsys, empty)
    for window in ("0", "-5", "nan", "inf"):
        assert "--window" in bad(capsys, world["primer"], "--window", window)
    assert "no such file" in bad(capsys, world["primer"], "--reference", tmp_path / "nowhere")
    assert "no MIDI files" in bad(capsys, world["primer"], "--reference", empty)
    assert "no split" in bad(capsys, world["primer"], "--reference", world["prepared"], "--split", "nope")
