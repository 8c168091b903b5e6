#!/usr/bin/env python
"""One prepared run on a CUDA GPU: correctness of the CUDA paths, then speed. Needs only torch,
einops and safetensors (the seed's port is optional). Prints a table last and writes JSON (after
every section) to the given folder.

    PYTHONPATH=. python scripts/gpu_check.py OUT_DIR                      # on the GPU machine
    PYTHONPATH=. python scripts/gpu_check.py OUT_DIR --device cpu --tiny  # dry run of every path

Sections, in order (a time budget skips what no longer fits, so the table always comes out):
1. correctness: fused bf16 attention vs fp32 (kernels named), the compiled bottom-right flash
   path vs eager, cached/graph decoding vs the reference (greedy tokens fp32, logits bf16);
2. generation: tokens/s for 8192 new tokens at batch 1 and 8, 4096-context `maestro` model,
   CUDA-graph decoder vs the eager decoder vs the port's full forward per token;
3. long context: one `maestro`-width training step at contexts 4096..262144 with peak memory;
4. the `small` preset in bf16 with torch.compile for a few hundred steps on a synthetic corpus,
   then a checkpoint saved and reloaded bit-exactly;
5. training throughput and MFU of the `maestro` preset, eager and compiled, beside the port,
   with a kernel-time breakdown of the compiled step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perceiver_ar_music.model.checkpoint import load_model, load_optimizer_state, save_checkpoint  # noqa: E402
from perceiver_ar_music.sampling.decoding import CachedDecoder  # noqa: E402
from perceiver_ar_music.training.flops import forward_flops, peak_bf16_flops, training_step_flops  # noqa: E402
from perceiver_ar_music.model.kernels import Kernels, attention, lower_right_causal  # noqa: E402
from perceiver_ar_music.model.perceiver_ar import PerceiverAR, PerceiverARConfig, lm_loss  # noqa: E402
from perceiver_ar_music.training.presets import resolve  # noqa: E402
from perceiver_ar_music.sampling.sampler import SamplingConfig, sample_ids  # noqa: E402

VOCAB = 391
ROWS: list[tuple[str, str]] = []
RESULTS: dict[str, Any] = {}


class Check:
    """Run-wide settings: device, sizes (full or --tiny) and the time budget."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        self.tiny = args.tiny
        self.start = time.perf_counter()
        maestro, _ = resolve("maestro", {}, {})
        small, small_train = resolve("small", {}, {})
        if self.tiny:  # the same code paths at sizes a 2-core CPU runs in a few minutes
            shrink = dict(dim=64, depth=2, heads=2, dim_head=32, max_seq_len=256, num_latents=128)
            maestro = PerceiverARConfig.from_dict({**maestro.to_dict(), **shrink})
            small = PerceiverARConfig.from_dict({**small.to_dict(), **shrink, "depth": 1})
        self.maestro, self.small, self.small_train = maestro, small, small_train
        self.decode_mode = "graph" if self.cuda else "static"
        self.kernels = Kernels()  # the compiled-flash check turns flash_when_compiled off if it fails

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def amp(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def timed(self, fn: Callable[[], Any], repeats: int = 1) -> float:
        self.sync()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        self.sync()
        return (time.perf_counter() - start) / repeats

    def peak_gib(self) -> float:
        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else float("nan")

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def row(name: str, value: str, **data: Any) -> None:
    ROWS.append((name, value))
    RESULTS[name] = {"value": value, **data}
    print(f"{name}: {value}", flush=True)


def verdict(ok: bool) -> str:
    return "OK" if ok else "FAIL"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def kernel_names(c: Check, fn: Callable[[], Any], keys: tuple[str, ...]) -> list[str]:
    """Names of the GPU kernels that `fn` launched and that contain one of `keys`."""
    if not c.cuda:
        return ["(no CUDA profile on CPU)"]
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = {e.key for e in prof.key_averages()}
    return sorted(n[:80] for n in names if any(k in n.lower() for k in keys))[:6]


def kernel_count(c: Check, fn: Callable[[], Any]) -> int | None:
    """How many GPU kernels (and copies) one call of `fn` runs."""
    if not c.cuda:
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(e.count for e in prof.key_averages() if e.device_type == DeviceType.CUDA)


def kernel_times(c: Check, fn: Callable[[], Any], per: int = 1, top: int = 6) -> list[tuple[str, float]]:
    """The `top` GPU kernels of `fn` by total time, in microseconds per 1/`per` of a call."""
    if not c.cuda:
        return []
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
    events.sort(key=lambda e: -e.device_time_total)
    return [(e.key[:60], round(e.device_time_total / per, 1)) for e in events[:top]]


def port_class() -> Any:
    try:
        from perceiver_ar_pytorch import PerceiverAR as Port
    except ImportError:
        return None
    return Port


def port_model(cfg: PerceiverARConfig) -> torch.nn.Module:
    Port = port_class()
    return Port(
        num_tokens=cfg.num_tokens, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, dim_head=cfg.dim_head,
        max_seq_len=cfg.max_seq_len, cross_attn_seq_len=cfg.cross_attn_seq_len, ff_mult=cfg.ff_mult,
        dropout=cfg.dropout, cross_attn_dropout=cfg.cross_attn_dropout,
    )


# ----------------------------------------------------------------------------------------------
# 1. Correctness


def check_fused_attention(c: Check) -> None:
    torch.manual_seed(0)
    m, n = (2048, 1024) if not c.tiny else (256, 128)
    model = PerceiverAR(num_tokens=VOCAB, dim=512 if not c.tiny else 64, depth=4 if not c.tiny else 2, heads=8 if not c.tiny else 2,
                        dim_head=64, max_seq_len=m, num_latents=n).to(c.dev).eval()
    torch.nn.init.normal_(model.to_logits.weight, std=0.02)
    x = torch.randint(3, VOCAB, (2, m), device=c.dev)
    with torch.no_grad():
        ref = model(x).float()
        with c.amp():
            fast = model(x).float()
            kernels = kernel_names(c, lambda: model(x), ("flash", "fmha", "efficient", "attention", "cudnn"))
    rel = rel_err(fast, ref)
    ok = rel < 2e-2 and bool(torch.isfinite(fast).all())
    row("fused bf16 vs fp32 forward", f"rel err {rel:.2e} {verdict(ok)}; kernels {kernels}", rel=rel, ok=ok, kernels=kernels)


def check_compiled_flash(c: Check) -> None:
    """The compiled bottom-right flash call against eager CausalBias and an fp32 explicit mask.

    If it fails, compiled training below falls back to the explicit mask (and says so)."""
    ok = False
    try:
        ok = _compiled_flash(c)
    finally:
        if not ok:
            c.kernels = Kernels(flash_when_compiled=False)
            row("compiled training attention", "explicit mask fallback (the flash path failed)")


def _compiled_flash(c: Check) -> bool:
    torch.manual_seed(5)
    b, h, n, m, d = (2, 8, 512, 1536, 64) if not c.tiny else (1, 2, 16, 48, 32)
    dtype = torch.bfloat16 if c.cuda else torch.float32
    q, k, v = (torch.randn(b, h, length, d, device=c.dev, dtype=dtype, requires_grad=True) for length in (n, m, m))
    mask = lower_right_causal(n, m, torch.device("cpu")).to(c.dev)
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    eager = attention(q, k, v)
    compiled_fn = torch.compile(lambda q, k, v: attention(q, k, v), fullgraph=True)
    compiled = compiled_fn(q, k, v)
    grads_compiled = torch.autograd.grad(compiled.float().square().sum(), (q, k, v))
    grads_ref = torch.autograd.grad(reference.square().sum(), (q, k, v))
    out_err = max(rel_err(eager, reference), rel_err(compiled, reference))
    grad_err = max(rel_err(a, b) for a, b in zip(grads_compiled, grads_ref))
    kernels = kernel_names(c, lambda: compiled_fn(q, k, v), ("flash", "fmha", "efficient", "attention"))
    ok = out_err < 2e-2 and grad_err < 3e-2
    row("compiled bottom-right flash vs fp32 mask", f"out rel {out_err:.1e}, grad rel {grad_err:.1e} {verdict(ok)}; kernels {kernels}",
        out_rel=out_err, grad_rel=grad_err, ok=ok, kernels=kernels)
    return ok


def decode_test_model(c: Check, dtype: torch.dtype) -> PerceiverAR:
    torch.manual_seed(1)
    model = PerceiverAR(num_tokens=VOCAB, dim=256, depth=2, heads=4, dim_head=64, max_seq_len=512, num_latents=256)
    torch.nn.init.normal_(model.to_logits.weight, std=0.3)
    return model.to(c.dev, dtype).eval()


def check_cached_decoding(c: Check) -> None:
    model = decode_test_model(c, torch.float32)
    prompt = torch.randint(3, VOCAB, (2, 8), device=c.dev)
    greedy = SamplingConfig(temperature=0)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 here
    try:
        reference = sample_ids(model, prompt, 240, greedy, use_cache=False)
        for mode in ("dynamic", c.decode_mode):
            tokens = sample_ids(model, prompt, 240, greedy, decode_mode=mode)
            same = torch.equal(tokens, reference)
            detail = ""
            if not same:  # where the paths part, and how close the top two logits were there
                first = int((tokens != reference).any(0).float().argmax())
                top2 = model(reference[:, max(0, first - 512) : first])[:, -1].topk(2).values
                detail = f" (first differs at {first}, top-2 logit gap {float((top2[:, 0] - top2[:, 1]).min()):.1e})"
            row(f"{mode} decoder == reference, greedy fp32, 240 tokens", verdict(same) + detail, ok=same)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32

    # bf16 weights, teacher-forced far past the context (resets every 128 tokens): the graph
    # replays must equal the same step run eagerly, and the sliced eager path within bf16 noise.
    model = decode_test_model(c, torch.bfloat16)
    seq = torch.randint(3, VOCAB, (2, 1400), device=c.dev)
    decoders = {mode: CachedDecoder(model, mode=mode) for mode in ("dynamic", "static", c.decode_mode)}
    decoders["compiled"] = CachedDecoder(model, mode=c.decode_mode, compile=True)
    logits = {mode: [dec.prefill(seq[:, :100]).float()] for mode, dec in decoders.items()}
    for t in range(100, seq.shape[1]):
        for mode, dec in decoders.items():
            logits[mode].append(dec.step(seq[:, t]).float())
    stacked = {mode: torch.stack(values) for mode, values in logits.items()}

    def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).abs().amax(dim=(1, 2)) / b.abs().amax(dim=(1, 2))).max().item()

    graph_vs_static = (stacked[c.decode_mode] - stacked["static"]).abs().max().item()
    vs_dynamic = max_rel(stacked[c.decode_mode], stacked["dynamic"])
    compiled_vs_static = max_rel(stacked["compiled"], stacked["static"])
    resets = decoders[c.decode_mode].num_resets
    ok = graph_vs_static < 1e-6 and vs_dynamic < 5e-2 and compiled_vs_static < 5e-2 and resets >= 8
    row(f"{c.decode_mode} vs eager decoding, bf16, 1300 steps, {resets} resets",
        f"vs same step eager {graph_vs_static:.1e}, vs sliced path {vs_dynamic:.1e}, compiled {compiled_vs_static:.1e} {verdict(ok)}",
        graph_vs_static=graph_vs_static, vs_dynamic=vs_dynamic, compiled_vs_static=compiled_vs_static, ok=ok)


