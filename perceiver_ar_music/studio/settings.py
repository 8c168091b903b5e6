"""The page's generation settings are `generate`'s flags: same names, defaults, types and checks.

The generation settings' parser (`generation_settings.add_arguments`, which `generate` uses) describes the settings to the page (`fields`) and parses what the
page sends back (`parse_settings`), so the page and the command line cannot drift apart.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping

from perceiver_ar_music.runtime.errors import UserError

# generate's flags (by dest) that the page offers, in the order it shows them.
SETTINGS = (
    "length", "seconds", "temperature", "top_p", "top_p_time", "top_k", "min_p",
    "max_note_seconds", "max_polyphony", "no_guards", "constrain", "seed", "num_samples",
    "texture", "density", "voices", "register", "spread", "velocity", "candidates",
)
PRIMER_SETTINGS = ("primer_seconds",)
# How the page names each setting, in a musician's words (the flag stays beside it as a hint), and
# whether it sits under "Advanced" (the rarely used ones).
LABELS: dict[str, tuple[str, bool]] = {
    "seconds": ("Seconds of new music", False),
    "length": ("Length in tokens", True),
    "temperature": ("Randomness", False),
    "seed": ("Seed (the same seed gives the same take)", False),
    "num_samples": ("Takes at once", False),
    "texture": ("Keep the primer's texture", False),
    "density": ("Notes per second", False),
    "voices": ("Voices", False),
    "register": ("Register", False),
    "spread": ("Pitch spread (semitones)", True),
    "velocity": ("Loudness", False),
    "max_polyphony": ("Most notes at once", False),
    "max_note_seconds": ("Longest note (s)", False),
    "top_p": ("Keep the likeliest share (top-p)", True),
    "top_p_time": ("Top-p also trims the timing", True),
    "top_k": ("Only the k likeliest (top-k)", True),
    "min_p": ("Leave out the unlikely (min-p)", True),
    "no_guards": ("No limits on notes", True),
    "constrain": ("Strict note grammar", True),
    "candidates": ("Texture candidates per take", True),
    "primer_seconds": ("Keep the primer's first seconds", False),
}
MAX_SAMPLES = 8  # samples of one request: the studio shares one process between its users


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a UserError for the page instead of exiting the server
        raise UserError(message)


def generate_parser() -> argparse.ArgumentParser:
    """The generation settings' parser (`generation_settings.add_arguments`, as `generate` reads
    them), raising UserError instead of exiting."""
    from perceiver_ar_music.sampling.settings import add_arguments

    parser = _Parser(prog="generate", add_help=False, exit_on_error=False)
    add_arguments(parser)
    return parser


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions if action.option_strings}


def _kind(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "bool"
    name = getattr(action.type, "__name__", "")
    if name == "curve":  # a texture value: a number, xFACTOR or SECONDS:VALUE,...
        return "text"
    return "int" if action.type is int or name == "integer" else "number"


def fields(parser: argparse.ArgumentParser | None = None) -> list[dict[str, Any]]:
    """The settings the page shows: name (generate's dest), flag, kind (number/int/bool/text),
    label and advanced (`LABELS`), default and help, straight from `generate`'s parser."""
    parser = parser or generate_parser()
    actions = _actions(parser)
    out = []
    for dest in SETTINGS + PRIMER_SETTINGS:
        if dest not in actions:
            continue
        action = actions[dest]
        help_text = (action.help or "").replace("%(default)s", str(action.default))
        label, advanced = LABELS[dest]
        out.append({"name": dest, "flag": action.option_strings[0], "kind": _kind(action), "label": label,
                    "advanced": advanced, "default": action.default, "help": help_text})
    return out


def parse_settings(form: Mapping[str, Any], parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The page's settings (dest -> value; None, "" or a missing key: the default) parsed exactly
    as `generate` parses its flags; a UserError names the flag for anything it would refuse."""
    parser = parser or generate_parser()
    actions = _actions(parser)
    argv: list[str] = []
    for dest, value in form.items():
        if dest not in SETTINGS + PRIMER_SETTINGS or dest not in actions:
            raise UserError(f"unknown setting: {dest!r}")
        action = actions[dest]
        if value is None or value == "":
            continue
        if action.nargs == 0:
            if not isinstance(value, bool):
                raise UserError(f"{action.option_strings[0]}: expected true or false, got {value!r}")
            if isinstance(action, argparse.BooleanOptionalAction):
                argv.append(action.option_strings[0] if value else action.option_strings[1])
            elif value:
                argv.append(action.option_strings[0])
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UserError(f"{action.option_strings[0]}: expected a number, got {value!r}")
        argv.append(f"{action.option_strings[0]}={value}")
    try:
        args = parser.parse_args(argv)
    except argparse.ArgumentError as exc:
        raise UserError(str(exc)) from None
    if args.num_samples > MAX_SAMPLES:
        raise UserError(f"argument --num-samples: at most {MAX_SAMPLES} samples per request in the studio")
    return args
