"""`python -m perceiver_ar_music` runs the command line."""

import sys

from perceiver_ar_music.cli import main

sys.exit(main())
