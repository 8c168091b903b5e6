"""The Perceiver AR model: semantics against a plain einsum reference, masks, dropout, training."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from perceiver_ar_music.model.perceiver_ar import PerceiverAR, PerceiverARConfig, lm_loss
from tests.tiny import tiny_model

SMALL = dict(num_tokens=40, dim=32, depth=2, heads=2, dim_head=16, max_seq_len=24, num_latents=8)


def small_model(**overrides) -> PerceiverAR:
    model = PerceiverAR(**{**SMALL, **overrides}).double()
    # The output head starts at zero; give it weights so that logits depend on everything.
    torch.nn.init.normal_(model.to_logits.weight, std=0.3)
    return model.eval()


# -- a plain reference implementation, written independently of the model's code paths ---------


def ref_rotate(x: torch.Tensor, positions: torch.Tensor, model: PerceiverAR) -> torch.Tensor:
    cfg = model.config
    r = cfg.rotary_dim
    wavelength = cfg.rotary_max_wavelength or cfg.max_seq_len
    out = x.clone()
    for i in range(r // 2):
        theta = positions.double() * wavelength ** (-(2 * i) / r)
        a, b = x[..., i], x[..., r // 2 + i]
        out[..., i] = a * torch.cos(theta) - b * torch.sin(theta)
        out[..., r // 2 + i] = b * torch.cos(theta) + a * torch.sin(theta)
    return out


def ref_attention(q, k, v, keep):  # q (b,h,i,d) k,v (b,h,j,d) keep (b,1,i,j) bool
    scores = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~keep, float("-inf"))
    return torch.einsum("bhij,bhjd->bhid", scores.softmax(-1), v)


def heads(x, h):
    b, n, _ = x.shape
    return x.view(b, n, h, -1).transpose(1, 2)


def unheads(x):
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def ff(block, x):
    return block.down(F.relu(block.up(F.layer_norm(x, x.shape[-1:], block.norm.weight, block.norm.bias))) ** 2)


def reference_forward(model: PerceiverAR, tokens: torch.Tensor, real: torch.Tensor | None = None, num_latents=None):
    cfg = model.config
    b, length = tokens.shape
    n = min(num_latents or cfg.num_latents, length)
    real = torch.ones_like(tokens, dtype=torch.bool) if real is None else real
    pos = torch.arange(length)
    h = model.token_emb(tokens)
    ca = model.cross_attn
    kv = ca.to_kv(ca.norm_kv(h))
    k, v = heads(kv[..., : kv.shape[-1] // 2], cfg.heads), heads(kv[..., kv.shape[-1] // 2 :], cfg.heads)
    k = ref_rotate(k, pos, model)
    lat = h[:, length - n :]
    q = ref_rotate(heads(ca.to_q(ca.norm_q(lat)), cfg.heads), pos[length - n :], model)
    qp, kp = pos[length - n :], pos
    keep = (kp[None, :] <= qp[:, None])[None] & (real[:, None, :] | (kp[None, :] == qp[:, None])[None])
    x = lat + ca.to_out(unheads(ref_attention(q, k, v, keep[:, None])))
    x = x + ff(model.cross_ff, x)
    lreal = real[:, length - n :]
    keep = (qp[None, :] <= qp[:, None])[None] & (lreal[:, None, :] | (qp[None, :] == qp[:, None])[None])
    for layer in model.layers:
        qkv = layer.attn.to_qkv(layer.attn.norm(x))
        q, k, v = (heads(t, cfg.heads) for t in qkv.chunk(3, -1))
        q, k = ref_rotate(q, qp, model), ref_rotate(k, qp, model)
        x = x + layer.attn.to_out(unheads(ref_attention(q, k, v, keep[:, None])))
        x = x + ff(layer.ff, x)
    return model.to_logits(model.norm_out(x))


# -- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 5, 8, 9, 24])
@pytest.mark.parametrize("num_latents", [None, 3])
def test_sdpa_path_matches_einsum_reference(length, num_latents):
    model = small_model()
    tokens = torch.randint(0, 40, (2, length))
    ours = model(tokens, num_latents=num_latents)
    ref = reference_forward(model, tokens, num_latents=num_latents)
    assert ours.shape == ref.shape == (2, min(num_latents or 8, length), 40)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


def test_padding_mask_matches_reference_and_unpadded_sequence():
    model = small_model()
    tokens = torch.randint(3, 40, (2, 20))
    real = torch.ones_like(tokens, dtype=torch.bool)
    real[0, :7] = False  # row 0 is left-padded by 7
    tokens[0, :7] = 0
    ours = model(tokens, padding_mask=real)
    torch.testing.assert_close(ours, reference_forward(model, tokens, real), rtol=1e-9, atol=1e-9)
    # The padded row scores its real tokens exactly like the same sequence without padding.
    alone = model(tokens[:1, 7:])
    torch.testing.assert_close(ours[0, -alone.shape[1] :], alone[0], rtol=1e-9, atol=1e-9)
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize("padded", [False, True])
def test_causality_changing_a_token_never_changes_earlier_logits(padded):
    model = small_model()
    length, n = 24, 8
    tokens = torch.randint(3, 40, (1, length))
    real = None
    if padded:
        real = torch.ones_like(tokens, dtype=torch.bool)
        real[:, :4] = False
    base = model(tokens, padding_mask=real)
    for t in range(4 if padded else 0, length):
        changed = tokens.clone()
        changed[0, t] = (changed[0, t] + 1) % 40
        out = model(changed, padding_mask=real)
        first_latent = length - n
        # logits index i is absolute position first_latent + i; positions < t must not move
        unaffected = max(0, t - first_latent)
        torch.testing.assert_close(out[:, :unaffected], base[:, :unaffected], rtol=0, atol=0)
        if t >= first_latent:
            assert not torch.allclose(out[:, unaffected], base[:, unaffected])


def test_relative_positions_only_shifting_the_window_start_is_invisible():
    """Rotary with absolute positions: the same tokens give the same logits at any offset."""
    model = small_model()
    tokens = torch.randint(0, 40, (1, 12))
    cos_sin = model.rotary.cos_sin
    out = model(tokens)
    # shift every position by 1000 through the rotary tables
    model.rotary.cos_sin = lambda pos, dtype: cos_sin(pos + 1000, dtype)
    shifted = model(tokens)
    torch.testing.assert_close(out, shifted, rtol=1e-9, atol=1e-9)


def test_prefix_dropout_is_off_in_eval_and_keeps_every_latent():
    model = small_model(cross_attn_dropout=0.5)
    tokens = torch.randint(0, 40, (3, 24))
    plain = small_model()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(tokens), plain(tokens), rtol=0, atol=0)

    model.train()
    h = model.token_emb(tokens)
    kv_h, kv_pos, _ = model._drop_prefix(h, prefix=16, padding_mask=None)
    assert kv_pos.shape == (3, 8 + 8)  # half of the 16 prefix positions, all 8 latents
    for row in kv_pos:
        assert torch.equal(row[-8:], torch.arange(16, 24))  # latents never dropped
        assert (row[:8] < 16).all() and (row.diff() > 0).all()  # sorted prefix subset
    assert len({tuple(r[:8].tolist()) for r in kv_pos}) > 1  # different per example
    torch.testing.assert_close(kv_h, h.gather(1, kv_pos[..., None].expand(-1, -1, h.shape[-1])))


def test_prefix_dropout_training_changes_outputs_and_gradients_flow():
    model = small_model(cross_attn_dropout=0.5).train()
    tokens = torch.randint(0, 40, (2, 24))
    a, b = model(tokens), model(tokens)
    assert not torch.allclose(a, b)  # a different prefix subset each call
    loss, _ = lm_loss(a, torch.randint(0, 40, a.shape[:2]))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert model.cross_attn.to_kv.weight.grad.abs().sum() > 0


def test_config_json_round_trip_and_seed_port_arguments():
    model = PerceiverAR(num_tokens=391, dim=64, depth=2, heads=4, dim_head=16, max_seq_len=256, cross_attn_seq_len=192)
    assert model.config.num_latents == 64 and model.config.cross_attn_seq_len == 192
    again = PerceiverARConfig.from_dict(json.loads(json.dumps(model.config.to_dict())))
    assert again == model.config
    with pytest.raises(ValueError, match="unknown model config keys"):
        PerceiverARConfig.from_dict({"dim": 8, "bogus": 1})
    with pytest.raises(ValueError, match="num_latents"):
        PerceiverARConfig(max_seq_len=8, num_latents=9)
    with pytest.raises(ValueError, match="outside"):
        model(torch.zeros(1, 257, dtype=torch.long))


def test_lm_loss_masks_padding_and_adds_z_loss():
    logits = torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    loss, nats = lm_loss(logits, targets, mask)
    expected = F.cross_entropy(logits[mask], targets[mask])
    torch.testing.assert_close(nats, expected)
    loss_z, nats_z = lm_loss(logits, targets, mask, z_loss=1e-2)
    z = torch.logsumexp(logits[mask], -1).square().mean()
    torch.testing.assert_close(loss_z, expected + 1e-2 * z)
    torch.testing.assert_close(nats_z, expected)


def test_zero_initialised_head_starts_uniform():
    model = PerceiverAR(**SMALL)
    logits = model(torch.randint(0, 40, (1, 10)))
    assert torch.count_nonzero(logits) == 0


def test_tiny_model_overfits_a_repetitive_sequence():
    torch.manual_seed(0)
    model = PerceiverAR(num_tokens=16, dim=64, depth=2, heads=4, dim_head=16, max_seq_len=32, num_latents=16)
    pattern = torch.tensor([3, 7, 1, 9, 4, 4, 12, 5])
    seq = pattern.repeat(5)[None]  # 40 tokens
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        start = torch.randint(0, seq.shape[1] - 32, (1,)).item()
        window = seq[:, start : start + 33]
        logits = model(window[:, :-1])
        loss, nats = lm_loss(logits, window[:, -16:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert nats.item() < 0.05, nats.item()


def test_training_forward_compiles_without_graph_breaks():
    model = PerceiverAR(**{**SMALL, "cross_attn_dropout": 0.25}).train()
    tokens = torch.randint(0, 40, (2, 24))
    explanation = torch._dynamo.explain(model)(tokens)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_bf16_autocast_keeps_queries_keys_and_values_in_one_dtype():
    """CUDA's fused kernels refuse mixed dtypes: rotary tables must not promote q/k to fp32."""
    model = PerceiverAR(**SMALL)
    tokens = torch.randint(0, 40, (2, 24))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.token_emb(tokens)
        cos, sin = model.rotary.cos_sin(torch.arange(24), h.dtype)
        k, v = model.cross_attn.keys_values(h, (cos, sin))
        q = model.cross_attn.queries(h[:, -8:], (cos[-8:], sin[-8:]))
        assert q.dtype == k.dtype == v.dtype == torch.bfloat16
        logits = model(tokens)
    assert torch.isfinite(logits.float()).all()


