"""Every subcommand against every class of bad input: bad numbers, unwritable outputs, hostile
archive members, checkpoints with NaN weights. Each must exit 2 with one line on stderr, no
traceback, and leave nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from perceiver_ar_music.model.checkpoint import save_checkpoint
from perceiver_ar_music.cli import main
from perceiver_ar_music.data.store_builder import prepare
from perceiver_ar_music.data.token_store import PreparedData
from perceiver_ar_music.training.presets import TrainConfig
from tests.test_download import fake_files, make_zip, serve
from tests.tiny import tiny_model, write_corpus

BIG = str(2**70)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Inputs shared by the rows: MIDI, prepared data, a good and a NaN checkpoint, a file."""
    root = tmp_path_factory.mktemp("inputs")
    midi = write_corpus(root / "midi", files=4, notes=60)
    prepare(midi, root / "prepared", workers=1, split_ratios=(0.5, 0.25, 0.25), progress=False)
    data = PreparedData.open(root / "prepared")
    torch.manual_seed(0)
    model = tiny_model(len(data.vocab))
    save_checkpoint(root / "good", model, data.tokenizer_path, tokenizer_hash=data.tokenizer_hash)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    save_checkpoint(root / "nan", model, data.tokenizer_path, tokenizer_hash=data.tokenizer_hash)
    save_checkpoint(root / "nan_run" / "ckpt-1", model, data.tokenizer_path, tokenizer_hash=data.tokenizer_hash,
                    trainer_state={"progress": {"step": 1}, "world_size": 1, "rng": []},
                    optimizer=torch.optim.AdamW(model.parameters()))
    run_config = {"run_name": "nan_run", "preset": "tiny", "model": model.config.to_dict(),
                  "train": TrainConfig().to_dict(),
                  "data": {"source": str(midi), "prepared": str(root / "prepared"), "tokenizer_hash": data.tokenizer_hash}}
    (root / "nan_run" / "run_config.json").write_text(json.dumps(run_config))
    (root / "dir.wav").mkdir()
    (root / "bad_midi").mkdir()
    (root / "bad_midi" / "x.mid").write_bytes(b"not MIDI")
    (root / "a_file").write_text("not a folder")
    return {"midi": midi, "mid": midi / "piece00.mid", "prepared": root / "prepared", "good": root / "good",
            "nan": root / "nan", "nan_run": root / "nan_run", "file": root / "a_file",
            "dir_wav": root / "dir.wav", "bad_midi": root / "bad_midi"}


# (command line with {placeholders}, a word the error line must contain). {out} is a fresh folder
# path inside the test's own tmp folder; {under_file} a path below a regular file.
ROWS: list[tuple[str, str]] = [
    # bad numbers
    ("download-maestro --out {out} --timeout nan", "--timeout"),
    ("download-maestro --out {out} --timeout 0", "--timeout"),
    ("prepare --data {midi} --out {out} --workers 0", "--workers"),
    ("prepare --data {midi} --out {out} --workers 1e3", "--workers"),
    ("train --data {prepared} --out {out} --lr 1e39", "--lr"),
    ("train --data {prepared} --out {out} --lr nan", "--lr"),
    ("train --data {prepared} --out {out} --max-seq-len 1e8", "--max-seq-len"),
    ("train --data {prepared} --out {out} --seed " + BIG, "--seed"),
    ("train --data {prepared} --out {out} --batch-size 0", "--batch-size"),
    ("train --data {prepared} --out {out} --stretch inf", "--stretch"),
    ("train --data {prepared} --out {out} --velocity-windows 1.5", "--velocity-windows"),
    ("train --data {prepared} --out {out} --stretch-windows 2", "--stretch-windows"),
    ("train --data {prepared} --out {out} --velocity-noise nan", "--velocity-noise"),
    ("evaluate --checkpoint {good} --data {prepared} --batch-size 1e12", "--batch-size"),
    ("evaluate --checkpoint {good} --data {prepared} --max-pieces -1", "--max-pieces"),
    ("generate --checkpoint {good} --out {out} --temperature nan", "--temperature"),
    ("generate --checkpoint {good} --out {out} --seconds nan", "--seconds"),
    ("generate --checkpoint {good} --out {out} --primer {mid} --primer-seconds nan", "--primer-seconds"),
    ("generate --checkpoint {good} --out {out} --seed " + BIG, "--seed"),
    ("generate --checkpoint {good} --out {out} --length 1e12", "--length"),
    ("generate --checkpoint {good} --out {out} --sample-rate 0", "--sample-rate"),
    ("render {mid} --out {out}/x.wav --sample-rate 0", "--sample-rate"),
    ("render {mid} --out {out}/x.wav --tail nan", "--tail"),
    # unwritable outputs: a path under a file, a folder where a file should go
    ("download-maestro --out {under_file}", "a_file"),
    ("prepare --data {midi} --out {under_file}", "a_file"),
    ("prepare --data {midi} --out {file}", "not a folder"),
    ("tokenize {mid} --json {under_file}", "--json"),
    ("tokenize {mid} --json {midi}", "--json"),
    ("tokenize {mid} --roundtrip {under_file}", "--roundtrip"),
    ("train --data {prepared} --out {under_file}", "a_file"),
    ("evaluate --checkpoint {good} --data {prepared} --json {under_file}", "--json"),
    ("evaluate --checkpoint {good} --data {prepared} --json {midi}", "--json"),
    ("generate --checkpoint {good} --out {under_file} --length 4 --no-audio", "a_file"),
    ("render {mid} --out {under_file}", "a_file"),
    ("render {mid} --out {dir_wav}", "folder"),
    # work that fails after it started: a failed first run leaves no folder or lock
    ("prepare --data {bad_midi} --out {out}", "none of the 1 MIDI files"),
    ("train --data {bad_midi} --out {out}", "none of the 1 MIDI files"),
    # broken checkpoints: NaN weights
    ("evaluate --checkpoint {nan} --data {prepared}", "non-finite"),
    ("generate --checkpoint {nan} --out {out} --length 4 --no-audio", "non-finite"),
    ("train --resume {nan_run}", "can be resumed"),
]


