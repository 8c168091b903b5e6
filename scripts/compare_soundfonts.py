"""Compare GM soundfonts' grand piano (bank 0, program 0) for the studio's audio (issue 28).

Per soundfont, measured rather than guessed:
- from its preset tables: the piano's sample zones covering middle C, its velocity layers there
  (distinct velocity ranges), the number of distinct samples over the keyboard, and the length
  of the samples middle C plays (seconds of recorded audio before the loop/end);
- rendered by FluidSynth (`render.render_notes`): how long a held C2/C4/C6 at velocity 100 rings
  before falling 40 dB below its peak (sustain), how long it takes to fall silent after the key
  is released, and how much the tone changes with velocity (spectral centroid at velocity 30 and
  120: a piano sounds brighter when struck harder; one sample merely scaled stays the same);
- the same MIDI file (examples/primer.mid) rendered with each (`render.render_midi`): time and size.

    .venv/bin/python scripts/compare_soundfonts.py /usr/share/sounds/sf2/FluidR3_GM.sf2 \
        /usr/share/sounds/sf3/MuseScore_General_Full.sf3 /usr/share/sounds/sf2/TimGM6mb.sf2 --out out/soundfonts
"""

from __future__ import annotations

import argparse
import json
import struct
import time
from pathlib import Path

import numpy as np

from perceiver_ar_music.tools import REPO as ROOT

SAMPLE_RATE = 44_100
KEY_RANGE, VEL_RANGE, INSTRUMENT, SAMPLE_ID = 43, 44, 41, 53


def chunks(data: bytes, start: int, end: int):
    while start + 8 <= end:
        kind, size = data[start:start + 4], struct.unpack("<I", data[start + 4:start + 8])[0]
        yield kind, start + 8, size
        start += 8 + size + (size & 1)


def piano_zones(path: Path) -> dict:
    """The piano preset's instrument zones (key range, velocity range, sample) from the SF2/SF3 tables."""
    data = path.read_bytes()
    pdta = {}
    for kind, offset, size in chunks(data, 12, len(data)):
        if kind == b"LIST" and data[offset:offset + 4] == b"pdta":
            for sub, sub_offset, sub_size in chunks(data, offset + 4, offset + size):
                pdta[sub.decode()] = data[sub_offset:sub_offset + sub_size]

    def records(name: str, size: int, fmt: str):
        raw = pdta[name]
        return [struct.unpack(fmt, raw[i:i + size]) for i in range(0, len(raw), size)]

    phdr = records("phdr", 38, "<20sHHHIII")
    pbag, pgen = records("pbag", 4, "<HH"), records("pgen", 4, "<HH")
    inst, ibag, igen = records("inst", 22, "<20sH"), records("ibag", 4, "<HH"), records("igen", 4, "<HH")
    shdr = records("shdr", 46, "<20sIIIIIBbHH")
    preset = next(i for i, p in enumerate(phdr[:-1]) if p[1] == 0 and p[2] == 0)
    instruments = []  # (instrument, the preset zone's key and velocity ranges)
    for bag in range(phdr[preset][3], phdr[preset + 1][3]):
        keys, velocities = (0, 127), (0, 127)
        for gen in range(pbag[bag][0], pbag[bag + 1][0]):
            op, amount = pgen[gen]
            if op == KEY_RANGE:
                keys = (amount & 0xFF, amount >> 8)
            elif op == VEL_RANGE:
                velocities = (amount & 0xFF, amount >> 8)
            elif op == INSTRUMENT:
                instruments.append((amount, keys, velocities))
    zones = []
    for instrument, preset_keys, preset_velocities in instruments:
        for bag in range(inst[instrument][1], inst[instrument + 1][1]):
            zone = {"keys": preset_keys, "velocities": preset_velocities, "sample": None}
            for gen in range(ibag[bag][0], ibag[bag + 1][0]):
                op, amount = igen[gen]
                if op == KEY_RANGE:
                    zone["keys"] = _within((amount & 0xFF, amount >> 8), preset_keys)
                elif op == VEL_RANGE:
                    zone["velocities"] = _within((amount & 0xFF, amount >> 8), preset_velocities)
                elif op == SAMPLE_ID:
                    zone["sample"] = amount
            if zone["sample"] is not None:
                name, start, end, loop_start, loop_end, rate = shdr[zone["sample"]][:6]
                # (SF3 stores compressed samples: start/end are byte offsets, not frames)
                zone["sample_name"] = name.split(b"\0")[0].decode("latin-1")
                zone["sample_seconds"] = (end - start) / rate if path.suffix.lower() == ".sf2" else None
                zones.append(zone)
    middle_c = [z for z in zones if z["keys"][0] <= 60 <= z["keys"][1]]
    layers = sorted({z["velocities"] for z in middle_c})
    lengths = [z["sample_seconds"] for z in middle_c if z["sample_seconds"] is not None]
    return {"preset": phdr[preset][0].split(b"\0")[0].decode("latin-1"), "zones_at_middle_c": len(middle_c),
            "velocity_layers_at_middle_c": len(layers), "velocity_ranges": layers,
            "distinct_samples": len({z["sample"] for z in zones}),
            "middle_c_sample_seconds": round(max(lengths), 2) if lengths else None}


