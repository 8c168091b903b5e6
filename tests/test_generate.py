"""`perceiver-music generate` end to end on CPU with a tiny model, and every bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile
import torch

from perceiver_ar_music.listening import render
from perceiver_ar_music.cli import main
from perceiver_ar_music.sampling.continuation import truncate_to_seconds
from perceiver_ar_music.data.tokenizer import load_tokenizer
from perceiver_ar_music.data.vocab import NOTE_ON
from perceiver_ar_music.tools import midi_factory
from tests.tiny import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer) -> Path:
    """A tiny random model that rarely ends a piece (EOS pushed down)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), tokenizer)


@pytest.fixture(scope="module")
def primer(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("primer") / "primer.mid"
    midi_factory.write_performance(path, seed=3, num_notes=20)
    return path


def run_generate(*args: str) -> int:
    return main(["generate", "--no-progress", *args])


def notes_of(path: Path, track: str | None = None) -> list[tuple[int, float]]:
    midi = pretty_midi.PrettyMIDI(str(path))
    return sorted(
        (round(n.start, 2), n.pitch) for inst in midi.instruments if track in (None, inst.name) for n in inst.notes
    )


def test_generate_with_a_primer_writes_midi_wav_png_and_html(tmp_path, checkpoint, primer, tokenizer, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --out, as users type it
    assert run_generate("--checkpoint", str(checkpoint), "--primer", str(primer), "--length", "150",
                        "--num-samples", "2", "--seed", "0", "--constrain", "--audio-format", "wav", "--out", "out") == 0
    out = tmp_path / "out"
    for i in (1, 2):
        stem = out / f"sample-{i:02d}"
        assert {p.suffix for p in out.glob(f"sample-{i:02d}.*")} == {".mid", ".wav", ".png"}
        # The MIDI starts with the primer's notes, on their own track.
        primer_notes = notes_of(primer)
        assert notes_of(stem.with_suffix(".mid"), "primer") == primer_notes
        assert len(notes_of(stem.with_suffix(".mid"), "continuation")) > 0
        # The WAV is not silent and lasts as long as the MIDI plus the ringing tail.
        audio, rate = soundfile.read(stem.with_suffix(".wav"))
        assert rate == 44_100 and np.sqrt(np.mean(audio**2)) > 1e-3
        midi_end = pretty_midi.PrettyMIDI(str(stem.with_suffix(".mid"))).get_end_time()
        assert abs(len(audio) / rate - (midi_end + render.DEFAULT_TAIL_SECONDS)) < 0.1
        assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text()
    assert page.count("<audio") == 2 and "sample-02.png" in page
    assert page.count('<div class="figures">') == 2  # primer vs continuation and windows, per sample
    stats = json.loads((out / "stats.json").read_text())
    assert sorted(stats["samples"]) == ["sample-01", "sample-02"] and "note guards" in stats["details"]
    for sample in stats["samples"].values():
        assert sample["primer"]["note_count"] == len(notes_of(primer)) and sample["continuation"]["note_count"] > 0
        assert sample["windows"] and sample["windows"][0]["start_s"] == pytest.approx(sample["boundary_s"])
    links = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert len(links) >= 8 and all((out / link).is_file() for link in links), links  # relative to the page
    first = notes_of(out / "sample-01.mid", "continuation")
    second = notes_of(out / "sample-02.mid", "continuation")
    assert first != second  # two different samples in one batch


def test_same_seed_reproduces_and_cached_equals_reference_greedy(tmp_path, checkpoint, primer):
    common = ["--checkpoint", str(checkpoint), "--primer", str(primer), "--primer-seconds", "0.5",
              "--length", "30", "--temperature", "0", "--no-audio"]
    assert run_generate(*common, "--out", str(tmp_path / "cached")) == 0
    assert run_generate(*common, "--no-cache", "--out", str(tmp_path / "reference")) == 0
    cached = notes_of(tmp_path / "cached" / "sample-01.mid")
    assert cached == notes_of(tmp_path / "reference" / "sample-01.mid")
    assert not (tmp_path / "cached" / "sample-01.wav").exists()


@pytest.mark.slow
def test_compiled_decoding_step_gives_the_same_greedy_music(tmp_path, checkpoint, primer):
    common = ["--checkpoint", str(checkpoint), "--primer", str(primer), "--primer-seconds", "0.5",
              "--length", "30", "--temperature", "0", "--no-audio"]
    assert run_generate(*common, "--out", str(tmp_path / "eager")) == 0
    assert run_generate(*common, "--compile", "--out", str(tmp_path / "compiled")) == 0
    assert notes_of(tmp_path / "compiled" / "sample-01.mid") == notes_of(tmp_path / "eager" / "sample-01.mid")


def test_without_a_primer_and_with_a_seconds_budget(tmp_path, checkpoint, tokenizer):
    out = tmp_path / "out"
    assert run_generate("--checkpoint", str(checkpoint), "--seconds", "3", "--length", "5000",
                        "--seed", "1", "--no-audio", "--out", str(out)) == 0
    midi = pretty_midi.PrettyMIDI(str(out / "sample-01.mid"))
    assert [inst.name for inst in midi.instruments if inst.notes] == ["continuation"]
    assert 3.0 - 0.01 <= midi.get_end_time() <= 4.0 + 0.01  # stops at the first shift past 3 s (shifts <= 1 s)
    assert "stopped by" in (out / "index.html").read_text()


def test_missing_fluidsynth_still_writes_midi_and_png(tmp_path, checkpoint, primer, monkeypatch, capsys):
    def unavailable():
        raise render.AudioUnavailable("FluidSynth's library is missing: install it with 'apt-get install libfluidsynth3'")

    monkeypatch.setattr(render, "load_fluidsynth", unavailable)
    out = tmp_path / "out"
    assert run_generate("--checkpoint", str(checkpoint), "--primer", str(primer), "--length", "20", "--out", str(out)) == 0
    assert (out / "sample-01.mid").exists() and (out / "sample-01.png").exists()
    assert not (out / "sample-01.wav").exists()
    assert capsys.readouterr().out.count("libfluidsynth3") == 1


def test_truncate_to_seconds_cuts_before_the_shift_that_crosses(tokenizer):
    vocab = tokenizer.vocab
    on, vel, shift = vocab.note_on_id[60], vocab.velocity.index(63), vocab.shift_id[50]
    ids = np.array([on, vel, shift, on, vel, shift, shift])
    assert truncate_to_seconds(ids, vocab, 0.5).tolist() == [on, vel, shift, on, vel]
    assert truncate_to_seconds(ids, vocab, 0.2).tolist() == [on, vel]
    assert len(truncate_to_seconds(ids, vocab, 10)) == 7


def bad_primers(tmp: Path) -> dict[str, Path]:
    files = {
        "missing": tmp / "nope.mid",
        "empty": tmp / "empty.mid",
        "truncated": tmp / "truncated.mid",
        "random bytes": tmp / "random.mid",
        "text": tmp / "text.mid",
        "no notes": tmp / "nonotes.mid",
        "drums only": tmp / "drums.mid",
    }
    midi_factory.write_empty(files["empty"])
    midi_factory.write_truncated(files["truncated"])
    midi_factory.write_random_bytes(files["random bytes"])
    midi_factory.write_text_file(files["text"])
    midi_factory.write_no_notes(files["no notes"])
    midi_factory.write_drums_only(files["drums only"])
    return files


def assert_clean_failure(capsys, out: Path, *args: str) -> str:
    assert run_generate(*args, "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "error" in err
    assert not out.exists()  # nothing written
    return err


def test_every_bad_primer_is_one_line_and_exit_2(tmp_path, checkpoint, capsys):
    for name, path in bad_primers(tmp_path).items():
        err = assert_clean_failure(capsys, tmp_path / f"out-{name}", "--checkpoint", str(checkpoint), "--primer", str(path))
        assert "primer" in err, name


def test_bad_checkpoints_are_one_line_and_exit_2(tmp_path, checkpoint, primer, capsys):
    assert_clean_failure(capsys, tmp_path / "o1", "--checkpoint", str(tmp_path / "absent"))
    incomplete = tmp_path / "incomplete"
    shutil.copytree(checkpoint, incomplete)
    (incomplete / "model.safetensors").unlink()
    assert_clean_failure(capsys, tmp_path / "o2", "--checkpoint", str(incomplete))
    mismatch = tmp_path / "mismatch"
    shutil.copytree(checkpoint, mismatch)
    params = json.loads((mismatch / "tokenizer.json").read_text())
    params["config"]["num_velocities"] = 16
    (mismatch / "tokenizer.json").write_text(json.dumps(params))
    err = assert_clean_failure(capsys, tmp_path / "o3", "--checkpoint", str(mismatch))
    assert "tokenizer" in err


def test_unwritable_output_and_bad_numbers_are_one_line(tmp_path, checkpoint, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert run_generate("--checkpoint", str(checkpoint), "--out", str(blocker / "sub")) == 2
    assert "--out" in capsys.readouterr().err
    for bad in (["--length", "0"], ["--top-p", "0"], ["--temperature", "-1"], ["--reset-latents", "999"],
                ["--temperature", "nan"], ["--seconds", "nan"], ["--primer-seconds", "nan"], ["--seed", str(2**70)],
                ["--length", "1e12"], ["--sample-rate", "0"], ["--max-note-seconds", "-1"], ["--max-polyphony", "-2"]):
        assert_clean_failure(capsys, tmp_path / "o", "--checkpoint", str(checkpoint), *bad)


def test_bundled_primer_and_model_generate_out_of_the_box(tmp_path):
    bundled = ROOT / "checkpoints" / "default"
    if not (bundled / "model.safetensors").exists():
        pytest.skip("the bundled model is not in this checkout")
    out = tmp_path / "out"
    assert run_generate("--primer", str(ROOT / "examples" / "primer.mid"), "--length", "64", "--seed", "0",
                        "--no-audio", "--out", str(out)) == 0
    assert notes_of(out / "sample-01.mid", "continuation")


def test_music_progress_checks_the_budget_every_few_steps_and_samples_end_at_the_budget(tokenizer):
    from perceiver_ar_music.sampling.continuation import MusicProgress, through_seconds

    vocab = tokenizer.vocab
    tenth = vocab.shift_id[10]  # a 0.1 s time shift
    bar = MusicProgress(None, vocab, batch=2, seconds_budget=0.5, show=False, check_every=4)
    stops = [bar(step, torch.tensor([tenth, tenth])) for step in range(8)]
    bar.close()
    assert stops == [False] * 7 + [True]  # 0.5 s reached at step 4, seen at the check after step 7
    note = next(i for i, kind in enumerate(vocab.kind) if kind == NOTE_ON)
    ids = np.array([note, tenth, note, tenth, tenth, note, tenth])
    assert through_seconds(ids, vocab, 0.3).tolist() == [note, tenth, note, tenth, tenth]
    assert through_seconds(ids, vocab, 9.0).tolist() == ids.tolist()


def test_progress_off_a_terminal_is_a_line_every_few_seconds(tokenizer, capsys, monkeypatch):
    """In a log or a pipe: no bar redraws, one line per LOG_EVERY_S and a last one at the end."""
    from perceiver_ar_music.sampling import continuation

    tenth = torch.tensor([tokenizer.vocab.shift_id[10]])

    def lines_written(every_s: float) -> list[str]:
        monkeypatch.setattr(continuation, "LOG_EVERY_S", every_s)
        progress = continuation.MusicProgress(400, tokenizer.vocab, batch=1, seconds_budget=None, check_every=16)
        for step in range(400):
            progress(step, tenth)
        progress.close()
        return capsys.readouterr().err.strip().splitlines()

    rare = lines_written(3600.0)
    assert rare == ["generating: 400/400 tokens, " + rare[0].split(", ", 1)[1]] and rare[0].endswith("music 40.0s (done)")
    assert "\r" not in "".join(rare)
    often = lines_written(0.0)
    assert len(often) == 400 // 16 + 1 and often[0].startswith("generating: 16/400 tokens")


def test_outputs_are_all_or_nothing_and_other_files_in_out_are_kept(tmp_path, checkpoint, monkeypatch, capsys):
    from perceiver_ar_music.listening import report

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "sample-01.mid").write_bytes(b"an earlier take")

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_index", broken)
    assert run_generate("--checkpoint", str(checkpoint), "--length", "20", "--no-audio", "--seed", "0", "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err == "perceiver-music generate: error: No space left on device"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "sample-01.mid"]  # untouched
    assert (out / "sample-01.mid").read_bytes() == b"an earlier take"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left beside it
    monkeypatch.undo()
    assert run_generate("--checkpoint", str(checkpoint), "--length", "20", "--no-audio", "--seed", "0", "--out", str(out)) == 0
    assert {"notes.txt", "sample-01.mid", "sample-01.png", "stats.json", "index.html"} <= {p.name for p in out.iterdir()}
    assert (out / "sample-01.mid").read_bytes() != b"an earlier take"


def test_speed_and_tokens_say_per_sample_and_what_was_kept():
    from perceiver_ar_music.sampling.continuation import Continuation

    two = Continuation([np.zeros(10 + 30), np.zeros(10 + 28)], 10, 700.0, "seconds", drawn=32)
    assert two.speed() == "350 tokens/s per sample (700 for the batch of 2)"
    assert two.kept().startswith("28-30 new tokens kept per sample of 32 drawn (each sample ends at the time shift")
    one = Continuation([np.zeros(10 + 32)], 10, 400.0, "length", drawn=32)
    assert one.speed() == "400 tokens/s per sample" and one.kept() == "32 new tokens per sample"


def test_generate_says_what_of_the_primer_it_did_not_use(tmp_path, checkpoint, capsys):
    """A drum track left out and --primer-seconds past the primer's end: one line each."""
    midi = pretty_midi.PrettyMIDI()
    piano, drums = pretty_midi.Instrument(0), pretty_midi.Instrument(0, is_drum=True)
    piano.notes += [pretty_midi.Note(80, 60 + i % 5, 0.5 * i, 0.5 * i + 0.4) for i in range(8)]
    drums.notes += [pretty_midi.Note(90, 36, 0.5 * i, 0.5 * i + 0.1) for i in range(6)]
    midi.instruments += [piano, drums]
    midi.write(str(tmp_path / "band.mid"))
    assert run_generate("--checkpoint", str(checkpoint), "--primer", str(tmp_path / "band.mid"), "--primer-seconds", "500",
                        "--length", "8", "--no-audio", "--no-progress", "--out", str(tmp_path / "out")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"perceiver-music generate: primer {tmp_path / 'band.mid'}: its drum track (6 notes) is left out: " \
        "the model plays the other tracks as one piano" in lines
    assert f"perceiver-music generate: primer {tmp_path / 'band.mid'}: --primer-seconds 500 is past its end (3.9 s): " \
        "all of it is used" in lines
    capsys.readouterr()
    assert run_generate("--checkpoint", str(checkpoint), "--primer", str(tmp_path / "band.mid"), "--primer-seconds", "2",
                        "--length", "8", "--no-audio", "--no-progress", "--out", str(tmp_path / "out2")) == 0
    assert "past its end" not in capsys.readouterr().out


def test_length_help_says_seconds_decide_the_length(capsys):
    assert main(["generate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "With --seconds the seconds decide the length and --length is only a safety bound" in text
