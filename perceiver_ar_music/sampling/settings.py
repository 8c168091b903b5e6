"""The generation settings: their defaults, their flags (the spec `generate` and the studio's page
both read), and one typed object (`GenerationSettings`) that the sampler's callers pass down.

`add_arguments` declares every setting of a generation run (not where it reads and writes files:
`generate` adds those); `GenerationSettings.from_args` checks the parsed flags against the loaded
checkpoint and resolves the defaults that depend on it (the note guards' limits).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from perceiver_ar_music.runtime.cli_types import bounded_int, finite_float
from perceiver_ar_music.runtime.cli_types import seed as seed_type
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.sampling.note_limits import FALLBACK_MAX_NOTE_SECONDS, FALLBACK_MAX_POLYPHONY
from perceiver_ar_music.sampling.sampler import SamplingConfig
from perceiver_ar_music.sampling.texture import (
    DEFAULT_CANDIDATES, DEFAULT_PRIMER_SECONDS, DEFAULT_SEGMENT_TOKENS, Curve, TextureSettings,
)

if TYPE_CHECKING:
    from perceiver_ar_music.data.vocab import EventVocab
    from perceiver_ar_music.model.checkpoint import LoadedModel

BUNDLED_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "default"  # the model that ships
DEFAULT_LENGTH = 2048
SECONDS_ONLY_CAP = 100_000  # token cap when only --seconds limits the length
DEFAULT_CONSTRAIN = False  # the grammar mask (see the README: measured, guards do the work)
# Nucleus mass of the default draw (generate, the studio, the benchmark scripts). Guards off, 0.85
# halves the notes held over 4 s and brings the voices after a primer from 5.4 to 3.2, where 0.95
# was the default (docs/benchmarks.md, "Sampling study").
DEFAULT_TOP_P = 0.85
# Whether top-p also cuts the time shifts (docs/benchmarks.md, "The nucleus spares the clock").
DEFAULT_TOP_P_TIME = True
DEFAULT_TEXTURE = True  # texture-keeping sampling (docs/benchmarks.md, "Texture-keeping sampling")
MAX_LENGTH = 10_000_000  # tokens per sample (about 30 hours of music)
MAX_SAMPLES = 1024
MAX_SECONDS = 100 * 3600.0
MAX_CANDIDATES = 64
# The texture flags a user sets (dest -> texture figure name, parse options).
TEXTURE_FLAGS: dict[str, tuple[str, dict]] = {
    "density": ("density", {"low": 0.05, "high": 200.0}),
    "voices": ("voices", {"low": 0.5, "high": 64.0}),
    "register": ("register", {"pitch": True, "low": 0.0, "high": 127.0}),
    "spread": ("pitch_spread", {"low": 0.5, "high": 48.0}),
    "velocity": ("velocity", {"low": 1.0, "high": 127.0}),
}


def _curve(name: str, options: dict):
    """An argparse type: a texture curve (see `texture.Curve.parse`)."""
    def convert(text: str) -> Curve:
        try:
            return Curve.parse(text, **options)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = "curve"
    return convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every generation setting (generate's and the studio page's)."""
    seconds = finite_float(min=0, min_inclusive=False, max=MAX_SECONDS)
    parser.add_argument("--primer-seconds", type=seconds, metavar="S", help="keep only the primer's first S seconds")
    parser.add_argument("--length", type=bounded_int(1, MAX_LENGTH), metavar="N",
                        help=f"tokens to generate per sample (default: {DEFAULT_LENGTH}). With --seconds the "
                        f"seconds decide the length and --length is only a safety bound (default "
                        f"{SECONDS_ONLY_CAP:,} tokens): --seconds 120 alone is not "
                        f"cut at {DEFAULT_LENGTH:,} tokens")
    parser.add_argument("--seconds", type=seconds, metavar="S", help="stop once every sample has S seconds of new music")
    parser.add_argument("--num-samples", type=bounded_int(1, MAX_SAMPLES), default=1, metavar="K",
                        help="samples generated together as one batch")
    parser.add_argument("--temperature", type=finite_float(min=0, max=100), default=1.0, help="0 for greedy (default: 1.0)")
    parser.add_argument("--top-k", type=bounded_int(0, None), default=0, help="keep the k most likely tokens (0: off)")
    parser.add_argument("--top-p", type=finite_float(min=0, max=1, min_inclusive=False), default=DEFAULT_TOP_P,
                        help=f"nucleus sampling mass (1: off; default {DEFAULT_TOP_P:g})")
    parser.add_argument("--top-p-time", action=argparse.BooleanOptionalAction, default=DEFAULT_TOP_P_TIME,
                        help="top-p also cuts the unlikely time shifts; --no-top-p-time spares the clock: the "
                        "nucleus is taken among the note events only and every time shift keeps the model's "
                        f"own probability (default: {'on' if DEFAULT_TOP_P_TIME else 'off'})")
    parser.add_argument("--min-p", type=finite_float(min=0, max=1, max_inclusive=False), default=0.0,
                        help="drop tokens below min-p x the top probability")
    parser.add_argument("--constrain", action=argparse.BooleanOptionalAction, default=DEFAULT_CONSTRAIN,
                        help="mask impossible events: a note-off for a silent pitch, a note-on for a sounding "
                        "one, a missing velocity; with texture-keeping it makes drones (held keys struck again "
                        f"and again) rarer, at some likelihood (default: {'on' if DEFAULT_CONSTRAIN else 'off'})")
    guards = parser.add_argument_group(
        "note guards", "on by default, with limits from the checkpoint's training data (fallbacks "
        f"{FALLBACK_MAX_NOTE_SECONDS:g} s and {FALLBACK_MAX_POLYPHONY} notes for checkpoints without them)")
    guards.add_argument("--max-note-seconds", type=finite_float(min=0, max=MAX_SECONDS), metavar="S",
                        help="release a note that has sounded S seconds of music (0: off)")
    guards.add_argument("--max-polyphony", type=bounded_int(0, 128), metavar="P", help="no note-on while P notes sound (0: off)")
    guards.add_argument("--no-guards", action="store_true", help="switch both guards off")
    texture = parser.add_argument_group(
        "texture", "keep the primer's texture (density, voices, note lengths, register and its spread, pitch classes, "
        "velocity) or the one you set: each sample is drawn as several candidates and, every segment, "
        "the one closest to the target (and likely under the model) is kept. A value is a number, "
        "xFACTOR (times the primer's), or a curve SECONDS:VALUE,... over the new music")
    texture.add_argument("--texture", action=argparse.BooleanOptionalAction, default=DEFAULT_TEXTURE,
                         help="texture-keeping sampling; --no-texture samples plainly, token for token as "
                         f"before it existed (default: {'on' if DEFAULT_TEXTURE else 'off'})")
    texture.add_argument("--density", type=_curve(*TEXTURE_FLAGS["density"]), metavar="NOTES_PER_S",
                         help="notes per second to hold (default: the primer's)")
    texture.add_argument("--voices", type=_curve(*TEXTURE_FLAGS["voices"]), metavar="N",
                         help="mean number of notes sounding together (default: the primer's)")
    texture.add_argument("--register", type=_curve(*TEXTURE_FLAGS["register"]), metavar="PITCH",
                         help="mean pitch, a MIDI number or a name like C4 (default: the primer's)")
    texture.add_argument("--spread", type=_curve(*TEXTURE_FLAGS["spread"]), metavar="SEMITONES",
                         help="how far the pitches spread around the register: their standard deviation in "
                         "semitones, 0.5-48, steered when set (default: the primer's, widened again only when the music "
                         "narrows below 0.8x of it; x1 holds it both ways; x1.5 widens it)")
    texture.add_argument("--velocity", type=_curve(*TEXTURE_FLAGS["velocity"]), metavar="V",
                         help="mean MIDI velocity, 1-127, steered when set (default: the primer's, steered back only when "
                         "the music leaves it by more than 12 steps; a set level is reached within about a minute)")
    texture.add_argument("--candidates", type=bounded_int(2, MAX_CANDIDATES), default=DEFAULT_CANDIDATES, metavar="K",
                         help=f"candidates drawn per sample (default: {DEFAULT_CANDIDATES}; the cost grows with K)")
    texture.add_argument("--segment-tokens", type=bounded_int(8, 4096), default=DEFAULT_SEGMENT_TOKENS, metavar="N",
                         help=f"tokens between two choices (default: {DEFAULT_SEGMENT_TOKENS})")
    texture.add_argument("--texture-from", type=seconds, default=DEFAULT_PRIMER_SECONDS, metavar="S",
                         help=f"the primer's last S seconds give its texture (default: {DEFAULT_PRIMER_SECONDS:g})")
    parser.add_argument("--reset-latents", type=bounded_int(1, None), metavar="N", help="latents kept at a cache reset (default: half)")
    parser.add_argument("--no-cache", action="store_true", help="the slow reference path: one full forward per token")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the decoding step: fewer, fused kernels per token after a one-off compilation")
    parser.add_argument("--seed", type=seed_type, help="make the samples reproducible")


