#!/usr/bin/env python
"""One prepared run on a CUDA GPU: correctness of the CUDA paths, then speed. Needs only torch,
einops (and the optional seed port). Prints a table last and writes JSON to the given folder.

    PYTHONPATH=. python scripts/gpu_check.py OUT_DIR [--quick]

Checks (each a row): fused bf16 attention vs the fp32 reference (relative error, no NaN, which
SDPA kernel ran); cached vs reference decoding on the GPU (greedy tokens in fp32 within a latent
window, logits in bf16); a few bf16 training steps (loss falls). Speed: generation tokens/s at
batch 1 and 8 with a 4096-context model (ours cached vs the port's full forward per token), and
a training step of the `maestro` shape, ours vs the port, side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perceiver_ar_music.model import PerceiverAR, lm_loss  # noqa: E402
from perceiver_ar_music.sampling import SamplingConfig, generate  # noqa: E402

DEV = "cuda"
ROWS: list[tuple[str, str]] = []
RESULTS: dict = {}


def row(name: str, value: str, **data) -> None:
    ROWS.append((name, value))
    RESULTS[name] = {"value": value, **data}
    print(f"{name}: {value}", flush=True)


def timed(fn, repeats: int = 1) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def sdpa_kernels(fn) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = {e.key for e in prof.key_averages()}
    return sorted(n for n in names if any(k in n.lower() for k in ("flash", "fmha", "efficient", "attention")))[:4]


def check_fused_attention() -> None:
    torch.manual_seed(0)
    model = PerceiverAR(num_tokens=391, dim=512, depth=4, heads=8, dim_head=64, max_seq_len=2048, num_latents=1024).to(DEV).eval()
    torch.nn.init.normal_(model.to_logits.weight, std=0.02)
    x = torch.randint(3, 391, (2, 2048), device=DEV)
    with torch.no_grad():
        ref = model(x).float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fast = model(x).float()
            kernels = sdpa_kernels(lambda: model(x))
    rel = ((fast - ref).norm() / ref.norm()).item()
    ok = rel < 2e-2 and torch.isfinite(fast).all().item()
    row("fused bf16 vs fp32 forward", f"rel err {rel:.2e} {'OK' if ok else 'FAIL'}; kernels {kernels}", rel=rel, ok=ok)


def check_cached_decoding() -> None:
    torch.manual_seed(1)
    model = PerceiverAR(num_tokens=391, dim=256, depth=2, heads=4, dim_head=64, max_seq_len=512, num_latents=256).to(DEV).eval()
    torch.nn.init.normal_(model.to_logits.weight, std=0.3)
    prompt = torch.randint(3, 391, (2, 8), device=DEV)
    greedy = SamplingConfig(temperature=0)
    cached = generate(model, prompt, 240, greedy, use_cache=True)
    reference = generate(model, prompt, 240, greedy, use_cache=False)
    same = torch.equal(cached, reference)
    row("cached == reference greedy (fp32, 240 tokens)", "OK" if same else "FAIL", ok=same)
    from perceiver_ar_music.decoding import CachedDecoder, ReferenceDecoder

    seq = torch.randint(3, 391, (2, 200), device=DEV)
    worst = 0.0
    with torch.autocast("cuda", dtype=torch.bfloat16):
        cached_dec, ref_dec = CachedDecoder(model), ReferenceDecoder(model)
        a, b = cached_dec.prefill(seq[:, :1]), ref_dec.prefill(seq[:, :1])
        for t in range(1, 200):
            worst = max(worst, ((a.float() - b.float()).abs().max() / b.float().abs().max()).item())
            a, b = cached_dec.step(seq[:, t]), ref_dec.step(seq[:, t])
    row("cached vs reference logits (bf16)", f"max rel diff {worst:.2e} {'OK' if worst < 5e-2 else 'FAIL'}", rel=worst)


def check_training() -> None:
    torch.manual_seed(2)
    model = PerceiverAR(num_tokens=391, dim=512, depth=4, heads=8, dim_head=64, max_seq_len=1024, num_latents=512, cross_attn_dropout=0.5).to(DEV)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    pattern = torch.randint(3, 391, (64,), device=DEV)
    data = pattern.repeat(40)[None].expand(8, -1)
    losses = []
    for step in range(60):
        start = torch.randint(0, data.shape[1] - 1025, (1,)).item()
        window = data[:, start : start + 1025]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(window[:, :-1])
        loss, nats = lm_loss(logits, window[:, -512:], z_loss=1e-4)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(nats.item())
    ok = losses[-1] < 0.5 * losses[0] and all(map(lambda v: v == v, losses))
    row("bf16 training, 60 steps", f"loss {losses[0]:.2f} -> {losses[-1]:.3f} {'OK' if ok else 'FAIL'}", losses=losses[::10], ok=ok)


def port_class():
    try:
        from perceiver_ar_pytorch import PerceiverAR as Port
    except ImportError:
        return None
    return Port


def bench_generation(tokens: int, port_tokens: int) -> None:
    torch.manual_seed(3)
    shape = dict(num_tokens=391, dim=1024, depth=12, heads=16, dim_head=64, max_seq_len=4096)
    # bf16 weights (as `generate` uses them on CUDA): autocast re-casts weights at every step.
    model = PerceiverAR(**shape, num_latents=2048).to(DEV, torch.bfloat16).eval()
    prompt = torch.randint(3, 391, (1, 4096), device=DEV)
    for batch in (1, 8):
        p = prompt.expand(batch, -1).contiguous()
        generate(model, p, 64, SamplingConfig(top_k=32), seed=0)  # warm-up
        seconds = timed(lambda: generate(model, p, tokens, SamplingConfig(top_k=32), seed=0))
        rate = tokens * batch / seconds
        row(f"ours generate, batch {batch}", f"{rate:.0f} tok/s ({tokens} tokens, 4096 ctx, 2048 latents, bf16)", tok_s=rate)
    Port = port_class()
    if Port is None:
        row("port generate", "port not installed")
        return
    port = Port(**shape, cross_attn_seq_len=2048).to(DEV).eval()

    @torch.no_grad()
    def port_gen():
        out = prompt
        for _ in range(port_tokens):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = port(out[:, -4096:])[:, -1]
            out = torch.cat((out, torch.multinomial(logits.float().softmax(-1), 1)), 1)

    port_gen()
    rate = port_tokens / timed(port_gen)
    row("port generate, batch 1", f"{rate:.1f} tok/s ({port_tokens} tokens)", tok_s=rate)
    row("generation speed-up ours/port (batch 1)", f"{RESULTS['ours generate, batch 1']['tok_s'] / rate:.0f}x")


def bench_training(steps: int) -> None:
    shape = dict(num_tokens=391, dim=1024, depth=12, heads=16, dim_head=64, max_seq_len=4096)
    batch = 4
    x = torch.randint(3, 391, (batch, 4097), device=DEV)
    results = {}
    Port = port_class()
    candidates = [("ours", lambda: PerceiverAR(**shape, num_latents=2048))]
    if Port is not None:
        candidates.append(("port", lambda: Port(**shape, cross_attn_seq_len=2048)))
    for name, make in candidates:
        torch.manual_seed(4)
        model = make().to(DEV).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(x[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, 391), x[:, -2048:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()
        seconds = timed(step, steps)
        n_params = sum(p.numel() for p in model.parameters())
        tok_s = batch * 2048 / seconds
        results[name] = seconds
        row(f"{name} train step (maestro shape, batch {batch}, bf16)", f"{seconds * 1000:.0f} ms, {tok_s:.0f} scored tok/s, {n_params / 1e6:.0f}M params", s=seconds)
        torch.cuda.empty_cache()
    if "port" in results:
        row("training speed-up ours/port", f"{results['port'] / results['ours']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--gen-tokens", type=int, default=1024)
    parser.add_argument("--port-gen-tokens", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=5)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    row("device", f"{torch.cuda.get_device_name()} / torch {torch.__version__}")
    for check in (check_fused_attention, check_cached_decoding, check_training,
                  lambda: bench_generation(args.gen_tokens, args.port_gen_tokens),
                  lambda: bench_training(args.train_steps)):
        try:
            check()
        except Exception as exc:  # keep going: one failure must not hide the other figures
            row(f"ERROR in {getattr(check, '__name__', 'benchmark')}", f"{type(exc).__name__}: {exc}"[:300])
        (args.out / "gpu_check.json").write_text(json.dumps(RESULTS, indent=2))
    width = max(len(k) for k, _ in ROWS)
    print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in ROWS))


if __name__ == "__main__":
    main()
