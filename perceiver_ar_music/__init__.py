"""perceiver-ar-music: long-context symbolic piano music generation with Perceiver AR.

The package reads as its pipeline (docs/architecture.md): `data` (MIDI -> notes -> ids -> prepared
folders), `model`, `training`, `sampling`, `listening`, with `runtime` below them all and the
`commands`, `studio` and `cli` on top.

Importing the package needs only the standard library; torch and the MIDI stack are imported by
the modules that use them. ``from perceiver_ar_music import PerceiverAR`` works as with the
``perceiver-ar-pytorch`` port, and ``PerceiverARConfig``, ``PreparedData`` and ``load_model`` are
at hand the same way: each is imported when its name is first used, so the command line stays
quick to start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> the module that is its home.
_PUBLIC = {
    "PerceiverAR": "perceiver_ar_music.model.perceiver_ar",
    "PerceiverARConfig": "perceiver_ar_music.model.perceiver_ar",
    "PreparedData": "perceiver_ar_music.data.token_store",
    "load_model": "perceiver_ar_music.model.checkpoint",
}
__all__ = [*_PUBLIC, "__version__"]

if TYPE_CHECKING:
    from perceiver_ar_music.data.token_store import PreparedData
    from perceiver_ar_music.model.checkpoint import load_model
    from perceiver_ar_music.model.perceiver_ar import PerceiverAR, PerceiverARConfig


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
