#!/usr/bin/env python
"""Texture-keeping sampling against plain sampling: long continuations windowed against the primer.

For every primer and seed, continues the primer for `--length` tokens twice in one run, plain
(`generate --no-texture`) and texture-keeping (`generate`'s default), with the same seed, the
checkpoint's note guards and the default top-p, and counts over every 30-second window of every
continuation (the issue's targets):

- windows within 0.67-1.5x of the primer's notes/s, and within 0.67-1.5x of its mean voices;
- windows within 0.67-1.5x of the primer's pitch spread (standard deviation of the pitches: does
  the register keep its width, bass and treble included);
- windows with max voices <= 16 and <= 1% of notes over 4 s;
- windows whose longest notes (99th percentile of lengths) are at most twice the primer's, or 1 s
  (held notes: a voice kept up by one note that sounds until the guards release it);
- windows whose share of re-struck notes (a pitch struck again within 0.25 s of its release) is at
  most the primer's plus 10 points (repeated-note drones: one pitch struck over and over);
- the model's NLL of the kept continuation tokens (strided, as `evaluate` scores), plain vs texture,
  and where it sits: each event kind's mean NLL and its share of the mean;
- with `--reference PREPARED`, the longest passage copied from its training pieces;
- wall time per continuation, plain vs texture (alternated, same process, same threads).

`--steer` adds runs with `--density` and `--voices` set to half and double the first primer's
figures, counting windows within 25% of the asked value (`--steer-figure pitch_spread`: `--spread`
at 0.67 and 1.5 times the primer's; `--steer-figure velocity`: `--velocity` at 0.6 and 1.45 times).

    python scripts/bench_texture.py --length 8192 --seeds 0 1 2 3 --json out/texture.json

Default primers: the Quickstart chorale (examples/primer.mid), the first 120 s of Monteverdi's
madrigal 3.3 (music21's corpus), and two synthetic pedalled performances from the tests' MIDI
factory, one dense (about 10 notes/s) and one slow (`pace` 2.5).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from perceiver_ar_music.model.checkpoint import load_model  # noqa: E402
from perceiver_ar_music.sampling.continuation import continue_ids, load_primer, sample_notes, sampling_rules  # noqa: E402
from perceiver_ar_music.sampling.settings import DEFAULT_CONSTRAIN, DEFAULT_TOP_P, top_p_exempt  # noqa: E402
from perceiver_ar_music.listening.music_stats import full_windows, sample_report  # noqa: E402
from perceiver_ar_music.sampling.note_limits import NoteLimits  # noqa: E402
from perceiver_ar_music.sampling.sampler import SamplingConfig  # noqa: E402
from perceiver_ar_music.sampling.texture import RATIO_FLOOR, Curve, TextureSettings, texture_selector  # noqa: E402
from perceiver_ar_music.data.tokenizer import load_tokenizer  # noqa: E402
from perceiver_ar_music.data.events import tables  # noqa: E402
from perceiver_ar_music.data.vocab import NOTE_OFF, NOTE_ON, TIME_SHIFT, VELOCITY  # noqa: E402

BAND = (1 / 1.5, 1.5)
HELD_FACTOR, HELD_FLOOR_S = 2.0, 1.0  # a window's p99 note length within max(2x the primer's, 1 s)
RESTRIKE_SLACK = 0.10  # a window's share of re-struck notes at most the primer's plus this
STEER_TOLERANCE = 0.25
TUNING: dict[str, float] = {}
KIND_NAMES = {NOTE_ON: "note-on", NOTE_OFF: "note-off", TIME_SHIFT: "time shift", VELOCITY: "velocity"}


def default_primers(folder: Path) -> list[tuple[Path, float | None]]:
    """(path, seconds kept) of the four default primers, made in `folder`."""
    from perceiver_ar_music.tools import midi_factory

    dense, slow = folder / "synthetic-dense.mid", folder / "synthetic-slow.mid"
    midi_factory.write_performance(dense, seed=7, num_notes=900, tempo_changes=False, pedal=True)
    midi_factory.write_performance(slow, seed=11, num_notes=400, tempo_changes=False, pedal=True, pace=2.5)
    primers = [(ROOT / "examples" / "primer.mid", None), (dense, 60.0), (slow, 60.0)]
    madrigal = folder / "madrigal.3.3.mid"
    try:
        from music21 import corpus

        corpus.parse("monteverdi/madrigal.3.3").write("midi", fp=str(madrigal))
        primers.insert(1, (madrigal, 120.0))
    except Exception as exc:  # music21 missing or its corpus changed: say so, go on
        print(f"(no madrigal primer: {type(exc).__name__}: {exc})")
    return primers


def token_nll(model: torch.nn.Module, sequence: np.ndarray, prompt_len: int) -> np.ndarray:
    """The model's NLL (nats) of each token after `prompt_len`, each scored with up to max_seq_len
    tokens before it, num_latents targets per forward (evaluate's strided scoring)."""
    cfg = model.config
    ids = torch.as_tensor(sequence, dtype=torch.long)
    parts = []
    with torch.no_grad():
        for first in range(prompt_len, len(ids), cfg.num_latents):
            last = min(first + cfg.num_latents, len(ids))  # targets first..last-1
            inputs = ids[max(0, last - 1 - cfg.max_seq_len) : last - 1][None]
            logits = model(inputs)[0, -(last - first):].float()
            parts.append(torch.nn.functional.cross_entropy(logits, ids[first:last], reduction="none"))
    return torch.cat(parts).numpy() if parts else np.zeros(0, dtype=np.float32)


def continuation_nll(model: torch.nn.Module, sequence: np.ndarray, prompt_len: int) -> float:
    """The model's mean NLL (nats/token) of the tokens after `prompt_len` (`token_nll`)."""
    nll = token_nll(model, sequence, prompt_len)
    return float(nll.mean()) if len(nll) else 0.0


def nll_by_kind(nll: np.ndarray, ids: np.ndarray, vocab) -> dict[str, dict[str, float]]:
    """Per event kind (note-on, note-off, time shift, velocity): how many tokens, their mean NLL,
    and their share of the mean NLL per token (nats/token: with the end token, they sum to the mean)."""
    kinds = tables(vocab).kind[ids]
    out = {}
    for kind, name in KIND_NAMES.items():
        chosen = kinds == kind
        if chosen.any():
            out[name] = {"tokens": int(chosen.sum()), "mean": round(float(nll[chosen].mean()), 4),
                         "per_token": round(float(nll[chosen].sum() / len(nll)), 4)}
    return out


def window_counts(report, figure_targets: dict[str, float] | None = None) -> dict[str, int]:
    """Counts over the continuation's full 30-s windows (see the module docstring)."""
    windows = [w.stats for w in full_windows(report.windows, report.window_s)]
    primer = report.primer
    counts = {"windows": len(windows)}
    if primer is not None:
        for key, name in (("notes_per_second", "density_ok"), ("mean_polyphony", "voices_ok")):
            counts[name] = sum(BAND[0] <= getattr(w, key) / getattr(primer, key) <= BAND[1] for w in windows)
        counts["spread_ok"] = sum(BAND[0] <= (w.pitch_std + RATIO_FLOOR) / (primer.pitch_std + RATIO_FLOOR) <= BAND[1] for w in windows)
        held = max(HELD_FACTOR * primer.note_length_p99_s, HELD_FLOOR_S)
        counts["held_ok"] = sum(w.note_length_p99_s <= held for w in windows)
        counts["restrikes_ok"] = sum(w.restrike_fraction <= primer.restrike_fraction + RESTRIKE_SLACK for w in windows)
        counts["both_ok"] = sum(
            all(BAND[0] <= getattr(w, k) / getattr(primer, k) <= BAND[1] for k in ("notes_per_second", "mean_polyphony"))
            for w in windows)
    counts["max_voices_ok"] = sum(w.max_polyphony <= 16 for w in windows)
    counts["long_notes_ok"] = sum(w.long_note_fraction <= 0.01 for w in windows)
    for key, wanted in (figure_targets or {}).items():
        counts[f"{key}_steered_ok"] = sum(abs(getattr(w, key) / wanted - 1) <= STEER_TOLERANCE for w in windows)
    return counts


def run_one(model, tokenizer, prompt, primer_ids, length, seed, texture: TextureSettings, guards, index=None,
            top_p: float = DEFAULT_TOP_P, top_p_time: bool = True, constrain: bool = DEFAULT_CONSTRAIN):
    vocab = tokenizer.vocab
    rules = sampling_rules(vocab, "cpu", constrain=constrain, max_note_seconds=guards[0], max_polyphony=guards[1])
    selector = texture_selector(texture, vocab, primer_ids, len(prompt))
    for name, value in TUNING.items():  # research knobs (--tune NAME=VALUE)
        if selector is not None:
            setattr(selector, name, value)
    start = time.perf_counter()
    sampling = SamplingConfig(top_p=top_p, top_p_exempt=top_p_exempt(vocab, top_p_time))
    result = continue_ids(model, prompt, vocab, length, 1, sampling, seed=seed, rules=rules, progress=False,
                          texture=selector)
    seconds = time.perf_counter() - start
    sequence = result.sequences[0]
    notes, primer_notes, boundary = sample_notes(sequence, result.prompt_len, vocab, guards[0])
    memorization = None
    if index is not None:
        from perceiver_ar_music.listening.memorization import memorization_report

        memorization = memorization_report(notes, primer_notes, index).as_dict()
    report = sample_report(notes, primer_notes, boundary, memorization=memorization)
    nll = token_nll(model, sequence, result.prompt_len)
    return report, seconds, float(nll.mean()), nll_by_kind(nll, sequence[result.prompt_len:], vocab)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "default")
    parser.add_argument("--primer", type=Path, action="append", help="primers (default: see above), kept whole")
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--candidates", type=int, default=TextureSettings.candidates)
    parser.add_argument("--segment-tokens", type=int, default=TextureSettings.segment_tokens)
    parser.add_argument("--spread", type=float, metavar="FACTOR",
                        help="texture runs also hold the pitch spread at FACTOR times the primer's (generate --spread xFACTOR)")
    parser.add_argument("--steer", action="store_true", help="also --density/--voices at half and double (first primer)")
    parser.add_argument("--no-plain", action="store_true", help="texture runs only (tuning)")
    parser.add_argument("--no-texture", action="store_true", help="plain runs only (a sampling study)")
    parser.add_argument("--top-p", type=float, default=DEFAULT_TOP_P, help=f"nucleus mass (default {DEFAULT_TOP_P:g}, generate's)")
    parser.add_argument("--top-p-time", action=argparse.BooleanOptionalAction, default=True,
                        help="top-p also cuts the time shifts (--no-top-p-time: the nucleus spares the clock)")
    parser.add_argument("--constrain", action=argparse.BooleanOptionalAction, default=DEFAULT_CONSTRAIN,
                        help="the performance grammar too (generate --constrain): a NoteOn only for a silent pitch")
    parser.add_argument("--steer-only", action="store_true", help="only the --steer runs")
    parser.add_argument("--steer-figure", choices=["density", "voices", "pitch_spread", "velocity"],
                        help="steer only this figure (velocity: 0.6 and 1.45 times the primer's, 41 and 99 for the chorale)")
    parser.add_argument("--reference", type=Path, help="prepared training data: the longest copied passage")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    parser.add_argument("--tune", action="append", default=[], metavar="NAME=VALUE",
                        help="set a TextureSelector field (research: steer_gain, window_s, ...)")
    parser.add_argument("--only", type=int, nargs="+", help="indices of the default primers to run")
    parser.add_argument("--from-json", type=Path, nargs="+", metavar="JSON",
                        help="print the summary of earlier runs' --json files (e.g. primers run in parallel)")
    args = parser.parse_args()
    if args.from_json:
        summarize([run for path in args.from_json for run in json.loads(path.read_text())])
        return
    for item in args.tune:
        name, _, value = item.partition("=")
        TUNING[name] = float(value)
    torch.set_num_threads(args.threads)

    loaded = load_model(args.checkpoint, device="cpu")
    model = loaded.model.eval()
    tokenizer = load_tokenizer(loaded.tokenizer_path)
    limits = NoteLimits.from_meta(loaded.meta)
    guards = (limits.max_note_seconds or None, limits.max_polyphony or None)
    index = None
    if args.reference:
        from perceiver_ar_music.listening.memorization import ReferenceIndex
        from perceiver_ar_music.data.token_store import PreparedData

        index = ReferenceIndex.from_prepared(PreparedData.open(args.reference))
    texture = TextureSettings(candidates=args.candidates, segment_tokens=args.segment_tokens,
                              curves={"pitch_spread": Curve(((0.0, args.spread),), relative=True)} if args.spread else {})
    plain = TextureSettings(enabled=False)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        primers = [(p, None) for p in args.primer] if args.primer else default_primers(Path(tmp))
        if args.only:
            primers = [primers[i] for i in args.only]
        loaded_primers = []
        for path, seconds in primers:
            ids = load_primer(tokenizer, path, seconds)
            prompt = np.concatenate(([tokenizer.vocab.bos_id], ids)).astype(np.int64)
            loaded_primers.append((path.stem, ids, prompt))
            # a yardstick for the continuations' NLL: the model's NLL of the primer itself
            print(f"{path.stem}: {len(ids)} tokens, the model's NLL of the primer {continuation_nll(model, prompt, 1):.3f}")
        jobs = []
        skipped = {mode for mode, off in (("plain", args.no_plain), ("texture", args.no_texture)) if off}
        for name, ids, prompt in [] if args.steer_only else loaded_primers:
            for seed in args.seeds:
                modes = [(mode, settings) for mode, settings in (("plain", plain), ("texture", texture))
                         if mode not in skipped]
                jobs += [(name, ids, prompt, seed, mode, settings, None) for mode, settings in modes]
        if args.steer or args.steer_only:
            name, ids, prompt = loaded_primers[0]
            report, _, _, _ = run_one(model, tokenizer, prompt, ids, 16, 0, plain, guards)
            steered = (("notes_per_second", "density", (0.5, 2.0)), ("mean_polyphony", "voices", (0.5, 2.0)),
                       ("pitch_std", "pitch_spread", (0.67, 1.5)), ("velocity_mean", "velocity", (0.6, 1.45)))
            for key, flag, factors in [s for s in steered if s[1] == args.steer_figure or
                                       (not args.steer_figure and s[1] in ("density", "voices"))]:
                for factor in factors:
                    wanted = getattr(report.primer, key) * factor
                    steer = TextureSettings(curves={flag: Curve.constant(wanted)}, candidates=args.candidates,
                                            segment_tokens=args.segment_tokens)
                    jobs += [(name, ids, prompt, seed, f"{flag} {wanted:.2f}", steer, {key: wanted}) for seed in args.seeds]
        for name, ids, prompt, seed, mode, settings, steered in jobs:
            report, seconds, nll, by_kind = run_one(model, tokenizer, prompt, ids, args.length, seed, settings, guards, index, args.top_p,
                                           args.top_p_time, args.constrain)
            counts = window_counts(report, steered)
            copied = (report.memorization or {}).get("continuation") or {}
            runs.append({"primer": name, "seed": seed, "mode": mode, "wall_s": seconds, "nll": nll, "nll_by_kind": by_kind,
                         "counts": counts, "copied_notes": copied.get("notes"), "report": report.as_dict()})
            w = [f"{x.stats.notes_per_second:.1f}/{x.stats.mean_polyphony:.1f}/{x.stats.pitch_std:.1f}/{x.stats.velocity_mean:.0f}"
                 for x in report.windows]
            kinds = " ".join(f"{k} {v['mean']:.2f}" for k, v in by_kind.items())
            print(f"{name} seed {seed} {mode}: {seconds:.1f} s, NLL {nll:.3f} ({kinds}), {counts}, copied {copied.get('notes')}; "
                  f"primer {report.primer.notes_per_second:.2f}/{report.primer.mean_polyphony:.2f}/{report.primer.pitch_std:.1f}; "
                  f"windows {' '.join(w)}", flush=True)
    summarize(runs)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(runs, indent=1))


