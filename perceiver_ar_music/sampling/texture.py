"""Texture-keeping sampling: continue in segments, keep the candidate closest to a target texture.

Plain sampling drifts over minutes: a continuation thins to one line or doubles its density. The
sampler can look ahead, so it draws `candidates` (k) continuations of each sample side by side
(one batch of samples x k rows), and every `segment_tokens` tokens keeps, per sample, the one
candidate whose recent music sits closest to the target, copying its state (tokens, decoder
caches, guard state) over the other k - 1 rows (`sampling.sample_ids` does the copying; no
re-prefill). Between choices the candidates are the model's draws under a small logit bias that
steers them towards the target (`TextureSelector`: note-ons, time-shift lengths, note-offs,
pitches, the pitch spread when set or when it narrows below a floor of the primer's, and
velocities when set or when they leave the primer's level by more than a band); their likelihood
is measured without it. Through the guards (`NoteRules.limit_rows`) the selector also
caps the voices (at the most the user's voices imply; with neither voices nor density set, at
the primer's most plus one) and asks a velocity token after every note-on of a sample whose
velocity it steers.

A candidate's score is its segment's mean log-likelihood under the model, times
`likelihood_weight`, minus its texture distance: the figures of the last `window_s` seconds of
its music (primer included at first; `music_stats.span_stats`, the windows' own figures) against
the target at that moment, each figure's distance weighted (`FIGURES`):

- ratios (density, mean voices, note length, pitch spread): |log((value + e) / (target + e))|;
- max voices: the same, only above the target;
- register (mean pitch): semitones / 12; velocity (mean): MIDI steps / 32;
- pitch classes: total-variation distance between the histograms (0..1).

The target (`TextureTarget`) is by default the primer's own figures over its last part
(`primer_figures`); any figure can be set or scaled by the user, as a constant or as a curve over
the seconds of new music (`Curve.parse`: ``"6"``, ``"x0.5"``, ``"0:4,60:8,120:4"``). Without a
primer and without settings, each sample's target is its own first `anchor_s` seconds (until then
the first candidate is kept: plain sampling).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from perceiver_ar_music.data.events import ids_to_notes, music_clock, tables
from perceiver_ar_music.listening.music_stats import MusicStats, checked_notes, pitch_class_histogram, span_stats
from perceiver_ar_music.data.vocab import NOTE_OFF, NOTE_ON, TIME_SHIFT, VELOCITY, EventVocab
from perceiver_ar_music.sampling.constraints import NoteRules


@dataclass(frozen=True)
class Figure:
    """One texture figure: the MusicStats field it reads, how its distance is measured, its weight."""

    field: str
    distance: str  # "ratio", "above" (a ratio counted only above the target), "scaled"
    weight: float
    scale: float = 1.0  # "scaled": |value - target| / scale
    unit: str = ""


# The figures a target can hold, by the name the flags and the page use.
FIGURES: dict[str, Figure] = {
    "density": Figure("notes_per_second", "ratio", 1.0, unit="notes/s"),
    "voices": Figure("mean_polyphony", "ratio", 1.0, unit="voices"),
    "max_voices": Figure("max_polyphony", "above", 0.5, unit="voices"),
    "note_length": Figure("note_length_p50_s", "ratio", 0.5, unit="s"),
    "register": Figure("pitch_mean", "scaled", 1.0, scale=12.0, unit="MIDI pitch"),
    "pitch_spread": Figure("pitch_std", "ratio", 0.5, unit="semitones"),
    "velocity": Figure("velocity_mean", "scaled", 0.5, scale=32.0, unit="MIDI velocity"),
    # shown beside each window, not weighed: weight 1 cost the performance candidate 0.34 nats/token
    # on the chorale and kept 7 of 53 windows within the primer's share + 10 points (1 of 54 without)
    "restrikes": Figure("restrike_fraction", "above", 0.0, unit="of the notes"),
}
PITCH_CLASS_WEIGHT = 0.5
RATIO_FLOOR = 0.1  # e in the ratio distances: an empty window is far, not infinitely far

DEFAULT_CANDIDATES = 4
DEFAULT_SEGMENT_TOKENS = 64
DEFAULT_WINDOW_S = 12.0
DEFAULT_PRIMER_SECONDS = 30.0  # the primer's last part its figures are taken from
DEFAULT_LIKELIHOOD_WEIGHT = 0.25
DEFAULT_ANCHOR_S = 20.0
DEFAULT_STEER_GAIN = 1.0  # logit bias per unit of log-ratio error
DEFAULT_STEER_INTEGRAL = 0.2  # added to the integral per segment and unit of error
DEFAULT_STEER_LIMIT = 3.0  # the largest bias, in logits
DEFAULT_STEER_TEMPO = 0.5  # the density control's weight on time-shift lengths (beside the NoteOns)
DEFAULT_STEER_SPREAD = 0.5  # the weight of the pitch-spread control, on when the user sets the spread (0: off)
DEFAULT_STEER_VELOCITY = 0.5  # the weight of the velocity control, on when the user sets the velocity (0: off)
DEFAULT_VELOCITY_PULL = 3.0  # with a set velocity: logits per 32 MIDI steps away from it, on Velocity ids (0: off)
DEFAULT_VELOCITY_PULL_GROWTH = 1.0  # the pull grows by this times the velocity control's integral (0..steer_limit)
DEFAULT_VELOCITY_WINDOW_S = 4.0  # the velocity control reads this much music: the model repeats its last velocity
DEFAULT_VELOCITY_BAND = 12.0  # the primer's own level (not set) is held only beyond this many MIDI steps from it (0: not held)
DEFAULT_SPREAD_WINDOW_S = 30.0  # the spread control reads this much music: the register wanders within 30-s windows
DEFAULT_SPREAD_FLOOR = 0.8  # spread not set: widened only when narrower than this share of the target's (0: off)
SPREAD_LEAK = 0.7  # the spread control's integral, kept per segment while the music is above the floor
DEFAULT_HOLD = 0.6  # with --voices: no note ends before this share of the target's mean note length
DEFAULT_VOICES_CAP_SLACK = 1.0  # voices not set: no NoteOn beyond the target's max voices + this (< 0: no cap)
_NOTE_NAME = re.compile(r"^([A-Ga-g])([#b]?)(-?[0-9]+)$")
_PITCH_CLASS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}


def parse_pitch(text: str) -> float:
    """A MIDI pitch from a number ("60") or a note name ("C4" = 60, "F#3", "Bb5")."""
    match = _NOTE_NAME.match(text.strip())
    if match:
        letter, accidental, octave = match.groups()
        value = _PITCH_CLASS[letter.lower()] + {"#": 1, "b": -1, "": 0}[accidental] + 12 * (int(octave) + 1)
    else:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a MIDI pitch (0..127) or a note name like C4, got {text!r}") from None
    if not 0 <= value <= 127:
        raise ValueError(f"a pitch must be in 0..127 (C-1..G9), got {text!r}")
    return float(value)


@dataclass(frozen=True)
class Curve:
    """A value over the seconds of new music: piecewise linear between points, held before the
    first and after the last. `relative`: the values are multiples of the primer's figure."""

    points: tuple[tuple[float, float], ...]
    relative: bool = False

    def __post_init__(self) -> None:
        times = [t for t, _ in self.points]
        if not self.points or times != sorted(times) or len(set(times)) != len(times):
            raise ValueError("a curve needs points at increasing times")

    @classmethod
    def constant(cls, value: float) -> "Curve":
        return cls(((0.0, float(value)),))

    @classmethod
    def parse(cls, text: str, *, pitch: bool = False, low: float = 0.0, high: float = math.inf) -> "Curve":
        """``VALUE``, ``xFACTOR`` (times the primer's figure) or ``T:V,T:V,...`` (seconds of new
        music : value, each value plain or ``x``-scaled, all alike). With `pitch`, values may be
        note names. ValueError (one line) for anything else, or values outside [low, high]."""
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        if not parts:
            raise ValueError("expected a value, xFACTOR, or T:V,T:V,...")
        points, kinds = [], set()
        for part in parts:
            time_text, _, value_text = part.rpartition(":")
            if len(parts) > 1 and not time_text:
                raise ValueError(f"{part!r}: a curve's points are SECONDS:VALUE")
            relative = value_text.lower().startswith("x")
            kinds.add(relative)
            try:
                time = float(time_text) if time_text else 0.0
                value = float(value_text[1:]) if relative else (parse_pitch(value_text) if pitch else float(value_text))
            except ValueError as exc:
                raise ValueError(f"{part!r}: {exc}" if pitch else f"{part!r} is not a number") from None
            if not (math.isfinite(time) and time >= 0):
                raise ValueError(f"{part!r}: times are seconds >= 0")
            if relative and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{part!r}: a factor must be > 0")
            if not relative and not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"{part!r}: values must be in [{low:g}, {high:g}]")
            points.append((time, value))
        if len(kinds) > 1:
            raise ValueError("a curve's values are all plain or all xFACTOR")
        if [t for t, _ in points] != sorted({t for t, _ in points}):
            raise ValueError("a curve's times must increase")
        return cls(tuple(points), relative=kinds.pop())

    def at(self, seconds: float) -> float:
        times = [t for t, _ in self.points]
        values = [v for _, v in self.points]
        return float(np.interp(seconds, times, values))

    def scaled(self, factor: float) -> "Curve":
        """The absolute curve of a relative one, given the primer's figure."""
        return Curve(tuple((t, v * factor) for t, v in self.points))

    def as_text(self) -> str:
        """The curve as `parse` reads it back ("6", "x0.5", "0:4,60:8")."""
        value = (lambda v: f"x{v:g}") if self.relative else (lambda v: f"{v:g}")
        if len(self.points) == 1 and self.points[0][0] == 0:
            return value(self.points[0][1])
        return ",".join(f"{t:g}:{value(v)}" for t, v in self.points)

    def describe(self, unit: str = "") -> str:
        """Words for the page: '4 notes/s' or '4 -> 8 (60 s) -> 4 (120 s) notes/s'."""
        if len(self.points) == 1:
            return f"{self.points[0][1]:.3g} {unit}".strip()
        steps = [f"{v:.3g}" + (f" ({t:g} s)" if i else "") for i, (t, v) in enumerate(self.points)]
        return (" -> ".join(steps) + f" {unit}").strip()


