"""Build a prepared folder (the token store `token_store` reads): a folder of MIDI performances ->
uint16 token files plus a manifest.

The pipeline finds ``.mid``/``.midi`` files, assigns each a split (from MAESTRO metadata when
present, else from a hash of its relative path), tokenizes new or changed files in worker
processes, reuses the tokens of unchanged files (same content hash, same tokenizer) from the
previous preparation, and writes the result as a new *generation*:

1. token files ``tokens-g<N>-<split>.u16`` (new names, each written atomically),
2. the tokenizer, under a name the committed manifest does not use for other content:
   ``tokenizer.json``, or ``tokenizer-g<N>.json`` while the old manifest still points at a
   different ``tokenizer.json`` (the next run with the same tokenizer moves it back),
3. ``manifest.json``, replaced last by one atomic rename: this is the commit point,
4. the previous generation's token and tokenizer files and stray temporaries are removed.

A run killed at any moment therefore leaves either the old or the new manifest, each pointing
only at complete files. A different tokenizer than the previous one re-tokenizes everything.

The folder's lock, ``.prepare.lock``, is a POSIX record lock: it belongs to the preparing process
alone (pool workers do not inherit it) and the kernel drops it when that process dies. Workers
are tied to the parent's life (``PR_SET_PDEATHSIG`` on Linux), so a kill -9 leaves nothing running.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import re
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from perceiver_ar_music.runtime.atomic import atomic_path, check_writable_dir, os_error_text, write_json_atomic
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.data.vocab import NOTE_ON, TIME_SHIFT
from perceiver_ar_music.data.token_store import (
    FORMAT,
    FORMAT_VERSION,
    HELD_OUT_END,
    MANIFEST_NAME,
    SPLIT_ORDER,
    TOKEN_DTYPE,
    TOKENIZER_NAME,
    PreparedData,
    ordered_splits,
    short_hash,
    token_file_name,
)

MIDI_SUFFIXES = (".mid", ".midi")
DEFAULT_SPLIT_RATIOS = (0.9, 0.05, 0.05)
_METADATA_NAME = re.compile(r"maestro-v(\d+(?:\.\d+)*)\.(csv|json)", re.IGNORECASE)
_LOCK_NAME = ".prepare.lock"
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")
_TOKEN_FILE = r"tokens-g\d{6}-[A-Za-z0-9_-]+\.u16"
_TOKENIZER_FILE = r"tokenizer(-g\d{6})?\.json"
# Files the pipeline owns in an output folder: token and tokenizer files, temporaries of
# interrupted writes.
_OWN_FILE = re.compile(
    rf"{_TOKEN_FILE}|{_TOKENIZER_FILE}|\.write-test\..*|\.+(manifest\.json|{_TOKENIZER_FILE}|{_TOKEN_FILE})\..*\.tmp"
)
_locked_here: set[Path] = set()  # folders this process is preparing (POSIX locks do not exclude it)
_locked_here_guard = threading.Lock()


# ----------------------------------------------------------------------------- finding and splitting


def find_midi_files(data_dir: Path) -> list[str]:
    """Relative POSIX paths of every ``.mid``/``.midi`` file under `data_dir` (any case), sorted."""
    found = []
    for folder, _dirs, names in os.walk(data_dir):
        for name in names:
            if name.lower().endswith(MIDI_SUFFIXES):
                found.append((Path(folder) / name).relative_to(data_dir).as_posix())
    return sorted(found)


def parse_split_ratios(text: str) -> tuple[float, float, float]:
    """``"0.9,0.05,0.05"`` -> normalized (train, validation, test) fractions."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or any(not v >= 0 for v in values) or not 0 < sum(values) < float("inf"):
        raise UserError(f"--split-ratios wants three non-negative numbers like 0.9,0.05,0.05, got '{text}'")
    total = sum(values)
    return (values[0] / total, values[1] / total, values[2] / total)


