"""`perceiver-music generate`: continue a MIDI primer (or start from nothing) and listen."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from perceiver_ar_music.errors import UserError

HELP = "continue a MIDI primer with a trained model; write MIDI, WAV, piano rolls and an index.html"
BUNDLED_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "default"
DEFAULT_LENGTH = 2048
SECONDS_ONLY_CAP = 100_000  # token cap when only --seconds limits the length


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=BUNDLED_CHECKPOINT, metavar="DIR",
                        help="checkpoint or run folder (default: the bundled model, checkpoints/default)")
    parser.add_argument("--primer", type=Path, metavar="FILE.mid", help="MIDI file to continue (default: start from nothing)")
    parser.add_argument("--primer-seconds", type=float, metavar="S", help="keep only the primer's first S seconds")
    parser.add_argument("--length", type=int, metavar="N",
                        help=f"tokens to generate per sample (default: {DEFAULT_LENGTH}; the cap with --seconds)")
    parser.add_argument("--seconds", type=float, metavar="S", help="stop once every sample has S seconds of new music")
    parser.add_argument("--num-samples", type=int, default=1, metavar="K", help="samples generated together as one batch")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 for greedy (default: 1.0)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (1: off; default 0.95)")
    parser.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p x the top probability")
    parser.add_argument("--constrain", action="store_true",
                        help="mask impossible events (a note-off for a silent pitch, a note-on for a sounding one)")
    parser.add_argument("--reset-latents", type=int, metavar="N", help="latents kept at a cache reset (default: half)")
    parser.add_argument("--no-cache", action="store_true", help="the slow reference path: one full forward per token")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the decoding step: fewer, fused kernels per token after a one-off compilation")
    parser.add_argument("--seed", type=int, help="make the samples reproducible")
    parser.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, cuda:N")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: out/generate-<time>)")
    parser.add_argument("--no-audio", action="store_true", help="skip the WAV rendering")
    parser.add_argument("--soundfont", type=Path, metavar="SF2", help="soundfont for the WAV (default: a system piano/GM one, else pretty_midi's)")
    parser.add_argument("--sample-rate", type=int, default=44_100, metavar="HZ")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from perceiver_ar_music.checkpoint import load_model
    from perceiver_ar_music.constraints import PerformanceGrammar
    from perceiver_ar_music.distributed import DistInfo, pick_device
    from perceiver_ar_music.generation import continue_ids, sample_notes, truncate_to_seconds, write_sample_midi
    from perceiver_ar_music.music_stats import music_stats
    from perceiver_ar_music.pianoroll import draw_piano_roll
    from perceiver_ar_music.render import AudioUnavailable, check_soundfont, render_midi
    from perceiver_ar_music.report import SampleEntry, write_index
    from perceiver_ar_music.sampling import SamplingConfig
    from perceiver_ar_music.tokenizer import MidiReadError, load_tokenizer
    from perceiver_ar_music.vocab import NOTE_ON

    # 1. Check everything the user gave before writing anything.
    length = args.length if args.length is not None else (SECONDS_ONLY_CAP if args.seconds else DEFAULT_LENGTH)
    if length < 1 or args.num_samples < 1:
        raise UserError("--length and --num-samples must be at least 1")
    if args.seconds is not None and args.seconds <= 0:
        raise UserError("--seconds must be positive")
    try:
        sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    soundfont = check_soundfont(args.soundfont) if args.soundfont and not args.no_audio else args.soundfont
    device = pick_device(args.device, DistInfo())
    loaded = load_model(args.checkpoint, device=device)
    tokenizer = load_tokenizer(loaded.tokenizer_path)
    if tokenizer.hash != loaded.tokenizer_hash or len(tokenizer.vocab) != loaded.config.num_tokens:
        raise UserError(f"{loaded.path}: its tokenizer.json does not match the model (mismatching tokenizer)")
    vocab = tokenizer.vocab
    if args.reset_latents is not None and not 1 <= args.reset_latents <= loaded.config.num_latents:
        raise UserError(f"--reset-latents must be in 1..{loaded.config.num_latents}")

    primer_ids = np.zeros(0, dtype=np.int64)
    if args.primer is not None:
        try:
            primer_ids = tokenizer.encode_file(args.primer).ids.astype(np.int64)
        except MidiReadError as exc:
            raise UserError(f"primer {args.primer}: {exc}") from None
        if args.primer_seconds is not None:
            if args.primer_seconds <= 0:
                raise UserError("--primer-seconds must be positive")
            primer_ids = truncate_to_seconds(primer_ids, vocab, args.primer_seconds)
            if not np.any(np.asarray(vocab.kind)[primer_ids] == NOTE_ON):
                raise UserError(f"primer {args.primer}: no notes in its first {args.primer_seconds:g} seconds")
    prompt = np.concatenate(([vocab.bos_id], primer_ids)).astype(np.int64)

    out = args.out or Path("out") / time.strftime("generate-%Y%m%d-%H%M%S")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to the output folder {out}: {exc.strerror or exc}") from None

    # 2. Sample.
    grammar = PerformanceGrammar(vocab, device) if args.constrain else None
    if args.compile and not args.no_cache:
        print("perceiver-music generate: compiling the decoding step first (once per batch size, 10-30 s)")
    result = continue_ids(
        loaded.model, prompt, vocab, length, args.num_samples, sampling,
        seconds=args.seconds, use_cache=not args.no_cache, seed=args.seed,
        allowed_tokens=grammar, reset_latents=args.reset_latents, progress=not args.no_progress,
        compile_decoder=args.compile,
    )

    # 3. Write MIDI, piano rolls, audio and the page.
    entries, audio_note = [], None
    for index, sequence in enumerate(result.sequences, start=1):
        name = f"sample-{index:02d}"
        stem = out / name
        notes, primer_notes, boundary = sample_notes(sequence, result.prompt_len, vocab)
        write_sample_midi(notes, primer_notes, boundary, stem.with_suffix(".mid"))
        draw_piano_roll(notes, boundary if primer_notes else None, stem.with_suffix(".png"))
        audio = None
        if not args.no_audio and audio_note is None:
            try:
                render_midi(stem.with_suffix(".mid"), stem.with_suffix(".wav"), soundfont=soundfont, sample_rate=args.sample_rate)
                audio = Path(name + ".wav")  # the page links relative to its folder
            except AudioUnavailable as exc:
                audio_note = str(exc)
                print(f"perceiver-music generate: {audio_note}")
        new_tokens = len(sequence) - result.prompt_len
        entries.append(SampleEntry(
            title=f"Sample {index}",
            midi=Path(name + ".mid"),
            audio=audio,
            audio_note=audio_note or "audio skipped (--no-audio)",
            piano_roll=Path(name + ".png"),
            stats=music_stats(notes[primer_notes:]) if len(notes) > primer_notes else None,
            description=f"{new_tokens} new tokens, {vocab.seconds(sequence[result.prompt_len:].tolist()):.1f} s of new music",
        ))
    details = {
        "checkpoint": str(loaded.path),
        "primer": str(args.primer) if args.primer else "none (started from BOS)",
        "primer tokens": len(primer_ids),
        "sampling": f"temperature {args.temperature}, top-k {args.top_k}, top-p {args.top_p}, min-p {args.min_p}"
        + (", constrained" if args.constrain else ""),
        "decoder": "reference (no cache)" if args.no_cache else "cached with resets",
        "seed": args.seed if args.seed is not None else "random",
        "speed": f"{result.tokens_per_second:.0f} tokens/s on {device}",
        "stopped by": result.stopped_by,
    }
    page = write_index(out, entries, "perceiver-music samples", details)
    print(f"wrote {len(entries)} sample(s) to {out} ({result.tokens_per_second:.0f} tokens/s); open {page}")
    return 0

