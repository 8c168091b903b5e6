"""`perceiver-music prepare`: splits, bad input, incremental re-runs, crash safety, exit codes."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import sys
import shutil
import tempfile
from pathlib import Path

import pytest

from perceiver_ar_music.data import store_builder
from perceiver_ar_music.cli import main as cli_main
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.data.store_builder import (
    find_midi_files,
    hashed_split,
    load_metadata,
    parse_split_ratios,
    prepare,
)
from perceiver_ar_music.data.token_store import PreparedData
from perceiver_ar_music.data.tokenizer import PerformanceTokenizer, load_tokenizer
from perceiver_ar_music.tools import midi_factory

# ----------------------------------------------------------------------------- building test data


def write_performance(path: Path, seed: int, num_notes: int = 40, **options) -> None:
    """A small synthetic piano performance (the tokenizer's test factory), parent folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    midi_factory.write_performance(path, seed=seed, num_notes=num_notes, **options)


def write_metadata_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["canonical_composer", "canonical_title", "split", "year", "midi_filename",
                         "audio_filename", "duration"])
        for midi_filename, split in rows:
            writer.writerow(["Someone", "Something", split, 2004, midi_filename, "x.wav", 1.0])


GOOD = {  # path -> split in the metadata
    "2004/a.midi": "train",
    "2004/b.MIDI": "validation",
    "2006/deep/er/c.mid": "test",
    "2006/d.midi": "train",
    "2006/with_drums.midi": "train",
}
BAD = {  # path -> (how it is broken, a word its skip reason must contain)
    "2004/random.midi": ("random_bytes", "not a MIDI file"),
    "2004/text.midi": ("text", "not a MIDI file"),
    "2004/truncated.midi": ("truncated", "truncated"),
    "2004/empty.midi": ("empty", "empty"),
    "2006/drums.midi": ("drums_only", "drum"),
    "2006/nonotes.midi": ("no_notes", "no notes"),
    "2008/missing.midi": (None, "missing on disk"),
}


def maestro_tree(root: Path) -> Path:
    """A MAESTRO-like tree: metadata CSV, nested years, upper-case extension, bad and missing files."""
    for index, path in enumerate(GOOD):
        write_performance(root / path, seed=index, drum_track=path.endswith("drums.midi"), piano_tracks=1 + index % 2)
    write_performance(root / "extra" / "unlisted.mid", seed=99)
    for path, (kind, _word) in BAD.items():
        if kind:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            midi_factory.BAD_FILES[kind](root / path)
    (root / "README.txt").write_text("not MIDI")
    write_metadata_csv(root / "maestro-v3.0.0.csv", [*GOOD.items(), *((p, "train") for p in BAD)])
    return root


def plain_tree(root: Path, count: int = 12) -> Path:
    for index in range(count):
        write_performance(root / f"set{index % 3}" / f"piece{index}.mid", seed=100 + index)
    return root


def run_cli(*args: str) -> int:
    return cli_main(["prepare", *args, "--workers", "1", "--no-progress"])


def contents(out: Path) -> dict[str, tuple[str, list[int]]]:
    """path -> (split, ids) of a prepared folder, read back through the reader."""
    data = PreparedData.open(out)
    return {
        entry["path"]: (split, ids.tolist())
        for split in data.splits
        for entry, ids in zip(data.files(split), data.pieces(split))
    }


def expected_contents(data_dir: Path, splits: dict[str, str], tokenizer=None) -> dict[str, tuple[str, list[int]]]:
    """The slow reference: encode each file directly with the tokenizer."""
    tokenizer = tokenizer or load_tokenizer()
    return {path: (split, tokenizer.encode_file(data_dir / path).ids.tolist()) for path, split in splits.items()}


def hashed_splits(paths: list[str], ratios) -> dict[str, str]:
    """The splits a folder without metadata gets: the path hash, with a small folder's validation piece."""
    splits = {path: hashed_split(path, ratios) for path in paths}
    if (moved := store_builder.validation_pick(splits, paths)) is not None:
        splits[moved] = "validation"
    return splits


def own_files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()} - {".prepare.lock"}


# ----------------------------------------------------------------------------- metadata and splits


