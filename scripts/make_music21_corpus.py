#!/usr/bin/env python
"""Write public-domain pieces from music21's bundled corpus as MIDI files (offline training data). The logic and its usage: perceiver_ar_music/tools/music21_corpus.py."""

from perceiver_ar_music.tools.music21_corpus import main

if __name__ == "__main__":
    raise SystemExit(main())
