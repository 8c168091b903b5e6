"""Continue a MIDI primer with a trained model: prompt building, sampling with progress, MIDI out.

The pieces the `generate` command (and the studio) string together, each usable on its own:
- `load_primer` / `truncate_to_seconds`: a MIDI file -> performance ids, optionally only its
  first S seconds;
- `sampling_rules`: the grammar and note guards applied while sampling (their default limits:
  `note_limits.NoteLimits.from_meta` of a checkpoint);
- `continue_ids`: the cached (or reference) sampler with progress in tokens/s and seconds of
  music (a bar in a terminal, a line every few seconds elsewhere), an optional seconds budget,
  a per-step hook and stopping on EOS;
- `sample_notes` / `write_sample_files`: one sample's ids -> notes (notes left sounding when
  sampling stopped get a clean ending) -> its files: the sample MIDI file (`sample_midi`: the
  primer and the continuation on two tracks, a text event at the boundary), piano roll, audio.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from perceiver_ar_music.sampling.constraints import NoteRules
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.data.events import END, START, music_clock, note_steps_and_open
from perceiver_ar_music.sampling.sampler import Reorder, SamplingConfig, StepCallback, sample_ids
from perceiver_ar_music.data.vocab import NOTE_ON, EventVocab

if TYPE_CHECKING:
    from perceiver_ar_music.listening.music_stats import SampleReport
    from perceiver_ar_music.sampling.texture import TextureSelector, TextureTarget

LOG_EVERY_S = 5.0  # seconds between progress lines when the output is not a terminal
OPEN_NOTE_FALLBACK_S = 0.5  # length of a note left sounding at the end, when no note ended


def truncate_to_seconds(ids: np.ndarray, vocab: EventVocab, seconds: float) -> np.ndarray:
    """The prefix of `ids` that lies within the first `seconds` (cut before the shift crossing it).

    Notes still sounding at the cut stay open: the model continues (and releases) them.
    """
    crossing = np.flatnonzero(music_clock(ids, vocab) > seconds + 1e-9)
    return ids[: crossing[0]] if len(crossing) else ids


def through_seconds(ids: np.ndarray, vocab: EventVocab, seconds: float) -> np.ndarray:
    """The prefix of `ids` up to and including the time shift that reaches `seconds` (all if none)."""
    reached = np.flatnonzero(music_clock(ids, vocab) >= seconds - 1e-9)
    return ids[: reached[0] + 1] if len(reached) else ids


@dataclass
class Continuation:
    """The result of sampling: full sequences (prompt included) and where the prompt ends."""

    sequences: list[np.ndarray]  # one per sample: BOS + primer + continuation (EOS trimmed)
    prompt_len: int
    tokens_per_second: float  # over the whole batch (all samples together)
    stopped_by: str  # "length", "seconds" or "eos"
    drawn: int = 0  # tokens drawn per sample (a sample keeps fewer when it ended at EOS or the seconds budget)

    @property
    def tokens_per_second_per_sample(self) -> float:
        """The speed the progress shows: tokens of one sample per second."""
        return self.tokens_per_second / max(len(self.sequences), 1)

    def speed(self) -> str:
        """The speed in words, per sample (as the progress shows it) and for the batch when it has several."""
        text = f"{self.tokens_per_second_per_sample:.0f} tokens/s per sample"
        if len(self.sequences) > 1:
            text += f" ({self.tokens_per_second:.0f} for the batch of {len(self.sequences)})"
        return text

    def kept(self) -> str:
        """The new tokens each sample kept, in words (with those drawn when a sample kept fewer)."""
        kept = sorted({len(sequence) - self.prompt_len for sequence in self.sequences})
        if kept == [self.drawn]:
            return f"{self.drawn} new tokens per sample"
        counts = str(kept[0]) if len(kept) == 1 else f"{kept[0]}-{kept[-1]}"
        why = ("each sample ends at the time shift that reaches the seconds asked for" if self.stopped_by == "seconds"
               else "a sample that ended the piece stops there")
        return f"{counts} new tokens kept per sample of {self.drawn} drawn ({why})"


class MusicProgress:
    """Per-step callback: counts the music generated, enforces a seconds budget, shows progress.

    In a terminal a tqdm bar (tokens and tokens/s of one sample, seconds of music of the slowest);
    elsewhere (a log, a pipe) one line every `LOG_EVERY_S` seconds; nothing with show=False.
    The budget holds either way. The seconds are summed on the tokens' device and read back only
    every `check_every` steps, so the sampler never waits for the GPU per token; a budget can
    therefore be overshot by up to check_every - 1 tokens.
    """

    def __init__(
        self, total: int | None, vocab: EventVocab, batch: int, seconds_budget: float | None,
        show: bool = True, check_every: int = 16,
    ) -> None:
        import sys
        import time

        from tqdm import tqdm

        self.lines = show and not sys.stderr.isatty()
        self.bar = tqdm(total=total, unit="tok", desc="generating (per sample)", dynamic_ncols=True, disable=not show or self.lines)
        self.shift = torch.tensor(vocab.shift_steps, dtype=torch.float64) * vocab.seconds_per_step
        self.seconds = torch.zeros(batch, dtype=torch.float64)
        self.budget, self.total = seconds_budget, total
        self.check_every = check_every
        self.tokens = 0
        self.started = self.last_line = time.monotonic()

    def __call__(self, step: int, new: torch.Tensor) -> bool:
        if self.seconds.device != new.device:
            self.shift, self.seconds = self.shift.to(new.device), self.seconds.to(new.device)
        self.seconds += self.shift[new]
        self.bar.update(1)
        self.tokens += 1
        if step % self.check_every != self.check_every - 1:
            return False
        slowest = self.seconds.min().item()
        self.bar.set_postfix_str(f"music {slowest:.1f}s")
        if self.lines:
            self._line(slowest, final=False)
        return self.budget is not None and slowest >= self.budget

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i continues from row rows[i] (texture-keeping sampling kept one candidate)."""
        self.seconds = self.seconds[rows.to(self.seconds.device)]

    def _line(self, slowest: float, final: bool) -> None:
        import sys
        import time

        now = time.monotonic()
        if not final and now - self.last_line < LOG_EVERY_S:
            return
        self.last_line = now
        of = f"/{self.total}" if self.total else ""
        rate = self.tokens / max(now - self.started, 1e-9)
        print(f"generating: {self.tokens}{of} tokens, {rate:.0f} tokens/s per sample, music {slowest:.1f}s"
              + (" (done)" if final else ""), file=sys.stderr, flush=True)

    def close(self) -> None:
        slowest = self.seconds.min().item()
        self.bar.set_postfix_str(f"music {slowest:.1f}s")
        self.bar.close()
        if self.lines:
            self._line(slowest, final=True)


