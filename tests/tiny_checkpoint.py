"""A tiny random checkpoint for end-to-end tests of `generate`, `stats` and the studio."""

from __future__ import annotations

from pathlib import Path

import torch

from perceiver_ar_music.model.checkpoint import save_checkpoint
from perceiver_ar_music.model.perceiver_ar import PerceiverAR


def write_tiny_checkpoint(folder: Path, tokenizer) -> Path:
    """A random model that rarely ends a piece (EOS pushed down), saved under `folder`
    (`folder/tiny` and its tokenizer as `folder/tokenizer.json`); returns the checkpoint."""
    torch.manual_seed(0)
    model = PerceiverAR(num_tokens=len(tokenizer.vocab), dim=32, depth=1, heads=2, dim_head=16, max_seq_len=96, num_latents=48)
    torch.nn.init.normal_(model.to_logits.weight, std=0.3)
    with torch.no_grad():
        model.to_logits.weight[tokenizer.vocab.eos_id] = 0
    folder.mkdir(parents=True, exist_ok=True)
    tok_json = folder / "tokenizer.json"
    tokenizer.save(tok_json)
    return save_checkpoint(folder / "tiny", model, tok_json, meta={"step": 0})
