"""tools.bundled_recipe: the bundled recipe's flags, read from scripts/train_bundled_model.sh."""

from __future__ import annotations

import json

from perceiver_ar_music.tools import REPO
from perceiver_ar_music.tools.bundled_recipe import bundled_flags, recipe_configs


def test_the_recipe_flags_resolve_to_the_bundled_shape_and_the_scripts_schedule():
    flags = bundled_flags()
    assert not {"--init-from", "--data", "--out", "--name"} & set(flags)
    cfg, tc = recipe_configs(["--data", "unused", *flags], 391)
    shape = json.loads((REPO / "checkpoints" / "default" / "config.json").read_text())
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.dim_head, cfg.max_seq_len, cfg.num_latents) == tuple(
        shape[k] for k in ("dim", "depth", "heads", "dim_head", "max_seq_len", "num_latents"))
    script = (REPO / "scripts" / "train_bundled_model.sh").read_text()
    assert f"STEPS=${{STEPS:-{tc.max_steps}}}" in script
    assert tc.augment.stretch_windows == 0.5 and tc.augment.perform_windows > 0 and cfg.num_tokens == 391