def load_for_generation(checkpoint: Path, device: torch.device | str, dtype: torch.dtype | None = None):
    """(LoadedModel, tokenizer) of a checkpoint (weights in `dtype`, see `checkpoint.load_model`),
    refusing a tokenizer.json that does not match."""
    from perceiver_ar_music.model.checkpoint import load_model
    from perceiver_ar_music.data.tokenizer import load_tokenizer

    loaded = load_model(checkpoint, device=device, dtype=dtype)
    tokenizer = load_tokenizer(loaded.tokenizer_path)
    if tokenizer.hash != loaded.tokenizer_hash or len(tokenizer.vocab) != loaded.config.num_tokens:
        raise UserError(f"{loaded.path}: its tokenizer.json does not match the model (mismatching tokenizer)")
    return loaded, tokenizer


MAX_PRIMER_TOKENS = 200_000  # about half an hour of dense piano; the model reads only its last context


def load_primer(
    tokenizer, path: Path | None, seconds: float | None = None, say: Callable[[str], None] | None = None,
) -> np.ndarray:
    """The performance ids (int64, no BOS) of a MIDI primer, or of its first `seconds`; none
    for no path. A file that cannot be read, or has no notes there, is a `UserError`. What is
    not used as asked is said in one line each to `say`: drum tracks left out, `seconds` past
    the primer's end."""
    from perceiver_ar_music.data.midi_load import read_score
    from perceiver_ar_music.data.tokenizer import MidiReadError

    if path is None:
        return np.zeros(0, dtype=np.int64)
    try:
        score = read_score(path)
        ids = tokenizer.encode_score(score).ids.astype(np.int64)
    except MidiReadError as exc:
        raise UserError(f"primer {path}: {exc}") from None
    drum_notes = sum(len(track.notes) for track in score.tracks if track.is_drum)
    if drum_notes and say is not None:
        say(f"primer {path}: its drum track ({drum_notes} notes) is left out: the model plays the other tracks as one piano")
    if seconds is not None:
        length = tokenizer.vocab.seconds(ids.tolist())
        if seconds > length + 1e-9 and say is not None:
            say(f"primer {path}: --primer-seconds {seconds:g} is past its end ({length:.1f} s): all of it is used")
        ids = truncate_to_seconds(ids, tokenizer.vocab, seconds)
        if not np.any(np.asarray(tokenizer.vocab.kind)[ids] == NOTE_ON):
            raise UserError(f"primer {path}: no notes in its first {seconds:g} seconds")
    if len(ids) > MAX_PRIMER_TOKENS:
        raise UserError(f"primer {path}: too long ({len(ids):,} tokens; a primer may have {MAX_PRIMER_TOKENS:,}: "
                        "keep its start with --primer-seconds)")
    return ids


