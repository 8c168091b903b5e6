#!/usr/bin/env python
"""Which held-out pieces repeat a training piece, and what the test NLL is without them. The logic and its usage: perceiver_ar_music/tools/duplicates.py."""

from perceiver_ar_music.tools.duplicates import main

if __name__ == "__main__":
    raise SystemExit(main())
