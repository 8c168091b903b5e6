"""The page's piano: samples of the soundfont the takes are rendered with, made once per soundfont.

Why samples: the page must sound a note the moment it arrives (a key the player presses, an
answer's first note), offline. Audio rendered on the server and streamed would add a render and
a network buffer to every note and could not be cut the instant the player plays again; the
soundfont itself (FluidR3 is 141 MB) is too big to hand to a page. So FluidSynth plays every
`STEP`-th key at `LAYERS` velocities from the same soundfont (`render.render_notes`, a few
seconds, in the background when the studio starts), the page loads them once (Ogg Vorbis, about
2 MB) and plays a key from the nearest sample (at most one semitone away, by playback rate) of
the nearest velocity layer, scaled to the note's velocity. Without FluidSynth the page falls back
to a small WebAudio synthesis (said on the page).

The samples live in perceiver-music's cache (`piano/<soundfont>-<hash>/`) and are served by
name only (`PianoSamples.file`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from pathlib import Path

from perceiver_ar_music.runtime.errors import UserError

log = logging.getLogger("perceiver_ar_music.studio")

LOWEST, HIGHEST, STEP = 21, 108, 3  # A0..C8, every third key: no key is more than a semitone from one
LAYERS = (40, 80, 120)  # velocities sampled
HOLD_SECONDS, TAIL_SECONDS = 3.6, 0.6  # a held key rings this long (notes are cut at 4 s by the guards)
SAMPLE_RATE = 44_100
VERSION = 1  # of the layout above: a change makes new samples
NAME = re.compile(r"p[0-9]{2,3}-v[0-9]{2,3}\.ogg")


def sample_name(pitch: int, velocity: int) -> str:
    return f"p{pitch}-v{velocity}.ogg"


class PianoSamples:
    """The piano samples of one soundfont in a cache folder, made on first use."""

    def __init__(self, soundfont: Path | None, cache: Path) -> None:
        self.soundfont = soundfont
        self.cache = cache
        self.folder: Path | None = None
        self.error: str | None = None
        self.lock = threading.Lock()
        self.ready = threading.Event()

    def _folder(self, soundfont: Path) -> Path:
        stat = soundfont.stat()
        key = f"{soundfont.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{VERSION}:{LAYERS}:{STEP}"
        return self.cache / "piano" / f"{soundfont.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    def make(self) -> None:
        """Render the samples unless they are there (safe to call from several threads)."""
        with self.lock:
            if self.ready.is_set():
                return
            try:
                self._make()
            except UserError as exc:  # no FluidSynth, no soundfont: the page synthesizes
                self.error = str(exc)
                log.warning("piano samples: %s", exc)
            except OSError as exc:
                self.error = f"cannot write the piano samples: {exc.strerror or exc}"
                log.warning("piano samples: %s", self.error)
            finally:
                self.ready.set()

    def start(self) -> None:
        """Make the samples on a background thread (the studio starts at once)."""
        threading.Thread(target=self.make, name="piano-samples", daemon=True).start()

    def _make(self) -> None:
        from perceiver_ar_music.listening.render import default_soundfont, render_notes, write_audio
        from perceiver_ar_music.runtime.atomic import write_json_atomic

        soundfont = self.soundfont or default_soundfont()
        folder = self._folder(soundfont)
        if (folder / "piano.json").is_file():
            self.folder = folder
            return
        folder.mkdir(parents=True, exist_ok=True)
        notes = [(pitch, velocity) for pitch in range(LOWEST, HIGHEST + 1, STEP) for velocity in LAYERS]
        rendered = render_notes(notes, soundfont, hold_seconds=HOLD_SECONDS, tail_seconds=TAIL_SECONDS,
                                sample_rate=SAMPLE_RATE)
        peak = max(float(abs(samples).max()) for samples in rendered) or 1.0
        for (pitch, velocity), samples in zip(notes, rendered):
            samples *= 0.89 / peak  # one gain for all: the layers keep their levels
            write_audio(folder / sample_name(pitch, velocity), (samples * 32767).astype("int16"), SAMPLE_RATE, "ogg")
        write_json_atomic(folder / "piano.json", {"soundfont": soundfont.name, "version": VERSION})
        self.folder = folder
        log.info("piano samples of %s made in %s", soundfont.name, folder)

    def describe(self) -> dict:
        """What the page plays: the samples (names, pitches, velocities) or why it synthesizes."""
        self.ready.wait(120)
        if self.folder is None:
            return {"kind": "synth", "reason": self.error or "the piano samples are not ready"}
        meta = json.loads((self.folder / "piano.json").read_text(encoding="utf-8"))
        samples = [{"name": sample_name(pitch, velocity), "pitch": pitch, "velocity": velocity}
                   for pitch in range(LOWEST, HIGHEST + 1, STEP) for velocity in LAYERS]
        return {"kind": "samples", "soundfont": meta["soundfont"], "samples": samples, "hold_seconds": HOLD_SECONDS}

    def file(self, name: str) -> Path | None:
        """A sample by name (nothing else is ever served from here)."""
        if self.folder is None or not NAME.fullmatch(name):
            return None
        path = self.folder / name
        return path if path.is_file() and not path.is_symlink() else None