def test_rotary_frequencies_stay_float64_when_the_weights_are_cast():
    """The CLI loads the model in bf16 on CUDA: the rotary angles must keep full precision."""
    model = tiny_model(20, max_seq_len=4096, num_latents=8)
    before = model.rotary.inv_freq.clone()
    model.to(torch.bfloat16)
    assert model.rotary.inv_freq.dtype == torch.float64
    assert torch.equal(model.rotary.inv_freq, before)
    cos, _ = model.rotary.cos_sin(torch.tensor([4095]), torch.float32)
    expected = torch.cos(4095 * before).float()
    torch.testing.assert_close(cos[0], expected, rtol=0, atol=1e-6)
    model.half().float()
    assert model.rotary.inv_freq.dtype == torch.float64


def test_kernels_are_explicit_per_model_choices():
    """The speed paths are chosen per model (not module globals) and change no result."""
    from perceiver_ar_music.model.kernels import Kernels, Linear
    from perceiver_ar_music.model.perceiver_ar import CrossAttention

    plain = PerceiverAR(**SMALL, kernels=Kernels(row_linear_as_reduction=False, flash_when_compiled=False))
    default = PerceiverAR(**SMALL)
    assert default.kernels == Kernels()
    assert all(not m.row_reduction for m in plain.modules() if isinstance(m, Linear))
    assert all(m.row_reduction for m in default.modules() if isinstance(m, Linear))
    assert not plain.cross_attn.flash_when_compiled and isinstance(plain.cross_attn, CrossAttention)
    default.set_kernels(Kernels(row_linear_as_reduction=False))
    assert not default.to_logits.row_reduction and default.layers[0].attn.flash_when_compiled


def test_compiled_row_linear_reduction_matches_the_gemm():
    from perceiver_ar_music.model.kernels import Linear

    torch.manual_seed(0)
    layer = Linear(32, 16, bias=False)
    x = torch.randn(1, 1, 32)
    compiled = torch.compile(layer, fullgraph=True)
    reduced = compiled(x)
    layer.row_reduction = False
    torch._dynamo.reset()
    assert torch.allclose(reduced, torch.compile(layer, fullgraph=True)(x), atol=1e-5)
    assert torch.allclose(reduced, F.linear(x, layer.weight), atol=1e-5)
