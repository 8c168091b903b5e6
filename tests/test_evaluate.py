"""Evaluation: strided and exact NLL against slow one-window-at-a-time references; the command."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from perceiver_ar_music.model.checkpoint import save_checkpoint
from perceiver_ar_music.cli import main
from perceiver_ar_music.training.evaluate import evaluate_pieces, exact_nll, strided_nll
from perceiver_ar_music.model.perceiver_ar import PerceiverAR
from perceiver_ar_music.data.token_store import PreparedData
from perceiver_ar_music.training.windows import EvalWindows
from tests.tiny import prepared_corpus, tiny_config, write_corpus

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
# The scoring logic is checked against fp32 references in fp32: `--precision auto` is bf16 on a CPU
# with AMX tiles, and bf16 moves the sums by about 1e-4 of their size.


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> PreparedData:
    """Any vocabulary works for scoring; take the real one from a tiny prepared folder."""
    return PreparedData.open(prepared_corpus(tmp_path_factory.mktemp("corpus"), files=8, notes=40))


def random_model(max_seq_len: int = 24, num_latents: int = 8, seed: int = 0) -> PerceiverAR:
    torch.manual_seed(seed)
    model = PerceiverAR(tiny_config(depth=2, max_seq_len=max_seq_len,
                                          num_latents=num_latents))
    torch.nn.init.normal_(model.to_logits.weight, std=0.3)  # informative, input-dependent predictions
    return model.eval()


def random_pieces(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 391, n).astype(np.uint16) for n in lengths]


def framed(piece: np.ndarray, vocab) -> np.ndarray:
    return np.concatenate(([vocab.bos_id], piece, [vocab.eos_id])).astype(np.int64)


@torch.no_grad()
def exact_reference(model: PerceiverAR, pieces, vocab) -> tuple[float, int]:
    """Every target alone: its unpadded window of up to max_seq_len previous tokens, one forward."""
    total, count = 0.0, 0
    for piece in pieces:
        tokens = framed(piece, vocab)
        for t in range(1, len(tokens)):
            context = torch.from_numpy(tokens[max(0, t - model.config.max_seq_len) : t])[None]
            logits = model(context)[0, -1]
            total += float(F.cross_entropy(logits[None], torch.tensor([tokens[t]])))
            count += 1
    return total, count


@torch.no_grad()
def strided_reference(model: PerceiverAR, pieces, vocab) -> tuple[float, int]:
    """Each EvalWindows window alone, without its left padding and without a padding mask."""
    cfg = model.config
    windows = EvalWindows(pieces, vocab, cfg.max_seq_len, cfg.num_latents)
    total, count = 0.0, 0
    for i in range(len(windows)):
        item = windows[i]
        real = int((item["tokens"] != vocab.pad_id).sum())
        tokens = item["tokens"][-real:]
        mask = item["target_mask"][-(real - 1) :]
        logits = model(tokens[None, :-1])[0]
        n = logits.shape[0]
        nll = F.cross_entropy(logits, tokens[1:][-n:], reduction="none")
        assert not mask[:-n].any()  # every scored target is a latent
        total += float(nll[mask[-n:]].sum())
        count += int(mask.sum())
    return total, count


LENGTHS = [0, 3, 6, 30, 75]


def test_exact_matches_the_one_window_reference(data: PreparedData) -> None:
    model, pieces = random_model(), random_pieces(LENGTHS)
    expected, count = exact_reference(model, pieces, data.vocab)
    for batch_size in (1, 7):
        total, scored = exact_nll(model, pieces, data.vocab, batch_size, CPU, "fp32")
        assert scored == count == sum(n + 1 for n in LENGTHS)
        assert total == pytest.approx(expected, rel=1e-5)


def test_strided_matches_the_one_window_reference(data: PreparedData) -> None:
    model, pieces = random_model(), random_pieces(LENGTHS, seed=1)
    expected, count = strided_reference(model, pieces, data.vocab)
    for batch_size in (1, 5):
        total, scored = strided_nll(model, pieces, data.vocab, batch_size, CPU, "fp32")
        assert scored == count == sum(n + 1 for n in LENGTHS)  # every target exactly once
        assert total == pytest.approx(expected, rel=1e-5)


def test_strided_equals_exact_when_pieces_fit_in_the_latents(data: PreparedData) -> None:
    model, pieces = random_model(max_seq_len=24, num_latents=16), random_pieces([0, 4, 14, 15], seed=2)
    strided, n_strided = strided_nll(model, pieces, data.vocab, 4, CPU, "fp32")
    exact, n_exact = exact_nll(model, pieces, data.vocab, 4, CPU, "fp32")
    assert n_strided == n_exact
    assert strided == pytest.approx(exact, rel=1e-5)


def test_strided_differs_from_exact_on_long_pieces(data: PreparedData) -> None:
    """The approximation is a real approximation: on long pieces the context differs."""
    model, pieces = random_model(), random_pieces([60], seed=3)
    assert strided_nll(model, pieces, data.vocab, 4, CPU, "fp32")[0] != pytest.approx(exact_nll(model, pieces, data.vocab, 4, CPU, "fp32")[0], rel=1e-4)


def test_rates_per_token_note_and_second(data: PreparedData) -> None:
    model, pieces = random_model(), random_pieces([10, 20], seed=4)
    entries = [{"num_notes": 3, "seconds": 2.0}, {"num_notes": 5, "seconds": 6.0}]
    result = evaluate_pieces(model, pieces, entries, data.vocab, split="test", batch_size=3)
    total, count = strided_nll(model, pieces, data.vocab, 3, CPU)
    assert result.targets == count == 32 and result.notes == 8 and result.seconds == 8.0
    assert result.total_nats == pytest.approx(total)
    assert result.nats_per_token == pytest.approx(total / 32)
    assert result.bits_per_token == pytest.approx(total / 32 / math.log(2))
    assert result.nats_per_note == pytest.approx(total / 8)
    assert result.bits_per_second == pytest.approx(total / 8.0 / math.log(2))
    assert "at least 16 tokens of context" in result.method_note
    exact = evaluate_pieces(model, pieces, entries, data.vocab, split="test", method="exact")
    assert exact.method == "exact" and "its own window" in exact.method_note


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data: PreparedData) -> Path:
    torch.manual_seed(0)
    model = PerceiverAR(tiny_config(num_tokens=len(data.vocab), depth=1,
                                          max_seq_len=48, num_latents=16))
    torch.nn.init.normal_(model.to_logits.weight, std=0.1)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "ckpt-7", model, data.tokenizer_path,
                           tokenizer_hash=data.tokenizer_hash, meta={"step": 7})


def test_evaluate_command(tmp_path: Path, data: PreparedData, checkpoint: Path, capsys) -> None:
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data.root), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(step 7)" in text and "strided approximation" in text and "bits/note" in text and "nats/second" in text
    report = json.loads(out.read_text())
    assert report["split"] == "test" and report["method"] == "strided" and report["step"] == 7
    assert report["pieces"] == len(data.pieces("test"))
    assert report["targets"] == sum(len(p) + 1 for p in data.pieces("test"))
    assert report["notes"] == sum(e["num_notes"] for e in data.files("test"))
    assert report["bits_per_token"] == pytest.approx(report["nats_per_token"] / math.log(2))

    assert main(["evaluate", "--checkpoint", str(checkpoint.parent), "--data", str(data.root), "--split", "validation",
                 "--exact", "--max-pieces", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["method"] == "exact" and report["pieces"] == 1 and report["split"] == "validation"
    assert report["targets"] == len(data.pieces("validation")[0]) + 1


def test_skip_repeats_leaves_out_the_copies_of_training_files(tmp_path: Path, data: PreparedData, checkpoint: Path,
                                                              capsys) -> None:
    from perceiver_ar_music.data.store_builder import hashed_split, prepare

    midi = write_corpus(tmp_path / "midi", files=6, notes=30)
    (midi / "copies").mkdir()
    for i in range(12):  # one training piece under other paths: some land in test
        shutil.copy(midi / "piece00.mid", midi / "copies" / f"c{i:02d}.mid")
    prepare(midi, tmp_path / "prepared", workers=1, split_ratios=(0.4, 0.3, 0.3), progress=False)
    prepared = PreparedData.open(tmp_path / "prepared")
    twins = ["piece00.mid", *(f"copies/c{i:02d}.mid" for i in range(12))]
    copies_in_test = [p for p in twins if hashed_split(p, (0.4, 0.3, 0.3)) == "test"]
    assert any(hashed_split(p, (0.4, 0.3, 0.3)) == "train" for p in twins)
    assert copies_in_test and len(copies_in_test) < len(prepared.files("test"))
    out = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "prepared"), "--json", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["pieces"] == len(prepared.files("test")) and report["repeats_of_training"] == len(copies_in_test)
    assert f"note: {len(copies_in_test)} of the split's files are token for token training files; scored" in capsys.readouterr().out
    assert main(args + ["--skip-repeats"]) == 0
    report = json.loads(out.read_text())
    assert report["pieces"] == len(prepared.files("test")) - len(copies_in_test) and report["repeats_left_out"]
    assert "left out (--skip-repeats)" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data.root), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["repeats_of_training"] == 0 and "token for token" not in capsys.readouterr().out


def test_evaluate_a_midi_folder(tmp_path: Path, checkpoint: Path, capsys) -> None:
    midi = write_corpus(tmp_path / "midi", files=3, notes=30)
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(midi), "--split", "train"]) == 0
    assert "tokenized 3 files" in capsys.readouterr().out
    from perceiver_ar_music.data.store_builder import prepared_cache

    assert (prepared_cache(midi) / "manifest.json").is_file() and not (midi / ".perceiver-prepared").exists()


def test_evaluate_errors(tmp_path: Path, data: PreparedData, checkpoint: Path, capsys) -> None:
    def error(*args: str) -> str:
        try:
            code = main(["evaluate", *args])
        except SystemExit as exc:  # argparse refused a flag: its usage lines, then the error line
            code = exc.code
        assert code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert [line for line in lines if "error:" in line] == lines[-1:] and "Traceback" not in "".join(lines)
        return lines[-1]

    assert "has no split 'nope'" in error("--checkpoint", str(checkpoint), "--data", str(data.root), "--split", "nope")
    assert "does not exist" in error("--checkpoint", str(tmp_path / "none"), "--data", str(data.root))
    assert "argument --max-pieces: must be a whole number in [1, " in error(
        "--checkpoint", str(checkpoint), "--data", str(data.root), "--max-pieces", "0")
    assert "argument --batch-size: expected a whole number, got '1e12'" in error(
        "--checkpoint", str(checkpoint), "--data", str(data.root), "--batch-size", "1e12")
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file" / "out.json", tmp_path):  # under a file; a folder
        assert "--json" in error("--checkpoint", str(checkpoint), "--data", str(data.root), "--json", str(target))
    other_nan = tmp_path / "nan"
    shutil.copytree(checkpoint, other_nan)
    from safetensors.torch import load_file, save_file

    weights = load_file(other_nan / "model.safetensors")
    next(iter(weights.values()))[0] = float("nan")
    save_file(weights, other_nan / "model.safetensors")
    assert "holds non-finite weights" in error("--checkpoint", str(other_nan), "--data", str(data.root))
    other = tmp_path / "other"
    shutil.copytree(checkpoint, other)
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "tokenizer_hash": "f" * 64}))
    assert "was prepared with tokenizer" in error("--checkpoint", str(other), "--data", str(data.root))
