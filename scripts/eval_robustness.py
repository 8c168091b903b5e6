#!/usr/bin/env python
"""How a checkpoint copes with music that is not at the corpus' pitch and pace: validation NLL per The logic and its usage: perceiver_ar_music/tools/robustness.py."""

from perceiver_ar_music.tools.robustness import main

if __name__ == "__main__":
    raise SystemExit(main())
