"""Prepared data -> a trained checkpoint: run configs (`presets`), token windows and their
augmentations (`windows`, `augment`), the training loop (`train`), scoring (`evaluate`) and
FLOP counts (`flops`)."""
