"""`perceiver-music generate`: continue a MIDI primer (or start from nothing) and listen."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from perceiver_ar_music.atomic import staged_folder
from perceiver_ar_music.cli_types import bounded_int, finite_float
from perceiver_ar_music.cli_types import seed as seed_type
from perceiver_ar_music.errors import UserError
from perceiver_ar_music.note_limits import FALLBACK_MAX_NOTE_SECONDS, FALLBACK_MAX_POLYPHONY

if TYPE_CHECKING:
    from perceiver_ar_music.checkpoint import LoadedModel
    from perceiver_ar_music.sampling import SamplingConfig

HELP = "continue a MIDI primer with a trained model; write MIDI, audio, piano rolls, statistics and an index.html"
BUNDLED_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "default"
DEFAULT_LENGTH = 2048
SECONDS_ONLY_CAP = 100_000  # token cap when only --seconds limits the length
DEFAULT_CONSTRAIN = False  # the grammar mask (see the README: measured, guards do the work)
# Nucleus mass of the default draw (generate, the studio, the benchmark scripts). Guards off, 0.85
# halves the notes held over 4 s and brings the voices after a primer from 5.4 to 3.2, where 0.95
# was the default (docs/benchmarks.md, "Sampling study").
DEFAULT_TOP_P = 0.85
MAX_LENGTH = 10_000_000  # tokens per sample (about 30 hours of music)
MAX_SAMPLES = 1024
MAX_SECONDS = 100 * 3600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from perceiver_ar_music.render import AUDIO_FORMATS, DEFAULT_AUDIO_FORMAT, DEFAULT_SAMPLE_RATE

    seconds = finite_float(min=0, min_inclusive=False, max=MAX_SECONDS)
    parser.add_argument("--checkpoint", type=Path, default=BUNDLED_CHECKPOINT, metavar="DIR",
                        help="checkpoint or run folder (default: the bundled model, checkpoints/default)")
    parser.add_argument("--primer", type=Path, metavar="FILE.mid", help="MIDI file to continue (default: start from nothing)")
    parser.add_argument("--primer-seconds", type=seconds, metavar="S", help="keep only the primer's first S seconds")
    parser.add_argument("--length", type=bounded_int(1, MAX_LENGTH), metavar="N",
                        help=f"tokens to generate per sample (default: {DEFAULT_LENGTH}; the cap with --seconds)")
    parser.add_argument("--seconds", type=seconds, metavar="S", help="stop once every sample has S seconds of new music")
    parser.add_argument("--num-samples", type=bounded_int(1, MAX_SAMPLES), default=1, metavar="K",
                        help="samples generated together as one batch")
    parser.add_argument("--temperature", type=finite_float(min=0, max=100), default=1.0, help="0 for greedy (default: 1.0)")
    parser.add_argument("--top-k", type=bounded_int(0, None), default=0, help="keep the k most likely tokens (0: off)")
    parser.add_argument("--top-p", type=finite_float(min=0, max=1, min_inclusive=False), default=DEFAULT_TOP_P,
                        help=f"nucleus sampling mass (1: off; default {DEFAULT_TOP_P:g})")
    parser.add_argument("--min-p", type=finite_float(min=0, max=1, max_inclusive=False), default=0.0,
                        help="drop tokens below min-p x the top probability")
    parser.add_argument("--constrain", action=argparse.BooleanOptionalAction, default=DEFAULT_CONSTRAIN,
                        help="mask impossible events: a note-off for a silent pitch, a note-on for a sounding "
                        f"one, a missing velocity (default: {'on' if DEFAULT_CONSTRAIN else 'off'})")
    guards = parser.add_argument_group(
        "note guards", "on by default, with limits from the checkpoint's training data (fallbacks "
        f"{FALLBACK_MAX_NOTE_SECONDS:g} s and {FALLBACK_MAX_POLYPHONY} notes for checkpoints without them)")
    guards.add_argument("--max-note-seconds", type=finite_float(min=0, max=MAX_SECONDS), metavar="S",
                        help="release a note that has sounded S seconds of music (0: off)")
    guards.add_argument("--max-polyphony", type=bounded_int(0, 128), metavar="P", help="no note-on while P notes sound (0: off)")
    guards.add_argument("--no-guards", action="store_true", help="switch both guards off")
    parser.add_argument("--reset-latents", type=bounded_int(1, None), metavar="N", help="latents kept at a cache reset (default: half)")
    parser.add_argument("--no-cache", action="store_true", help="the slow reference path: one full forward per token")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the decoding step: fewer, fused kernels per token after a one-off compilation")
    parser.add_argument("--seed", type=seed_type, help="make the samples reproducible")
    parser.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, cuda:N")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: out/generate-<time>)")
    parser.add_argument("--audio-format", choices=list(AUDIO_FORMATS), default=DEFAULT_AUDIO_FORMAT,
                        help=f"audio of each sample (default: {DEFAULT_AUDIO_FORMAT}, compressed)")
    parser.add_argument("--no-audio", action="store_true", help="skip the audio rendering")
    parser.add_argument("--soundfont", type=Path, metavar="SF2", help="soundfont for the audio (default: a system piano/GM one, else pretty_midi's)")
    parser.add_argument("--sample-rate", type=bounded_int(8_000, 192_000), default=DEFAULT_SAMPLE_RATE, metavar="HZ")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from perceiver_ar_music.atomic import check_writable_dir
    from perceiver_ar_music.devices import inference_dtype, pick_device
    from perceiver_ar_music.continuation import continue_ids, load_for_generation, load_primer, sampling_rules
    from perceiver_ar_music.render import check_soundfont

    # 1. Check everything the user gave before writing anything.
    soundfont = check_soundfont(args.soundfont) if args.soundfont and not args.no_audio else args.soundfont
    out = args.out or Path("out") / time.strftime("generate-%Y%m%d-%H%M%S")
    check_writable_dir(out, "--out")
    device = pick_device(args.device)
    loaded, tokenizer = load_for_generation(args.checkpoint, device, dtype=inference_dtype(device))
    vocab = tokenizer.vocab
    length, sampling, (max_note_seconds, max_polyphony) = sampling_settings(args, loaded)
    primer_ids = load_primer(tokenizer, args.primer, args.primer_seconds)
    prompt = np.concatenate(([vocab.bos_id], primer_ids)).astype(np.int64)

    # 2. Sample.
    rules = sampling_rules(vocab, device, constrain=args.constrain, max_note_seconds=max_note_seconds,
                           max_polyphony=max_polyphony)
    if args.compile and not args.no_cache:
        print("perceiver-music generate: compiling the decoding step first (once per batch size, 10-30 s)")
    result = continue_ids(
        loaded.model, prompt, vocab, length, args.num_samples, sampling,
        seconds=args.seconds, use_cache=not args.no_cache, seed=args.seed,
        rules=rules, reset_latents=args.reset_latents, progress=not args.no_progress,
        compile_decoder=args.compile,
    )

    # 3. Write MIDI, piano rolls, audio, statistics and the page: all or nothing.
    details = {
        "checkpoint": str(loaded.path),
        "primer": str(args.primer) if args.primer else "none (started from BOS)",
        "primer tokens": len(primer_ids),
        "sampling": f"temperature {args.temperature}, top-k {args.top_k}, top-p {args.top_p}, min-p {args.min_p}"
        + (", constrained" if args.constrain else ""),
        "note guards": describe_guards(max_note_seconds, max_polyphony),
        "decoder": "reference (no cache)" if args.no_cache else "cached with resets",
        "seed": args.seed if args.seed is not None else "random",
        "speed": f"{result.tokens_per_second:.0f} tokens/s on {device}",
        "stopped by": result.stopped_by,
    }
    audio_format = None if args.no_audio else args.audio_format
    with staged_folder(out) as stage:
        count = write_outputs(stage, result, vocab, details, max_note_seconds=max_note_seconds,
                              audio_format=audio_format, soundfont=soundfont, sample_rate=args.sample_rate)
    print(f"wrote {count} sample(s) to {out} ({result.tokens_per_second:.0f} tokens/s); open {out / 'index.html'}")
    return 0


def write_outputs(
    out: Path, result, vocab, details: dict, *, max_note_seconds: float | None,
    audio_format: str | None, soundfont: Path | None, sample_rate: int,
) -> int:
    """Per sample a MIDI file, a piano roll, audio (when `audio_format`), its statistics; then
    `stats.json` and `index.html`. Returns the number of samples."""
    from perceiver_ar_music.continuation import write_sample_files
    from perceiver_ar_music.music_stats import write_stats_json
    from perceiver_ar_music.report import SampleEntry, write_index

    entries, reports, unavailable = [], {}, None
    for index, sequence in enumerate(result.sequences, start=1):
        name = f"sample-{index:02d}"
        files = write_sample_files(out, name, sequence, result.prompt_len, vocab, max_note_seconds=max_note_seconds,
                                   audio_format=audio_format if unavailable is None else None,
                                   soundfont=soundfont, sample_rate=sample_rate)
        if files.audio_unavailable:  # said once; no audio for the rest
            unavailable = files.audio_note
            print(f"perceiver-music generate: {unavailable}")
        elif files.audio_note:
            print(f"perceiver-music generate: {name}: {files.audio_note}")
        reports[name] = files.report
        new_tokens = len(sequence) - result.prompt_len
        entries.append(SampleEntry(
            title=f"Sample {index}",
            midi=Path(files.midi),  # the page links relative to its folder
            audio=Path(files.audio) if files.audio else None,
            audio_note=files.audio_note or unavailable or "audio skipped (--no-audio)",
            piano_roll=Path(files.piano_roll),
            report=files.report,
            description=f"{new_tokens} new tokens, {vocab.seconds(sequence[result.prompt_len:].tolist()):.1f} s of new music",
        ))
    write_stats_json(out / "stats.json", reports, details)
    write_index(out, entries, "perceiver-music samples", details)
    return len(entries)


def sampling_settings(
    args: argparse.Namespace, loaded: LoadedModel
) -> tuple[int, SamplingConfig, tuple[float | None, int | None]]:
    """(tokens to generate, sampling config, (max note seconds, max polyphony)) from generate's
    parsed flags and the loaded checkpoint (the studio uses it too)."""
    from perceiver_ar_music.sampling import SamplingConfig

    length = args.length if args.length is not None else (SECONDS_ONLY_CAP if args.seconds else DEFAULT_LENGTH)
    if args.reset_latents is not None and not 1 <= args.reset_latents <= loaded.config.num_latents:
        raise UserError(f"--reset-latents must be in 1..{loaded.config.num_latents}")
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p)
    return length, sampling, guard_settings(args, loaded.meta)


def guard_settings(args: argparse.Namespace, meta: dict) -> tuple[float | None, int | None]:
    """(max note seconds, max polyphony) from the flags, defaulting to the checkpoint's limits;
    None where a guard is off."""
    from perceiver_ar_music.note_limits import NoteLimits

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
