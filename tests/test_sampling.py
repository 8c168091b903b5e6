"""Logit filters and the sampling loop (`sample_ids`): reproducibility, stopping, masks, long continuations."""

from __future__ import annotations

import pytest
import torch

from perceiver_ar_music.model.perceiver_ar import PerceiverAR
from perceiver_ar_music.sampling.sampler import SamplingConfig, filter_logits, sample_ids
from tests.tiny import tiny_model


def sharp_model() -> PerceiverAR:
    """A tiny random model with sharper logits (std 0.5), in eval mode."""
    model = tiny_model(30, max_seq_len=16, num_latents=6)
    torch.nn.init.normal_(model.to_logits.weight, std=0.5)
    return model.eval()


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(logits[0] > torch.finfo(logits.dtype).min).flatten().tolist())


def test_top_k_top_p_min_p_and_temperature():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.07, 0.03]]))
    assert kept(filter_logits(logits, SamplingConfig(top_k=2))) == {0, 1}
    # top-p 0.8: 0.5 + 0.25 = 0.75 < 0.8, so the third token is still needed
    assert kept(filter_logits(logits, SamplingConfig(top_p=0.8))) == {0, 1, 2}
    assert kept(filter_logits(logits, SamplingConfig(top_p=0.5))) == {0}
    # min-p 0.2: keep p >= 0.1
    assert kept(filter_logits(logits, SamplingConfig(min_p=0.2))) == {0, 1, 2}
    hot = filter_logits(logits, SamplingConfig(temperature=2.0))
    torch.testing.assert_close(hot, logits / 2)


def test_top_p_can_spare_the_clock():
    # tokens 0-2 are notes, 3-4 time shifts (the exempt ids); the long shift (4) is the least likely
    probs = torch.tensor([[0.4, 0.2, 0.1, 0.27, 0.03]])
    logits = probs.log()
    assert kept(filter_logits(logits, SamplingConfig(top_p=0.8))) == {0, 1, 3}  # the long shift is cut
    spared = filter_logits(logits, SamplingConfig(top_p=0.6, top_p_exempt=(3, 4))).softmax(-1)[0]
    # within the notes' share (0.7): 0.4/0.7 = 0.57 < 0.6, so note 1 stays and note 2 goes
    assert spared[2] == 0
    # every time shift keeps its own probability; the kept notes fill the notes' share, pro rata
    torch.testing.assert_close(spared[3:], probs[0, 3:])
    torch.testing.assert_close(spared[:2], probs[0, :2] * 0.7 / 0.6)
    # no exempt ids: the nucleus of old, token for token
    torch.testing.assert_close(filter_logits(logits, SamplingConfig(top_p=0.6, top_p_exempt=())),
                               filter_logits(logits, SamplingConfig(top_p=0.6)))


def test_sampling_config_rejects_bad_values():
    for bad in (dict(temperature=-1), dict(top_k=-1), dict(top_p=0), dict(min_p=1.0)):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)


def test_same_seed_same_music_other_seed_other_music():
    model = sharp_model()
    prompt = torch.ones(3, 2, dtype=torch.long)
    cfg = SamplingConfig(temperature=1.0, top_p=0.95)
    a = sample_ids(model, prompt, 20, cfg, seed=7)
    b = sample_ids(model, prompt, 20, cfg, seed=7)
    c = sample_ids(model, prompt, 20, cfg, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # batch rows are independent samples


def test_continues_far_past_the_context_with_resets():
    model = sharp_model()
    out = sample_ids(model, torch.ones(2, 3, dtype=torch.long), 100, SamplingConfig(top_k=5), seed=0)
    assert out.shape == (2, 103)
    assert ((out >= 0) & (out < 30)).all()


def test_eos_stops_when_every_sequence_has_ended():
    model = sharp_model()
    with torch.no_grad():  # make EOS (id 2) overwhelmingly likely from the first step
        model.to_logits.weight.zero_()
        model.norm_out.weight.zero_()
        model.norm_out.bias.zero_()
        model.norm_out.bias[0] = 1.0
        model.to_logits.weight[2, 0] = 50.0
    out = sample_ids(model, torch.ones(2, 1, dtype=torch.long), 50, eos_id=2, seed=0)
    assert out.shape == (2, 2) and (out[:, 1] == 2).all()


def test_allowed_tokens_mask_is_respected_and_callback_sees_every_step():
    model = sharp_model()
    allowed = torch.zeros(30, dtype=torch.bool)
    allowed[[4, 9]] = True
    seen = []

    def callback(step, new):
        seen.append(new.clone())
        return step == 9  # stop after 10 tokens

    out = sample_ids(
        model, torch.ones(1, 2, dtype=torch.long), 50, seed=1,
        allowed_tokens=lambda seqs: allowed.expand(seqs.shape[0], -1), callback=callback,
    )
    assert out.shape == (1, 12) and set(out[0, 2:].tolist()) <= {4, 9}
    assert len(seen) == 10


def test_generate_restores_training_mode():
    model = sharp_model().train()
    sample_ids(model, torch.ones(1, 1, dtype=torch.long), 3)
    assert model.training


@pytest.mark.parametrize("ends", [(3, 7), (5, 40), (0, 33)])
def test_eos_output_ends_exactly_where_the_last_sequence_ended(ends):
    """EOS is polled every EOS_CHECK_EVERY steps, but the output is cut at the true end."""
    model = sharp_model()

    def allowed(seqs):  # row r may only emit EOS once it has generated ends[r] tokens
        mask = torch.zeros(seqs.shape[0], 30, dtype=torch.bool)
        for r, end in enumerate(ends):
            generated = seqs.shape[1] - 1
            mask[r, 2 if generated >= end else 5] = True
        return mask

    out = sample_ids(model, torch.ones(2, 1, dtype=torch.long), 60, eos_id=2, seed=0, allowed_tokens=allowed)
    assert out.shape[1] == 1 + max(ends) + 1
    for r, end in enumerate(ends):
        assert (out[r, 1 : 1 + end] == 5).all() and out[r, 1 + end] == 2


def test_sampler_draws_from_the_filtered_distribution():
    from perceiver_ar_music.sampling.sampler import next_token

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20_000, -1)
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(next_token(logits, SamplingConfig(), g), minlength=4) / 20_000
    torch.testing.assert_close(counts, probs, atol=0.015, rtol=0)
    top2 = torch.bincount(next_token(logits, SamplingConfig(top_k=2), g), minlength=4) / 20_000
    torch.testing.assert_close(top2, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.015, rtol=0)


def test_sampler_draws_the_same_tokens_as_torch_multinomial_for_a_seed():
    """Seeds keep giving the same music as before the sync-free sampler (CPU generator)."""
    from perceiver_ar_music.sampling.sampler import next_token

    logits = torch.randn(16, 30, generator=torch.Generator().manual_seed(1))
    cfg = SamplingConfig(top_k=10)
    ours = next_token(logits, cfg, torch.Generator().manual_seed(3))
    probs = filter_logits(logits, cfg).softmax(-1)
    theirs = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(3)).squeeze(-1)
    assert torch.equal(ours, theirs)
