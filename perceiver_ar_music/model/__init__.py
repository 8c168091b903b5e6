"""The Perceiver AR model (`perceiver_ar`: its layers, one chain for training, prefill and
one-token decoding), its speed paths and masks (`kernels`), what cached decoding keeps (`cache`)
and checkpoints (`checkpoint`: JSON + safetensors).

``from perceiver_ar_music.model import PerceiverAR, PerceiverARConfig`` keeps working as before
the package had stages; torch is imported when one of them is first used."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from perceiver_ar_music.model.perceiver_ar import PerceiverAR, PerceiverARConfig

__all__ = ["PerceiverAR", "PerceiverARConfig"]


def __getattr__(name: str):
    if name in __all__:
        from perceiver_ar_music.model import perceiver_ar

        return getattr(perceiver_ar, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