def test_maestro_tree_follows_metadata_and_skips_bad_files(tmp_path: Path, capsys) -> None:
    data_dir = maestro_tree(tmp_path / "maestro")
    out = tmp_path / "prepared"
    assert run_cli("--data", str(data_dir), "--out", str(out)) == 0
    captured = capsys.readouterr()

    data = PreparedData.open(out)
    manifest = data.manifest
    unlisted_split = hashed_split("extra/unlisted.mid", (0.9, 0.05, 0.05))
    assert contents(out) == expected_contents(data_dir, {**GOOD, "extra/unlisted.mid": unlisted_split})
    sources = {entry["path"]: entry["split_source"] for entry in manifest["files"]}
    assert sources == {**{path: "metadata" for path in GOOD}, "extra/unlisted.mid": "hash"}
    for entry in manifest["files"]:
        assert entry["sha256"] == hashlib.sha256((data_dir / entry["path"]).read_bytes()).hexdigest()
        assert entry["num_notes"] > 0 and entry["seconds"] > 0

    reasons = {item["path"]: item["reason"] for item in manifest["skipped"]}
    assert set(reasons) == set(BAD)
    for path, (_kind, word) in BAD.items():
        assert word in reasons[path], (path, reasons[path])
        assert f"warning: skipped {path}: {reasons[path]}" in captured.err
    assert "Traceback" not in captured.err

    totals = manifest["totals"]
    assert totals["num_files"] == len(GOOD) + 1 and totals["num_skipped"] == len(BAD)
    assert totals["num_tokens"] == sum(e["num_tokens"] for e in manifest["files"])
    assert totals["num_notes"] == sum(info["num_notes"] for info in manifest["splits"].values())
    assert manifest["split_method"]["metadata"] == ["maestro-v3.0.0.csv"]
    assert load_tokenizer(data.tokenizer_path).hash == data.tokenizer_hash == load_tokenizer().hash
    assert manifest["tokenizer"]["config"]["tokenization"] == "MIDILike"
    assert own_files(out) == {"manifest.json", "tokenizer.json", *(i["tokens_file"] for i in manifest["splits"].values())}

    for line in ("train ", "validation ", "test ", "total ", f"skipped {len(BAD)} files", "1 files not in maestro-v3.0.0.csv"):
        assert line in captured.out


def test_parallel_workers_give_the_same_result(tmp_path: Path) -> None:
    data_dir = maestro_tree(tmp_path / "maestro")
    one = prepare(data_dir, tmp_path / "one", workers=1, progress=False).manifest
    two = prepare(data_dir, tmp_path / "two", workers=2, progress=False).manifest
    assert one == two
    assert contents(tmp_path / "one") == contents(tmp_path / "two")


def test_metadata_formats(tmp_path: Path) -> None:
    names = ["2004/x.midi", "2006/y.midi", "2006/z.midi"]
    splits = ["train", "validation", "test"]
    v3 = tmp_path / "v3" / "maestro-v3.0.0"
    v3.mkdir(parents=True)
    (v3 / "maestro-v3.0.0.json").write_text(json.dumps({
        "split": {str(i): s for i, s in enumerate(splits)},
        "midi_filename": {str(i): n for i, n in enumerate(names)},
    }))
    metadata = load_metadata(tmp_path / "v3")
    assert metadata.sources == ("maestro-v3.0.0/maestro-v3.0.0.json",)
    assert metadata.split_of == {f"maestro-v3.0.0/{n}": s for n, s in zip(names, splits)}

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "maestro-v2.0.0.json").write_text(json.dumps([{"split": s, "midi_filename": n} for n, s in zip(names, splits)]))
    assert load_metadata(v2).split_of == dict(zip(names, splits))

    # CSV beats the JSON of the same version; a newer version beats an older one.
    write_metadata_csv(v2 / "maestro-v2.0.0.csv", [(n, "test") for n in names])
    assert load_metadata(v2).sources == ("maestro-v2.0.0.csv",)
    write_metadata_csv(v2 / "maestro-v1.0.0.csv", [(n, "train") for n in names])
    assert set(load_metadata(v2).split_of.values()) == {"test"}
    assert load_metadata(tmp_path / "v2" / "nothing-here") is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "cannot read metadata"),
        ('{"split": [1, 2]}', "neither a list of records nor a column table"),
        ('[{"split": "train"}]', "lacks the 'split' and 'midi_filename' columns"),
    ],
)
def test_bad_metadata_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "maestro-v2.0.0.json").write_text(text)
    with pytest.raises(UserError, match=message):
        load_metadata(tmp_path)