def hashed_split(rel_path: str, ratios: Sequence[float]) -> str:
    """Deterministic split of a file from a hash of its relative path (stable as files come and go)."""
    digest = hashlib.sha256(rel_path.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for name, ratio in zip(SPLIT_ORDER, ratios):
        cumulative += ratio
        if position < cumulative:
            return name
    return next(name for name, ratio in zip(reversed(SPLIT_ORDER), reversed(ratios)) if ratio > 0)


@dataclass(frozen=True)
class Metadata:
    """Splits named by MAESTRO metadata files: relative path (from the data folder) -> split."""

    sources: tuple[str, ...]  # the metadata files used, relative to the data folder
    split_of: dict[str, str]


def _metadata_records(path: Path) -> list[dict[str, Any]]:
    """Rows of a MAESTRO metadata file: CSV, list-of-records JSON (v1/v2) or columnar JSON (v3)."""
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle))
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read metadata {path}: {exc}") from None
    if isinstance(data, list) and all(isinstance(row, dict) for row in data):
        return data
    if isinstance(data, dict) and all(isinstance(column, dict) for column in data.values()):
        keys = next(iter(data.values())).keys() if data else []
        return [{name: column.get(key) for name, column in data.items()} for key in keys]
    raise UserError(f"metadata {path} is neither a list of records nor a column table")


def load_metadata(data_dir: Path) -> Metadata | None:
    """Find ``maestro-v*.csv``/``.json`` files under `data_dir` (the newest per folder, CSV first)."""
    best: dict[Path, tuple[tuple[int, ...], bool, Path]] = {}
    for folder, _dirs, names in os.walk(data_dir):
        for name in names:
            match = _METADATA_NAME.fullmatch(name)
            if match:
                rank = (tuple(int(p) for p in match.group(1).split(".")), match.group(2).lower() == "csv")
                if Path(folder) not in best or rank > best[Path(folder)][:2]:
                    best[Path(folder)] = (*rank, Path(folder) / name)
    if not best:
        return None
    split_of: dict[str, str] = {}
    sources = []
    for folder, (_version, _csv, path) in sorted(best.items()):
        rel_folder = PurePosixPath(folder.relative_to(data_dir).as_posix())
        sources.append((rel_folder / path.name).as_posix())
        for row in _metadata_records(path):
            if "split" not in row or "midi_filename" not in row:
                raise UserError(f"metadata {path} lacks the 'split' and 'midi_filename' columns")
            rel = (rel_folder / PurePosixPath(str(row["midi_filename"]))).as_posix()
            split_of.setdefault(rel, str(row["split"]).strip())
    return Metadata(tuple(sources), split_of)


# ----------------------------------------------------------------------------- tokenizing in workers

_worker_tokenizer: Any = None