def summarize(runs: list[dict]) -> None:
    """Per primer and mode, then per mode: the share of windows meeting each target, median NLL,
    wall time, the longest copied passage."""
    import statistics

    print("\nprimer | mode | windows | density ok | voices ok | both | pitch spread ok | max voices <= 16 | <= 1% over 4 s | steered ok "
          "| longest notes <= 2x primer's | re-struck <= primer's + 10 pts | NLL | wall s | copied max")
    groups = [(p, m) for p in dict.fromkeys(r["primer"] for r in runs) for m in dict.fromkeys(r["mode"] for r in runs)]
    groups += [("all", m) for m in dict.fromkeys(r["mode"] for r in runs)]
    for primer, mode in groups:
        rows = [r for r in runs if r["mode"] == mode and primer in ("all", r["primer"])]
        if not rows:
            continue
        total = sum(r["counts"]["windows"] for r in rows)

        def share(key: str) -> str:
            hits = [r["counts"].get(key) for r in rows]
            return "-" if None in hits else f"{100 * sum(hits) / max(total, 1):.0f}%"

        steered = [k for k in rows[0]["counts"] if k.endswith("_steered_ok")]
        copied = [r["copied_notes"] for r in rows if r["copied_notes"] is not None]
        print(f"{primer} | {mode} | {total} | {share('density_ok')} | {share('voices_ok')} | {share('both_ok')} | {share('spread_ok')} | "
              f"{share('max_voices_ok')} | {share('long_notes_ok')} | {share(steered[0]) if steered else '-'} | {share('held_ok')} | {share('restrikes_ok')} | "
              f"{statistics.median(r['nll'] for r in rows):.3f} | {statistics.median(r['wall_s'] for r in rows):.1f} | "
              f"{max(copied) if copied else '-'}")
    print("\nwhere the NLL sits (medians over runs): primer | mode | per event kind: mean NLL of its tokens "
          "(nats/token it adds to the mean)")
    for primer, mode in groups:
        rows = [r for r in runs if r["mode"] == mode and primer in ("all", r["primer"]) and r.get("nll_by_kind")]
        if rows:
            parts = [f"{name} {statistics.median(r['nll_by_kind'][name]['mean'] for r in rows if name in r['nll_by_kind']):.2f} "
                     f"({statistics.median(r['nll_by_kind'][name]['per_token'] for r in rows if name in r['nll_by_kind']):.2f})"
                     for name in KIND_NAMES.values() if any(name in r["nll_by_kind"] for r in rows)]
            print(f"{primer} | {mode} | " + " | ".join(parts))


if __name__ == "__main__":
    main()
