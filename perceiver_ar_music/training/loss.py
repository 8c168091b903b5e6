"""The one batch -> loss path of training and evaluation: a batch of windows (``tokens``,
``target_mask``, as `windows.TrainWindows` and `windows.EvalWindows` give them) through the model
under autocast, then `lm_loss` (the one NLL function) on the latents' targets, in fp32."""

from __future__ import annotations

import torch

from perceiver_ar_music.model.perceiver_ar import lm_loss
from perceiver_ar_music.runtime.devices import autocast


def trim_padding(tokens: torch.Tensor, target_mask: torch.Tensor, pad_id: int,
                 min_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows without the left padding every row shares, keeping at least `min_tokens`
    columns (the latents and their last target): a batch of short pieces (folk songs in windows
    of 1,024) costs its length, not the context's. The model sees the same tokens at the same
    relative positions (rotary), so its scores are the same; prefix dropout then draws among real
    tokens only."""
    cut = min(int((tokens != pad_id).any(dim=0).int().argmax()), tokens.shape[1] - min_tokens)
    if cut <= 0:
        return tokens, target_mask
    return tokens[:, cut:], target_mask[:, cut:]


def window_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], pad_id: int, device: torch.device,
                precision: str = "auto", z_loss: float = 0.0,
                min_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(loss to optimise, mean NLL in nats/token, scored targets) of one batch of windows.

    The forward runs under `devices.autocast(device, precision)`; `model` may be wrapped (DDP,
    compiled). Padding (`pad_id`) is masked out of the cross-attention only when present; with
    `min_tokens` (num_latents + 1; not for a compiled model: one shape per length) the padding all
    windows share is cut off first (`trim_padding`).
    """
    tokens, target_mask = batch["tokens"], batch["target_mask"]
    if min_tokens is not None:
        tokens, target_mask = trim_padding(tokens, target_mask, pad_id, min_tokens)
    inputs = tokens[:, :-1]
    padding_mask = (inputs != pad_id) if bool((inputs == pad_id).any()) else None
    tokens = tokens.to(device, non_blocking=True)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    with autocast(device, precision):
        logits = model(inputs, None if padding_mask is None else padding_mask.to(device, non_blocking=True))
    n = logits.shape[1]  # the latents: the last n targets are scored
    loss, nats = lm_loss(logits, targets[:, -n:], target_mask[:, -n:].to(device, non_blocking=True), z_loss)
    return loss, nats, int(target_mask[:, -n:].sum())