def test_invalid_split_name_in_metadata_skips_the_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_performance(data_dir / "a.mid", seed=1)
    write_performance(data_dir / "b.mid", seed=2)
    write_metadata_csv(data_dir / "maestro-v3.0.0.csv", [("a.mid", "train"), ("b.mid", "../evil")])
    manifest = prepare(data_dir, tmp_path / "out", workers=1, progress=False).manifest
    assert [e["path"] for e in manifest["files"]] == ["a.mid"]
    assert "invalid split" in manifest["skipped"][0]["reason"]


def test_hashed_split_is_deterministic_and_follows_ratios() -> None:
    paths = [f"folder{i % 7}/piece_{i}.mid" for i in range(20000)]
    ratios = parse_split_ratios("0.8,0.15,0.05")
    first = [hashed_split(p, ratios) for p in paths]
    assert first == [hashed_split(p, ratios) for p in paths]
    for name, ratio in zip(("train", "validation", "test"), ratios):
        assert abs(first.count(name) / len(paths) - ratio) < 0.01
    assert {hashed_split(p, parse_split_ratios("3,1,0")) for p in paths} == {"train", "validation"}
    assert {hashed_split(p, parse_split_ratios("0,0,1")) for p in paths} == {"test"}


@pytest.mark.parametrize("text", ["0.9,0.1", "a,b,c", "0,0,0", "-1,1,1", "nan,1,1", "inf,1,1"])
def test_bad_split_ratios(text: str) -> None:
    with pytest.raises(UserError, match="--split-ratios"):
        parse_split_ratios(text)


def test_tree_without_metadata_uses_the_path_hash(tmp_path: Path) -> None:
    data_dir = plain_tree(tmp_path / "plain")
    (data_dir / "set0" / "UPPER.MID").write_bytes((data_dir / "set0" / "piece0.mid").read_bytes())
    assert find_midi_files(data_dir)[:2] == ["set0/UPPER.MID", "set0/piece0.mid"]
    assert run_cli("--data", str(data_dir), "--out", str(tmp_path / "a"), "--split-ratios", "2,1,1") == 0
    assert run_cli("--data", str(data_dir), "--out", str(tmp_path / "b"), "--split-ratios", "2,1,1") == 0
    expected = {p: hashed_split(p, (0.5, 0.25, 0.25)) for p in find_midi_files(data_dir)}
    assert len(set(expected.values())) == 3
    assert contents(tmp_path / "a") == contents(tmp_path / "b") == expected_contents(data_dir, expected)
    assert all(e["split_source"] == "hash" for e in PreparedData.open(tmp_path / "a").manifest["files"])


def test_held_out_copies_of_training_files_are_named(tmp_path: Path, capsys) -> None:
    """A piece held twice under two paths can land in training and in test: prepare says so and
    records each such pair, on the first run and on a re-run that reuses the tokens."""
    data_dir = plain_tree(tmp_path / "plain")
    copies = [f"copies/mass_{i}.mid" for i in range(8)]
    (data_dir / "copies").mkdir()
    for name in copies:
        (data_dir / name).write_bytes((data_dir / "set0" / "piece0.mid").read_bytes())
    ratios = (0.5, 0.25, 0.25)
    twins = ["set0/piece0.mid", *copies]
    in_train = sorted(p for p in twins if hashed_split(p, ratios) == "train")
    held_out = sorted(p for p in twins if hashed_split(p, ratios) != "train")
    assert in_train and held_out  # the path hash scatters the copies over the splits
    expected = [{"path": p, "same_as": in_train[0]} for p in held_out]
    for _ in range(2):  # the second run reuses every file's tokens
        assert run_cli("--data", str(data_dir), "--out", str(tmp_path / "out"), "--split-ratios", "2,1,1") == 0
        assert PreparedData.open(tmp_path / "out").manifest["held_out_repeats"] == expected
        out = capsys.readouterr().out
        assert f"note: {len(held_out)} validation/test files are token for token a training file" in out
        assert f"e.g. {held_out[0]} = {in_train[0]}" in out
    assert run_cli("--data", str(plain_tree(tmp_path / "distinct")), "--out", str(tmp_path / "d")) == 0
    assert PreparedData.open(tmp_path / "d").manifest["held_out_repeats"] == []
    assert "token for token" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- incremental re-runs


