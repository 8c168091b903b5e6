"""Incremental decoding for Perceiver AR: a cached decoder with resets, and its slow reference.

Both decoders share one interface: `prefill(tokens)` takes a (b, P) prompt and returns the logits
(b, V) for the next token; `step(tokens)` appends one token per sequence and returns the next
logits. All sequences of a batch have the same length.

The cached decoder (`CachedDecoder`):
- keeps the cross-attention keys/values of the last `max_seq_len` (M) tokens in a ring buffer,
  rotated with their absolute positions, so a token's keys are projected once and relative
  positions stay exact however far decoding goes past the context;
- keeps per-layer latent keys/values for up to N latents and decodes one token per step;
- when the latent cache is full, RESETS: rebuilds the latent stack with N' latents (default N/2)
  from the cached cross-attention keys/values (no re-projection of the context), then goes on.

What it computes (tested against `ReferenceDecoder` and plain forwards):
- while the whole sequence fits in N, identical to a full forward of the sequence;
- right after a (re)build with k latents, identical to `model(window, num_latents=k)` where the
  window is the last M tokens; between resets the newest latent cross-attends to its own last M
  tokens while older latents keep their activations (the reset approximation of the paper).
"""

from __future__ import annotations

import functools
import warnings

import torch

from perceiver_ar_music.model.cache import DecoderCache
from perceiver_ar_music.model.perceiver_ar import PerceiverAR