def snapshot(root: Path) -> dict[str, int]:
    """Every path under `root` with its modification time (0 for a folder: a folder made and
    removed again changes its parent's time, not what is there)."""
    return {str(p.relative_to(root)): 0 if p.is_dir() else p.stat().st_mtime_ns for p in root.rglob("*")}


def run_and_check(argv: list[str], capsys) -> str:
    """Run the CLI in-process; assert exit 2, one stderr line, no traceback; return the line."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refusing a flag
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit {code}: {err[-300:]}"
    assert "Traceback" not in err
    # a download's progress bar and prepare's per-file "warning: skipped ..." lines are no error
    lines = [line for line in err.splitlines() if "%|" not in line and not line.startswith("warning: skipped ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"perceiver-music {argv[0]}: error: ") or lines[0].startswith(
        f"perceiver-music {argv[0]}: error:"), lines[0]
    return lines[0]


@pytest.mark.parametrize("command, word", ROWS, ids=[row[0].split(" {")[0] + ":" + row[0].split()[-2] for row in ROWS])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path: Path, world, capsys, command: str,
                                                         word: str) -> None:
    places = {**{k: str(v) for k, v in world.items()}, "out": str(tmp_path / "out"),
              "under_file": str(world["file"] / "x" / "y.out")}
    inputs = world["file"].parent
    before_inputs, before_tmp = snapshot(inputs), snapshot(tmp_path)
    argv = [part.format(**places) for part in command.split()]
    line = run_and_check([*argv, *(["--no-progress"] if argv[0] in ("prepare", "train") else [])], capsys)
    assert word in line, line
    assert snapshot(tmp_path) == before_tmp, "a failed run left something behind"
    assert snapshot(inputs) == before_inputs, "a failed run changed its inputs"


HOSTILE = ["maestro-v3.0.0/../../evil.txt", "maestro-v3.0.0//{abs}", "/{abs}", "maestro-v3.0.0/..\\..\\evil.txt",
           "maestro-v3.0.0/2004//{abs}"]


@pytest.mark.parametrize("member", HOSTILE)
def test_hostile_archive_members_are_refused(tmp_path: Path, capsys, member: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    name = member.format(abs=str(victim).lstrip("/"))
    archive = make_zip({**fake_files(), name: b"gotcha"})
    out = tmp_path / "dl"
    before = snapshot(tmp_path)
    with serve(archive) as (url, _):
        line = run_and_check(["download-maestro", "--out", str(out), "--url", url, "--sha256",
                              hashlib.sha256(archive).hexdigest(), "--timeout", "5"], capsys)
    assert "outside the dataset folder" in line
    assert victim.read_text() == "precious" and not list(tmp_path.rglob("evil.txt"))
    assert not (out / "maestro-v3.0.0").exists()
    leftovers = set(snapshot(tmp_path)) - set(before)
    assert leftovers <= {"dl", os.path.join("dl", "maestro-v3.0.0-midi.zip")}  # the verified archive may stay
