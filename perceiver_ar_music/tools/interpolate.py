"""Weight interpolation between a checkpoint and one fine-tuned from it (WiSE-FT, Wortsman et al.
2022): ``(1 - alpha) * base + alpha * tuned``, parameter by parameter.

A model trained on from another one stays in its basin, so the straight line between the two is
a path of working models: alpha 0 is the base, 1 the fine-tuned one. Points in between often keep
much of what the fine-tuning gained while keeping more of what the base did well (the bundled
model's case: v3's runs gain on the corpus and at other tempi, but follow unquantised performances
worse than v2). Non-float tensors (none in this model today) must be equal in both.

    python scripts/interpolate_checkpoints.py checkpoints/v2-base checkpoints/v3a/best --alpha 0.5 --out checkpoints/v3a-half
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from perceiver_ar_music.model.checkpoint import load_model, save_checkpoint
from perceiver_ar_music.runtime.errors import UserError


def interpolate_weights(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor],
                        alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * base + alpha * tuned`` for every float tensor (computed in float64, stored
    in the tuned tensor's dtype); other tensors must be equal. UserError if the names, shapes or
    non-float values differ."""
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"alpha must be in [0, 1], got {alpha}")
    if set(base) != set(tuned):
        name = sorted(set(base) ^ set(tuned))[0]
        raise UserError(f"the two checkpoints hold different tensors ({name})")
    out = {}
    for name, b in base.items():
        t = tuned[name]
        if b.shape != t.shape:
            raise UserError(f"the two checkpoints differ in the shape of {name}")
        if t.is_floating_point():
            mixed = b.double() * (1.0 - alpha) + t.double() * alpha
            out[name] = mixed.to(t.dtype)
        elif torch.equal(b, t):
            out[name] = t.clone()
        else:
            raise UserError(f"{name} is not a float tensor and differs between the checkpoints")
    return out


def interpolate_checkpoints(base: str | Path, tuned: str | Path, alpha: float, out: str | Path) -> Path:
    """Write the checkpoint ``(1 - alpha) * base + alpha * tuned`` at `out` (atomically): the
    tuned checkpoint's config, tokenizer and note limits, the two sources and alpha in its meta."""
    b, t = load_model(base), load_model(tuned)
    if b.config.to_dict() != t.config.to_dict():
        raise UserError(f"{b.path} and {t.path} have different model configs")
    if b.tokenizer_hash != t.tokenizer_hash:
        raise UserError(f"{b.path} and {t.path} were trained with different tokenizers")
    t.model.load_state_dict(interpolate_weights(b.model.state_dict(), t.model.state_dict(), alpha))
    keep = {key: t.meta[key] for key in ("note_limits", "step", "tokens_seen") if key in t.meta}
    meta = {**keep, "run_name": Path(out).name,
            "interpolated": {"base": str(b.path), "tuned": str(t.path), "alpha": alpha,
                             "base_run": b.meta.get("run_name"), "tuned_run": t.meta.get("run_name")}}
    return save_checkpoint(out, t.model, t.tokenizer_path, tokenizer_hash=t.tokenizer_hash, meta=meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="the checkpoint the other was trained on from (alpha 0)")
    parser.add_argument("tuned", help="the checkpoint trained on from BASE (alpha 1)")
    parser.add_argument("--alpha", type=float, required=True, help="the tuned checkpoint's share, 0..1")
    parser.add_argument("--out", required=True, help="the checkpoint folder to write")
    args = parser.parse_args(argv)
    try:
        path = interpolate_checkpoints(args.base, args.tuned, args.alpha, args.out)
    except UserError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"{path}: {1 - args.alpha:g} x {args.base} + {args.alpha:g} x {args.tuned}")
    return 0