@pytest.fixture
def count_encodes(monkeypatch) -> list[str]:
    """Record every file the tokenizer encodes (in-process runs, workers=1)."""
    calls: list[str] = []
    original = PerformanceTokenizer.encode_file

    def counting(self, path):
        calls.append(Path(path).name)
        return original(self, path)

    monkeypatch.setattr(PerformanceTokenizer, "encode_file", counting)
    return calls


def test_rerun_reuses_unchanged_files_and_picks_up_changes(tmp_path: Path, count_encodes: list[str]) -> None:
    data_dir = plain_tree(tmp_path / "plain", count=6)
    out = tmp_path / "out"
    first = prepare(data_dir, out, workers=1, progress=False)
    assert (first.tokenized, first.reused, len(count_encodes)) == (6, 0, 6)
    first_contents = contents(out)

    count_encodes.clear()
    again = prepare(data_dir, out, workers=1, progress=False)
    assert (again.tokenized, again.reused, count_encodes) == (0, 6, [])
    assert again.manifest["generation"] == 2
    assert contents(out) == first_contents

    # Change one file, add one, remove one, rename one (same content: reused).
    write_performance(data_dir / "set1/piece1.mid", seed=555)
    write_performance(data_dir / "new/added.mid", seed=556)
    (data_dir / "set2/piece2.mid").unlink()
    (data_dir / "set0/piece3.mid").rename(data_dir / "set0/renamed.mid")
    count_encodes.clear()
    third = prepare(data_dir, out, workers=1, progress=False)
    assert sorted(count_encodes) == ["added.mid", "piece1.mid"]
    assert (third.tokenized, third.reused) == (2, 4)
    paths = find_midi_files(data_dir)
    assert "set2/piece2.mid" not in paths and "set0/renamed.mid" in paths
    assert contents(out) == expected_contents(data_dir, hashed_splits(paths, (0.9, 0.05, 0.05)))
    manifest = PreparedData.open(out).manifest
    assert own_files(out) == {"manifest.json", "tokenizer.json", *(i["tokens_file"] for i in manifest["splits"].values())}
    assert all("g000003" in i["tokens_file"] for i in manifest["splits"].values())


def test_changed_split_ratios_move_files_without_re_tokenizing(tmp_path: Path, count_encodes: list[str]) -> None:
    data_dir = plain_tree(tmp_path / "plain", count=6)
    prepare(data_dir, tmp_path / "out", workers=1, progress=False, split_ratios=(1.0, 0.0, 0.0))
    count_encodes.clear()
    prepare(data_dir, tmp_path / "out", workers=1, progress=False, split_ratios=(0.0, 0.0, 1.0))
    assert count_encodes == []
    assert PreparedData.open(tmp_path / "out").splits == ["test"]
    assert contents(tmp_path / "out") == expected_contents(data_dir, {p: "test" for p in find_midi_files(data_dir)})


def other_tokenizer(tmp_path: Path) -> Path:
    """A different (16 velocity bins) miditok config saved next to the tests' data."""
    path = tmp_path / "velocity16.json"
    load_tokenizer().save(path)
    saved = json.loads(path.read_text())
    saved["config"]["num_velocities"] = 16
    path.write_text(json.dumps(saved))
    return path


def test_a_different_tokenizer_re_tokenizes_everything(tmp_path: Path, capsys) -> None:
    data_dir = plain_tree(tmp_path / "plain", count=4)
    out = tmp_path / "out"
    assert run_cli("--data", str(data_dir), "--out", str(out)) == 0
    old_hash = PreparedData.open(out).tokenizer_hash
    capsys.readouterr()
    new_config = other_tokenizer(tmp_path)
    assert run_cli("--data", str(data_dir), "--out", str(out), "--tokenizer", str(new_config)) == 0
    printed = capsys.readouterr().out
    assert "tokenized 4 files, reused 0" in printed and "re-tokenized every file" in printed
    data = PreparedData.open(out)
    new = load_tokenizer(new_config)
    assert data.tokenizer_hash == new.hash != old_hash
    assert load_tokenizer(data.tokenizer_path).hash == new.hash
    assert len(data.vocab) == len(new.vocab) == 391 - 16
    expected = hashed_splits(find_midi_files(data_dir), (0.9, 0.05, 0.05))
    assert contents(out) == expected_contents(data_dir, expected, tokenizer=new)
    with pytest.raises(UserError, match="prepared with tokenizer"):
        PreparedData.open(out, expected_tokenizer_hash=old_hash)


