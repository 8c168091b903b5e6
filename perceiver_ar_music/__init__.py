"""perceiver-ar-music: long-context symbolic piano music generation with Perceiver AR.

Importing the package (and its model and sampler) needs only torch and einops; the MIDI stack
(miditok, symusic, pretty_midi, fluidsynth) is imported only by the modules that use it.
``from perceiver_ar_music import PerceiverAR`` works as with the ``perceiver-ar-pytorch`` port;
the model module (and torch) is imported only when the name is first used, so the command line
stays quick to start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["PerceiverAR", "__version__"]

if TYPE_CHECKING:
    from perceiver_ar_music.model import PerceiverAR


def __getattr__(name: str):
    if name == "PerceiverAR":
        from perceiver_ar_music.model import PerceiverAR

        return PerceiverAR
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
