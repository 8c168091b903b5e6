"""The prepared-data reader: pieces as memory-mapped views, and a clear error for every bad folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.data.token_store import FORMAT, FORMAT_VERSION, PreparedData, token_file_name

TOKEN_NAMES = (
    ["PAD_None", "BOS_None", "EOS_None"]
    + [f"NoteOn_{p}" for p in range(128)]
    + [f"NoteOff_{p}" for p in range(128)]
    + [f"Velocity_{v}" for v in range(3, 128, 4)]
    + [f"TimeShift_{s // 50}.{s % 50}.50" for s in range(1, 101)]
)
TOKENIZER_HASH = "ab" * 32


def build_folder(root: Path, pieces: dict[str, list[list[int]]]) -> dict:
    """Write a prepared folder by hand (independent of the pipeline): split -> list of id lists."""
    root.mkdir(parents=True, exist_ok=True)
    tokenizer_bytes = b'{"fake": "tokenizer"}'
    (root / "tokenizer.json").write_bytes(tokenizer_bytes)
    files, splits = [], {}
    for split, ids_list in pieces.items():
        name = token_file_name(7, split)
        np.concatenate([np.array(ids, dtype="<u2") for ids in ids_list]).tofile(root / name)
        offset = 0
        for index, ids in enumerate(ids_list):
            files.append({"path": f"{split}/{index}.mid", "split": split, "offset": offset,
                          "num_tokens": len(ids), "num_notes": 1, "seconds": 1.0, "sha256": f"{split}{index}"})
            offset += len(ids)
        splits[split] = {"tokens_file": name, "num_files": len(ids_list), "num_tokens": offset,
                         "num_notes": len(ids_list), "seconds": 1.0, "hours": 0.0}
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "generation": 7,
        "tokenizer": {"hash": TOKENIZER_HASH, "file": "tokenizer.json", "config": {},
                      "file_sha256": hashlib.sha256(tokenizer_bytes).hexdigest()},
        "vocab": {"tokens": TOKEN_NAMES, "seconds_per_beat": 0.5},
        "splits": splits,
        "files": files,
        "skipped": [],
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest


PIECES = {
    "test": [[5, 6]],
    "train": [[3, 300, 131], [4, 290, 5, 291, 132, 133]],
    "validation": [[10, 11, 12]],
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    build_folder(tmp_path / "prepared", PIECES)
    return tmp_path / "prepared"


def test_pieces_are_memory_mapped_views_aligned_with_files(folder: Path) -> None:
    data = PreparedData.open(folder)
    assert data.splits == ["train", "validation", "test"]
    assert data.tokenizer_hash == TOKENIZER_HASH
    assert len(data.vocab) == 391 and data.vocab.note_on_id[60] == 63 and data.vocab.seconds_per_step == 0.01
    for split, expected in PIECES.items():
        pieces = data.pieces(split)
        assert [p.tolist() for p in pieces] == expected
        assert [f["path"] for f in data.files(split)] == [f"{split}/{i}.mid" for i in range(len(expected))]
        for piece in pieces:
            assert piece.dtype == np.uint16 and not piece.flags.writeable
            assert isinstance(piece.base, np.memmap) or isinstance(piece, np.memmap)
    assert data.tokenizer_path == folder / "tokenizer.json"
    assert "train=2" in repr(data)


def test_matching_tokenizer_hash_is_accepted(folder: Path) -> None:
    assert PreparedData.open(folder, expected_tokenizer_hash=TOKENIZER_HASH).tokenizer_hash == TOKENIZER_HASH


def test_tokenizer_hash_mismatch_names_both_hashes(folder: Path) -> None:
    with pytest.raises(UserError, match=r"prepared with tokenizer abababab, but the model uses 12345678: re-run"):
        PreparedData.open(folder, expected_tokenizer_hash="12345678" * 8)


def test_unknown_split_lists_the_present_ones(folder: Path) -> None:
    data = PreparedData.open(folder)
    with pytest.raises(UserError, match=r"no split 'dev' \(splits present: train, validation, test\)"):
        data.pieces("dev")
    with pytest.raises(UserError, match="no split 'dev'"):
        data.files("dev")


def test_not_a_prepared_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a prepared folder .*perceiver-music prepare"):
        PreparedData.open(tmp_path)
    with pytest.raises(UserError, match="is not a prepared folder"):
        PreparedData.open(tmp_path / "missing")


def _edit_manifest(folder: Path, edit) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "manifest.json").write_text('{"format": "perceiver-ar'), "unreadable JSON"),
        (lambda f: (f / "manifest.json").write_bytes(b"\xff\xfe\x00"), "unreadable JSON"),
        (lambda f: (f / "manifest.json").write_text("[1, 2]"), "not a prepared-data manifest"),
        (lambda f: _edit_manifest(f, lambda m: m.update(format="something else")), "not a prepared-data manifest"),
        (lambda f: _edit_manifest(f, lambda m: m.update(version=99)), "format version 99"),
        (lambda f: _edit_manifest(f, lambda m: m.pop("files")), "KeyError"),
        (lambda f: _edit_manifest(f, lambda m: m.update(generation="7")), "generation is not a number"),
        (lambda f: _edit_manifest(f, lambda m: m.pop("vocab")), "KeyError"),
        (lambda f: _edit_manifest(f, lambda m: m["files"][1].pop("sha256")), "lacks sha256"),
        (lambda f: _edit_manifest(f, lambda m: m["files"][2].update(offset=1)), "bad offsets"),
        (lambda f: _edit_manifest(f, lambda m: m["files"][0].update(split="nowhere")), "bad offsets"),
        (lambda f: _edit_manifest(f, lambda m: m["splits"]["train"].update(num_tokens=4)), "disagrees"),
        (lambda f: _edit_manifest(f, lambda m: m["splits"]["test"].update(tokens_file="../x.u16")), "missing"),
        (lambda f: (f / token_file_name(7, "train")).unlink(), "token file tokens-g000007-train.u16 is missing"),
        (lambda f: (f / token_file_name(7, "train")).write_bytes(b"\x00" * 10), "has the wrong size"),
    ],
)
def test_corrupt_or_incomplete_manifest_is_one_clear_error(folder: Path, damage, message: str) -> None:
    damage(folder)
    with pytest.raises(UserError, match="corrupt or incomplete") as info:
        PreparedData.open(folder)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_tokenizer_file_that_disagrees_with_the_manifest_is_reported(folder: Path) -> None:
    data = PreparedData.open(folder)
    (folder / "tokenizer.json").write_text('{"another": "tokenizer"}')
    with pytest.raises(UserError, match="tokenizer.json does not match the manifest"):
        data.tokenizer_path
    (folder / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="tokenizer.json is missing"):
        data.tokenizer_path
