#!/usr/bin/env python
"""Judge a checkpoint as a bundled model: test NLL, and what its samples sound like, by the numbers. The logic and its usage: perceiver_ar_music/tools/judge.py."""

from perceiver_ar_music.tools.judge import main

if __name__ == "__main__":
    raise SystemExit(main())
