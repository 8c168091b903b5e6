"""`perceiver-music serve`: the studio, a page in the browser to continue primers take by take."""

from __future__ import annotations

import argparse
from pathlib import Path

from perceiver_ar_music.runtime.cli_types import bounded_int, finite_float
from perceiver_ar_music.runtime.threads import add_argument as add_threads_argument

HELP = "the studio: continue primers, play duets and teach the model your music, in a browser page"
DEFAULT_OUT = Path("out") / "studio"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from perceiver_ar_music.sampling.settings import BUNDLED_CHECKPOINT
    from perceiver_ar_music.listening.render import AUDIO_FORMATS, DEFAULT_AUDIO_FORMAT
    from perceiver_ar_music.studio.takes import DEFAULT_MAX_UPLOAD_BYTES

    parser.add_argument("--checkpoint", type=Path, default=BUNDLED_CHECKPOINT, metavar="DIR",
                        help="checkpoint or run folder (default: the bundled model, checkpoints/default)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="a host name the page may be opened under besides its IP address and localhost "
                             "(e.g. this machine's name on the network; repeatable): other names are refused, "
                             "against DNS rebinding")
    parser.add_argument("--port", type=bounded_int(0, 65_535), default=8000, help="default: 8000 (0: any free port)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help=f"folder of the takes and uploads; earlier takes there are listed again (default: {DEFAULT_OUT})")
    parser.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, cuda:N")
    parser.add_argument("--soundfont", type=Path, metavar="SF2",
                        help="soundfont for the audio (default: a system piano/GM one, else pretty_midi's)")
    parser.add_argument("--audio-format", choices=list(AUDIO_FORMATS), default=DEFAULT_AUDIO_FORMAT,
                        metavar="{" + ",".join(AUDIO_FORMATS) + "}",
                        help=f"audio of each take (default: {DEFAULT_AUDIO_FORMAT})")
    parser.add_argument("--max-upload-mb", type=finite_float(0, 100, min_inclusive=False),
                        default=DEFAULT_MAX_UPLOAD_BYTES / 2**20, metavar="MB",
                        help=f"largest primer upload (default: {DEFAULT_MAX_UPLOAD_BYTES / 2**20:g})")
    parser.add_argument("--quiet", action="store_true", help="do not log every request")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    from perceiver_ar_music.runtime.atomic import check_writable_dir
    from perceiver_ar_music.studio.engine import Studio
    from perceiver_ar_music.studio.listen import serve

    check_writable_dir(args.out, "--out")
    print(f"perceiver-music serve: loading {args.checkpoint}")
    studio = Studio(args.checkpoint, args.out, device=args.device, soundfont=args.soundfont,
                    audio_format=args.audio_format, max_upload_bytes=int(args.max_upload_mb * 2**20))

    def ready(listening) -> None:
        print(f"perceiver-music serve: the studio is at {listening.url}/ (takes in {args.out}; Ctrl-C to stop)",
              flush=True)

    try:
        serve(studio, args.host, args.port, quiet=args.quiet, ready=ready, allowed_hosts=tuple(args.allow_host))
    except KeyboardInterrupt:
        print("perceiver-music serve: stopped")
    finally:
        studio.close()
    return 0