@dataclass(frozen=True)
class TextureTarget:
    """What the sampler holds: per figure name (see `FIGURES`) a curve of absolute values, and
    optionally a pitch-class histogram. `source` says where it came from, for the page."""

    curves: Mapping[str, Curve]
    pitch_classes: np.ndarray | None = None
    source: str = ""
    steered: frozenset[str] = frozenset()  # the figures the user set (the others: the primer's)

    def at(self, seconds: float) -> dict[str, float]:
        """The target figures (by MusicStats field) at `seconds` of new music."""
        return {FIGURES[name].field: curve.at(seconds) for name, curve in self.curves.items()}

    def describe(self) -> str:
        parts = [f"{name.replace('_', ' ')} {curve.describe(FIGURES[name].unit)}" for name, curve in self.curves.items()]
        if self.pitch_classes is not None:
            parts.append("the primer's pitch classes")
        return ", ".join(parts) + (f" ({self.source})" if self.source else "")

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "figures": {name: {"field": FIGURES[name].field, "points": [list(p) for p in curve.points]}
                        for name, curve in self.curves.items()},
            "pitch_classes": None if self.pitch_classes is None else [round(float(v), 4) for v in self.pitch_classes],
        }


def figures_of(stats: MusicStats) -> dict[str, float]:
    """The texture figures (by name) of one set of statistics."""
    return {name: float(getattr(stats, figure.field)) for name, figure in FIGURES.items()}


