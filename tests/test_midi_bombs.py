"""MIDI bombs: files of a few dozen bytes that would make hundreds of millions of tokens, a FIFO
that would block forever, a primer longer than a primer may be. Every place that reads a MIDI
file refuses them with one line and exit 2, in milliseconds, before any work."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from perceiver_ar_music.cli import main
from perceiver_ar_music.data.midi_load import MAX_FILE_BYTES, MAX_NOTES, MidiReadError, read_score
from perceiver_ar_music.tools import midi_factory
from tests.tiny import write_tiny_checkpoint


BOMBS = midi_factory.MIDI_BOMBS


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bombs")
    out = {}
    for name, data in BOMBS.items():
        assert len(data) < 50
        (root / f"{name}.mid").write_bytes(data)
        out[name] = root / f"{name}.mid"
    os.mkfifo(root / "pipe.mid")
    out["fifo"] = root / "pipe.mid"
    return out


@pytest.mark.parametrize("name", [*BOMBS, "fifo"])
def test_the_loader_refuses_in_milliseconds(files, name):
    read_score(Path(__file__).resolve().parents[1] / "examples" / "primer.mid")  # imports done before timing
    started = time.perf_counter()
    with pytest.raises(MidiReadError, match="too long|not a regular file"):
        read_score(files[name])
    assert time.perf_counter() - started < 0.05


def test_the_loader_refuses_too_many_notes_and_bytes(tmp_path, monkeypatch):
    path = tmp_path / "dense.mid"
    midi_factory.write_performance(path, seed=0, num_notes=300)
    import perceiver_ar_music.data.midi_load as midi_load

    monkeypatch.setattr(midi_load, "MAX_NOTES", 100)
    with pytest.raises(MidiReadError, match="too many notes .* the limit is 100"):
        read_score(path)
    monkeypatch.setattr(midi_load, "MAX_FILE_BYTES", 100)
    with pytest.raises(MidiReadError, match="too large for a MIDI file"):
        read_score(path)
    assert MAX_NOTES >= 100_000 and MAX_FILE_BYTES >= 2**20  # the real limits leave room for real music


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from perceiver_ar_music.data.tokenizer import load_tokenizer

    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), load_tokenizer())


COMMANDS = [
    "tokenize {file}",
    "generate --checkpoint {checkpoint} --primer {file} --length 4 --no-audio --out {out}",
    "render {file} --out {out}.wav",
    "stats {file}",
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", [*BOMBS, "fifo"])
def test_every_command_refuses_a_bomb(files, checkpoint, tmp_path, capsys, command, name):
    argv = command.format(file=files[name], checkpoint=checkpoint, out=tmp_path / "out").split()
    started = time.monotonic()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and ("too long" in err or "regular file" in err), err
    assert time.monotonic() - started < 10  # the tiny model's loading included; the refusal itself is ms
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.wav").exists()


def test_prepare_skips_bombs(files, tmp_path):
    from perceiver_ar_music.data.store_builder import prepare

    folder = tmp_path / "midi"
    folder.mkdir()
    for name in BOMBS:
        (folder / f"{name}.mid").write_bytes(BOMBS[name])
    midi_factory.write_performance(folder / "good.mid", seed=0, num_notes=50)
    started = time.monotonic()
    prepare(folder, tmp_path / "prepared", workers=1, split_ratios=(1.0, 0.0, 0.0), progress=False)
    assert time.monotonic() - started < 30
    manifest = (tmp_path / "prepared" / "manifest.json").read_text()
    assert all(f"{name}.mid" in manifest for name in BOMBS) and "too long" in manifest


def test_a_primer_longer_than_a_primer_may_be(tmp_path, checkpoint, capsys, monkeypatch):
    import perceiver_ar_music.sampling.continuation as continuation

    monkeypatch.setattr(continuation, "MAX_PRIMER_TOKENS", 50)
    primer = tmp_path / "long.mid"
    midi_factory.write_performance(primer, seed=1, num_notes=200)
    assert main(["generate", "--checkpoint", str(checkpoint), "--primer", str(primer), "--length", "4",
                 "--no-audio", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "too long" in err and "--primer-seconds" in err and not (tmp_path / "out").exists()
    assert main(["generate", "--checkpoint", str(checkpoint), "--primer", str(primer), "--primer-seconds", "1",
                 "--length", "4", "--no-audio", "--out", str(tmp_path / "out")]) == 0  # its start is fine