def _within(inner: tuple[int, int], outer: tuple[int, int]) -> tuple[int, int]:
    return max(inner[0], outer[0]), min(inner[1], outer[1])


def envelope_db(samples: np.ndarray, hop: int = 441) -> np.ndarray:
    mono = samples.mean(axis=1)
    frames = len(mono) // hop
    rms = np.sqrt(np.mean(mono[: frames * hop].reshape(frames, hop) ** 2, axis=1)) + 1e-12
    return 20 * np.log10(rms / rms.max())


def centroid(samples: np.ndarray) -> float:
    mono = samples[: SAMPLE_RATE // 2].mean(axis=1)
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    freqs = np.fft.rfftfreq(len(mono), 1 / SAMPLE_RATE)
    return float((spectrum * freqs).sum() / max(spectrum.sum(), 1e-12))


def rendered(soundfont: Path) -> dict:
    from perceiver_ar_music.listening.render import render_notes

    hold = 12.0
    out = {}
    notes = [(36, 100), (60, 100), (84, 100), (60, 30), (60, 120)]
    held = render_notes(notes, soundfont, hold_seconds=hold, tail_seconds=3.0, sample_rate=SAMPLE_RATE)
    for (pitch, velocity), samples in zip(notes[:3], held[:3]):
        env = envelope_db(samples)
        held_part = env[: int(hold * 100)]
        below = np.flatnonzero(held_part < -40)
        after = env[int(hold * 100):]
        silent = np.flatnonzero(after < -80)
        out[f"sustain_to_-40dB_s_{pitch}"] = round(below[0] / 100, 2) if len(below) else f">{hold:g}"
        out[f"release_to_-80dB_s_{pitch}"] = round(silent[0] / 100, 2) if len(silent) else ">3"
    soft, hard = held[3], held[4]
    out["centroid_hz_v30"], out["centroid_hz_v120"] = round(centroid(soft)), round(centroid(hard))
    out["brightness_ratio_v120_v30"] = round(centroid(hard) / max(centroid(soft), 1), 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("soundfonts", type=Path, nargs="+")
    parser.add_argument("--midi", type=Path, default=ROOT / "examples" / "primer.mid")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "soundfonts")
    args = parser.parse_args()
    from perceiver_ar_music.listening.render import render_midi

    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for soundfont in args.soundfonts:
        row = {"size_mb": round(soundfont.stat().st_size / 2**20, 1)}
        row.update(piano_zones(soundfont))
        row.update(rendered(soundfont))
        target = args.out / f"{args.midi.stem}-{soundfont.stem}.flac"
        start = time.perf_counter()
        render_midi(args.midi, target, soundfont=soundfont)
        row["render_s"] = round(time.perf_counter() - start, 2)
        row["rendered"] = str(target)
        results[soundfont.name] = row
        print(soundfont.name, json.dumps(row))
    (args.out / "soundfonts.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
