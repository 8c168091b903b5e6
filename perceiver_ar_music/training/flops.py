"""Model FLOPs of Perceiver AR forward and training steps, and peak throughput of known GPUs.

Counts the matrix multiplications of the model as written (2 FLOPs per multiply-add) and, for
attention, only the query-key pairs the causal masks keep. A training step counts 3x the forward
(the backward pass does twice the forward's work); recomputation inside fused attention kernels
is not counted, as usual for model FLOPs utilisation (MFU).
"""

from __future__ import annotations

from dataclasses import dataclass

from perceiver_ar_music.model.perceiver_ar import PerceiverARConfig

# Dense bf16 tensor-core peaks in FLOP/s (vendor data sheets, without sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989.4e12,
    "H100 SXM": 989.4e12,
    "H100 80GB HBM3": 989.4e12,
    "H100 PCIe": 756.5e12,
    "H100 NVL": 835.5e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165.2e12,
    "A10": 125e12,
}


@dataclass(frozen=True)
class ForwardFlops:
    """FLOPs of one forward pass over a batch, split by where they are spent."""

    projections: float  # every linear layer (attention projections, MLPs, output head)
    attention: float  # scores and weighted sums over the unmasked query-key pairs

    @property
    def total(self) -> float:
        return self.projections + self.attention


def forward_flops(cfg: PerceiverARConfig, batch: int, length: int | None = None, prefix_dropout: float | None = None) -> ForwardFlops:
    """FLOPs of `model(tokens)` for `batch` sequences of `length` tokens (default: the context).

    prefix_dropout (default: the config's, as in training) removes that fraction of the prefix
    from the cross-attention keys, as the model does in training mode; pass 0 for inference.
    """
    length = cfg.max_seq_len if length is None else length
    rate = cfg.cross_attn_dropout if prefix_dropout is None else prefix_dropout
    n = min(cfg.num_latents, length)
    prefix = length - n
    keys = n + prefix - int(prefix * rate)
    d, inner, hidden = cfg.dim, cfg.heads * cfg.dim_head, cfg.dim * cfg.ff_mult
    mlp = 2 * n * d * hidden * 2
    cross = 2 * keys * d * 2 * inner + 2 * n * d * inner + 2 * n * inner * d + mlp
    layer = 2 * n * d * 3 * inner + 2 * n * inner * d + mlp
    head = 2 * n * d * cfg.num_tokens
    projections = cross + cfg.depth * layer + head
    cross_pairs = n * (keys - n) + n * (n + 1) // 2  # latent i sees every kept prefix key and latents <= i
    latent_pairs = n * (n + 1) // 2
    attention = 2 * 2 * inner * (cross_pairs + cfg.depth * latent_pairs)
    return ForwardFlops(batch * float(projections), batch * float(attention))


def training_step_flops(cfg: PerceiverARConfig, batch: int, length: int | None = None) -> float:
    """Model FLOPs of one optimizer step (forward + backward) on `batch` windows, prefix dropout on."""
    return 3 * forward_flops(cfg, batch, length).total


def peak_bf16_flops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU named like torch.cuda.get_device_name(), or None if unknown."""
    best = None
    for key, flops in PEAK_BF16_FLOPS.items():
        if key.lower() in device_name.lower() and (best is None or len(key) > len(best[0])):
            best = (key, flops)
    return None if best is None else best[1]