@dataclass(frozen=True)
class GenerationSettings:
    """Everything a generation run needs to know besides the model and the primer's notes."""

    length: int  # tokens per sample (a cap when `seconds` is set)
    seconds: float | None
    num_samples: int
    sampling: SamplingConfig
    constrain: bool
    max_note_seconds: float | None  # None: that guard is off
    max_polyphony: int | None
    texture: TextureSettings
    primer_seconds: float | None = None
    reset_latents: int | None = None
    use_cache: bool = True
    compile: bool = False
    seed: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, loaded: "LoadedModel", vocab: "EventVocab") -> "GenerationSettings":
        """The settings of parsed flags (`add_arguments`) for a loaded checkpoint and its
        vocabulary; a UserError for a setting the checkpoint cannot take."""
        length = args.length if args.length is not None else (SECONDS_ONLY_CAP if args.seconds else DEFAULT_LENGTH)
        if args.reset_latents is not None and not 1 <= args.reset_latents <= loaded.config.num_latents:
            raise UserError(f"--reset-latents must be in 1..{loaded.config.num_latents}")
        max_note_seconds, max_polyphony = guard_settings(args, loaded.meta)
        curves = {name: getattr(args, dest) for dest, (name, _) in TEXTURE_FLAGS.items() if getattr(args, dest) is not None}
        texture = TextureSettings(enabled=args.texture and args.temperature > 0, curves=curves, candidates=args.candidates,
                                  segment_tokens=args.segment_tokens, primer_seconds=args.texture_from)
        return cls(
            length=length, seconds=args.seconds, num_samples=args.num_samples,
            sampling=SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                                    top_p_exempt=top_p_exempt(vocab, args.top_p_time)),
            constrain=args.constrain, max_note_seconds=max_note_seconds, max_polyphony=max_polyphony,
            texture=texture, primer_seconds=args.primer_seconds, reset_latents=args.reset_latents,
            use_cache=not args.no_cache, compile=args.compile, seed=args.seed,
        )

    @property
    def guards(self) -> tuple[float | None, int | None]:
        return self.max_note_seconds, self.max_polyphony

    def describe(self) -> Mapping[str, object]:
        """The settings in words, for the page and stats.json."""
        s = self.sampling
        return {
            "sampling": f"temperature {s.temperature:g}, top-k {s.top_k}, top-p {s.top_p:g}"
            + (" (time shifts spared)" if s.top_p_exempt else "") + f", min-p {s.min_p:g}"
            + (", constrained" if self.constrain else ""),
            "note guards": describe_guards(self.max_note_seconds, self.max_polyphony),
            "decoder": "cached with resets" if self.use_cache else "reference (no cache)",
            "seed": self.seed if self.seed is not None else "random",
        }


def top_p_exempt(vocab: "EventVocab", top_p_time: bool) -> tuple[int, ...]:
    """The ids top-p leaves alone (`SamplingConfig.top_p_exempt`): none, or with `top_p_time`
    off every time shift (the clock spared)."""
    return () if top_p_time else vocab.time_shift_ids


def guard_settings(args: argparse.Namespace, meta: dict) -> tuple[float | None, int | None]:
    """(max note seconds, max polyphony) from the flags, defaulting to the checkpoint's limits;
    None where a guard is off."""
    from perceiver_ar_music.sampling.note_limits import NoteLimits

    if args.no_guards:
        return None, None
    defaults = NoteLimits.from_meta(meta)
    seconds = defaults.max_note_seconds if args.max_note_seconds is None else args.max_note_seconds
    polyphony = defaults.max_polyphony if args.max_polyphony is None else args.max_polyphony
    return seconds or None, polyphony or None


def describe_guards(max_note_seconds: float | None, max_polyphony: int | None) -> str:
    """The guards' settings in words, for the page."""
    parts = [f"notes released after {max_note_seconds:g} s" if max_note_seconds else "no note-length limit",
             f"at most {max_polyphony} notes at once" if max_polyphony else "no polyphony cap"]
    return ", ".join(parts)
