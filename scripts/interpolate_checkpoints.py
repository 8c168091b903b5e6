#!/usr/bin/env python
"""Interpolate a checkpoint and one fine-tuned from it. The logic and its usage: perceiver_ar_music/tools/interpolate.py."""

from perceiver_ar_music.tools.interpolate import main

if __name__ == "__main__":
    raise SystemExit(main())
