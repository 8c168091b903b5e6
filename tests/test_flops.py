"""The analytic FLOP count against torch's FLOP counter and a brute-force count of the masks."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from perceiver_ar_music.training.flops import forward_flops, peak_bf16_flops, training_step_flops
from perceiver_ar_music.model.kernels import lower_right_causal
from perceiver_ar_music.model.perceiver_ar import PerceiverAR
from tests.tiny import tiny_config

MATMULS = {"mm", "addmm", "bmm", "matmul"}


def counted(fn) -> dict[str, int]:
    with FlopCounterMode(display=False) as counter:
        fn()
    return {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}


def matmul_flops(counts: dict[str, int]) -> int:
    return sum(n for op, n in counts.items() if op in MATMULS)


@pytest.mark.parametrize("length, num_latents", [(48, 16), (16, 16), (10, 16)])
def test_projection_flops_match_torchs_counter(length, num_latents):
    cfg = tiny_config(num_tokens=40, depth=3, max_seq_len=48, num_latents=num_latents)
    model = PerceiverAR(cfg).eval()
    tokens = torch.randint(0, 40, (3, length))
    with torch.no_grad():
        counts = counted(lambda: model(tokens))
    assert matmul_flops(counts) == forward_flops(cfg, 3, length, prefix_dropout=0).projections


def test_training_counts_three_forwards_with_prefix_dropout():
    cfg = tiny_config(num_tokens=40, depth=2, max_seq_len=48, num_latents=16, cross_attn_dropout=0.5)
    model = PerceiverAR(cfg).train()
    tokens = torch.randint(0, 40, (2, 48))
    counts = counted(lambda: model(tokens).float().square().mean().backward())
    expected = forward_flops(cfg, 2)
    assert matmul_flops(counts) == 3 * expected.projections
    assert training_step_flops(cfg, 2) == 3 * expected.total
    # half of the 32 prefix positions are dropped from the keys: fewer FLOPs than without dropout
    assert expected.projections < forward_flops(cfg, 2, prefix_dropout=0).projections


def test_attention_flops_count_the_pairs_the_masks_keep():
    cfg = tiny_config(num_tokens=40, depth=3, max_seq_len=48, num_latents=16)
    inner = cfg.heads * cfg.dim_head
    cross_pairs = int(lower_right_causal(16, 48, torch.device("cpu")).sum())
    latent_pairs = int(torch.ones(16, 16).tril().sum())
    expected = 4 * inner * (cross_pairs + cfg.depth * latent_pairs)
    assert forward_flops(cfg, 1, prefix_dropout=0).attention == expected
    assert forward_flops(cfg, 5, prefix_dropout=0).attention == 5 * expected


def test_peak_flops_by_device_name():
    assert peak_bf16_flops("NVIDIA H200") == 989.4e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756.5e12
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("Some Future GPU") is None
