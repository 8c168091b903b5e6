"""The cached decoder against slow references: windows, resets, sliding context, batches."""

from __future__ import annotations

import sys

import pytest
import torch

from perceiver_ar_music.sampling.decoding import CachedDecoder, ReferenceDecoder
from perceiver_ar_music.model.perceiver_ar import PerceiverAR
from perceiver_ar_music.sampling.sampler import SamplingConfig, sample_ids
from tests.tiny import tiny_model

M, N = 24, 8  # context and latents of the test model
MODE = "dynamic"  # the decoding mode under test (set by the fixture below)


@pytest.fixture(autouse=True, params=["dynamic", "static"])
def decoding_mode(request, monkeypatch):
    """Every test runs on the sliced eager path and on the fixed-shape (CUDA graph) step."""
    monkeypatch.setattr(sys.modules[__name__], "MODE", request.param)
    return request.param


def model_in(dtype: torch.dtype = torch.float64) -> PerceiverAR:
    model = tiny_model(50, depth=2, max_seq_len=M, num_latents=N)
    torch.nn.init.normal_(model.to_logits.weight, std=0.5)
    return model.to(dtype).eval()


def run_cached(model, seq, prompt_len, reset_latents=None):
    """Teacher-force `seq` through the cached decoder; yields (length, logits, decoder) per step."""
    dec = CachedDecoder(model, reset_latents, mode=MODE)
    yield prompt_len, dec.prefill(seq[:, :prompt_len]), dec
    for t in range(prompt_len, seq.shape[1]):
        yield t + 1, dec.step(seq[:, t]), dec


def slow_sliding_reference(model, seq, length, latent_windows):
    """Logits after `length` tokens, computing each latent's cross-attention in its own window.

    latent_windows maps each cached latent's position j to the window start it was computed with.
    This is the definition of the cached decoder's semantics, written the slow, obvious way.
    """
    states = []
    for j, start in sorted(latent_windows.items()):
        x, _ = model.cross_attend(seq[:, start : j + 1], num_latents=1)
        states.append(x)
    x = torch.cat(states, dim=1)
    rot = model.rotation(torch.tensor(sorted(latent_windows)), x.dtype)
    return model.head(model.latent_stack(x, rot))[:, -1]


def test_identical_to_reference_at_every_step_while_the_sequence_fits_the_latents():
    model = model_in()
    seq = torch.randint(0, 50, (2, N))
    ref = ReferenceDecoder(model)
    for length, logits, _ in run_cached(model, seq, prompt_len=1):
        expected = ref.prefill(seq[:, :length])
        torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)


def test_after_each_reset_identical_to_a_forward_with_that_many_latents():
    model = model_in()
    seq = torch.randint(0, 50, (2, M))  # no sliding yet
    resets = 0
    for length, logits, dec in run_cached(model, seq, prompt_len=3, reset_latents=5):
        expected = model(seq[:, :length], num_latents=dec.num_cached)[:, -1]
        torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)
        resets = dec.num_resets
    assert resets >= 4  # resets really happened (8 -> 5 latents every 3 steps)


def test_sliding_past_the_context_matches_the_slow_reference_and_resets_are_exact():
    model = model_in()
    seq = torch.randint(0, 50, (1, 3 * M + 5))
    windows: dict[int, int] = {}
    last_resets = 0
    reset_checks = 0
    for length, logits, dec in run_cached(model, seq, prompt_len=2, reset_latents=3):
        newest = length - 1
        if dec.num_resets != last_resets or length == 2:  # rebuilt: all latents share one window
            start = max(0, length - M)
            windows = {j: start for j in range(length - dec.num_cached, length)}
            expected = model(seq[:, start:length], num_latents=dec.num_cached)[:, -1]
            torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)
            reset_checks += length > M
        else:  # one new latent with its own window
            windows[newest] = max(0, length - M)
        last_resets = dec.num_resets
        assert len(windows) == dec.num_cached
        torch.testing.assert_close(
            logits, slow_sliding_reference(model, seq, length, windows), rtol=1e-10, atol=1e-10
        )
    assert reset_checks >= 5


def test_full_width_resets_are_the_exact_model_even_past_the_context():
    """With reset_latents = N every step past the first window is a rebuild: the exact model."""
    model = model_in()
    seq = torch.randint(0, 50, (2, 2 * M + 3))
    ref = ReferenceDecoder(model)
    ref.prefill(seq[:, :4])
    for length, logits, _ in run_cached(model, seq, prompt_len=4, reset_latents=N):
        expected = model(seq[:, max(0, length - M) : length])[:, -1]
        torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("prompt_len", [1, N - 1, N, N + 3, M, M + 7])
def test_prompts_of_any_length_prefill_to_the_reference(prompt_len):
    model = model_in()
    seq = torch.randint(0, 50, (1, prompt_len))
    logits = CachedDecoder(model, mode=MODE).prefill(seq)
    num = prompt_len if prompt_len <= N else N // 2
    expected = model(seq[:, -M:], num_latents=num)[:, -1]
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)