# ----------------------------------------------------------------------------------------------
# 2. Generation speed


def parse_gen_variant(spec: str, c: Check) -> tuple[str, bool, int, bool]:
    """'graph/compile/1/rowred' -> (mode, compiled, batch, linear layers as multiply-reduce)."""
    mode, compiled, batch, linear = spec.split("/")
    mode = c.decode_mode if mode == "graph" else mode
    return mode, compiled == "compile", int(batch), linear == "rowred"


DEFAULT_GEN_VARIANTS = [
    "dynamic/eager/1/gemm",  # the sliced eager path
    "graph/eager/1/gemm", "graph/eager/8/gemm",  # CUDA graph (generate's default)
    "graph/compile/1/rowred", "graph/compile/8/rowred",  # + torch.compile (generate --compile)
]


def bench_generation(c: Check) -> None:
    torch.manual_seed(3)
    cfg = PerceiverARConfig.from_dict({**c.maestro.to_dict(), "dropout": 0.0, "cross_attn_dropout": 0.0})
    model = PerceiverAR(cfg).to(c.dev, torch.bfloat16 if c.cuda else torch.float32).eval()
    torch.nn.init.normal_(model.to_logits.weight, std=0.02)
    tokens = c.args.gen_tokens
    prompt = torch.randint(3, VOCAB, (1, cfg.max_seq_len), device=c.dev)
    sampling = SamplingConfig(top_k=32)
    label = f"{cfg.max_seq_len} ctx, {cfg.num_latents} latents, {model.num_params() / 1e6:.0f}M, bf16 weights"
    rates = {}
    for spec in c.args.gen_variants:
        mode, compiled, batch, linear = parse_gen_variant(spec, c)
        count = c.args.eager_gen_tokens if mode == "dynamic" else tokens
        name = f"{mode}{' + compile' if compiled else ''}{', row linear' if compiled and linear else ''}"
        if c.elapsed() > c.args.budget_s * 0.5:
            row(f"ours generate, {name}, batch {batch}", "skipped (time budget)")
            continue
        model.set_kernels(Kernels(row_linear_as_reduction=linear, flash_when_compiled=c.kernels.flash_when_compiled))
        p = prompt.expand(batch, -1).contiguous()
        warm = c.timed(lambda: sample_ids(model, p, 64, sampling, seed=0, decode_mode=mode, compile_decoder=compiled))
        seconds = c.timed(lambda: sample_ids(model, p, count, sampling, seed=0, decode_mode=mode, compile_decoder=compiled))
        rates[(spec, batch)] = rate = count * batch / seconds
        row(f"ours generate, {name}, batch {batch}", f"{rate:.0f} tok/s ({count} new tokens, {seconds:.2f} s; {label}; warm-up {warm:.1f} s)",
            tok_s=rate, seconds=seconds, tokens=count, batch=batch, warmup_s=warm)
    measured = [k for k in rates if k[1] == 1]
    if not measured:  # every batch-1 variant was skipped for time: nothing to break down or compare
        row("fastest decoder at batch 1", "none measured (time budget)")
        return
    best = max(measured, key=rates.get)[0]
    model.set_kernels(Kernels(row_linear_as_reduction=parse_gen_variant(best, c)[3], flash_when_compiled=c.kernels.flash_when_compiled))
    row("fastest decoder at batch 1", best)

    # Where a token's time goes: one replayed step, one reset (rebuild of N' latents), the prefill.
    for compiled in [False, True][-c.args.breakdowns:]:
        dec = CachedDecoder(model, mode=c.decode_mode, compile=compiled)
        new = prompt[:, -1]
        prefill_s = c.timed(lambda: dec.prefill(prompt))
        steps = cfg.num_latents - dec.num_cached  # the step after these resets
        step_s = c.timed(lambda: dec.step(new), steps)
        reset_s = c.timed(lambda: dec.step(new))
        assert dec.num_resets == 1
        probe = CachedDecoder(model, mode="static", compile=compiled)
        probe.prefill(prompt)
        kernels = kernel_count(c, lambda: probe.step(new))
        top = kernel_times(c, lambda: [dec.step(new) for _ in range(10)], per=10)
        row(f"decode breakdown, batch 1{', compiled' if compiled else ''}",
            f"step {step_s * 1e3:.3f} ms ({kernels} kernels), reset {reset_s * 1e3:.1f} ms every "
            f"{cfg.num_latents - dec.reset_latents} tokens, prefill + capture {prefill_s * 1e3:.1f} ms; top kernels (us/step) {top}",
            step_ms=step_s * 1e3, reset_ms=reset_s * 1e3, prefill_ms=prefill_s * 1e3, kernels_per_step=kernels, top_kernels=top)

    if port_class() is None:
        row("port generate", "port not installed")
        return
    torch.manual_seed(3)
    port = port_model(cfg).to(c.dev).eval()

    port_rates = {}
    for batch in (1, 8):
        p = prompt.expand(batch, -1).contiguous()

        @torch.no_grad()
        def port_generate() -> None:
            out = p
            for _ in range(c.args.port_gen_tokens):
                with c.amp():
                    logits = port(out[:, -cfg.max_seq_len :])[:, -1]
                out = torch.cat((out, torch.multinomial(logits.float().softmax(-1), 1)), 1)

        port_generate()
        port_rates[batch] = rate = c.args.port_gen_tokens * batch / c.timed(port_generate)
        row(f"port generate, batch {batch}", f"{rate:.1f} tok/s ({c.args.port_gen_tokens} tokens, full forward per token, bf16 autocast)", tok_s=rate)
    for batch in (1, 8):
        ours = max((rate for (_, b), rate in rates.items() if b == batch), default=None)
        if ours:
            speedup = ours / port_rates[batch]
            row(f"generation speed-up ours/port, batch {batch}",
                f"{speedup:.0f}x (target >= 100x); ours {ours:.0f} tok/s" + (f" (target >= 2000: {verdict(ours >= 2000)})" if batch == 1 else ""),
                speedup=speedup)


