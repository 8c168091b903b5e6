"""A full disk and out-of-vocabulary ids: one clear line and exit 2, nothing half-written left or
listed, no empty run folder. The full disk is a real one (a tiny tmpfs, where this machine lets
the tests mount one) and, everywhere, a libsndfile failure on a folder with no space left."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from perceiver_ar_music.cli import main
from tests.tiny import MICRO_FLAGS, write_corpus

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "primer.mid"


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, leave: int = 0) -> None:
    """Fill the disk of `folder` up to `leave` bytes."""
    import shutil

    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as handle:
        try:
            handle.write(bytes(max(0, free - leave)))
        except OSError:
            pass


def test_render_on_a_full_disk(tiny_disk, capsys):
    assert main(["render", str(EXAMPLE), "--out", str(tiny_disk / "sub" / "x.wav")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"perceiver-music render: error: No space left on device: {tiny_disk / 'sub' / 'x.wav'}"
    assert leftovers(tiny_disk) == []  # no half-written file, no folder made for it


def test_a_failed_audio_write_names_the_full_disk(tmp_path, monkeypatch, capsys):
    """Without a tmpfs: libsndfile's "System error." on a folder with no space left."""
    import shutil

    import perceiver_ar_music.listening.render as render

    real = shutil.disk_usage
    monkeypatch.setattr(render.shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    monkeypatch.setattr(render, "write_audio", _failing_write(render.write_audio))
    assert main(["render", str(EXAMPLE), "--out", str(tmp_path / "x.wav")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"No space left on device: {tmp_path / 'x.wav'}")
    assert leftovers(tmp_path) == []


def _failing_write(write_audio):
    import soundfile

    def write(path, samples, sample_rate, audio_format):
        original = soundfile.SoundFile.write

        def broken(self, data):
            raise soundfile.LibsndfileError(1, "System error.")  # what libsndfile says for ENOSPC

        soundfile.SoundFile.write = broken
        try:
            return write_audio(path, samples, sample_rate, audio_format)
        finally:
            soundfile.SoundFile.write = original

    return write


def test_generate_with_audio_on_a_full_disk(tiny_disk, capsys, tmp_path):
    from perceiver_ar_music.data.tokenizer import load_tokenizer
    from tests.tiny import write_tiny_checkpoint

    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt", load_tokenizer())
    code = main(["generate", "--checkpoint", str(checkpoint), "--primer", str(EXAMPLE), "--length", "40",
                 "--seed", "0", "--audio-format", "wav", "--out", str(tiny_disk / "gen")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in err, err
    assert leftovers(tiny_disk) == []


def test_the_studio_keeps_a_take_when_the_disk_fills(tiny_disk, tmp_path):
    """The audio does not fit: the take is listed with its MIDI and roll and a note; when not even
    its details fit, the job fails with one line and nothing is listed or served."""
    from perceiver_ar_music.studio.engine import Studio
    from perceiver_ar_music.data.tokenizer import load_tokenizer
    from tests.tiny import write_tiny_checkpoint

    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt", load_tokenizer())
    studio = Studio(checkpoint, tiny_disk / "takes", device="cpu", audio_format="wav")
    try:
        job = studio.submit({"primer": "example", "settings": {"length": 40, "seed": 0}})
        assert studio.queue.wait(job, 120) and job.state == "done", job.error
        (take,) = studio.store.takes()
        assert take["audio"] is None and "No space left on device" in take["audio_note"]
        assert studio.store.file(take["midi"]) and studio.store.file(take["roll"])
        fill(studio.store.folder)
        job = studio.submit({"primer": "example", "settings": {"length": 40, "seed": 0}})
        assert studio.queue.wait(job, 120) and job.state == "failed"
        assert job.error.startswith("No space left on device") and "\n" not in job.error
        assert [t["name"] for t in studio.store.takes()] == [take["name"]]
        assert not [p for p in studio.store.folder.iterdir() if p.name.endswith(".tmp")]
    finally:
        studio.close()


# ----- train: no empty run folder -----
def test_train_on_a_full_disk_leaves_no_run_folder(tiny_disk, tmp_path, capsys):
    midi = write_corpus(tmp_path / "midi", files=3, notes=40)
    fill(tiny_disk)
    code = main(["train", "--data", str(midi), "--prepared-cache", str(tmp_path / "cache"), "--preset", "tiny",
                 *MICRO_FLAGS, "--max-steps", "2", "--device", "cpu", "--no-progress",
                 "--out", str(tiny_disk / "runs"), "--name", "full"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "No space left on device" in err[-1]
    assert leftovers(tiny_disk) == ["filler"]


def test_a_failed_write_removes_the_folders_it_made(tmp_path):
    from perceiver_ar_music.runtime.atomic import write_json_atomic

    class Unserializable:
        pass

    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "runs" / "new" / "run_config.json", {"x": Unserializable()})
    assert leftovers(tmp_path) == []
    (tmp_path / "kept").mkdir()
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "kept" / "new" / "x.json", {"x": Unserializable()})
    assert leftovers(tmp_path) == ["kept"]  # a folder that was there stays


# ----- out-of-vocabulary ids -----
@pytest.fixture(scope="module")
def prepared_with_a_bad_id(tmp_path_factory) -> Path:
    from perceiver_ar_music.data.store_builder import prepare

    root = tmp_path_factory.mktemp("oov")
    midi = write_corpus(root / "midi", files=4, notes=40)
    prepare(midi, root / "prepared", workers=1, split_ratios=(0.5, 0.25, 0.25), progress=False)
    manifest = json.loads((root / "prepared" / "manifest.json").read_text())
    tokens = root / "prepared" / manifest["splits"]["train"]["tokens_file"]
    ids = np.fromfile(tokens, dtype=np.uint16)
    ids[len(ids) // 2] = 60_000
    ids.tofile(tokens)
    return root / "prepared"


@pytest.mark.parametrize("command", [
    "train --data {data} --preset tiny --device cpu --max-steps 2 --no-progress --out {out} --name oov",
    "evaluate --checkpoint {checkpoint} --data {data} --split train --device cpu",
])
def test_out_of_vocabulary_ids_are_refused_before_any_work(prepared_with_a_bad_id, tmp_path, capsys, command):
    from perceiver_ar_music.data.tokenizer import load_tokenizer
    from tests.tiny import write_tiny_checkpoint

    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt", load_tokenizer())
    argv = command.format(data=prepared_with_a_bad_id, out=tmp_path / "runs", checkpoint=checkpoint).split()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds id 60000, outside the vocabulary" in err[0], err
    assert not (tmp_path / "runs").exists()


def test_prepared_data_checks_ids_when_it_opens(prepared_with_a_bad_id):
    from perceiver_ar_music.runtime.errors import UserError
    from perceiver_ar_music.data.token_store import PreparedData

    with pytest.raises(UserError, match="outside the vocabulary of 391"):
        PreparedData.open(prepared_with_a_bad_id)


# ----- fine-tuning: the disk fills while the run saves -----
def test_fine_tuning_on_a_disk_that_fills_ends_with_one_line_and_no_half_checkpoint(tiny_disk, tmp_path, capsys):
    from perceiver_ar_music.data.tokenizer import load_tokenizer
    from tests.tiny import write_tiny_checkpoint

    base = write_tiny_checkpoint(tmp_path / "ckpt", load_tokenizer())
    midi = write_corpus(tmp_path / "midi", files=3, notes=60)
    fill(tiny_disk, leave=48 * 1024)  # the run config and metrics fit; a checkpoint does not
    code = main(["train", "--data", str(midi), "--init-from", str(base), "--prepared-cache", str(tmp_path / "cache"),
                 "--max-steps", "4", "--device", "cpu", "--no-progress", "--out", str(tiny_disk / "runs"), "--name", "ft"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "No space left on device" in err[-1] and len([e for e in err if "error" in e]) == 1, err
    run = tiny_disk / "runs" / "ft"
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "run_config.json"]  # no half-written checkpoint
    json.loads((run / "run_config.json").read_text())


def test_the_studio_says_in_one_line_when_the_disk_fills_while_it_teaches(tiny_disk, tmp_path):
    from perceiver_ar_music.data.tokenizer import load_tokenizer
    from perceiver_ar_music.studio.engine import Studio
    from tests.tiny import write_tiny_checkpoint

    base = write_tiny_checkpoint(tmp_path / "ckpt", load_tokenizer())
    midi = write_corpus(tmp_path / "midi", files=2, notes=60)
    studio = Studio(base, tiny_disk / "studio", device="cpu")
    try:
        set_id = studio.teacher.new_set()["set"]
        for path in sorted(midi.iterdir()):
            studio.teacher.add(set_id, path.read_bytes(), path.name)
        fill(tiny_disk, leave=64 * 1024)
        job = studio.teach({"set": set_id, "minutes": 0.05})
        assert studio.queue.wait(job, 120) and job.state == "failed"
        assert job.error.startswith("cannot write: No space left on device") and "\n" not in job.error, job.error
        (_, model) = studio.teacher.models()
        assert model["state"] == "failed" and model["error"] == job.error and not model["usable"]
        run = studio.teacher.models_dir / model["id"]
        assert not [p for p in run.iterdir() if p.name.startswith(("ckpt-", "best", "."))]
    finally:
        studio.close()
