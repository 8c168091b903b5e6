"""perceiver-ar-music: long-context symbolic piano music generation with Perceiver AR.

Importing the package (and its model and sampler) needs only torch and einops; the MIDI stack
(miditok, symusic, pretty_midi, fluidsynth) is imported only by the modules that use it.
"""

__version__ = "0.1.0"