# ----------------------------------------------------------------------------------------------
# Training helpers


def make_step(c: Check, model: torch.nn.Module, forward: torch.nn.Module, batch: torch.Tensor, scored: int,
              optimizer: torch.optim.Optimizer) -> Callable[[], torch.Tensor]:
    """One training step as `train` runs it: bf16 autocast, z-loss, clipping, fused AdamW."""

    def step() -> torch.Tensor:
        with c.amp():
            logits = forward(batch[:, :-1])
        loss, nats = lm_loss(logits, batch[:, -scored:], z_loss=1e-4)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return nats

    return step


def adamw(c: Check, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1, fused=c.cuda)


# ----------------------------------------------------------------------------------------------
# 3. Long context


def sweep_long_context(c: Check) -> None:
    contexts = [4096, 16384, 32768, 65536, 131072, 262144] if not c.tiny else [256, 512, 1024]
    fitted = []
    for context in contexts:
        if c.elapsed() > c.args.budget_s - 30:
            row(f"long context {context}", "skipped (time budget)")
            break
        cfg = PerceiverARConfig.from_dict({**c.maestro.to_dict(), "max_seq_len": context, "cross_attn_dropout": 0.0})
        model = optimizer = step = None
        c.reset_peak()
        try:
            torch.manual_seed(6)
            model = PerceiverAR(cfg, c.kernels).to(c.dev).train()
            optimizer = adamw(c, model, 1e-4)
            batch = torch.randint(3, VOCAB, (1, context + 1), device=c.dev)
            step = make_step(c, model, model, batch, cfg.num_latents, optimizer)
            step()
            seconds = c.timed(step)
            peak = c.peak_gib()
            fitted.append(context)
            row(f"long context {context}, batch 1", f"fits: {seconds * 1e3:.0f} ms/step, peak {peak:.1f} GiB",
                seconds=seconds, peak_gib=peak, fits=True)
        except torch.cuda.OutOfMemoryError:
            row(f"long context {context}, batch 1", "out of memory", fits=False)
            break
        finally:
            del model, optimizer, step
            c.reset_peak()
    longest = max(fitted) if fitted else 0
    target = 65536 if not c.tiny else 1024
    row("longest training context (maestro width, 2048 latents, no prefix dropout)", f"{longest} ({verdict(longest >= target)} for target {target})", longest=longest)