def _init_worker(tokenizer_spec: str | None, expected_hash: str) -> None:
    """Load the tokenizer once per process (and check it is the main process's one)."""
    global _worker_tokenizer
    from perceiver_ar_music.data.tokenizer import load_tokenizer

    _worker_tokenizer = load_tokenizer(tokenizer_spec) if tokenizer_spec else load_tokenizer()
    if _worker_tokenizer.hash != expected_hash:
        raise RuntimeError("worker loaded a different tokenizer than the main process")


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def _init_pool_worker(tokenizer_spec: str | None, expected_hash: str, parent_pid: int) -> None:
    """A pool worker dies with the main process and leaves Ctrl-C to it (it stops the pool)."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_worker(tokenizer_spec, expected_hash)


def _encode(path: str) -> tuple[np.ndarray, int, float, int] | str:
    """Tokenize one file in a worker: (ids, notes, seconds, overlaps dropped) or a skip reason."""
    from perceiver_ar_music.data.tokenizer import MidiReadError

    try:
        piece = _worker_tokenizer.encode_file(path)
    except MidiReadError as exc:
        return str(exc) or "unreadable MIDI"
    except Exception as exc:  # a tokenizer failure on one odd file must not stop the run
        return f"tokenizer failed: {exc.__class__.__name__}: {exc}"
    if piece.num_notes == 0 or len(piece.ids) == 0:
        return "no notes"
    ids = np.ascontiguousarray(piece.ids, dtype=TOKEN_DTYPE)
    return ids, int(piece.num_notes), float(piece.seconds), int(piece.overlaps_dropped)


# ----------------------------------------------------------------------------- the pipeline


@dataclass
class Piece:
    """One prepared file: where it came from, its split and its ids."""

    path: str
    split: str
    split_source: str  # "metadata", "hash" or "held-out end" (see `ensure_validation`)
    sha256: str
    ids: np.ndarray
    num_notes: int
    seconds: float
    overlaps_dropped: int


@dataclass
class PrepareResult:
    """What a preparation run did."""

    out_dir: Path
    manifest: dict[str, Any]
    tokenized: int = 0
    reused: int = 0
    notices: list[str] = field(default_factory=list)


def _warn(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


@contextmanager
def _exclusive_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``.prepare.lock`` so two preparations never write one folder at once.

    A POSIX record lock (``lockf``): owned by this process only, never by forked children, and
    released by the kernel when the process dies, however it dies.
    """
    busy = UserError(f"another 'perceiver-music prepare' is writing {out_dir}")
    key = out_dir.resolve()
    with _locked_here_guard:
        if key in _locked_here:
            raise busy
        _locked_here.add(key)
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: only the in-process guard
            yield
            return
        lock_path = out_dir / _LOCK_NAME
        with open(lock_path, "a") as handle:  # opened close-on-exec, as Python opens every file
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise busy from None
            try:
                same = os.path.samestat(os.fstat(handle.fileno()), os.stat(lock_path))
            except FileNotFoundError:
                same = False
            if not same:
                raise busy  # a finishing run removed the lock file while we opened it
            yield
    finally:
        with _locked_here_guard:
            _locked_here.discard(key)


def _previous(out_dir: Path, tokenizer_hash: str, notices: list[str]) -> PreparedData | None:
    """The folder's current preparation if it is usable for reuse, else None (with a notice)."""
    if not (out_dir / MANIFEST_NAME).exists():
        return None
    try:
        previous = PreparedData.open(out_dir)
    except UserError as exc:
        _warn(f"ignoring the previous preparation: {exc}")
        return None
    if previous.tokenizer_hash != tokenizer_hash:
        notices.append(
            f"the folder was prepared with tokenizer {short_hash(previous.tokenizer_hash)}, now "
            f"{short_hash(tokenizer_hash)}: re-tokenized every file"
        )
    return previous


def _reusable(previous: PreparedData | None, tokenizer_hash: str) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    """Content hash -> (manifest entry, ids) of the previous preparation made with this tokenizer."""
    if previous is None or previous.tokenizer_hash != tokenizer_hash:
        return {}
    return {
        entry["sha256"]: (entry, ids)
        for split in previous.splits
        for entry, ids in zip(previous.files(split), previous.pieces(split))
    }


