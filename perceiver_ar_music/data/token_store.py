"""The token store: read a prepared folder (written by `store_builder`): token arrays per split
plus their manifest.

Layout of a prepared folder::

    manifest.json                   # the one source of truth, replaced last by an atomic rename
    tokenizer.json                  # the tokenizer the tokens were made with (miditok params);
                                    # tokenizer-g<N>.json for one generation after a change
    tokens-g000003-train.u16        # every train piece's ids back to back, little-endian uint16
    tokens-g000003-validation.u16   # ... one file per split, named by the preparation generation
    tokens-g000003-test.u16

Each manifest entry under ``files`` gives a piece's ``split``, ``offset`` and ``num_tokens`` in its
split's token file, so a piece is a zero-copy slice of one memory map. Pieces hold no BOS/EOS.
Reading needs only numpy and the manifest (the vocabulary is stored in it), not the MIDI stack.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.data.vocab import EventVocab

HELD_OUT_END = "#held-out-end"  # suffix of the validation part of a piece whose end is held out

MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
FORMAT = "perceiver-ar-music/prepared"
FORMAT_VERSION = 1
TOKEN_DTYPE = np.dtype("<u2")
SPLIT_ORDER = ("train", "validation", "test")

_TOKENIZER_FILE = re.compile(r"tokenizer(-g\d{6})?\.json")  # the manifest's tokenizer "file"
_FILE_KEYS = ("path", "split", "offset", "num_tokens", "num_notes", "seconds", "sha256")


def token_file_name(generation: int, split: str) -> str:
    """Name of a split's token file in a given preparation generation."""
    return f"tokens-g{generation:06d}-{split}.u16"


def ordered_splits(names: "set[str] | list[str]") -> list[str]:
    """Split names with train, validation, test first, then any others alphabetically."""
    known = [name for name in SPLIT_ORDER if name in names]
    return known + sorted(set(names) - set(SPLIT_ORDER))


def short_hash(value: str) -> str:
    """The first 8 characters of a hash, as shown in messages."""
    return value[:8]