# ----------------------------------------------------------------------------- crash safety


def _crash_after(monkeypatch, name: str, calls: int = 1) -> None:
    """Make `store_builder.<name>` do its job `calls` times, then die as a killed process would."""
    original = getattr(store_builder, name)
    seen = []

    def wrapper(*args, **kwargs):
        if len(seen) == calls:
            raise RuntimeError(f"injected crash before {name} call {calls + 1}")
        seen.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(store_builder, name, wrapper)


RATIOS = (0.5, 0.25, 0.25)


@pytest.mark.parametrize(
    "step, calls, committed",
    [
        ("_write_tokens", 0, False),  # before any new token file
        ("_write_tokens", 1, False),  # between two split files
        ("_write_tokenizer", 0, False),  # all token files written, tokenizer not
        ("write_json_atomic", 0, False),  # everything but the manifest
        ("_remove_stale", 0, True),  # manifest replaced, old generation not yet removed
    ],
)
def test_a_crash_at_any_step_leaves_valid_data(tmp_path: Path, monkeypatch, step: str, calls: int, committed: bool) -> None:
    data_dir = plain_tree(tmp_path / "plain", count=12)
    out = tmp_path / "out"
    prepare(data_dir, out, workers=1, progress=False, split_ratios=RATIOS)
    before = contents(out)
    assert len({split for split, _ in before.values()}) == 3
    write_performance(data_dir / "set1/piece1.mid", seed=777)
    write_performance(data_dir / "new/added.mid", seed=778)
    (data_dir / "set2/piece2.mid").unlink()
    after = expected_contents(data_dir, hashed_splits(find_midi_files(data_dir), RATIOS))
    assert before != after

    with monkeypatch.context() as patch:
        _crash_after(patch, step, calls)
        with pytest.raises(RuntimeError, match="injected crash"):
            prepare(data_dir, out, workers=1, progress=False, split_ratios=RATIOS)
    assert contents(out) == (after if committed else before)

    result = prepare(data_dir, out, workers=1, progress=False, split_ratios=RATIOS)
    assert result.tokenized == (0 if committed else 2)
    assert contents(out) == after
    manifest = PreparedData.open(out).manifest
    assert own_files(out) == {"manifest.json", "tokenizer.json", *(i["tokens_file"] for i in manifest["splits"].values())}


FILESYSTEM_STEPS = ((tempfile, "mkstemp"), (os, "fsync"), (os, "replace"), (os, "unlink"))