# ----------------------------------------------------------------------------------------------
# 4. The small preset, compiled, with a checkpoint round trip


def synthetic_corpus(length: int, generator: torch.Generator) -> torch.Tensor:
    """Tokens made of 16 random motifs of 48 tokens in random order: learnable, not trivial."""
    motifs = torch.randint(3, VOCAB, (16, 48), generator=generator)
    order = torch.randint(0, 16, (length // 48 + 1,), generator=generator)
    return motifs[order].flatten()[:length]


def check_small_compiled_training(c: Check) -> None:
    cfg, tc = c.small, c.small_train
    steps, batch = c.args.small_steps, (tc.batch_size if not c.tiny else 4)
    g = torch.Generator().manual_seed(7)
    corpus = synthetic_corpus(400_000 if not c.tiny else 20_000, g).to(c.dev)
    torch.manual_seed(7)
    model = PerceiverAR(cfg, c.kernels).to(c.dev).train()
    compiled = torch.compile(model)
    optimizer = adamw(c, model, tc.lr)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    losses = []
    compile_start = time.perf_counter()
    first_step_s = 0.0
    for s in range(steps):
        starts = torch.randint(0, corpus.numel() - cfg.max_seq_len - 1, (batch,), generator=g).tolist()
        windows = torch.stack([corpus[i : i + cfg.max_seq_len + 1] for i in starts])
        nats = make_step(c, model, compiled, windows, cfg.num_latents, optimizer)()
        schedule.step()
        if s == 0:
            c.sync()
            first_step_s = time.perf_counter() - compile_start
        if s % 10 == 0 or s == steps - 1:
            losses.append(round(float(nats), 4))
    run_s = time.perf_counter() - compile_start - first_step_s
    finite = all(math.isfinite(v) for v in losses)
    ok = finite and losses[-1] < 0.5 * losses[0]
    row(f"small preset, bf16 + compile, {steps} steps", f"loss {losses[0]:.2f} -> {losses[-1]:.3f} {verdict(ok)} "
        f"(compile {first_step_s:.0f} s, then {run_s / max(steps - 1, 1) * 1e3:.0f} ms/step at batch {batch})",
        losses=losses, ok=ok, compile_s=first_step_s)

    folder = save_checkpoint(Path(tempfile.mkdtemp()) / "small-checkpoint", model, ROOT / "tokenization" / "performance.json",
                             tokenizer_hash="gpu-check", optimizer=optimizer, trainer_state={"step": steps})
    loaded = load_model(folder, c.dev)
    weights_equal = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.model.state_dict().values()))
    fresh = adamw(c, loaded.model, tc.lr)
    load_optimizer_state(fresh, folder)
    state_equal = all(
        torch.equal(optimizer.state[p][key].cpu(), fresh.state[q][key].cpu())
        for p, q in zip(model.parameters(), loaded.model.parameters()) for key in optimizer.state[p]
    )
    model.eval()
    probe = corpus[: cfg.max_seq_len][None]
    with torch.no_grad(), c.amp():
        logits_equal = torch.equal(model(probe), loaded.model(probe))
    ok = weights_equal and state_equal and logits_equal
    row("checkpoint save + reload", f"weights {weights_equal}, optimizer state {state_equal}, logits {logits_equal} {verdict(ok)}", ok=ok)