def prepare(
    data_dir: "str | Path",
    out_dir: "str | Path",
    *,
    workers: int | None = None,
    split_ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS,
    tokenizer_spec: str | None = None,
    progress: bool = True,
) -> PrepareResult:
    """Prepare (or incrementally update) `out_dir` from the MIDI files under `data_dir`."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} does not exist")
    paths = find_midi_files(data_dir)
    if not paths:
        raise UserError(f"no .mid or .midi files under {data_dir}")
    check_writable_dir(out_dir, "--out")
    if out_dir.is_dir() and not (out_dir / MANIFEST_NAME).exists():
        if any(not _OWN_FILE.fullmatch(p.name) and p.name != _LOCK_NAME for p in out_dir.iterdir()):
            raise UserError(f"--out {out_dir} is neither empty nor a prepared folder: choose a new folder")
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(out_dir):
            try:
                return _prepare_locked(data_dir, out_dir, paths, workers, split_ratios, tokenizer_spec, progress)
            except BaseException:
                if created:  # a failed first run leaves nothing behind, not even the lock
                    _remove_own_files(out_dir, with_lock=True)
                raise
    except OSError as exc:
        raise UserError(f"cannot write to --out {out_dir}: {os_error_text(exc)}") from None
    finally:
        if created and not (out_dir / MANIFEST_NAME).exists():
            try:
                out_dir.rmdir()
            except OSError:
                pass  # another run is using it, or it is gone


def _remove_own_files(out_dir: Path, with_lock: bool = False) -> None:
    """Delete every file the pipeline owns in `out_dir` (and its lock file when asked)."""
    for entry in out_dir.iterdir():
        if _OWN_FILE.fullmatch(entry.name) or (with_lock and entry.name == _LOCK_NAME):
            entry.unlink(missing_ok=True)


def _prepare_locked(
    data_dir: Path,
    out_dir: Path,
    paths: list[str],
    workers: int | None,
    split_ratios: Sequence[float],
    tokenizer_spec: str | None,
    progress: bool,
) -> PrepareResult:
    from perceiver_ar_music.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_spec) if tokenizer_spec else load_tokenizer()  # UserError if bad
    if len(tokenizer.vocab) > np.iinfo(TOKEN_DTYPE).max + 1:
        raise UserError(f"the tokenizer has {len(tokenizer.vocab)} ids, more than uint16 holds")
    result = PrepareResult(out_dir=out_dir, manifest={})
    skipped: list[dict[str, str]] = []

    def skip(path: str, reason: str) -> None:
        skipped.append({"path": path, "reason": reason})
        _warn(f"skipped {path}: {reason}")

    # Splits: metadata first, a path hash for everything it does not name.
    metadata = load_metadata(data_dir)
    on_disk = set(paths)
    splits: dict[str, tuple[str, str]] = {}
    for path in paths:
        named = metadata.split_of.get(path) if metadata else None
        if named is None:
            splits[path] = (hashed_split(path, split_ratios), "hash")
        elif _SPLIT_NAME.fullmatch(named):
            splits[path] = (named, "metadata")
        else:
            skip(path, f"metadata names an invalid split {named!r}")
    if metadata:
        described = ", ".join(metadata.sources)
        for path in sorted(set(metadata.split_of) - on_disk):
            skip(path, f"listed in {described} but missing on disk")
        unlisted = sum(1 for source in splits.values() if source[1] == "hash")
        if unlisted:
            result.notices.append(f"{unlisted} files not in {described}: split by a hash of their path")

    # Content hashes decide what can be reused from the previous preparation.
    previous = _previous(out_dir, tokenizer.hash, result.notices)
    reusable = _reusable(previous, tokenizer.hash)
    pieces: dict[str, Piece] = {}
    to_encode: dict[str, str] = {}  # path -> sha256
    sizes: dict[str, int] = {}
    for path in splits:
        try:
            content = (data_dir / path).read_bytes()
            digest = hashlib.sha256(content).hexdigest()
            sizes[path] = len(content)
        except OSError as exc:
            skip(path, f"cannot read: {exc.strerror or exc}")
            continue
        split, source = splits[path]
        if digest in reusable:
            entry, ids = reusable[digest]
            pieces[path] = Piece(path, split, source, digest, ids, entry["num_notes"], entry["seconds"],
                                 entry.get("overlaps_dropped", 0))
            result.reused += 1
        else:
            to_encode[path] = digest

    largest_first = sorted(to_encode, key=lambda p: -sizes[p])  # keeps all workers busy to the end
    for path, outcome in _encode_all(data_dir, largest_first, tokenizer_spec, tokenizer.hash, workers, progress):
        if isinstance(outcome, str):
            skip(path, outcome)
            continue
        split, source = splits[path]
        ids, notes, seconds, overlaps = outcome
        pieces[path] = Piece(path, split, source, to_encode[path], ids, notes, seconds, overlaps)
        result.tokenized += 1

    if not pieces:
        raise UserError(f"none of the {len(paths)} MIDI files under {data_dir} could be prepared")
    if split_ratios[SPLIT_ORDER.index("validation")] > 0:
        result.notices.extend(ensure_validation(pieces, tokenizer.vocab))
    repeats = held_out_repeats(pieces)
    if repeats:
        path, same_as = repeats[0]
        result.notices.append(
            f"{len(repeats)} validation/test files are token for token a training file under another path, so they "
            f"are not unseen (e.g. {path} = {same_as}; all in the manifest's held_out_repeats)")
    generation = previous.manifest["generation"] + 1 if previous else 1
    committed = previous.manifest["tokenizer"] if previous else None
    result.manifest = _commit(out_dir, data_dir, generation, tokenizer, committed, pieces, skipped, metadata,
                              split_ratios, repeats)
    return result


HELD_OUT_SHARE = 0.1  # of that piece's tokens
FEW_PIECES = 3  # a folder of at most this many pieces holds out the end of each, not a whole piece


def ensure_validation(pieces: dict[str, Piece], vocab) -> list[str]:
    """Give a small folder split by path hash a validation set (in place); the notices saying so.

    The rule (with a validation share in the ratios), when no hash-split piece landed in
    validation: a folder of `FEW_PIECES` pieces or fewer trains on every piece the hash put in
    training or test and holds out the last `HELD_OUT_SHARE` of each one's tokens (cut at a time shift) as validation windows and trains on the
    rest, so no piece is lost to training; a larger folder moves one piece to validation (a test
    piece if there is one, else the last training piece by path). Pieces split by metadata are
    never moved or cut."""
    hashed = [path for path, piece in pieces.items() if piece.split_source == "hash"]
    if not hashed or any(piece.split == "validation" for piece in pieces.values()):
        return []
    count = len(pieces)
    if count <= FEW_PIECES:
        for path in hashed:  # too few pieces to keep one apart for testing either
            if pieces[path].split == "test":
                pieces[path] = dataclasses.replace(pieces[path], split="train")
        cut = [path for path in sorted(hashed) if pieces[path].split == "train" and _hold_out_end(pieces, path, vocab)]
        if cut:
            held = [pieces[path + HELD_OUT_END] for path in cut]
            tokens, seconds = sum(len(p.ids) for p in held), sum(p.seconds for p in held)
            which = f"one piece ({cut[0]}): its" if count == 1 else f"{count} pieces, too few to hold one out: each one's"
            return [f"{which} last {HELD_OUT_SHARE:.0%} ({tokens} tokens, {seconds:.1f} s) held out as validation "
                    "windows, the rest is trained on"]
        if count == 1:
            return [f"one piece ({hashed[0]}), too short to hold out its end: no validation loss"]
    moved = validation_pick({path: piece.split for path, piece in pieces.items()}, hashed)
    if moved is None:
        return []
    pieces[moved] = dataclasses.replace(pieces[moved], split="validation")
    return [f"{len(pieces)} pieces and none in validation by the hash: {moved} moved to validation "
            "(a folder of 2 or more pieces always has one, so training reports a validation loss)"]


def _hold_out_end(pieces: dict[str, Piece], path: str, vocab) -> bool:
    """Split piece `path` (in place) into its training head and its last `HELD_OUT_SHARE` of
    tokens, cut at a time shift, as a validation piece; False if it is too short to cut."""
    piece = pieces[path]
    kinds = np.asarray(vocab.kind)[piece.ids]
    shifts = np.flatnonzero(kinds == TIME_SHIFT)
    cut = shifts[shifts < round(len(piece.ids) * (1 - HELD_OUT_SHARE))]
    if not len(cut) or cut[-1] + 1 >= len(piece.ids):
        return False
    head, tail = piece.ids[: cut[-1] + 1], piece.ids[cut[-1] + 1 :]
    tail_seconds = vocab.seconds(tail.tolist())
    tail_notes = int(np.count_nonzero(np.asarray(vocab.kind)[tail] == NOTE_ON))
    # Own digests: neither part is the file's content, so neither is reused as the whole file.
    pieces[path] = dataclasses.replace(piece, sha256=_part_digest(piece.sha256, "head"), ids=head,
                                       num_notes=piece.num_notes - tail_notes, seconds=piece.seconds - tail_seconds)
    pieces[path + HELD_OUT_END] = Piece(path + HELD_OUT_END, "validation", "held-out end", _part_digest(piece.sha256, "tail"),
                                        tail, tail_notes, tail_seconds, 0)
    return True


def validation_pick(splits: Mapping[str, str], movable: Iterable[str]) -> str | None:
    """The piece `ensure_validation` moves to validation (path -> split of every piece; `movable`:
    those split by hash): the first test piece by path, else the last training piece when another
    stays in training; None when a piece is in validation already or none can move."""
    if "validation" in splits.values():
        return None
    movable = sorted(movable)
    tests = [path for path in movable if splits[path] == "test"]
    trains = [path for path in movable if splits[path] == "train"]
    if tests:
        return tests[0]
    if trains and sum(split == "train" for split in splits.values()) >= 2:
        return trains[-1]
    return None


def _part_digest(sha256: str, part: str) -> str:
    return hashlib.sha256(f"{sha256}:{part}".encode()).hexdigest()


def held_out_repeats(pieces: dict[str, Piece]) -> list[tuple[str, str]]:
    """(held-out path, training path) for each validation or test piece whose token ids are those
    of a training piece: a corpus that holds a piece twice under two paths (music21 lists some
    Palestrina movements twice) can put one copy in training and the other in test."""
    def digest(piece: Piece) -> bytes:
        return hashlib.sha256(np.ascontiguousarray(piece.ids, dtype=TOKEN_DTYPE).tobytes()).digest()

    training: dict[bytes, str] = {}
    for path in sorted(pieces):
        if pieces[path].split == "train":
            training.setdefault(digest(pieces[path]), path)
    held_out = (path for path in sorted(pieces) if pieces[path].split != "train")
    return [(path, training[d]) for path in held_out if (d := digest(pieces[path])) in training]


def _encode_all(
    data_dir: Path,
    order: list[str],
    tokenizer_spec: str | None,
    tokenizer_hash: str,
    workers: int | None,
    progress: bool,
) -> Iterator[tuple[str, tuple[np.ndarray, int, float, int] | str]]:
    """Tokenize files in worker processes (in this one for a single worker); yield (path, outcome)."""
    from tqdm import tqdm

    workers = max(1, min(workers or os.cpu_count() or 1, len(order)))
    bar = tqdm(total=len(order), desc="tokenizing", unit="file", disable=not progress or not order)
    try:
        if workers == 1:
            _init_worker(tokenizer_spec, tokenizer_hash)
            for path in order:
                yield path, _encode(str(data_dir / path))
                bar.update()
            return
        import multiprocessing

        # fork: workers start with the modules already imported, and their parent is this process
        context = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_pool_worker,
                                   initargs=(tokenizer_spec, tokenizer_hash, os.getpid()))
        try:
            futures = {pool.submit(_encode, str(data_dir / path)): path for path in order}
            for future in as_completed(futures):
                yield futures[future], future.result()
                bar.update()
        except BrokenProcessPool:
            raise UserError("a tokenizer worker process died; re-run with --workers 1 to find the file") from None
        finally:
            pool.shutdown(cancel_futures=True)  # on an error or Ctrl-C, skip the files not started
    finally:
        bar.close()


def _commit(
    out_dir: Path,
    data_dir: Path,
    generation: int,
    tokenizer: Any,
    committed_tokenizer: dict[str, Any] | None,
    pieces: dict[str, Piece],
    skipped: list[dict[str, str]],
    metadata: Metadata | None,
    split_ratios: Sequence[float],
    repeats: list[tuple[str, str]],
) -> dict[str, Any]:
    """Write the new generation's token files, the tokenizer, then the manifest; drop stale files."""
    by_split: dict[str, list[Piece]] = {}
    for path in sorted(pieces):
        by_split.setdefault(pieces[path].split, []).append(pieces[path])
    files: list[dict[str, Any]] = []
    split_totals: dict[str, dict[str, Any]] = {}
    for split in ordered_splits(list(by_split)):
        name = token_file_name(generation, split)
        _write_tokens(out_dir / name, [piece.ids for piece in by_split[split]])
        offset = 0
        for piece in by_split[split]:
            files.append({
                "path": piece.path,
                "split": split,
                "split_source": piece.split_source,
                "offset": offset,
                "num_tokens": len(piece.ids),
                "num_notes": piece.num_notes,
                "seconds": round(piece.seconds, 3),
                "overlaps_dropped": piece.overlaps_dropped,
                "sha256": piece.sha256,
            })
            offset += len(piece.ids)
        split_totals[split] = {"tokens_file": name, **_totals(by_split[split])}
    tokenizer_file, tokenizer_sha256 = _write_tokenizer(out_dir, tokenizer, committed_tokenizer, generation)
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "generation": generation,
        "source": str(data_dir.resolve()),
        "tokenizer": {"hash": tokenizer.hash, "file": tokenizer_file, "file_sha256": tokenizer_sha256,
                      "config": tokenizer.config_dict()},
        "vocab": {"tokens": list(tokenizer.vocab.tokens), "seconds_per_beat": tokenizer.vocab.seconds_per_beat},
        "split_method": {
            "metadata": list(metadata.sources) if metadata else [],
            "hash_ratios": dict(zip(SPLIT_ORDER, split_ratios)),
        },
        "totals": {**_totals(list(pieces.values())), "num_skipped": len(skipped)},
        "splits": split_totals,
        "files": files,
        "skipped": sorted(skipped, key=lambda s: s["path"]),
        "held_out_repeats": [{"path": path, "same_as": same_as} for path, same_as in repeats],
    }
    write_json_atomic(out_dir / MANIFEST_NAME, manifest)
    _remove_stale(out_dir, {tokenizer_file, *(info["tokens_file"] for info in split_totals.values())})
    return manifest


