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
        self.cross_k: torch.Tensor | None = None
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
        if self.mode != "dynamic":  # the fixed-shape step, replayed as a graph or run as it is
            self._token_in.copy_(tokens)
            if self.mode == "graph":
                self._graph.replay()
                logits = self._logits_out.clone()
            else:
                logits = self._static_step()
            self.length += 1
            self.num_cached += 1
            return logits
        position = self.length
        self._store(tokens, *self._project(tokens))
        return self._decode_one(tokens, position)

    @torch.no_grad()
    def reorder(self, rows: torch.Tensor) -> None:
        """Row i continues from row rows[i]: every per-row cache is copied in place (a captured
        graph keeps pointing at the same buffers); positions and counters are shared by all rows."""
        for cache in (self.cross_k, self.cross_v, self.cross_ids, *self.latent_k, *self.latent_v):
            cache.copy_(cache.index_select(0, rows))

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
        cross_shape = (b, cfg.heads, cfg.max_seq_len, cfg.dim_head)
        if self.cross_k is not None and self.cross_k.shape == cross_shape and self.cross_k.dtype == dtype:
            return
        self._graph = None
        self.cross_k = torch.zeros(cross_shape, dtype=dtype, device=device)
        self.cross_v = torch.zeros_like(self.cross_k)
        self.cross_ids = torch.zeros((b, cfg.max_seq_len), dtype=tokens.dtype, device=device)
        latent_shape = (b, cfg.heads, cfg.num_latents, cfg.dim_head)
        self.latent_k = [torch.zeros(latent_shape, dtype=dtype, device=device) for _ in self.model.layers]
        self.latent_v = [torch.zeros(latent_shape, dtype=dtype, device=device) for _ in self.model.layers]
        # Static-step state: device-side counters, slot indices for the masks, in/out buffers.
        self._position = torch.zeros(1, dtype=torch.long, device=device)
        self._latent_index = torch.zeros(1, dtype=torch.long, device=device)
        self._slot_range = torch.arange(cfg.max_seq_len, device=device)
        self._latent_range = torch.arange(cfg.num_latents, device=device)
        self._token_in = torch.zeros((b, 1), dtype=tokens.dtype, device=device)

    def _project(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cross-attention keys/values of new tokens at positions self.length onwards."""
        positions = torch.arange(self.length, self.length + tokens.shape[1], device=tokens.device)
        h = self.model.token_emb(tokens)
        k, v = self.model.cross_attn.keys_values(h, self.model.rotation(positions, h.dtype))
        return k, v, positions

    def _store(self, tokens: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        """Write new tokens' keys/values and ids into the ring buffer (slot = position mod M)."""
        slots = positions % self.model.config.max_seq_len
        self.cross_k.index_copy_(2, slots, k)
        self.cross_v.index_copy_(2, slots, v)
        self.cross_ids.index_copy_(1, slots, tokens)
        self.length += tokens.shape[1]

    def _set_counters(self) -> None:
        """After eager work (prefill, reset), give the fixed-shape step its position and latent slot."""
        if self.mode != "dynamic":
            self._position.fill_(self.length)
            self._latent_index.fill_(self.num_cached)

    def _window(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys, values and ids of the current context window in chronological order."""
        m = self.model.config.max_seq_len
        if self.length <= m:
            return self.cross_k[:, :, : self.length], self.cross_v[:, :, : self.length], self.cross_ids[:, : self.length]
        shift = -(self.length % m)  # the oldest slot moves to the front
        return self.cross_k.roll(shift, dims=2), self.cross_v.roll(shift, dims=2), self.cross_ids.roll(shift, dims=1)

    def _rebuild(self, num_latents: int) -> torch.Tensor:
        """Recompute the latent stack for the last `num_latents` positions from the cached context."""
        k_ctx, v_ctx, ids = self._window()
        n = min(num_latents, ids.shape[1])
        positions = torch.arange(self.length - n, self.length, device=ids.device)
        self.num_cached = n
        return self._latents(ids[:, -n:], positions, k_ctx, v_ctx, index=0)

    def _decode_one(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """One new latent: cross-attend to the whole window, then the cached latent stack."""
        window = min(self.length, self.model.config.max_seq_len)
        positions = torch.tensor([position], device=tokens.device)
        index, self.num_cached = self.num_cached, self.num_cached + 1
        return self._latents(tokens, positions, self.cross_k[:, :, :window], self.cross_v[:, :, :window], index)

    def _latents(
        self, ids: torch.Tensor, positions: torch.Tensor, k_ctx: torch.Tensor, v_ctx: torch.Tensor, index: int
    ) -> torch.Tensor:
        """Latents for `ids` at `positions` (bottom-right causal onto the context keys/values),
        cached from latent slot `index` on; returns the next token's logits."""
        model = self.model
        h = model.token_emb(ids)
        rot = model.rotation(positions, h.dtype)
        x = model.cross_stage(h, rot, k_ctx, v_ctx)
        x = model.latent_stack(x, rot, caches=list(zip(self.latent_k, self.latent_v)), index=index)
        return model.head(x[:, -1])

    def _static_step(self) -> torch.Tensor:
        """`_decode_one` with fixed shapes and device-side counters (what the CUDA graph records)."""
        step = _compiled_static_step() if self.compile else static_step
        return step(
            self.model, self._token_in, self._position, self._latent_index, self.cross_k, self.cross_v,
            self.cross_ids, self._slot_range, self._latent_range, self.latent_k, self.latent_v,
        )

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
        return [self.cross_k, self.cross_v, self.cross_ids, self._position, self._latent_index, *self.latent_k, *self.latent_v]


def static_step(
    model: PerceiverAR, tokens: torch.Tensor, position: torch.Tensor, index: torch.Tensor,
    cross_k: torch.Tensor, cross_v: torch.Tensor, cross_ids: torch.Tensor,
    slot_range: torch.Tensor, latent_range: torch.Tensor, latent_k: list[torch.Tensor], latent_v: list[torch.Tensor],
) -> torch.Tensor:
    """One cached decoding step in fixed shapes: no Python state, so it can be graphed and compiled.

    Appends `tokens` (b, 1) at device position `position` (1,) to the ring buffer, decodes its
    latent into latent slot `index` (1,), advances both counters in place and returns the logits.
    Unfilled slots are masked rather than sliced off.
    """
    h = model.token_emb(tokens)
    rot = model.rotation(position, h.dtype)
    k, v = model.cross_attn.keys_values(h, rot)
    slot = position % cross_k.shape[2]
    cross_k.index_copy_(2, slot, k)
    cross_v.index_copy_(2, slot, v)
    cross_ids.index_copy_(1, slot, tokens)
    filled = (slot_range <= position).view(1, 1, 1, -1)  # slot s holds a position <= p
    x = model.cross_stage(h, rot, cross_k, cross_v, mask=filled)
    visible = (latent_range <= index).view(1, 1, 1, -1)
    x = model.latent_stack(x, rot, mask=visible, caches=list(zip(latent_k, latent_v)), index=index)
    position.add_(1)
    index.add_(1)
    return model.head(x[:, -1])


@functools.cache
def _compiled_static_step():
    """`static_step` compiled once per process (recompiled per batch size and model shape)."""
    return torch.compile(static_step, fullgraph=True, dynamic=False)
