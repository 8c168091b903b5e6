#!/usr/bin/env python
"""Write music21's Essen folk songs as MIDI files (200 to fine-tune on, 50 held out). The logic and its usage: perceiver_ar_music/tools/folk_corpus.py."""

from perceiver_ar_music.tools.folk_corpus import main

if __name__ == "__main__":
    raise SystemExit(main())