def primer_figures(notes: np.ndarray, boundary_s: float, last_s: float | None = DEFAULT_PRIMER_SECONDS
                   ) -> tuple[dict[str, float], np.ndarray] | None:
    """(figures by name, pitch-class histogram) of the primer's last `last_s` seconds before
    `boundary_s` (all of it for None); None when no note is struck there."""
    notes = checked_notes(notes)
    begin = max(float(notes[:, 1].min()), boundary_s - last_s) if len(notes) and last_s else (
        float(notes[:, 1].min()) if len(notes) else 0.0)
    end = max(boundary_s, begin)
    stats = span_stats(notes, begin, end) if end > begin else None
    if stats is None or stats.note_count == 0:
        return None
    struck = notes[(notes[:, 1] >= begin) & (notes[:, 1] < end)]
    return figures_of(stats), pitch_class_histogram(struck)


def build_target(
    settings: Mapping[str, Curve], primer: tuple[dict[str, float], np.ndarray] | None, source: str = "primer"
) -> TextureTarget | None:
    """The target from the user's curves (by figure name) over the primer's figures: the primer
    gives every figure the user did not set; a relative curve scales the primer's figure. None
    when nothing is left to hold (no primer, no settings). ValueError for a relative curve
    without a primer."""
    curves: dict[str, Curve] = {}
    if primer is not None:
        figures, _ = primer
        curves.update({name: Curve.constant(value) for name, value in figures.items()})
    for name, curve in settings.items():
        if name not in FIGURES:
            raise ValueError(f"unknown texture figure {name!r}")
        if curve.relative:
            if primer is None:
                raise ValueError(f"a relative {name} (xFACTOR) needs a primer")
            curve = curve.scaled(primer[0][name])
        curves[name] = curve
    if not curves:
        return None
    if primer is not None:
        curves.update(_dependent_curves(curves, primer[0], set(settings)))
    user = ", ".join(sorted(settings))
    words = f"{source}'s last part" if primer is not None else ""
    if user:
        words = f"{words}; set: {user}" if words else f"set: {user}"
    return TextureTarget(curves, primer[1] if primer is not None else None, words, frozenset(settings))


