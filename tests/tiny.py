"""The tests' tiny models, corpora and training runs, in one place (fixtures: conftest.py).

- `tiny_config` / `tiny_model`: a model of width 32 (2 heads x 16), one latent layer, a context of
  64 and 32 latents unless told otherwise; `MICRO` and `MICRO_FLAGS` are that shape as config
  fields and as `train` flags;
- `write_tiny_checkpoint`: a random checkpoint for end-to-end tests of `generate`, `stats` and
  the studio;
- `write_corpus` / `prepared_corpus`: synthetic performances, as MIDI files or prepared;
- `make_run`, `metrics`, `same_weights`, `subprocess_env`: training runs and what they leave;
- `studio_checkpoint`, `serving`: the studio's tests' model (STUDIO_CHECKPOINT for a screenshot
  with a real one) and a studio served on a free port for the length of a `with`.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

import torch

from perceiver_ar_music.data.token_store import PreparedData
from perceiver_ar_music.model.checkpoint import save_checkpoint
from perceiver_ar_music.model.perceiver_ar import PerceiverAR, PerceiverARConfig
from perceiver_ar_music.runtime.devices import pick_device
from perceiver_ar_music.tools import midi_factory
from perceiver_ar_music.training.presets import RunConfig, TrainConfig
from perceiver_ar_music.training.train import TrainRun

ROOT = Path(__file__).resolve().parents[1]
MICRO = dict(dim=32, depth=1, heads=2, dim_head=16, max_seq_len=64, num_latents=32)
MICRO_FLAGS = ["--dim", "32", "--depth", "1", "--heads", "2", "--dim-head", "16", "--max-seq-len", "64",
               "--num-latents", "32", "--batch-size", "2", "--eval-windows", "4"]


def tiny_config(**fields) -> PerceiverARConfig:
    """`MICRO`'s shape with `fields` over it."""
    return PerceiverARConfig(**{**MICRO, **fields})


def tiny_model(num_tokens: int, **fields) -> PerceiverAR:
    """A random model of `MICRO`'s shape (with `fields` over it) for `num_tokens` ids."""
    return PerceiverAR(tiny_config(num_tokens=num_tokens, **fields))


def write_tiny_checkpoint(folder: Path, tokenizer) -> Path:
    """A random model that rarely ends a piece (EOS pushed down), saved under `folder`
    (`folder/tiny` and its tokenizer as `folder/tokenizer.json`); returns the checkpoint."""
    torch.manual_seed(0)
    model = tiny_model(len(tokenizer.vocab), max_seq_len=96, num_latents=48)
    torch.nn.init.normal_(model.to_logits.weight, std=0.3)
    with torch.no_grad():
        model.to_logits.weight[tokenizer.vocab.eos_id] = 0
    folder.mkdir(parents=True, exist_ok=True)
    tok_json = folder / "tokenizer.json"
    tokenizer.save(tok_json)
    return save_checkpoint(folder / "tiny", model, tok_json, meta={"step": 0})


def write_corpus(folder: Path, files: int, notes: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        midi_factory.write_performance(folder / f"piece{i:02d}.mid", seed=i, num_notes=notes)
    return folder


def prepared_corpus(root: Path, files: int = 10, notes: int = 120) -> Path:
    """Synthetic performances prepared into train/validation/test (each split non-empty)."""
    from perceiver_ar_music.data.store_builder import prepare

    midi = write_corpus(root / "midi", files, notes)
    prepare(midi, root / "prepared", workers=1, split_ratios=(0.6, 0.2, 0.2), progress=False)
    data = PreparedData.open(root / "prepared")
    assert set(data.splits) == {"train", "validation", "test"}
    return root / "prepared"


def make_run(run_dir: Path, data: Path, max_steps: int = 6, resume_from: Path | None = None, model=None,
             device: torch.device | None = None, **train_fields) -> TrainRun:
    model_fields = {**MICRO, "cross_attn_dropout": 0.25, "dropout": 0.1, **(model or {})}
    fields = dict(batch_size=2, grad_accum=2, lr=3e-3, warmup_steps=2, max_steps=max_steps, eval_every=3,
                  eval_windows=4, save_every=100, log_every=1, seed=3)
    fields.update(train_fields)
    config = RunConfig(run_dir.name, PerceiverARConfig(**model_fields), TrainConfig(**fields))
    return TrainRun(run_dir=run_dir, config=config, data=PreparedData.open(data), device=device or pick_device(),
                    progress=False, resume_from=resume_from)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k].to(sa[k].device)) for k in sa)


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def studio_checkpoint(folder: Path) -> Path:
    """STUDIO_CHECKPOINT (a real model, for the README's screenshots), else a tiny random one in `folder`."""
    from perceiver_ar_music.data.tokenizer import load_tokenizer

    if os.environ.get("STUDIO_CHECKPOINT"):
        return Path(os.environ["STUDIO_CHECKPOINT"])
    return write_tiny_checkpoint(folder, load_tokenizer())


@contextlib.contextmanager
def serving(studio):
    """The studio served on 127.0.0.1 (a free port) in a thread; yields its URL."""
    from perceiver_ar_music.studio.listen import serve

    ready, holder = threading.Event(), {}

    def started(server):
        holder["server"] = server
        ready.set()

    thread = threading.Thread(target=serve, args=(studio, "127.0.0.1", 0), kwargs={"quiet": True, "ready": started},
                              daemon=True)
    thread.start()
    assert ready.wait(10), "the studio did not start"
    try:
        yield holder["server"].url
    finally:
        holder["server"].shutdown()
        thread.join(10)