def _run_killed_at(step: int, data_dir: Path, out: Path, **options) -> bool:
    """Run `prepare` in a forked child that SIGKILLs itself at its `step`-th filesystem operation
    (temp file creation, fsync, rename, delete); True if it was killed before finishing.
    `options` go to `prepare` (default: the split ratios of these tests)."""
    pid = os.fork()
    if pid == 0:  # the child: no cleanup code runs after the kill, as with a real power cut
        count = 0

        def counted(original):
            def wrapper(*args, **kwargs):
                nonlocal count
                count += 1
                if count == step:
                    os.kill(os.getpid(), signal.SIGKILL)
                return original(*args, **kwargs)
            return wrapper

        code = 1
        try:
            for module, name in FILESYSTEM_STEPS:
                setattr(module, name, counted(getattr(module, name)))
            prepare(data_dir, out, workers=1, progress=False, **(options or {"split_ratios": RATIOS}))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0, "prepare failed in the child"
    return os.WIFSIGNALED(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_kill_at_every_filesystem_step_leaves_valid_data(tmp_path: Path) -> None:
    data_dir = plain_tree(tmp_path / "plain", count=12)
    pristine = tmp_path / "pristine"
    prepare(data_dir, pristine, workers=1, progress=False, split_ratios=RATIOS)
    before = contents(pristine)
    write_performance(data_dir / "set1/piece1.mid", seed=777)
    write_performance(data_dir / "new/added.mid", seed=778)
    (data_dir / "set2/piece2.mid").unlink()
    after = expected_contents(data_dir, hashed_splits(find_midi_files(data_dir), RATIOS))

    states = []
    for step in range(1, 200):
        out = tmp_path / f"out{step}"
        shutil.copytree(pristine, out)
        killed = _run_killed_at(step, data_dir, out)
        state = contents(out)
        assert state in (before, after), f"killed at filesystem step {step}"
        states.append(state == after)
        prepare(data_dir, out, workers=1, progress=False, split_ratios=RATIOS)  # recovers fully
        assert contents(out) == after
        manifest = PreparedData.open(out).manifest
        assert own_files(out) == {"manifest.json", "tokenizer.json",
                                  *(i["tokens_file"] for i in manifest["splits"].values())}
        shutil.rmtree(out)
        if not killed:
            break
    assert not killed, "prepare did more filesystem steps than expected"
    assert len(states) > 15 and states[0] is False and states[-1] is True
    assert states == sorted(states)  # old data up to the manifest rename, new data after it


# ----------------------------------------------------------------------------- exit codes


def test_exit_codes_and_one_line_errors(tmp_path: Path, capsys) -> None:
    def error_of(*args: str) -> str:
        capsys.readouterr()
        assert run_cli(*args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith("perceiver-music prepare: error: ")
        assert all(line.startswith("warning: skipped ") for line in lines[:-1])
        return lines[-1]

    out = str(tmp_path / "out")
    assert "does not exist" in error_of("--data", str(tmp_path / "nowhere"), "--out", out)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no MIDI here")
    assert "no .mid or .midi files" in error_of("--data", str(tmp_path / "empty"), "--out", out)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.mid").write_bytes(b"garbage")
    (bad / "y.midi").write_bytes(b"")
    assert "none of the 2 MIDI files" in error_of("--data", str(bad), "--out", out)
    assert not (tmp_path / "out").exists()  # a failed first run leaves no folder behind

    good = plain_tree(tmp_path / "good", count=2)
    assert "neither empty nor a prepared folder" in error_of("--data", str(good), "--out", str(good))
    assert "--split-ratios" in error_of("--data", str(good), "--out", out, "--split-ratios", "1,2")
    assert "unknown tokenizer preset" in error_of("--data", str(good), "--out", out, "--tokenizer", "nope")
    capsys.readouterr()
    # argparse refuses it before anything runs, in one line
    assert cli_main(["prepare", "--data", str(good), "--out", out, "--workers", "0"]) == 2
    assert "argument --workers: must be a whole number in [1, 1024], got 0" in capsys.readouterr().err

    # A good run, then a run on only bad files: exit 2 and the prepared data is untouched.
    assert run_cli("--data", str(good), "--out", out) == 0
    before = contents(Path(out))
    assert "none of the 2 MIDI files" in error_of("--data", str(bad), "--out", out)
    assert contents(Path(out)) == before


def test_corrupt_previous_manifest_is_rebuilt(tmp_path: Path, capsys) -> None:
    data_dir = plain_tree(tmp_path / "plain", count=3)
    out = tmp_path / "out"
    prepare(data_dir, out, workers=1, progress=False)
    (out / "manifest.json").write_text("{ truncated")
    result = prepare(data_dir, out, workers=1, progress=False)
    assert "ignoring the previous preparation" in capsys.readouterr().err
    assert result.tokenized == 3 and result.manifest["generation"] == 1
    assert {path.split("#")[0] for path in contents(out)} == {f"set{i}/piece{i}.mid" for i in range(3)}  # (ends held out)


LOCK_HOLDER = """
import fcntl, sys, time
handle = open(sys.argv[1], "a")
fcntl.lockf(handle, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file locks")
def test_a_second_concurrent_prepare_is_refused(tmp_path: Path) -> None:
    import subprocess

    data_dir = plain_tree(tmp_path / "plain", count=2)
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out / ".prepare.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"  # as a running prepare holds it
        with pytest.raises(UserError, match="another 'perceiver-music prepare' is writing"):
            prepare(data_dir, out, workers=1, progress=False)
    finally:
        holder.kill()
        holder.wait()
    files = prepare(data_dir, out, workers=1, progress=False).manifest["files"]  # died: lock gone
    assert len({entry["path"].split("#")[0] for entry in files}) == 2


def test_the_same_folder_is_refused_within_one_process(tmp_path: Path, monkeypatch) -> None:
    data_dir = plain_tree(tmp_path / "plain", count=2)
    out = tmp_path / "out"
    original = store_builder._prepare_locked
    inner: list[str] = []

    def nested(*args, **kwargs):
        with pytest.raises(UserError, match="another 'perceiver-music prepare' is writing") as caught:
            prepare(data_dir, out, workers=1, progress=False)
        inner.append(str(caught.value))
        return original(*args, **kwargs)

    monkeypatch.setattr(store_builder, "_prepare_locked", nested)
    prepare(data_dir, out, workers=1, progress=False)
    assert len(inner) == 1


def test_the_lock_is_not_held_by_pool_workers(tmp_path: Path, monkeypatch) -> None:
    """A worker forked while the parent holds the lock does not hold it: a POSIX record lock."""
    import fcntl
    import multiprocessing

    out = tmp_path / "out"
    out.mkdir()
    with store_builder._exclusive_lock(out):
        child = multiprocessing.get_context("fork").Process(target=time_sleep, args=(30,))
        child.start()
    try:
        with open(out / ".prepare.lock", "a") as handle:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free although the child lives
    finally:
        child.kill()
        child.join()


def time_sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


def test_a_failed_first_run_leaves_no_folder(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.mid").write_bytes(b"garbage")
    out = tmp_path / "new" / "out"
    with pytest.raises(UserError, match="none of the 1 MIDI files"):
        prepare(bad, out, workers=1, progress=False)
    assert not out.exists()


@pytest.mark.parametrize("where", ["under_a_file", "is_a_file"])
def test_unwritable_out_is_refused_before_tokenizing(tmp_path: Path, capsys, where: str, count_encodes) -> None:
    data_dir = plain_tree(tmp_path / "plain", count=2)
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "out" if where == "under_a_file" else tmp_path / "file"
    assert cli_main(["prepare", "--data", str(data_dir), "--out", str(out), "--no-progress", "--workers", "1"]) == 2
    line = capsys.readouterr().err.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("perceiver-music prepare: error: --out ")
    assert count_encodes == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_kill_during_a_tokenizer_change_leaves_a_matching_tokenizer(tmp_path: Path) -> None:
    data_dir = plain_tree(tmp_path / "plain", count=3)
    pristine = tmp_path / "pristine"
    prepare(data_dir, pristine, workers=1, progress=False)
    old_hash = PreparedData.open(pristine).tokenizer_hash
    spec = str(other_tokenizer(tmp_path))
    new_hash = load_tokenizer(spec).hash
    seen = set()
    for step in range(1, 60):
        out = tmp_path / f"out{step}"
        shutil.copytree(pristine, out)
        killed = _run_killed_at(step, data_dir, out, tokenizer_spec=spec)
        data = PreparedData.open(out)
        assert load_tokenizer(data.tokenizer_path).hash == data.tokenizer_hash, f"killed at step {step}"
        seen.add(data.tokenizer_hash)
        shutil.rmtree(out)
        if not killed:
            break
    assert not killed and seen == {old_hash, new_hash}
    # The change goes to tokenizer-g2.json; the next run with the same tokenizer moves it back.
    prepare(data_dir, pristine, workers=1, progress=False, tokenizer_spec=spec)
    assert PreparedData.open(pristine).manifest["tokenizer"]["file"] == "tokenizer-g000002.json"
    prepare(data_dir, pristine, workers=1, progress=False, tokenizer_spec=spec)
    data = PreparedData.open(pristine)
    assert data.manifest["tokenizer"]["file"] == "tokenizer.json"
    assert load_tokenizer(data.tokenizer_path).hash == new_hash
    assert own_files(pristine) == {"manifest.json", "tokenizer.json",
                                   *(i["tokens_file"] for i in data.manifest["splits"].values())}


# ----- small folders and the project's cache -----
@pytest.mark.parametrize("count", [4, 6])
def test_a_small_folder_always_gets_a_validation_piece(tmp_path: Path, count: int) -> None:
    data = tmp_path / "midi"
    data.mkdir()
    for i in range(count):
        write_performance(data / f"piece{i}.mid", seed=i)
    result = store_builder.prepare(data, tmp_path / "out", progress=False)
    splits = {name: info["num_files"] for name, info in result.manifest["splits"].items()}
    assert splits.get("validation", 0) == 1 and splits.get("train", 0) >= 1, splits
    assert sum(splits.values()) == count
    assert any("moved to validation" in notice for notice in result.notices) or count > 4


@pytest.mark.parametrize("count", [2, 3])
def test_a_folder_of_two_or_three_pieces_holds_out_the_end_of_each(tmp_path: Path, count: int) -> None:
    data = tmp_path / "midi"
    data.mkdir()
    for i in range(count):
        write_performance(data / f"piece{i}.mid", seed=i, num_notes=200)
    result = store_builder.prepare(data, tmp_path / "out", progress=False)
    (notice,) = [n for n in result.notices if "held out" in n]
    assert notice.startswith(f"{count} pieces, too few to hold one out: each one's last 10% (")
    prepared = PreparedData.open(tmp_path / "out")
    assert set(prepared.splits) == {"train", "validation"}  # no piece lost to validation or test
    heads = {e["path"]: ids.tolist() for e, ids in zip(prepared.files("train"), prepared.pieces("train"))}
    tails = {e["path"]: ids.tolist() for e, ids in zip(prepared.files("validation"), prepared.pieces("validation"))}
    assert sorted(heads) == [f"piece{i}.mid" for i in range(count)]
    for path, head in heads.items():
        whole = load_tokenizer().encode_file(data / path).ids.tolist()
        tail = tails[path + store_builder.HELD_OUT_END]
        assert head + tail == whole and 0.1 * len(whole) <= len(tail) < 0.15 * len(whole)
    rejoined = {path: ids.tolist() for path, ids in prepared.whole_pieces(prepared.splits)}  # what `stats` reads
    assert rejoined == {path: heads[path] + tails[path + store_builder.HELD_OUT_END] for path in heads}
    write_performance(data / "piece9.mid", seed=9)  # one more piece: four hold out a whole one again
    again = store_builder.prepare(data, tmp_path / "out", progress=False)
    splits = {name: info["num_files"] for name, info in again.manifest["splits"].items()}
    if count == 2:  # three pieces: the end of each
        assert splits == {"train": 3, "validation": 3}, splits
    else:  # four pieces: one of them
        assert splits.get("validation") == 1 and sum(splits.values()) == 4, splits


def test_a_folder_of_one_piece_holds_out_its_end_as_validation(tmp_path: Path) -> None:
    data = tmp_path / "midi"
    data.mkdir()
    write_performance(data / "only.mid", seed=1, num_notes=200)
    result = store_builder.prepare(data, tmp_path / "out", progress=False)
    (notice,) = [n for n in result.notices if "held out" in n]
    assert notice.startswith("one piece (only.mid): its last ") and "validation windows" in notice
    prepared = PreparedData.open(tmp_path / "out")
    train, validation = prepared.pieces("train"), prepared.pieces("validation")
    assert len(train) == len(validation) == 1
    whole = load_tokenizer().encode_file(data / "only.mid").ids.tolist()
    head, tail = train[0].tolist(), validation[0].tolist()
    assert head + tail == whole and 0.1 * len(whole) <= len(tail) < 0.15 * len(whole)
    again = store_builder.prepare(data, tmp_path / "out", progress=False)  # a rerun gives the same parts
    assert [p.tolist() for p in PreparedData.open(tmp_path / "out").pieces("validation")] == [tail]
    assert again.tokenized == 1


def test_a_midi_folder_is_prepared_into_the_projects_cache_not_into_itself(tmp_path: Path, monkeypatch, capsys) -> None:
    data = plain_tree(tmp_path / "mine", count=3)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    monkeypatch.setenv("PERCEIVER_MUSIC_CACHE", str(tmp_path / "cache"))
    out = store_builder.ensure_prepared(data, progress=False)
    assert out.parent == tmp_path / "cache" / "prepared" and out.name.startswith("mine-")
    assert (out / "manifest.json").is_file() and sorted(p.relative_to(data) for p in data.rglob("*")) == before
    assert store_builder.ensure_prepared(data, progress=False) == out  # the same folder next time
    # a preparation an earlier version left in the folder is still used
    legacy = data / store_builder.PREPARED_CACHE_NAME
    shutil.copytree(out, legacy)
    assert store_builder.ensure_prepared(data, progress=False) == legacy