def _dependent_curves(curves: Mapping[str, Curve], figures: Mapping[str, float], user: set[str]) -> dict[str, Curve]:
    """The primer's figures that must move with the user's voices to stay consistent (voices =
    density x mean note length): the note length scaled by (voices ratio) / (density ratio), and
    the max voices by the voices ratio, unless the user set them too. A density set alone keeps
    the primer's note length and voices (measured: moving the note length with it held half the
    density on fewer windows, its voices falling to one or two)."""
    if "voices" not in user:
        return {}
    times = sorted({t for name in ("voices", "density") for t, _ in curves[name].points})

    def ratio(name: str, time: float) -> float:
        return curves[name].at(time) / max(figures[name], 1e-6)

    out = {}
    if "note_length" not in user:
        out["note_length"] = Curve(tuple((t, figures["note_length"] * ratio("voices", t) / max(ratio("density", t), 1e-6))
                                         for t in times))
    if "voices" in user and "max_voices" not in user:
        out["max_voices"] = Curve(tuple((t, max(1.0, figures["max_voices"] * ratio("voices", t))) for t in times))
    return out


def texture_distance(stats: MusicStats, pitch_classes: np.ndarray | None, target: TextureTarget, seconds: float) -> float:
    """How far figures sit from the target at `seconds` of new music (see the module docstring)."""
    total = 0.0
    for name, curve in target.curves.items():
        figure = FIGURES[name]
        value, wanted = float(getattr(stats, figure.field)), curve.at(seconds)
        if figure.distance == "scaled":
            if stats.note_count:
                total += figure.weight * abs(value - wanted) / figure.scale
            continue
        ratio = math.log((value + RATIO_FLOOR) / (wanted + RATIO_FLOOR))
        total += figure.weight * (max(ratio, 0.0) if figure.distance == "above" else abs(ratio))
    if target.pitch_classes is not None and pitch_classes is not None and pitch_classes.sum() > 0:
        total += PITCH_CLASS_WEIGHT * 0.5 * float(np.abs(pitch_classes - target.pitch_classes).sum())
    return total


@dataclass
class Steering:
    """A proportional-integral controller of one sample's logit biases (see `TextureSelector`)."""

    integral: dict[str, float] = field(default_factory=lambda: {"on": 0.0, "off": 0.0, "register": 0.0, "spread": 0.0,
                                                                "velocity": 0.0})

    def update(self, errors: Mapping[str, float], gain: float, integral_gain: float, limit: float) -> dict[str, float]:
        out = {}
        for name, error in errors.items():
            self.integral[name] = float(np.clip(self.integral[name] + integral_gain * error, -limit, limit))
            out[name] = float(np.clip(gain * error + self.integral[name], -limit, limit))
        return out

    def relax(self, name: str, factor: float) -> None:
        """Shrink one control's integral by `factor` (a hold that is no longer needed wears off)."""
        self.integral[name] *= factor