def sampling_rules(
    vocab: EventVocab, device: torch.device | str, *, constrain: bool,
    max_note_seconds: float | None, max_polyphony: int | None,
) -> NoteRules | None:
    """The rules to sample with: the grammar when `constrain`, the guards whose limit is set
    (None or 0 switches one off); None when no rule is on."""
    steps = max(1, round(max_note_seconds / vocab.seconds_per_step)) if max_note_seconds else None
    if not constrain and steps is None and not max_polyphony:
        return None
    return NoteRules(vocab, device, grammar=constrain, max_polyphony=max_polyphony or None, max_note_steps=steps)


def continue_ids(
    model: torch.nn.Module,
    prompt: np.ndarray,
    vocab: EventVocab,
    num_tokens: int,
    num_samples: int,
    sampling: SamplingConfig,
    *,
    seconds: float | None = None,
    use_cache: bool = True,
    reset_latents: int | None = None,
    seed: int | None = None,
    rules: NoteRules | None = None,
    progress: bool = True,
    compile_decoder: bool = False,
    on_step: StepCallback | None = None,
    texture: "TextureSelector | None" = None,
    on_reorder: "Reorder | None" = None,
) -> Continuation:
    """Sample `num_samples` continuations of `prompt` (ids incl. BOS) as one batch.

    `rules` (see `sampling_rules`) mask and amend tokens while sampling. `on_step(step, new)` is
    called after every token (new: (num_samples,)); returning True stops sampling and keeps
    what was made. With `texture` (a `texture.TextureSelector`), each sample is drawn as
    texture.candidates rows that keep the best candidate every segment (`on_step` then sees
    num_samples x candidates rows, and `on_reorder(rows)` each choice). The model runs as it is: its precision is chosen where it is loaded
    (`checkpoint.load_model(..., dtype=...)`; the CLI loads bf16 on CUDA).
    """
    import time

    device = next(model.parameters()).device
    batch = torch.as_tensor(prompt.astype(np.int64), device=device)[None].expand(num_samples, -1).contiguous()
    rows = num_samples * (texture.candidates if texture is not None else 1)
    bar = MusicProgress(None if seconds else num_tokens, vocab, rows, seconds, show=progress)
    callback: StepCallback = bar
    if on_step is not None:
        def callback(step: int, new: torch.Tensor) -> bool:
            stop_for_budget = bar(step, new)  # (always counted, so the bar stays right)
            return bool(on_step(step, new)) or stop_for_budget
    if texture is not None and rules is not None:
        texture.attach(rules)  # voices and steered velocities are also held through the rules' limits
    start = time.perf_counter()
    try:
        out = sample_ids(
            model, batch, num_tokens, sampling, use_cache=use_cache, reset_latents=reset_latents, seed=seed,
            eos_id=vocab.eos_id, allowed_tokens=rules if rules is not None and rules.masks else None,
            amend_tokens=rules.amend if rules is not None else None, callback=callback,
            compile_decoder=compile_decoder, selector=texture,
            reorder=[hook for hook in (rules.reorder if rules is not None else None, bar.reorder, on_reorder)
                     if hook is not None],
        )
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    generated = out.shape[1] - len(prompt)
    sequences = []
    ended = 0
    for row in out.cpu().numpy():
        tail = row[len(prompt) :]
        eos = np.flatnonzero(tail == vocab.eos_id)
        if len(eos):
            ended += 1
            row = row[: len(prompt) + eos[0]]
        if seconds is not None:  # each sample ends at the shift that crosses the budget
            row = row[: len(prompt) + len(through_seconds(row[len(prompt) :], vocab, seconds))]
        sequences.append(row)
    if ended == num_samples and generated < num_tokens:
        stopped_by = "eos"
    elif generated < num_tokens:
        stopped_by = "seconds"
    else:
        stopped_by = "length"
    return Continuation(sequences, len(prompt), generated * num_samples / max(elapsed, 1e-9), stopped_by, generated)


def sample_notes(
    sequence: np.ndarray, prompt_len: int, vocab: EventVocab, max_note_seconds: float | None = None
) -> tuple[np.ndarray, int, float]:
    """(notes (N, 4), number of primer notes, boundary in seconds) of one sample's ids.

    A note still sounding when the sample stops gets a clean ending (`release_open_notes`); a
    note of zero length (its NoteOff, or a re-strike of its pitch, at the instant of its NoteOn)
    is left out: it makes no sound, and written with any length it would sound beside notes the
    polyphony guard counted without it. So the notes (and the MIDI file, the statistics and the
    piano roll made from them) keep the guards' promise."""
    steps, still_sounding = note_steps_and_open(sequence, vocab)
    notes = steps.astype(np.float64)
    notes[:, [START, END]] *= vocab.seconds_per_step
    notes = release_open_notes(notes, still_sounding, max_note_seconds)
    primer = np.asarray(sequence[:prompt_len])
    primer_notes = int(np.count_nonzero(np.asarray(vocab.kind)[primer] == NOTE_ON))
    sounding = notes[:, END] > notes[:, START]
    primer_notes = int(np.count_nonzero(sounding[:primer_notes]))
    return notes[sounding], primer_notes, vocab.seconds(primer.tolist())


