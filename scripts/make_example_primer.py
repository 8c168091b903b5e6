#!/usr/bin/env python
"""Write examples/primer.mid: a public-domain Bach chorale from music21's corpus, as piano. The logic and its usage: perceiver_ar_music/tools/example_primer.py."""

from perceiver_ar_music.tools.example_primer import main

if __name__ == "__main__":
    raise SystemExit(main())
