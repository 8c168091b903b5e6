"""`perceiver-music`: one command-line entry point with a subcommand per job.

Each subcommand lives in ``perceiver_ar_music/commands/<name>.py`` and defines ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args) -> int``. Command modules import their heavy
dependencies inside ``run`` so that ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn, Sequence

from perceiver_ar_music.runtime.errors import UserError

# Subcommand name -> module under perceiver_ar_music.commands, in the order --help lists them.
COMMANDS: dict[str, str] = {
    "download-maestro": "download_maestro",
    "prepare": "prepare",
    "tokenize": "tokenize",
    "train": "train",
    "evaluate": "evaluate",
    "generate": "generate",
    "render": "render",
    "stats": "stats",
    "serve": "serve",
}


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (and exit code 2), not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def one_line_help(text: str) -> str:
    """A subcommand's one-line help as every subcommand shows it: capitalised, no full stop."""
    text = text.strip().removesuffix(".")
    return text[:1].upper() + text[1:]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available subcommand."""
    from perceiver_ar_music import __version__

    parser = OneLineParser(
        prog="perceiver-music",
        description="Long-context symbolic piano music with Perceiver AR: prepare, train, generate.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"perceiver_ar_music.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("perceiver_ar_music.commands"):
                continue  # command not built yet in this checkout
            raise
        summary = one_line_help(module.HELP)
        command_parser = sub.add_parser(name, help=summary, description=summary)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def _configure_threads(args: argparse.Namespace) -> None:
    """Set torch's thread count for the command (see `threads`; `generate` records the choice)."""
    from perceiver_ar_music.runtime import threads

    threads.configure(args.threads)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the subcommand, turn user errors into one line and exit code 2."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        if hasattr(args, "threads"):  # a command that runs the model: as many threads as cores are free
            _configure_threads(args)
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"perceiver-music {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the file system said no (disk full, permissions, ...): nothing half-written
        from perceiver_ar_music.runtime.atomic import os_error_text

        print(f"perceiver-music {args.command}: error: {os_error_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"perceiver-music {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