def release_open_notes(notes: np.ndarray, still_sounding: np.ndarray, max_note_seconds: float | None) -> np.ndarray:
    """Notes with a clean ending for those that still sounded at the end (released there).

    Such a note lasts as long as it had sounded, but at least the median length of the notes
    that ended (`OPEN_NOTE_FALLBACK_S` if none did), so a note struck just before the end is
    heard; and at most `max_note_seconds` (when set), so a note the model forgot is not held to
    the end of a long sample.
    """
    if not still_sounding.any():
        return notes
    notes = notes.copy()
    lengths = notes[:, END] - notes[:, START]
    ended = lengths[~still_sounding]
    typical = float(np.median(ended)) if len(ended) else OPEN_NOTE_FALLBACK_S
    length = np.maximum(lengths[still_sounding], typical)
    if max_note_seconds:
        length = np.minimum(length, max(max_note_seconds, 0.0))
    notes[still_sounding, END] = notes[still_sounding, START] + length
    return notes


@dataclass
class SampleFiles:
    """What `write_sample_files` wrote for one sample (file names relative to its folder)."""

    notes: np.ndarray
    primer_notes: int
    boundary_s: float
    midi: str
    piano_roll: str
    audio: str | None  # None when not rendered: see audio_note
    audio_note: str | None
    report: "SampleReport"
    audio_unavailable: bool = False  # no audio can be rendered here at all (e.g. no FluidSynth)
    roll_geometry: dict | None = None  # pianoroll.roll_geometry of the roll drawn


def write_sample_files(
    folder: Path, name: str, sequence: np.ndarray, prompt_len: int, vocab: EventVocab, *,
    max_note_seconds: float | None, audio_format: str | None, soundfont: Path | None = None,
    sample_rate: int | None = None, target: "TextureTarget | None" = None, min_roll_height: int | None = None,
) -> SampleFiles:
    """One sample as `name.mid` (primer and continuation tracks), `name.png` (its piano roll) and,
    with an `audio_format`, `name.<format>`, plus its statistics (`music_stats.sample_report`,
    with the texture `target` beside each window when given). With `min_roll_height`, the roll's
    pitch lanes are made tall enough for a notes area of that many pixels.
    Audio that cannot be rendered (no FluidSynth, a silent sample) is left out with a note."""
    from perceiver_ar_music.listening.music_stats import sample_report
    from perceiver_ar_music.listening.pianoroll import ROW_PIXELS, draw_piano_roll, roll_geometry, rows_for_height
    from perceiver_ar_music.listening.render import DEFAULT_SAMPLE_RATE, AudioUnavailable, render_midi
    from perceiver_ar_music.listening.sample_midi import write_sample_midi

    notes, primer_notes, boundary = sample_notes(sequence, prompt_len, vocab, max_note_seconds)
    midi, roll = f"{name}.mid", f"{name}.png"
    write_sample_midi(notes, primer_notes, boundary, folder / midi)
    rows = rows_for_height(notes, min_roll_height) if min_roll_height else ROW_PIXELS
    roll_boundary = boundary if primer_notes else None
    draw_piano_roll(notes, roll_boundary, folder / roll, row_pixels=rows)
    audio, audio_note, unavailable = None, None, False
    if audio_format is not None:
        try:
            render_midi(folder / midi, folder / f"{name}.{audio_format}", soundfont=soundfont,
                        sample_rate=sample_rate or DEFAULT_SAMPLE_RATE)
            audio = f"{name}.{audio_format}"
        except AudioUnavailable as exc:
            audio_note, unavailable = str(exc), True
        except UserError as exc:  # e.g. a sample without notes
            audio_note = str(exc).replace(str(folder / midi), midi)
    report = sample_report(notes, primer_notes, boundary)
    if target is not None:
        from dataclasses import replace

        from perceiver_ar_music.sampling.texture import target_rows

        report = replace(report, targets=target_rows(target, report.windows), target_source=target.describe())
    return SampleFiles(notes, primer_notes, boundary, midi, roll, audio, audio_note, report, unavailable,
                       roll_geometry(notes, roll_boundary, rows))