class ReferenceDecoder:
    """The slow exact path: one full forward over the last `max_seq_len` tokens per step."""

    def __init__(self, model: PerceiverAR) -> None:
        self.model = model
        self.tokens: torch.Tensor | None = None

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens = tokens
        return self._next_logits()

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        assert self.tokens is not None, "call prefill first"
        self.tokens = torch.cat((self.tokens, tokens.view(-1, 1)), dim=1)
        return self._next_logits()

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i continues from row rows[i] (a sampler keeping one candidate of several)."""
        self.tokens = self.tokens[rows]

    def _next_logits(self) -> torch.Tensor:
        window = self.tokens[:, -self.model.config.max_seq_len :]
        return self.model(window)[:, -1]


class CachedDecoder:
    """Cached Perceiver AR decoding with latent-cache resets and a sliding context window.

    `mode` picks how one decoding step runs (all three compute the same thing):
    - "dynamic": attends to exactly the filled cache slots (sliced by Python ints); the fastest
      in eager mode on CPU, where kernels are cheap to launch.
    - "static": every tensor has a fixed shape and the position and latent counters live on the
      device, so a step reads no Python state: empty slots are masked instead of sliced off.
    - "graph": the static step captured once as a CUDA graph and replayed per token, which removes
      the per-kernel launch cost that bounds batch-1 decoding on a GPU (CUDA only, no autocast).
    All three run `decode_step`, the dynamic one with Python slice lengths, the fixed-shape ones
    through `static_step` with masks; the step, the prefill and the resets all end in the model's
    one chain, `PerceiverAR.decode_latents`, and write the caches (`DecoderCache`) one way.
    None chooses "graph" on CUDA without autocast, else "static" with `compile=True`, else
    "dynamic". Resets and the prefill always run eagerly (they happen once every N - N' tokens).
    `compile=True` runs the fixed-shape step through torch.compile (static and graph modes), which
    fuses its many small kernels at the price of a compilation on first use.
    """

    MODES = ("dynamic", "static", "graph")

    def __init__(
        self, model: PerceiverAR, reset_latents: int | None = None, mode: str | None = None, compile: bool = False
    ) -> None:
        cfg = model.config
        if model.training:
            raise ValueError("decode with the model in eval mode (model.eval())")
        self.model = model
        self.reset_latents = reset_latents or max(1, cfg.num_latents // 2)
        if not 1 <= self.reset_latents <= cfg.num_latents:
            raise ValueError(f"reset_latents must be in 1..num_latents={cfg.num_latents}")
        if mode is not None and mode not in self.MODES:
            raise ValueError(f"mode must be one of {', '.join(self.MODES)}")
        if compile and mode == "dynamic":
            raise ValueError("compile needs the fixed-shape step: mode 'static' or 'graph'")
        self.mode = mode
        self.compile = compile  # torch.compile the fixed-shape step (fuses its small kernels)
        self.length = 0  # tokens seen so far
        self.num_cached = 0  # latents in the latent caches
        self.num_resets = 0
        self.cache: DecoderCache | None = None
        self._graph: torch.cuda.CUDAGraph | None = None

    # -- public interface --------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Start from a (b, P) prompt; returns the logits (b, V) for token P."""
        cfg = self.model.config
        prompt_len = tokens.shape[1]
        if prompt_len < 1:
            raise ValueError("the prompt needs at least one token (e.g. BOS)")
        window = tokens[:, -cfg.max_seq_len :]
        self.length = prompt_len - window.shape[1]
        self.num_resets = 0
        k, v, positions = self._project(window)
        self._allocate(tokens, k.dtype)
        self._store(window, k, v, positions)
        logits = self._rebuild(prompt_len if prompt_len <= cfg.num_latents else self.reset_latents)
        self._set_counters()
        if self.mode == "graph" and self._graph is None:
            self._capture()
        return logits

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per sequence (shape (b,)); returns the logits (b, V) for the next."""
        tokens = tokens.view(-1, 1)
        if self.num_cached == self.model.config.num_latents:
            self._store(tokens, *self._project(tokens))
            self.num_resets += 1
            logits = self._rebuild(self.reset_latents)
            self._set_counters()
            return logits
        if self.mode == "dynamic":
            position = torch.tensor([self.length], device=tokens.device)
            slot = torch.tensor([self.num_cached], device=tokens.device)
            window = min(self.length + 1, self.model.config.max_seq_len)
            logits = decode_step(self.model, self.cache, tokens, position, slot, window, self.num_cached + 1)
        else:  # the fixed-shape step, replayed as a graph or run as it is
            self._token_in.copy_(tokens)
            if self.mode == "graph":
                self._graph.replay()
                logits = self._logits_out.clone()
            else:
                logits = self._static_step()
        self.length += 1
        self.num_cached += 1
        return logits

    @torch.no_grad()
    def reorder(self, rows: torch.Tensor) -> None:
        """Row i continues from row rows[i]: every per-row cache is copied in place (a captured
        graph keeps pointing at the same buffers); positions and counters are shared by all rows."""
        self.cache.reorder(rows)

    # -- internals ---------------------------------------------------------------------------------

    def _allocate(self, tokens: torch.Tensor, dtype: torch.dtype) -> None:
        """Fixed-size caches for this batch (reused when the shape allows: a graph points at them)."""
        cfg = self.model.config
        b, device = tokens.shape[0], tokens.device
        if self.mode is None:
            use_graph = device.type == "cuda" and not torch.is_autocast_enabled(device.type)
            self.mode = "graph" if use_graph else "static" if self.compile else "dynamic"
        if self.mode == "graph" and (device.type != "cuda" or torch.is_autocast_enabled(device.type)):
            raise ValueError("mode='graph' needs a CUDA model without autocast (convert the weights instead)")
        if self.cache is not None and self.cache.ids.shape[0] == b and self.cache.context.k.dtype == dtype:
            return
        self._graph = None
        self.cache = DecoderCache(b, cfg.heads, cfg.dim_head, cfg.max_seq_len, cfg.num_latents, cfg.depth,
                                  dtype, tokens.dtype, device)
        # Static-step state: device-side counters, slot indices for the masks, the input buffer.
        self._position = torch.zeros(1, dtype=torch.long, device=device)
        self._latent_index = torch.zeros(1, dtype=torch.long, device=device)
        self._slot_range = torch.arange(cfg.max_seq_len, device=device)
        self._latent_range = torch.arange(cfg.num_latents, device=device)
        self._token_in = torch.zeros((b, 1), dtype=tokens.dtype, device=device)

    def _project(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cross-attention keys/values of new tokens at positions self.length onwards."""
        positions = torch.arange(self.length, self.length + tokens.shape[1], device=tokens.device)
        k, v = self.model.cross_attn.keys_values(*self.model.embed(tokens, positions))
        return k, v, positions

    def _store(self, tokens: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        """Write new tokens' keys/values and ids into the ring buffer; count them."""
        self.cache.store(tokens, k, v, positions)
        self.length += tokens.shape[1]

    def _set_counters(self) -> None:
        """After eager work (prefill, reset), give the fixed-shape step its position and latent slot."""
        if self.mode != "dynamic":
            self._position.fill_(self.length)
            self._latent_index.fill_(self.num_cached)

    def _rebuild(self, num_latents: int) -> torch.Tensor:
        """Recompute the latent stack for the last `num_latents` positions from the cached context."""
        k_ctx, v_ctx, ids = self.cache.window(self.length)
        n = min(num_latents, ids.shape[1])
        positions = torch.arange(self.length - n, self.length, device=ids.device)
        self.num_cached = n
        h, rot = self.model.embed(ids[:, -n:], positions)
        slots = torch.arange(n, device=ids.device)
        return self.model.decode_latents(h, rot, (k_ctx, v_ctx), cache=self.cache.latents, slots=slots, filled=n, last=True)

    def _static_step(self) -> torch.Tensor:
        """One step in fixed shapes with device-side counters (what the CUDA graph records)."""
        step = _compiled_static_step() if self.compile else static_step
        return step(self.model, self.cache, self._token_in, self._position, self._latent_index,
                    self._slot_range, self._latent_range)

    def _capture(self) -> None:
        """Record `_static_step` as a CUDA graph; the caches keep their contents.

        Warm-up runs write into the caches and advance the counters, so everything they touch is
        saved first and put back after capture (capturing itself runs no kernels). If capturing
        fails (an old driver, an op that cannot be captured), decoding goes on with the same step
        run eagerly, after a warning.
        """
        saved = [t.clone() for t in self._graph_state()]
        try:
            self._position.zero_()  # warm-up writes slot 0 and latent 0: always in range
            self._latent_index.zero_()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._static_step()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._logits_out = self._static_step()
            self._graph = graph
        except RuntimeError as exc:
            warnings.warn(f"CUDA graph capture failed, decoding without graphs: {str(exc).splitlines()[0]}", stacklevel=3)
            self.mode = "static"
        finally:
            for tensor, copy in zip(self._graph_state(), saved):
                tensor.copy_(copy)

    def _graph_state(self) -> list[torch.Tensor]:
        return [*self.cache.tensors(), self._position, self._latent_index]


def decode_step(
    model: PerceiverAR, cache: DecoderCache, tokens: torch.Tensor, position: torch.Tensor, slot: torch.Tensor,
    window: int | None, filled: int | None, context_mask: torch.Tensor | None = None,
    latent_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One cached step, the same for every mode: `tokens` (b, 1) at `position` (1,) go into the
    ring, their latent into latent `slot` (1,); returns the next logits (b, V).

    Attention reads the first `window` ring slots and `filled` latent slots (the eager step), or
    with None every slot under `context_mask` / `latent_mask` (the fixed-shape step)."""
    h, rot = model.embed(tokens, position)
    k, v = model.cross_attn.keys_values(h, rot)
    cache.store(tokens, k, v, position)
    return model.decode_latents(h, rot, cache.context.view(window), context_mask=context_mask, latent_mask=latent_mask,
                                cache=cache.latents, slots=slot, filled=filled, last=True)


def static_step(
    model: PerceiverAR, cache: DecoderCache, tokens: torch.Tensor, position: torch.Tensor, index: torch.Tensor,
    slot_range: torch.Tensor, latent_range: torch.Tensor,
) -> torch.Tensor:
    """`decode_step` in fixed shapes: no Python state, so it can be graphed and compiled.

    Position `position` (1,) and latent slot `index` (1,) live on the device; unfilled slots are
    masked rather than sliced off, and both counters advance in place."""
    filled = (slot_range <= position).view(1, 1, 1, -1)  # slot s holds a position <= p
    visible = (latent_range <= index).view(1, 1, 1, -1)
    logits = decode_step(model, cache, tokens, position, index, None, None, filled, visible)
    position.add_(1)
    index.add_(1)
    return logits


@functools.cache
def _compiled_static_step():
    """`static_step` compiled once per process (recompiled per batch size and model shape)."""
    return torch.compile(static_step, fullgraph=True, dynamic=False)
