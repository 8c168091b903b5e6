"""What `--help` says agrees with itself, with the code and with the README."""

from __future__ import annotations

import re
from pathlib import Path

from perceiver_ar_music.cli import COMMANDS, build_parser
from perceiver_ar_music.model.perceiver_ar import PerceiverAR, PerceiverARConfig
from perceiver_ar_music.training.presets import PRESETS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_subcommand_help_is_capitalised_without_a_full_stop():
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command")
    helps = {choice.dest: choice.help for choice in subcommands._choices_actions}
    assert set(helps) == set(COMMANDS)
    for name, text in helps.items():
        assert text[0].isupper() and not text.endswith("."), (name, text)
        assert subcommands.choices[name].description == text


def test_preset_parameter_counts_in_help_and_readme_are_the_models():
    for name, preset in PRESETS.items():
        count = sum(p.numel() for p in PerceiverAR(PerceiverARConfig(num_tokens=391, **preset.model)).parameters())
        stated = re.search(r"([\d.]+)M parameters", preset.description)
        if stated:
            assert float(stated.group(1)) == round(count / 1e6, 1), name
        row = re.search(rf"^\| `{name}` \|.*\| ([\d.]+)M \|$", README, re.MULTILINE)
        assert row and float(row.group(1)) == round(count / 1e6, 1 if count < 100e6 else 0), name


def test_the_readme_says_where_to_get_a_soundfont():
    at = README.index("--soundfont piano.sf2")
    assert re.search(r"soundfont[^.]*(https?://|apt-get install)", README[at: at + 1200])
