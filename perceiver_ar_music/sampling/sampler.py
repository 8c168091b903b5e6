"""Sampling: logit filters (temperature, top-k, top-p, min-p) and `sample_ids`.

`sample_ids` continues a batch of equal-length prompts with the cached decoder (or the reference
path), any number of tokens past the model's context, reproducibly for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from perceiver_ar_music.sampling.decoding import CachedDecoder, ReferenceDecoder
from perceiver_ar_music.model.perceiver_ar import PerceiverAR

if TYPE_CHECKING:
    from perceiver_ar_music.sampling.texture import TextureSelector

# Called after every step with (step index, new tokens (b,)); returning True stops sampling.
StepCallback = Callable[[int, torch.Tensor], "bool | None"]
# Returns a (b, V) bool mask of tokens allowed next, given the sequences so far (b, L).
AllowedTokens = Callable[[torch.Tensor], torch.Tensor]
# Given the drawn tokens (b,) and the sequences so far (b, L), returns the tokens to emit instead
# (e.g. a forced NoteOff).
AmendTokens = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Told which row each row now continues from (rows (b,)) when a selector keeps a candidate.
Reorder = Callable[[torch.Tensor], None]


@dataclass
class SamplingConfig:
    """How the next token is drawn from the logits. temperature 0 means greedy (argmax)."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    min_p: float = 0.0  # 0.0: off; keep tokens with p >= min_p * p_max
    # Ids that top-p leaves alone (the time shifts, when the nucleus spares the clock): they keep
    # their own probabilities, and the nucleus is taken within the other tokens' share, which the
    # kept ones then fill. Empty: the nucleus is taken over every token.
    top_p_exempt: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if not 0.0 <= self.min_p < 1.0:
            raise ValueError("min_p must be in [0, 1)")


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p filtering (removed tokens get -inf)."""
    logits = logits.float() / max(cfg.temperature, 1e-8)
    neg_inf = torch.finfo(logits.dtype).min
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = logits.topk(cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, neg_inf)
    if cfg.min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < cfg.min_p * probs.max(-1, keepdim=True).values, neg_inf)
    if cfg.top_p < 1.0:
        logits = _nucleus(logits, cfg.top_p, _mask(cfg.top_p_exempt, logits) if cfg.top_p_exempt else None)
    return logits


def _nucleus(logits: torch.Tensor, top_p: float, exempt: torch.Tensor | None) -> torch.Tensor:
    """Top-p: drop a token when the tokens ranked above it already reach `top_p` (the first always
    stays). With an `exempt` mask (V,), the ranking and the mass are those of the other tokens
    within their own share; the exempt ones are never dropped and keep their probabilities."""
    neg_inf = torch.finfo(logits.dtype).min
    ranked = logits if exempt is None else logits.masked_fill(exempt, neg_inf)
    sorted_logits, order = ranked.sort(dim=-1, descending=True)
    sorted_probs = sorted_logits.softmax(-1)
    drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
    if exempt is None:
        return logits.masked_fill(drop, neg_inf)
    drop &= ~exempt
    probs = logits.softmax(-1)
    share = probs.masked_fill(exempt, 0.0).sum(-1, keepdim=True)  # the non-exempt tokens' mass
    kept = probs.masked_fill(exempt | drop, 0.0).sum(-1, keepdim=True)
    tiny = torch.finfo(probs.dtype).tiny
    refill = (share.clamp_min(tiny) / kept.clamp_min(tiny)).log()  # the kept ones take the dropped mass
    return torch.where(drop, neg_inf, torch.where(exempt, logits, logits + refill))


_MASKS: dict[tuple, torch.Tensor] = {}


def _mask(ids: tuple[int, ...], logits: torch.Tensor) -> torch.Tensor:
    """A (V,) bool mask of `ids` on the logits' device (built once per ids, size and device)."""
    key = (ids, logits.shape[-1], logits.device)
    if key not in _MASKS:
        mask = torch.zeros(logits.shape[-1], dtype=torch.bool)
        mask[[i for i in ids if 0 <= i < logits.shape[-1]]] = True
        _MASKS[key] = mask.to(logits.device)
    return _MASKS[key]