def _totals(pieces: list[Piece]) -> dict[str, Any]:
    seconds = sum(piece.seconds for piece in pieces)
    return {
        "num_files": len(pieces),
        "num_tokens": sum(len(piece.ids) for piece in pieces),
        "num_notes": sum(piece.num_notes for piece in pieces),
        "seconds": round(seconds, 3),
        "hours": round(seconds / 3600, 3),
    }


def _write_tokens(path: Path, arrays: list[np.ndarray]) -> None:
    """Write arrays back to back as little-endian uint16, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        for ids in arrays:
            np.asarray(ids, dtype=TOKEN_DTYPE).tofile(handle)


def _write_tokenizer(
    out_dir: Path, tokenizer: Any, committed: dict[str, Any] | None, generation: int
) -> tuple[str, str]:
    """Save the tokenizer JSON where the committed manifest does not point at other content.

    ``tokenizer.json`` unless the committed manifest names that file with a different sha256
    (a kill before the new manifest must leave the old pair intact): then
    ``tokenizer-g<generation>.json``. Returns (file name, sha256).
    """
    staged = out_dir / f".{TOKENIZER_NAME}.{os.getpid()}.tmp"
    try:
        tokenizer.save(staged)
        digest = hashlib.sha256(staged.read_bytes()).hexdigest()
        name = TOKENIZER_NAME
        if committed and committed.get("file", TOKENIZER_NAME) == TOKENIZER_NAME and committed.get("file_sha256") != digest:
            name = f"tokenizer-g{generation:06d}.json"
        path = out_dir / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            with open(staged, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    return name, digest


def _remove_stale(out_dir: Path, keep: set[str]) -> None:
    """Delete token files of older generations and temporaries left by killed runs."""
    for entry in out_dir.iterdir():
        if _OWN_FILE.fullmatch(entry.name) and entry.name not in keep:
            entry.unlink(missing_ok=True)


def format_summary(result: PrepareResult) -> str:
    """A small table of files, notes, tokens and hours per split, plus what was skipped or reused."""
    manifest = result.manifest
    rows = [(split, info) for split, info in manifest["splits"].items()] + [("total", manifest["totals"])]
    lines = [f"{'split':<12}{'files':>8}{'notes':>14}{'tokens':>14}{'hours':>10}"]
    for name, info in rows:
        lines.append(f"{name:<12}{info['num_files']:>8,}{info['num_notes']:>14,}{info['num_tokens']:>14,}"
                     f"{info['hours']:>10.2f}")
    lines.append(f"skipped {len(manifest['skipped'])} files (reasons in the warnings above and in the manifest)"
                 if manifest["skipped"] else "skipped 0 files")
    lines.append(f"tokenized {result.tokenized} files, reused {result.reused} unchanged files")
    lines.extend(f"note: {notice}" for notice in result.notices)
    lines.append(f"wrote {result.out_dir} (generation {manifest['generation']}, tokenizer "
                 f"{short_hash(manifest['tokenizer']['hash'])})")
    return "\n".join(lines)


PREPARED_CACHE_NAME = ".perceiver-prepared"  # inside a MIDI folder: where earlier versions prepared it (still reused)
CACHE_ENV = "PERCEIVER_MUSIC_CACHE"  # the project's cache folder (default: $XDG_CACHE_HOME or ~/.cache, /perceiver-music)


def cache_dir() -> Path:
    """perceiver-music's own cache folder: $PERCEIVER_MUSIC_CACHE, else $XDG_CACHE_HOME/perceiver-music,
    else ~/.cache/perceiver-music."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "perceiver-music"


