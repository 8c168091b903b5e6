#!/usr/bin/env python
"""Primers the bundled model never trained on, cut from its corpus' held-out pieces. The logic and its usage: perceiver_ar_music/tools/heldout_primers.py."""

from perceiver_ar_music.tools.heldout_primers import main

if __name__ == "__main__":
    raise SystemExit(main())