def next_token(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Draw one token per row of logits (b, V) -> (b,), without a device-to-host sync.

    Sampling is argmax(p / E) with E ~ Exp(1) drawn per token (the exponential race), an exact
    draw from p. It is the algorithm torch.multinomial uses for one draw (same generator state,
    same token; tested on CPU), written out so that no call can wait for the GPU.
    """
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, cfg).softmax(dim=-1)
    race = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / race).argmax(dim=-1)


@torch.no_grad()
def sample_ids(
    model: PerceiverAR,
    prompt: torch.Tensor,
    num_tokens: int,
    sampling: SamplingConfig | None = None,
    *,
    use_cache: bool = True,
    reset_latents: int | None = None,
    decode_mode: str | None = None,
    compile_decoder: bool = False,
    seed: int | None = None,
    eos_id: int | None = None,
    allowed_tokens: AllowedTokens | None = None,
    amend_tokens: AmendTokens | None = None,
    callback: StepCallback | None = None,
    selector: "TextureSelector | None" = None,
    reorder: Sequence[Reorder] = (),
) -> torch.Tensor:
    """Continue `prompt` (b, P) by up to `num_tokens` tokens; returns (b, P + generated).

    use_cache=False runs the slow reference path (a full forward per token); `decode_mode` picks
    the cached decoder's mode and `compile_decoder` compiles its step (see `CachedDecoder`).
    With `eos_id`, a sequence that emitted EOS keeps emitting EOS, and sampling stops once all
    have: that is checked every `EOS_CHECK_EVERY` steps (a check waits for the device) and the
    output is cut where the last sequence ended. `allowed_tokens` masks impossible tokens before
    each draw and `amend_tokens` may replace the drawn token before it is emitted (see
    `constraints.NoteRules`); `callback` sees every step and may stop early.

    With a `selector` (`texture.TextureSelector`), each prompt row runs as k = selector.candidates
    rows (the callback and the rules see b * k rows); after every `selector.segment_tokens`
    tokens, and at the end, the selector picks per sample the row to go on from, and the
    tokens, the decoder's caches and every `reorder` hook (stateful rules, progress) are copied
    from it; b rows are returned. The selector's `bias` (b * k, V), when set, is added to the
    logits before drawing (the segment log-likelihoods it is given are the model's own, without
    it). Without a selector, nothing of this runs.
    """
    sampling = sampling or SamplingConfig()
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError("prompt must have shape (batch, length >= 1)")
    was_training = model.training
    model.eval()
    try:
        generator = None
        if seed is not None:
            generator = torch.Generator(device=prompt.device).manual_seed(seed)
        decoder = CachedDecoder(model, reset_latents, decode_mode, compile_decoder) if use_cache else ReferenceDecoder(model)
        k = selector.candidates if selector is not None else 1
        if k > 1:
            prompt = prompt.repeat_interleave(k, dim=0)
        length = prompt.shape[1]
        tokens = torch.cat((prompt, prompt.new_zeros((prompt.shape[0], num_tokens))), dim=1)
        logits = decoder.prefill(prompt)
        finished = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
        segment_logp = torch.zeros(prompt.shape[0], dtype=torch.float32, device=prompt.device)
        segment_steps = 0
        for step in range(num_tokens):
            model_logits = logits
            if selector is not None and selector.bias is not None:
                logits = logits + selector.bias.to(logits.dtype)
            if allowed_tokens is not None:
                logits = torch.where(allowed_tokens(tokens[:, :length]), logits, torch.finfo(logits.dtype).min)
            new = next_token(logits, sampling, generator)
            if amend_tokens is not None:
                new = amend_tokens(new, tokens[:, :length])
            if eos_id is not None:
                new = torch.where(finished, torch.full_like(new, eos_id), new)
                finished |= new == eos_id
            tokens[:, length] = new
            length += 1
            stop = bool(callback(step, new)) if callback is not None else False
            check_eos = eos_id is not None and (step % EOS_CHECK_EVERY == EOS_CHECK_EVERY - 1 or stop or step == num_tokens - 1)
            ended = check_eos and bool(finished.all())
            last = ended or stop or step == num_tokens - 1
            if selector is not None:
                segment_logp += model_logits.float().log_softmax(-1).gather(1, new.view(-1, 1)).squeeze(1)
                segment_steps += 1
                if last or segment_steps == selector.segment_tokens:
                    rows = selector.choose(tokens[:, :length], segment_logp, segment_steps)
                    tokens[:, :length] = tokens[rows, :length]
                    finished, new = finished[rows], new[rows]
                    for hook in reorder:
                        hook(rows)
                    if not last:
                        decoder.reorder(rows)
                    segment_logp.zero_()
                    segment_steps = 0
            if ended:
                length = _all_ended_at(tokens, prompt.shape[1], length, eos_id)
                break
            if last:
                break
            logits = decoder.step(new)
        return tokens[::k, :length]
    finally:
        model.train(was_training)


EOS_CHECK_EVERY = 32  # steps between checks whether every sequence has ended


def _all_ended_at(tokens: torch.Tensor, prompt_len: int, length: int, eos_id: int) -> int:
    """The length at which the last sequence of the batch emitted its first EOS."""
    is_eos = tokens[:, prompt_len:length] == eos_id
    first = is_eos.int().argmax(dim=1)  # every row has one: all sequences have ended
    return prompt_len + int(first.max()) + 1