def prepared_cache(data: Path) -> Path:
    """Where a MIDI folder is prepared by default: in the project's cache, one folder per data
    folder (its name and a hash of its absolute path), never inside the user's folder."""
    resolved = data.resolve()
    digest = hashlib.sha256(str(resolved).encode("utf-8")).hexdigest()[:12]
    return cache_dir() / "prepared" / f"{resolved.name or 'root'}-{digest}"


def ensure_prepared(data: str | Path, cache: str | Path | None = None, tokenizer: str | None = None,
                    progress: bool = True) -> Path:
    """A prepared folder for `data`: itself if it has a manifest, else a preparation of the MIDI
    folder into `cache` (default: `prepared_cache(data)`, or a preparation an earlier version
    left in ``DATA/.perceiver-prepared``), made or updated incrementally. The MIDI folder is only read."""
    data = Path(data)
    if (data / MANIFEST_NAME).is_file():
        return data
    if not data.is_dir():
        raise UserError(f"--data {data} is not a folder")
    legacy = data / PREPARED_CACHE_NAME
    if cache is not None:
        out = Path(cache)
    elif (legacy / MANIFEST_NAME).is_file():
        out = legacy
    else:
        out = prepared_cache(data)
    print(f"preparing {data} into {out} (reused on later runs; --prepared-cache DIR to choose)", flush=True)
    result = prepare(data, out, tokenizer_spec=tokenizer, progress=progress)
    print(format_summary(result), flush=True)
    return out