class PreparedData:
    """A validated prepared folder: manifest, vocabulary and memory-mapped token pieces."""

    def __init__(self, root: Path, manifest: dict[str, Any], vocab: EventVocab) -> None:
        self.root = root
        self.manifest = manifest
        self.vocab = vocab
        self._maps: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, directory: "str | Path", expected_tokenizer_hash: str | None = None) -> "PreparedData":
        """Open and check a prepared folder; a clear `UserError` for anything unusable."""
        root = Path(directory)
        manifest_path = root / MANIFEST_NAME
        if not manifest_path.is_file():
            raise UserError(
                f"{root} is not a prepared folder (no {MANIFEST_NAME}): "
                f"run 'perceiver-music prepare --data MIDI_DIR --out {root}' first"
            )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _corrupt(root, f"unreadable JSON ({exc.__class__.__name__})") from None
        vocab = _check_manifest(root, manifest)
        data = cls(root, manifest, vocab)
        data._check_ids()
        if expected_tokenizer_hash is not None and expected_tokenizer_hash != data.tokenizer_hash:
            raise UserError(
                f"{root} was prepared with tokenizer {short_hash(data.tokenizer_hash)}, but the model uses "
                f"{short_hash(expected_tokenizer_hash)}: re-run 'perceiver-music prepare' with "
                f"--tokenizer set to the model's tokenizer"
            )
        return data

    @property
    def tokenizer_hash(self) -> str:
        return self.manifest["tokenizer"]["hash"]

    @property
    def tokenizer_path(self) -> Path:
        """The saved tokenizer JSON, checked against the manifest (loadable with `load_tokenizer`)."""
        name = self.manifest["tokenizer"].get("file", TOKENIZER_NAME)
        path = self.root / name
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            raise _corrupt(self.root, f"{name} is missing") from None
        if digest != self.manifest["tokenizer"]["file_sha256"]:
            raise _corrupt(self.root, f"{name} does not match the manifest")
        return path

    @property
    def splits(self) -> list[str]:
        """Names of the splits that hold at least one piece."""
        return ordered_splits(list(self.manifest["splits"]))

    def files(self, split: str) -> list[dict[str, Any]]:
        """Manifest entries of a split, in the same order as `pieces(split)`."""
        self._check_split(split)
        return [entry for entry in self.manifest["files"] if entry["split"] == split]

    def pieces(self, split: str) -> list[np.ndarray]:
        """Each piece of a split as a read-only uint16 view into the split's memory-mapped file."""
        tokens = self.tokens(split)
        return [tokens[e["offset"] : e["offset"] + e["num_tokens"]] for e in self.files(split)]

    def whole_pieces(self, splits: list[str] | tuple[str, ...]) -> list[tuple[str, np.ndarray]]:
        """(path, ids) of every piece of `splits`, a piece whose end was held out as validation
        windows (a small folder's, see `store_builder.ensure_validation`) joined again when both
        parts are in `splits`: one entry per MIDI file, for statistics of the music."""
        parts: dict[str, list[np.ndarray]] = {}
        for split in splits:
            for entry, ids in zip(self.files(split), self.pieces(split)):
                path = entry["path"].removesuffix(HELD_OUT_END)
                parts.setdefault(path, [])
                if entry["path"].endswith(HELD_OUT_END):
                    parts[path].append(ids)
                else:
                    parts[path].insert(0, ids)
        return [(path, np.concatenate(pieces) if len(pieces) > 1 else pieces[0]) for path, pieces in parts.items()]

    def tokens(self, split: str) -> np.ndarray:
        """All of a split's ids back to back (read-only memory map)."""
        self._check_split(split)
        if split not in self._maps:
            path = self.root / self.manifest["splits"][split]["tokens_file"]
            self._maps[split] = np.memmap(path, dtype=TOKEN_DTYPE, mode="r")
        return self._maps[split]

    def _check_ids(self) -> None:
        """Every stored id is in the vocabulary (an id outside it would crash the model's
        embedding in the middle of a run): one pass over the memory maps, milliseconds per
        million tokens."""
        for split in self.splits:
            tokens = self.tokens(split)
            for start in range(0, len(tokens), ID_CHECK_BLOCK):
                highest = int(tokens[start : start + ID_CHECK_BLOCK].max())
                if highest >= len(self.vocab):
                    raise _corrupt(self.root, f"token file {self.manifest['splits'][split]['tokens_file']} holds id "
                                              f"{highest}, outside the vocabulary of {len(self.vocab)}")

    def _check_split(self, split: str) -> None:
        if split not in self.manifest["splits"]:
            present = ", ".join(self.splits) or "none"
            raise UserError(f"{self.root} has no split '{split}' (splits present: {present})")

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (handed to other processes) without its memory maps: they are mapped again on use."""
        return {**self.__dict__, "_maps": {}}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self.manifest['splits'][s]['num_files']}" for s in self.splits)
        return f"PreparedData({str(self.root)!r}, tokenizer={short_hash(self.tokenizer_hash)}, {sizes})"


ID_CHECK_BLOCK = 1 << 24  # ids checked per step (32 MB of uint16)


def _corrupt(root: Path, detail: str) -> UserError:
    return UserError(
        f"{root / MANIFEST_NAME} is corrupt or incomplete ({detail}): re-run 'perceiver-music prepare'"
    )


def _check_manifest(root: Path, manifest: Any) -> EventVocab:
    """Validate the manifest's structure against the token files on disk; return its vocabulary."""
    try:
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise _corrupt(root, "not a prepared-data manifest")
        if manifest.get("version") != FORMAT_VERSION:
            raise _corrupt(root, f"format version {manifest.get('version')!r}, expected {FORMAT_VERSION}")
        if not isinstance(manifest["generation"], int):
            raise _corrupt(root, "generation is not a number")
        tokenizer = manifest["tokenizer"]
        if not isinstance(tokenizer["hash"], str) or not isinstance(tokenizer["file_sha256"], str):
            raise _corrupt(root, "tokenizer hash missing")
        if not _TOKENIZER_FILE.fullmatch(str(tokenizer.get("file", TOKENIZER_NAME))):
            raise _corrupt(root, f"bad tokenizer file name {tokenizer.get('file')!r}")
        vocab_info = manifest["vocab"]
        vocab = EventVocab.from_token_map(
            {name: idx for idx, name in enumerate(vocab_info["tokens"])},
            seconds_per_beat=float(vocab_info["seconds_per_beat"]),
        )
        next_offset: dict[str, int] = {split: 0 for split in manifest["splits"]}
        for entry in manifest["files"]:
            missing = [key for key in _FILE_KEYS if key not in entry]
            if missing:
                raise _corrupt(root, f"file entry lacks {', '.join(missing)}")
            split = entry["split"]
            if split not in next_offset or entry["offset"] != next_offset[split] or entry["num_tokens"] <= 0:
                raise _corrupt(root, f"bad offsets for {entry['path']}")
            next_offset[split] += entry["num_tokens"]
        for split, info in manifest["splits"].items():
            if info["num_tokens"] != next_offset[split] or info["num_tokens"] <= 0:
                raise _corrupt(root, f"split '{split}' token count disagrees with its files")
            path = root / info["tokens_file"]
            if Path(info["tokens_file"]).name != info["tokens_file"] or not path.is_file():
                raise _corrupt(root, f"token file {info['tokens_file']} is missing")
            if path.stat().st_size != info["num_tokens"] * TOKEN_DTYPE.itemsize:
                raise _corrupt(root, f"token file {info['tokens_file']} has the wrong size")
        if not isinstance(manifest["skipped"], list):
            raise _corrupt(root, "'skipped' is not a list")
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _corrupt(root, f"{exc.__class__.__name__}: {exc}") from None
    return vocab