# ----------------------------------------------------------------------------------------------
# 5. Training throughput and MFU of the maestro preset


def kernel_breakdown(c: Check, step: Callable[[], Any]) -> dict[str, float]:
    """Share of GPU kernel time per kind over two steps."""
    if not c.cuda:
        return {}
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        step()
        torch.cuda.synchronize()
    kinds = {"attention": ("flash", "fmha", "attention", "sdpa"),
             "matmul": ("gemm", "cutlass", "xmma", "nvjet", "cublas", "sm90_", "sm80_"),
             "fused elementwise (triton)": ("triton",),
             "optimizer": ("adam", "foreach", "multi_tensor")}
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        time_us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0.0)
        if not time_us or event.key.startswith("ProfilerStep") or event.key.startswith("aten::"):
            continue
        name = event.key.lower()
        kind = next((k for k, keys in kinds.items() if any(key in name for key in keys)), "other")
        totals[kind] = totals.get(kind, 0.0) + time_us
    total = sum(totals.values()) or 1.0
    return {k: round(v / total, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def bench_training(c: Check) -> None:
    cfg = c.maestro
    peak = peak_bf16_flops(torch.cuda.get_device_name()) if c.cuda else None
    per_window: dict[str, float] = {}
    for spec in c.args.train_variants:
        name, batch = spec.rsplit("/", 1)
        batch = int(batch) if not c.tiny else min(int(batch), 2)
        name = name.replace("-", " ")
        if name == "port" and port_class() is None:
            row("port train step", "port not installed")
            continue
        if c.elapsed() > c.args.budget_s - (90 if name == "ours compiled" else 20):
            row(f"{name} train step", "skipped (time budget)")
            continue
        c.reset_peak()
        seconds = time_training_variant(c, cfg, name, batch, peak)
        c.reset_peak()  # the variant's model and optimizer are gone with its frame
        if seconds is not None:
            per_window[f"{name} {batch}"] = seconds / batch
    per_token = forward_flops(cfg, 1).total / cfg.num_latents
    row("model FLOPs", f"{3 * per_token / 1e9:.2f} GFLOP per scored token; peak bf16 {peak / 1e12 if peak else 'unknown'} TFLOP/s")
    ours = [v for k, v in per_window.items() if k.startswith("ours")]
    port = [v for k, v in per_window.items() if k.startswith("port")]
    if ours and port:  # per-window times, each at its own batch
        row("training speed-up ours/port", f"{min(port) / min(ours):.2f}x (target >= 3x)", speedup=min(port) / min(ours))


def time_training_variant(c: Check, cfg: PerceiverARConfig, name: str, batch: int, peak: float | None) -> float | None:
    """Seconds per step of one variant ("ours eager", "ours compiled", "port"), with a row."""
    torch.manual_seed(4)
    model = (port_model(cfg) if name == "port" else PerceiverAR(cfg, c.kernels)).to(c.dev).train()
    forward = torch.compile(model) if name == "ours compiled" else model
    data = torch.randint(3, VOCAB, (batch, cfg.max_seq_len + 1), device=c.dev)
    step = make_step(c, model, forward, data, cfg.num_latents, adamw(c, model, 1e-4))
    try:
        warm = c.timed(step)  # includes compilation
        step()
        seconds = c.timed(step, c.args.train_steps)
    except torch.cuda.OutOfMemoryError:
        row(f"{name} train step", f"out of memory at batch {batch}")
        return None
    scored = batch * cfg.num_latents
    achieved = training_step_flops(cfg, batch) / seconds
    mfu = achieved / peak if peak else float("nan")
    row(f"{name} train step (maestro preset, batch {batch}, bf16)",
        f"{seconds * 1e3:.0f} ms, {scored / seconds:,.0f} scored tok/s, {achieved / 1e12:.0f} TFLOP/s, MFU {mfu:.1%}, "
        f"peak {c.peak_gib():.1f} GiB (first step {warm:.0f} s)",
        seconds=seconds, tok_s=scored / seconds, tflops=achieved / 1e12, mfu=mfu, peak_gib=c.peak_gib(), first_step_s=warm)
    if name == "ours compiled" and c.args.train_breakdown:
        breakdown = kernel_breakdown(c, step)
        row(f"compiled step, batch {batch}, GPU kernel time by kind", ", ".join(f"{k} {v:.0%}" for k, v in breakdown.items()), breakdown=breakdown)
        top = kernel_times(c, lambda: [step(), step()], per=2, top=8)
        row(f"compiled step, batch {batch}, top kernels (us/step)", str(top), top_kernels=top)
    return seconds


# ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for gpu_check.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="small shapes: a dry run of every path on CPU")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no section after this many seconds")
    parser.add_argument("--gen-tokens", type=int, default=8192)
    parser.add_argument("--eager-gen-tokens", type=int, default=256)
    parser.add_argument("--port-gen-tokens", type=int, default=8)
    parser.add_argument("--small-steps", type=int, default=300)
    parser.add_argument("--gen-variants", nargs="*", default=DEFAULT_GEN_VARIANTS,
                        help="decoders to time, mode/compile|eager/batch/rowred|gemm")
    parser.add_argument("--breakdowns", type=int, default=2, help="decode breakdowns: 2 eager and compiled, 1 compiled only")
    parser.add_argument("--train-variants", nargs="*", default=["ours-eager/8", "port/8", "ours-compiled/8", "ours-compiled/16"])
    parser.add_argument("--train-breakdown", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="run only these sections (by function name)")
    args = parser.parse_args()
    if args.tiny:
        args.gen_tokens = min(args.gen_tokens, 300)
        args.eager_gen_tokens = min(args.eager_gen_tokens, 64)
        args.port_gen_tokens = min(args.port_gen_tokens, 2)
        args.small_steps = min(args.small_steps, 40)
        args.train_steps = min(args.train_steps, 2)
    args.out.mkdir(parents=True, exist_ok=True)
    c = Check(args)
    if c.cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        row("device", f"{torch.cuda.get_device_name()} / torch {torch.__version__} / CUDA {torch.version.cuda}")
    else:
        row("device", f"CPU dry run / torch {torch.__version__}")
    sections = [check_fused_attention, check_compiled_flash, check_cached_decoding, bench_generation,
                sweep_long_context, check_small_compiled_training, bench_training]
    for section in sections:
        if args.only and section.__name__ not in args.only:
            continue
        if c.elapsed() > args.budget_s:
            row(f"skipped {section.__name__}", f"time budget of {args.budget_s:.0f} s spent")
            continue
        started = time.perf_counter()
        try:
            section(c)
        except Exception as exc:  # keep going: one failure must not hide the other figures
            traceback.print_exc()
            row(f"ERROR in {section.__name__}", f"{type(exc).__name__}: {str(exc).strip()}"[:400])
            if c.cuda:
                torch.cuda.empty_cache()
        RESULTS.setdefault("section_seconds", {})[section.__name__] = round(time.perf_counter() - started, 1)
        (args.out / "gpu_check.json").write_text(json.dumps(RESULTS, indent=2, default=str))
    row("total", f"{c.elapsed():.0f} s")
    (args.out / "gpu_check.json").write_text(json.dumps(RESULTS, indent=2, default=str))
    width = max(len(k) for k, _ in ROWS)
    print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in ROWS), flush=True)


if __name__ == "__main__":
    main()
