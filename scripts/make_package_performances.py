#!/usr/bin/env python
"""Ten real MAESTRO performances from miditok's sdist on PyPI, split, and primers cut from them. The logic and its usage: perceiver_ar_music/tools/package_performances.py."""

from perceiver_ar_music.tools.package_performances import main

if __name__ == "__main__":
    raise SystemExit(main())
