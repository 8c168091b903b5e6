"""The tests' MIDI factory lives in the package (the benchmarks use it too):
`perceiver_ar_music.tools.midi_factory`. This name stays for tests written against it."""

from perceiver_ar_music.tools.midi_factory import *  # noqa: F401,F403
from perceiver_ar_music.tools.midi_factory import GroundTruth, fold_pedal_reference  # noqa: F401