@dataclass
class TextureSelector:
    """Chooses, every `segment_tokens` tokens, the best of `candidates` rows per sample, and
    steers the next segment's draws (see the module docstring); `sampling.sample_ids(selector=...)`
    drives it.

    Steering: after each choice, the kept music's density, voices, register and pitch spread are
    compared with the target (log ratios; semitones / 12), and a proportional-integral controller
    per sample sets the logit biases of the next segment: the density control on every NoteOn and,
    weighted by `steer_tempo`, on time shifts by their length (shorter shifts for more notes per
    second); the voices control on every NoteOff (longer or shorter notes: more or fewer voices at
    the same density); the register control on NoteOns by pitch; and, when the user sets the
    pitch spread (`--spread`), the spread control on NoteOns by their distance from the target's
    mean pitch (octaves beyond half an octave: a wider spread favours the bass and the treble, a
    narrower one the middle), read over the last `spread_window_s` seconds; and, when the user
    sets the velocity (`--velocity`), the velocity control on Velocity ids by their value (the
    choice alone does not move it: the model repeats the velocity it last played), read over the
    last `velocity_window_s` seconds, beside a pull of `velocity_pull` logits per 32 MIDI steps
    towards the set level (a tilt alone swings past the level while the kept music lags), which
    grows by `velocity_pull_growth` times the control's integral while the level stays off (a model
    sure of its velocity, a rag stuck at 127, outweighs a fixed pull). When the velocity is not
    set, the primer's own level is held with a dead band: while the kept music's mean velocity
    over `window_s` stays within `velocity_band` MIDI steps of it, nothing steers it (a primer's
    dynamics are the model's to play); beyond the band, the same control on the whole error (a
    dead zone on the error itself took a minute of a rag stuck at 127 to answer) and a pull that
    grows only with the control's integral bring it back. The primer's own
    spread (not set) is held from below: the same spread control acts, on its whole error, only
    while the kept music's spread over `spread_window_s` is under `spread_floor` times the
    target's (a continuation settling in the middle of the keyboard, the bass gone), and above the
    floor its integral leaks away (`SPREAD_LEAK` per choice); a wider continuation is left alone.
    Not with a density set by the user: the spread bias favours the NoteOns far from the middle,
    which the density control then has to answer (at half the chorale's density one seed held the
    asked density in 22 of 26 windows with it, 29 of 29 without).
    Steering it both ways on every segment (`--spread x1`) costs the bundled model 0.12
    nats/token on a madrigal's range, the floor 0.08 (docs/benchmarks.md). `bias` (b * k, V) is
    what the sampler adds to the logits; the candidates' likelihoods are measured without it. `steer_limit` 0 switches it off.

    `targets`: one per sample, or one for all; None entries are anchored on the sample's own
    first `anchor_s` seconds of new music. `prompt_len`: where the new music starts.
    """

    vocab: EventVocab
    targets: Sequence[TextureTarget | None]
    prompt_len: int
    candidates: int = DEFAULT_CANDIDATES
    segment_tokens: int = DEFAULT_SEGMENT_TOKENS
    window_s: float = DEFAULT_WINDOW_S
    likelihood_weight: float = DEFAULT_LIKELIHOOD_WEIGHT
    anchor_s: float = DEFAULT_ANCHOR_S
    steer_gain: float = DEFAULT_STEER_GAIN
    steer_integral: float = DEFAULT_STEER_INTEGRAL
    steer_limit: float = DEFAULT_STEER_LIMIT
    steer_tempo: float = DEFAULT_STEER_TEMPO
    steer_spread: float = DEFAULT_STEER_SPREAD
    steer_velocity: float = DEFAULT_STEER_VELOCITY
    velocity_pull: float = DEFAULT_VELOCITY_PULL
    velocity_pull_growth: float = DEFAULT_VELOCITY_PULL_GROWTH
    velocity_window_s: float = DEFAULT_VELOCITY_WINDOW_S
    velocity_band: float = DEFAULT_VELOCITY_BAND
    spread_window_s: float = DEFAULT_SPREAD_WINDOW_S
    spread_floor: float = DEFAULT_SPREAD_FLOOR
    hold: float = DEFAULT_HOLD
    voices_cap_slack: float = DEFAULT_VOICES_CAP_SLACK
    bias: torch.Tensor | None = None
    rules: NoteRules | None = None

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.segment_tokens < 1:
            raise ValueError("candidates and segment_tokens must be >= 1")
        if not (self.window_s > 0 and math.isfinite(self.window_s)):
            raise ValueError("window_s must be a positive number of seconds")
        self.targets = list(self.targets)
        self._steering: list[Steering] = []
        table = tables(self.vocab)
        self._note_on = torch.as_tensor(table.kind == NOTE_ON, dtype=torch.float32)
        self._note_off = torch.as_tensor(table.kind == NOTE_OFF, dtype=torch.float32)
        self._pitch_offset = torch.as_tensor(np.where(table.kind == NOTE_ON, (table.pitch - 60.0) / 12.0, 0.0),
                                             dtype=torch.float32)
        self._is_note_on = table.kind == NOTE_ON
        # louder velocities for a louder target: -1 at velocity 32, 0 at 64, +1 at 96
        self._velocity_offset = torch.as_tensor(np.where(table.kind == VELOCITY, (table.velocity - 64.0) / 32.0, 0.0),
                                                dtype=torch.float32)
        self._is_velocity = table.kind == VELOCITY
        self._velocity = table.velocity.astype(np.float32)
        self._pitch = table.pitch.astype(np.float32)
        # shorter time shifts for more notes per second: +1 at 4 steps, 0 at 20, -1 at 100
        steps = np.maximum(table.shift_steps, 1)
        self._tempo_offset = torch.as_tensor(np.where(table.kind == TIME_SHIFT, -np.log(steps / 20.0) / np.log(5.0), 0.0),
                                             dtype=torch.float32)

    def attach(self, rules: NoteRules) -> None:
        """Hold voices and steered velocities through `rules` too (`voice_limits`, a Velocity after
        each NoteOn of a row whose velocity is steered); call before sampling starts."""
        rules.row_limits = True
        self.rules = rules

    def voice_limits(self, target: TextureTarget, seconds: float) -> tuple[int, float]:
        """(polyphony cap, minimum note length in seconds) of a sample. Voices set by the user:
        the cap is the target's max voices (rounded up); no note is released before `hold` times
        the target's mean note length (voices / density), so block chords cannot halve the voices
        by ending early, nor stay short when more voices are asked. Neither voices nor density
        set: a cap of the target's max voices (the primer's) plus `voices_cap_slack`, rounded up,
        and no minimum length (the choice alone let notes held over the next chord take a quartet
        of four voices to five or six). A density set alone gets no cap: the primer's max voices
        do not hold at another density (at half the chorale's, one seed fell silent for 30 s
        against it). (0, 0.0): no limit."""
        wanted = target.at(seconds)
        if "voices" not in target.steered:
            if self.voices_cap_slack < 0 or "max_polyphony" not in wanted or "density" in target.steered:
                return 0, 0.0
            return max(math.ceil(wanted["max_polyphony"] + self.voices_cap_slack), 1), 0.0
        cap = math.ceil(wanted.get("max_polyphony", 0.0))
        mean_length = wanted["mean_polyphony"] / max(wanted.get("notes_per_second", 0.0), RATIO_FLOOR)
        return max(cap, 1) if cap else 0, self.hold * mean_length if "notes_per_second" in wanted else 0.0

    def target_of(self, sample: int) -> TextureTarget | None:
        """The target sample `sample` was held to (its own anchor once made)."""
        return self.targets[sample] if len(self.targets) > 1 else self.targets[0]

    def _target(self, sample: int, samples: int) -> TextureTarget | None:
        if len(self.targets) == 1 and samples > 1:
            self.targets = self.targets * samples
        return self.targets[sample]

    def choose(self, tokens: torch.Tensor, segment_logp: torch.Tensor, steps: int) -> torch.Tensor:
        """The row each row continues from (b * k,): every candidate row of a sample gets that
        sample's best candidate; also sets `bias` for the next segment. `tokens` (b * k, L) so
        far, `segment_logp` (b * k,) the summed log-probabilities of the segment's `steps` tokens."""
        k = self.candidates
        rows = tokens.shape[0]
        samples = rows // k
        ids = tokens.cpu().numpy()
        mean_logp = segment_logp.float().cpu().numpy() / max(steps, 1)
        chosen = np.arange(rows)
        while len(self._steering) < samples:
            self._steering.append(Steering())
        controls = np.zeros((samples, 5), dtype=np.float32)
        centers = np.full(samples, 60.0, dtype=np.float32)  # the pitch the spread control measures from
        levels = np.full(samples, np.nan, dtype=np.float32)  # the set velocity the pull draws towards
        pulls = np.zeros(samples, dtype=np.float32)
        no_cap = np.iinfo(np.int32).max
        caps, holds = np.full(samples, no_cap, dtype=np.int64), np.zeros(samples, dtype=np.int64)
        steered_velocity = np.zeros(samples, dtype=bool)  # a Velocity after each NoteOn, for the rules
        for sample in range(samples):
            target = self._target(sample, samples)
            first = sample * k
            if target is None:
                target = self._anchor(sample, ids[first])
            if target is None:  # not anchored yet: plain sampling
                chosen[first:first + k] = first
                continue
            scored = [self._score(ids[first + c], target) for c in range(k)]
            scores = [self.likelihood_weight * mean_logp[first + c] - distance for c, (distance, _, _) in enumerate(scored)]
            best = int(np.argmax(scores))
            chosen[first:first + k] = first + best
            _, seconds, stats = scored[best]
            cap, hold_s = self.voice_limits(target, seconds)
            caps[sample] = cap or no_cap
            holds[sample] = round(hold_s / self.vocab.seconds_per_step)
            if self.rules is not None and self.rules.max_note_steps:  # the length guard comes first
                holds[sample] = min(holds[sample], self.rules.max_note_steps // 2)
            if self.steer_limit > 0:
                # the spread: steered when set, else held above a floor (not with a set density: it comes first)
                spread_floor = 0.0 if {"pitch_spread", "density"} & target.steered else self.spread_floor
                spread_stats = None
                if "pitch_spread" in target.steered or spread_floor > 0:
                    spread_stats = stats
                    if self.spread_window_s > self.window_s:
                        spread_stats = self._recent_stats(ids[first + best], self.spread_window_s)
                    centers[sample] = target.at(seconds).get("pitch_mean", stats.pitch_mean if stats.note_count else 60.0)
                velocity_stats, band, base_pull = None, 0.0, 1.0
                if "velocity" in target.steered:  # set: steered towards it, read over the last seconds
                    velocity_stats = stats
                    if self.velocity_window_s < self.window_s:  # a faster reading of the level
                        velocity_stats = self._recent_stats(ids[first + best], self.velocity_window_s)
                elif self.velocity_band > 0:  # the primer's level: held only beyond the band
                    velocity_stats, band, base_pull = stats, self.velocity_band, 0.0
                if velocity_stats is not None:
                    levels[sample] = target.at(seconds).get("velocity_mean", np.nan)
                errors = self._errors(stats, target, seconds, spread_stats, velocity_stats, band, spread_floor)
                if spread_floor and errors["spread"] == 0.0:  # above the floor: the widening wears off
                    self._steering[sample].relax("spread", SPREAD_LEAK)
                control = self._steering[sample].update(errors, self.steer_gain, self.steer_integral, self.steer_limit)
                controls[sample] = (control["on"], control["off"], control["register"], control["spread"],
                                    control["velocity"])
                wound = abs(self._steering[sample].integral["velocity"])  # how long the level has stayed off
                pulls[sample] = self.velocity_pull * (base_pull + self.velocity_pull_growth * wound)
                steered_velocity[sample] = velocity_stats is not None and (
                    base_pull > 0 or control["velocity"] != 0 or wound > 0)
        if self.steer_limit > 0:
            per_row = torch.as_tensor(np.repeat(controls, k, axis=0))
            bias = (per_row[:, :1] * (self._note_on + self.steer_tempo * self._tempo_offset)
                    - per_row[:, 1:2] * self._note_off + per_row[:, 2:3] * self._pitch_offset)
            if controls[:, 3].any():
                bias = bias + self.steer_spread * per_row[:, 3:4] * self._spread_offset(np.repeat(centers, k))
            if controls[:, 4].any():  # (a sample with the velocity set, or its primer's level left)
                bias = bias + self.steer_velocity * per_row[:, 4:5] * self._velocity_offset
            if (pulls[~np.isnan(levels)] > 0).any():  # (no pull, or no sample it applies to: nothing to add)
                bias = bias + self._velocity_pull(np.repeat(levels, k), np.repeat(pulls, k))
            self.bias = bias.to(tokens.device)
        if self.rules is not None:  # (no limit of any kind: the rules as they were)
            device = tokens.device
            self.rules.limit_rows(torch.as_tensor(np.repeat(caps, k), device=device) if (caps < no_cap).any() else None,
                                  torch.as_tensor(np.repeat(holds, k), device=device) if holds.any() else None,
                                  torch.as_tensor(np.repeat(steered_velocity, k), device=device)
                                  if steered_velocity.any() else None)
        return torch.as_tensor(chosen, device=tokens.device)

    def _velocity_pull(self, levels: np.ndarray, pulls: np.ndarray) -> torch.Tensor:
        """(rows, V): minus `pulls` (per row) logits per 32 MIDI steps between each Velocity id and
        its row's set level (NaN: no pull); 0 for every other id."""
        distance = np.abs(self._velocity[None, :] - levels[:, None]) / 32.0
        pull = np.where(self._is_velocity[None, :] & ~np.isnan(levels)[:, None], -pulls[:, None] * distance, 0.0)
        return torch.as_tensor(pull, dtype=torch.float32)

    def _spread_offset(self, centers: np.ndarray) -> torch.Tensor:
        """(rows, V): each NoteOn's distance in octaves from its row's center pitch, less half an
        octave (about the mean distance of a spread of 8 semitones), held within -0.5..1 (so the
        far ends of the keyboard get no more than an octave and a half away does); 0 for every other id."""
        distance = np.clip(np.abs(self._pitch[None, :] - centers[:, None]) / 12.0 - 0.5, -0.5, 1.0)
        return torch.as_tensor(np.where(self._is_note_on[None, :], distance, 0.0), dtype=torch.float32)

    @staticmethod
    def _errors(stats: MusicStats, target: TextureTarget, seconds: float,
                spread_stats: MusicStats | None = None, velocity_stats: MusicStats | None = None,
                velocity_band: float = 0.0, spread_floor: float = 0.0) -> dict[str, float]:
        """Log-ratio errors (target over kept music) for the controller: notes per second drive the
        NoteOn bias; voices beyond what the density explains drive the NoteOff bias (voices =
        density x note length); the register error is in octaves; the pitch spread's log ratio, read
        from `spread_stats` (None: not steered, 0), drives the spread bias once two notes give it a
        value (with a `spread_floor`, the primer's spread held from below: counted only while the
        music is narrower than the floor times it);
        the mean velocity's error in units of 32, read from `velocity_stats` (None: not steered, 0),
        counted only when it exceeds `velocity_band` MIDI steps (within the band: 0), drives the
        velocity bias."""
        wanted = target.at(seconds)
        def log_ratio(field_name: str, of: MusicStats = stats) -> float:
            if field_name not in wanted:
                return 0.0
            return math.log((wanted[field_name] + RATIO_FLOOR) / (float(getattr(of, field_name)) + RATIO_FLOOR))
        density = log_ratio("notes_per_second")
        voices = log_ratio("mean_polyphony")
        register = 0.0
        if "pitch_mean" in wanted and stats.note_count:
            register = (wanted["pitch_mean"] - stats.pitch_mean) / 12.0
        spread = 0.0
        if spread_stats is not None and spread_stats.note_count >= 2:
            spread = log_ratio("pitch_std", spread_stats)
            if spread_floor and spread < -math.log(spread_floor) + 1e-12:  # held only below the floor, and wider
                spread = 0.0
        loudness = 0.0
        if velocity_stats is not None and "velocity_mean" in wanted and velocity_stats.note_count:
            off = wanted["velocity_mean"] - velocity_stats.velocity_mean
            loudness = (off if abs(off) > velocity_band else 0.0) / 32.0
        return {"on": density, "off": voices - density, "register": register, "spread": spread, "velocity": loudness}

    def _recent(self, row: np.ndarray, window_s: float | None = None) -> tuple[np.ndarray, float, float]:
        """(notes of the last `window_s` (default: `self.window_s`) seconds of music, in seconds,
        its end in seconds since the sequence start, seconds of new music) of one row's ids."""
        window_s = self.window_s if window_s is None else window_s
        clock = music_clock(row, self.vocab)
        end = float(clock[-1]) if len(clock) else 0.0
        start_new = float(clock[self.prompt_len - 1]) if self.prompt_len > 0 and len(clock) else 0.0
        # decode from a little before the window, so notes sounding into it are known
        first = int(np.searchsorted(clock, end - window_s - 5.0, side="left"))
        notes = ids_to_notes(row[first:], self.vocab)
        notes[:, 1:3] += float(clock[first - 1]) if first else 0.0
        return notes, end, end - start_new

    def _recent_stats(self, row: np.ndarray, window_s: float) -> MusicStats:
        """The figures of one row's last `window_s` seconds of music (a control's own reading)."""
        notes, end, _ = self._recent(row, window_s)
        return span_stats(notes, max(end - window_s, 0.0), end)

    def _score(self, row: np.ndarray, target: TextureTarget) -> tuple[float, float, MusicStats]:
        """(texture distance, seconds of new music, the recent figures) of one candidate row."""
        notes, end, new_seconds = self._recent(row)
        begin = max(end - self.window_s, 0.0)
        stats = span_stats(notes, begin, end)
        struck = notes[(notes[:, 1] >= begin) & (notes[:, 1] < end)]
        return texture_distance(stats, pitch_class_histogram(struck), target, new_seconds), new_seconds, stats

    def _anchor(self, sample: int, row: np.ndarray) -> TextureTarget | None:
        """A sample without a target holds its own first `anchor_s` seconds of new music, once made."""
        new = row[self.prompt_len:]
        clock = music_clock(new, self.vocab)
        if not len(clock) or clock[-1] < self.anchor_s:
            return None
        figures = primer_figures(ids_to_notes(new, self.vocab), self.anchor_s, None)
        if figures is None:
            return None
        self.targets[sample] = build_target({}, figures, source="its own first seconds")
        return self.targets[sample]


def target_rows(target: TextureTarget | None, windows: Sequence[object]) -> list[dict[str, float]]:
    """The target's figures (by MusicStats field) at the middle of each continuation window
    (`music_stats.WindowStats` relative to the boundary), for the page and stats.json."""
    if target is None:
        return []
    rows = []
    for window in windows:
        middle = (window.start_s + window.end_s) / 2 - windows[0].start_s  # type: ignore[attr-defined]
        rows.append(target.at(middle))
    return rows


@dataclass(frozen=True)
class TextureSettings:
    """How `generate` and the studio keep texture: on or off, the user's curves by figure name,
    the candidates per sample, the segment length in tokens and the primer's part read."""

    enabled: bool = True
    curves: Mapping[str, Curve] = field(default_factory=dict)
    candidates: int = DEFAULT_CANDIDATES
    segment_tokens: int = DEFAULT_SEGMENT_TOKENS
    primer_seconds: float = DEFAULT_PRIMER_SECONDS


def texture_selector(settings: TextureSettings, vocab: EventVocab, primer_ids: np.ndarray, prompt_len: int
                     ) -> TextureSelector | None:
    """The selector for one generation run (None when texture-keeping is off). The target is the
    primer's last `settings.primer_seconds` with the user's curves over it; with no primer and no
    curves, each sample holds its own first seconds. ValueError for a relative curve without a primer."""
    if not settings.enabled:
        return None
    primer = None
    if len(primer_ids):
        primer = primer_figures(ids_to_notes(primer_ids, vocab), float(music_clock(primer_ids, vocab)[-1]),
                                settings.primer_seconds)
    target = build_target(settings.curves, primer)
    return TextureSelector(vocab, [target], prompt_len, candidates=settings.candidates,
                           segment_tokens=settings.segment_tokens)
