"""`perceiver-music generate`: continue a MIDI primer (or start from nothing) and listen."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from perceiver_ar_music.runtime.atomic import staged_folder
from perceiver_ar_music.runtime.cli_types import bounded_int
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.sampling.settings import BUNDLED_CHECKPOINT, GenerationSettings
from perceiver_ar_music.sampling.settings import add_arguments as add_generation_arguments
from perceiver_ar_music.runtime.threads import add_argument as add_threads_argument

HELP = "continue a MIDI primer with a trained model; write MIDI, audio, piano rolls, statistics and an index.html"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from perceiver_ar_music.listening.render import AUDIO_FORMATS, DEFAULT_AUDIO_FORMAT, DEFAULT_SAMPLE_RATE

    parser.add_argument("--checkpoint", type=Path, default=BUNDLED_CHECKPOINT, metavar="DIR",
                        help="checkpoint or run folder (default: the bundled model, checkpoints/default)")
    parser.add_argument("--primer", type=Path, metavar="FILE.mid", help="MIDI file to continue (default: start from nothing)")
    add_generation_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, cuda:N")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: out/generate-<time>)")
    parser.add_argument("--audio-format", choices=list(AUDIO_FORMATS), default=DEFAULT_AUDIO_FORMAT,
                        help=f"audio of each sample (default: {DEFAULT_AUDIO_FORMAT}, compressed)")
    parser.add_argument("--no-audio", action="store_true", help="skip the audio rendering")
    parser.add_argument("--soundfont", type=Path, metavar="SF2", help="soundfont for the audio (default: a system piano/GM one, else pretty_midi's)")
    parser.add_argument("--sample-rate", type=bounded_int(8_000, 192_000), default=DEFAULT_SAMPLE_RATE, metavar="HZ")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from perceiver_ar_music.runtime import threads
    from perceiver_ar_music.runtime.atomic import check_writable_dir
    from perceiver_ar_music.sampling.continuation import continue_ids, load_for_generation, load_primer, sampling_rules
    from perceiver_ar_music.runtime.devices import inference_dtype, pick_device
    from perceiver_ar_music.listening.render import check_soundfont
    from perceiver_ar_music.sampling.texture import texture_selector

    # 1. Check everything the user gave before writing anything.
    soundfont = check_soundfont(args.soundfont) if args.soundfont and not args.no_audio else args.soundfont
    out = args.out or Path("out") / time.strftime("generate-%Y%m%d-%H%M%S")
    check_writable_dir(out, "--out")
    device = pick_device(args.device)
    loaded, tokenizer = load_for_generation(args.checkpoint, device, dtype=inference_dtype(device))
    vocab = tokenizer.vocab
    settings = GenerationSettings.from_args(args, loaded, vocab)
    primer_ids = load_primer(tokenizer, args.primer, settings.primer_seconds,
                             say=lambda line: print(f"perceiver-music generate: {line}"))
    prompt = np.concatenate(([vocab.bos_id], primer_ids)).astype(np.int64)
    try:
        texture = texture_selector(settings.texture, vocab, primer_ids, len(prompt))
    except ValueError as exc:
        raise UserError(str(exc)) from None

    # 2. Sample.
    rules = sampling_rules(vocab, device, constrain=settings.constrain, max_note_seconds=settings.max_note_seconds,
                           max_polyphony=settings.max_polyphony)
    if settings.compile and settings.use_cache:
        print("perceiver-music generate: compiling the decoding step first (once per batch size, 10-30 s)")
    result = continue_ids(
        loaded.model, prompt, vocab, settings.length, settings.num_samples, settings.sampling,
        seconds=settings.seconds, use_cache=settings.use_cache, seed=settings.seed,
        rules=rules, reset_latents=settings.reset_latents, progress=not args.no_progress,
        compile_decoder=settings.compile, texture=texture,
    )

    # 3. Write MIDI, piano rolls, audio, statistics and the page: all or nothing.
    details = {
        "checkpoint": str(loaded.path),
        "primer": str(args.primer) if args.primer else "none (started from BOS)",
        "primer tokens": len(primer_ids),
        **settings.describe(),
        "texture": describe_texture(texture),
        "speed": f"{result.speed()} on {device}" + (f", {threads.describe()}" if device.type == "cpu" else ""),
        "tokens": result.kept(),
        "stopped by": result.stopped_by,
    }
    audio_format = None if args.no_audio else args.audio_format
    with staged_folder(out) as stage:
        count = write_outputs(stage, result, vocab, details, max_note_seconds=settings.max_note_seconds,
                              audio_format=audio_format, soundfont=soundfont, sample_rate=args.sample_rate,
                              texture=texture)
    print(f"wrote {count} sample(s) to {out}: {result.kept()}, {result.speed()}; open {out / 'index.html'}")
    return 0


def new_music_seconds(report) -> float:
    """The new music's length as its statistics measure it (the boundary to the last release)."""
    return report.continuation.duration_s if report.continuation is not None else 0.0


def describe_texture(texture) -> str:
    """The texture-keeping in words, for the page and stats.json."""
    if texture is None:
        return "off (plain sampling)"
    targets = {t.describe() if t is not None else "each sample's own first seconds" for t in texture.targets}
    return (f"kept: {texture.candidates} candidates per sample, a choice every {texture.segment_tokens} tokens, "
            f"towards {'; '.join(sorted(targets))}")


def write_outputs(
    out: Path, result, vocab, details: dict, *, max_note_seconds: float | None,
    audio_format: str | None, soundfont: Path | None, sample_rate: int, texture=None,
) -> int:
    """Per sample a MIDI file, a piano roll, audio (when `audio_format`), its statistics (with the
    texture target beside each window when `texture`, a `texture.TextureSelector`); then
    `stats.json` and `index.html`. Returns the number of samples."""
    from perceiver_ar_music.sampling.continuation import write_sample_files
    from perceiver_ar_music.listening.music_stats import write_stats_json
    from perceiver_ar_music.listening.report import SampleEntry, write_index

    entries, reports, unavailable = [], {}, None
    for index, sequence in enumerate(result.sequences, start=1):
        name = f"sample-{index:02d}"
        files = write_sample_files(out, name, sequence, result.prompt_len, vocab, max_note_seconds=max_note_seconds,
                                   audio_format=audio_format if unavailable is None else None,
                                   soundfont=soundfont, sample_rate=sample_rate,
                                   target=texture.target_of(index - 1) if texture is not None else None)
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
            description=f"{new_tokens} new tokens, {new_music_seconds(files.report):.1f} s of new music",
        ))
    write_stats_json(out / "stats.json", reports, details)
    write_index(out, entries, "perceiver-music samples", details)
    return len(entries)
