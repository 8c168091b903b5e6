#!/usr/bin/env python
"""Do long continuations stay music? Windowed statistics of 8,192-token continuations, guards off/on. The logic and its usage: perceiver_ar_music/tools/long_continuations.py."""

from perceiver_ar_music.tools.long_continuations import main

if __name__ == "__main__":
    raise SystemExit(main())