def test_batch_rows_decode_like_single_sequences():
    model = model_in()
    seq = torch.randint(0, 50, (3, M + 10))
    batched = [logits for _, logits, _ in run_cached(model, seq, prompt_len=2)]
    for row in range(3):
        single = [logits for _, logits, _ in run_cached(model, seq[row : row + 1], prompt_len=2)]
        for a, b in zip(batched, single):
            torch.testing.assert_close(a[row : row + 1], b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype, batch", [(torch.float32, 2), (torch.bfloat16, 4)])
def test_greedy_tokens_identical_on_both_paths_within_a_window(dtype, batch):
    """fp32 weights, and bf16 (what `generate` loads on CUDA, and could on a CPU with bf16 units)."""
    model = model_in(dtype)
    prompt = torch.randint(0, 50, (batch, 2))
    greedy = SamplingConfig(temperature=0)
    cached = sample_ids(model, prompt, N - 2, greedy, use_cache=True, decode_mode=MODE)
    reference = sample_ids(model, prompt, N - 2, greedy, use_cache=False)
    assert cached.shape == (batch, N)
    assert torch.equal(cached, reference)


def test_decoder_refuses_a_model_in_training_mode():
    with pytest.raises(ValueError, match="eval"):
        CachedDecoder(model_in().train())


def test_cached_decoding_under_bf16_autocast_matches_the_reference():
    """Caches take the dtype the projections produce (bf16 under autocast), as on CUDA."""
    model = model_in(torch.float32)
    seq = torch.randint(0, 50, (2, M + 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dec = CachedDecoder(model, reset_latents=N, mode=MODE)  # full-width resets: exact past the context
        logits = dec.prefill(seq[:, :3])
        for t in range(3, seq.shape[1]):
            expected = model(seq[:, max(0, t - M) : t])[:, -1]
            torch.testing.assert_close(logits.float(), expected.float(), rtol=0.05, atol=0.05)
            logits = dec.step(seq[:, t])
    assert dec.cache.context.k.dtype == torch.bfloat16


def test_decoder_modes_are_validated():
    with pytest.raises(ValueError, match="mode must be"):
        CachedDecoder(model_in(), mode="fast")
    with pytest.raises(ValueError, match="CUDA"):
        CachedDecoder(model_in(), mode="graph").prefill(torch.ones(1, 2, dtype=torch.long))
    dec = CachedDecoder(model_in())
    dec.prefill(torch.ones(1, 2, dtype=torch.long))
    assert dec.mode == "dynamic"  # the automatic choice off CUDA


def test_a_decoder_can_be_reused_for_a_new_prompt_and_batch():
    model = model_in()
    dec = CachedDecoder(model, mode=MODE)
    for batch, prompt_len in ((2, M + 3), (1, 3), (1, N)):
        seq = torch.randint(0, 50, (batch, prompt_len + 5))
        logits = dec.prefill(seq[:, :prompt_len])
        fresh = CachedDecoder(model, mode=MODE)
        expected = fresh.prefill(seq[:, :prompt_len])
        for t in range(prompt_len, seq.shape[1]):
            torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)
            logits, expected = dec.step(seq[:, t]), fresh.step(seq[:, t])


@pytest.mark.slow
def test_compiled_fixed_shape_step_matches_the_eager_one(decoding_mode):
    """torch.compile of the step (what `generate --compile` runs on a GPU) changes nothing."""
    if decoding_mode != "static":
        pytest.skip("one run is enough")
    model = model_in(torch.float32)
    for batch in (1, 2):  # batch 1 compiles the linear layers as multiply-reduces
        seq = torch.randint(0, 50, (batch, 2 * M + 5))
        eager, compiled = CachedDecoder(model, reset_latents=5, mode="static"), CachedDecoder(model, reset_latents=5, compile=True)
        a, b = eager.prefill(seq[:, :3]), compiled.prefill(seq[:, :3])
        for t in range(3, seq.shape[1]):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
            a, b = eager.step(seq[:, t]), compiled.step(seq[:, t])
        assert compiled.mode == "static" and compiled.num_resets == eager.num_resets > 0
    with pytest.raises(ValueError, match="fixed-shape"):
        CachedDecoder(model, mode="dynamic", compile=True)


def test_a_failed_graph_capture_falls_back_to_the_eager_step_with_a_warning(monkeypatch):
    if MODE != "static":
        pytest.skip("one run is enough")
    model = model_in()
    seq = torch.randint(0, 50, (1, M + 9))
    dec, ref = CachedDecoder(model, mode="static"), CachedDecoder(model, mode="static")
    dec.prefill(seq[:, :5]), ref.prefill(seq[:, :5])
    dec.mode = "graph"  # as on CUDA; make the capture fail where a GPU could

    def no_stream():
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "Stream", no_stream)
    with pytest.warns(UserWarning, match="capture failed"):
        dec._capture()
    assert dec.mode == "static" and dec._graph is None
    for t in range(5, seq.shape[1]):  # nothing the failed attempt touched has changed
        torch.testing.assert_close(dec.step(seq[:, t]), ref.step(seq[:, t]), rtol=0, atol=0)
