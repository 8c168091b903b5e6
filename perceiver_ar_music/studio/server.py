"""The studio's HTTP layer: the standard library's ThreadingHTTPServer and a small router.

Routes (JSON unless noted; errors are ``{"error": "one line"}`` with a 4xx status):

    GET  /  /static/studio.js  /static/studio.css     the page
    GET  /api/config                                  settings, defaults, limits
    GET  /api/takes                                   every take in the output folder
    GET  /api/primer?primer=REF&seconds=S             a primer's size, checked as `generate` does
    GET  /api/primer/roll.png?primer=REF&seconds=S    its piano roll (PNG)
    POST /api/primer  (body: the MIDI file, header X-Filename)   keep an uploaded primer
    POST /api/generate  {"primer": REF, "settings": {...}}       queue a request -> {"job": ID}
    GET  /api/jobs/ID          progress: state, place in the queue, tokens, tokens/s, music
    GET  /api/jobs/ID/roll/K.png                      the piano roll of sample K so far
    POST /api/jobs/ID/stop                            stop: the take keeps what was made
    GET  /files/NAME                                  a file of the output folder, by name only
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, unquote, urlsplit

from perceiver_ar_music.errors import UserError
from perceiver_ar_music.studio.engine import Studio

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/studio.js": ("studio.js", "text/javascript; charset=utf-8"),
          "/static/studio.css": ("studio.css", "text/css; charset=utf-8")}
FILE_TYPES = {".mid": "audio/midi", ".png": "image/png", ".json": "application/json", ".ogg": "audio/ogg",
              ".flac": "audio/flac", ".wav": "audio/wav"}
MAX_JSON_BYTES = 64 * 1024
JOB_ROUTE = re.compile(r"/api/jobs/(job-[0-9]+)(?:/(stop|roll/([0-9]{1,2})\.png))?")
RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")


class StudioServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], studio: Studio, quiet: bool = False) -> None:
        self.studio = studio
        self.quiet = quiet
        super().__init__(address, StudioHandler)


class StudioHandler(BaseHTTPRequestHandler):
    server: StudioServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    # ----- dispatch -----
    def do_GET(self) -> None:
        self._dispatch(self._get)

    def do_HEAD(self) -> None:
        self._dispatch(self._get)

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def _dispatch(self, route) -> None:
        try:
            url = urlsplit(self.path)
            route(url.path, {k: v[-1] for k, v in parse_qs(url.query).items()})
        except UserError as exc:
            self._json({"error": str(exc)}, getattr(exc, "status", HTTPStatus.BAD_REQUEST))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # a bug answers 500 and the server goes on
            self.log_error("internal error: %r", exc)
            self._json({"error": f"internal error: {type(exc).__name__}: {exc}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def _get(self, path: str, query: dict[str, str]) -> None:
        studio = self.server.studio
        if path in STATIC:
            name, kind = STATIC[path]
            self._send(resources.files("perceiver_ar_music.studio").joinpath("static", name).read_bytes(), kind)
        elif path == "/api/config":
            self._json(studio.config())
        elif path == "/api/takes":
            self._json({"takes": studio.store.takes()})
        elif path == "/api/primer":
            self._json(studio.primer_info(query.get("primer"), _seconds(query, studio)))
        elif path == "/api/primer/roll.png":
            self._send(studio.primer_roll(query.get("primer"), _seconds(query, studio)), "image/png")
        elif path.startswith("/files/"):
            self._file(unquote(path[len("/files/"):]))
        elif match := JOB_ROUTE.fullmatch(path):
            job = self._job(match.group(1))
            if match.group(2) is None:
                self._json(studio.job_status(job))
            elif match.group(3) is not None:
                self._send(studio.live_roll(job, int(match.group(3))), "image/png")
            else:
                raise NotFound("not found")
        else:
            raise NotFound("not found")

    def _post(self, path: str, query: dict[str, str]) -> None:
        studio = self.server.studio
        if path == "/api/primer":
            data = self._body(studio.store.max_upload_bytes, "the file")
            self._json(studio.upload(data, unquote(self.headers.get("X-Filename", "upload.mid"))))
        elif path == "/api/generate":
            try:
                form = json.loads(self._body(MAX_JSON_BYTES, "the request"))
            except ValueError:
                raise UserError("the request is not JSON") from None
            if not isinstance(form, dict):
                raise UserError("the request is not a JSON object")
            job = studio.submit(form)
            self._json(studio.job_status(job))
        elif (match := JOB_ROUTE.fullmatch(path)) and match.group(2) == "stop":
            job = self._job(match.group(1))
            studio.queue.stop(job.id)
            self._json(studio.job_status(job))
        else:
            raise NotFound("not found")

    # ----- helpers -----
    def _job(self, job_id: str):
        job = self.server.studio.queue.get(job_id)
        if job is None:
            raise NotFound(f"no such job: {job_id}")
        return job

    def _body(self, limit: int, what: str) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise UserError("the request has no Content-Length") from None
        if length > limit:
            self.close_connection = True  # the body stays unread
            raise TooLarge(f"{what} is too large ({length / 2**20:.1f} MB; the limit is {limit / 2**20:g} MB)")
        return self.rfile.read(length)

    def _file(self, name: str) -> None:
        """A file of the output folder, by its bare name (`TakeStore.file`), with byte ranges."""
        path = self.server.studio.store.file(name)
        if path is None:
            raise NotFound(f"no such file: {name}")
        data = path.read_bytes()
        start, end = 0, len(data)
        ranged = RANGE.fullmatch(self.headers.get("Range", "").strip())
        if ranged and (ranged.group(1) or ranged.group(2)):
            if ranged.group(1):
                start = int(ranged.group(1))
                end = min(int(ranged.group(2)) + 1, len(data)) if ranged.group(2) else len(data)
            else:
                start = max(0, len(data) - int(ranged.group(2)))
            if start >= end:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._send(data[start:end], FILE_TYPES[path.suffix], HTTPStatus.PARTIAL_CONTENT,
                       {"Content-Range": f"bytes {start}-{end - 1}/{len(data)}"})
        else:
            self._send(data, FILE_TYPES[path.suffix])

    def _json(self, obj, status: int = HTTPStatus.OK) -> None:
        self._send(json.dumps(obj).encode("utf-8"), "application/json", status)

    def _send(self, data: bytes, kind: str, status: int = HTTPStatus.OK, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if kind.startswith("audio/"):
            self.send_header("Accept-Ranges", "bytes")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class NotFound(UserError):
    status = HTTPStatus.NOT_FOUND


class TooLarge(UserError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


def _seconds(query: dict[str, str], studio: Studio) -> float | None:
    """The `seconds` of a primer request, checked like `generate --primer-seconds`."""
    from perceiver_ar_music.studio.settings import parse_settings

    text = query.get("seconds", "")
    return parse_settings({"primer_seconds": text}, studio.parser).primer_seconds if text else None


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(studio: Studio, host: str, port: int, *, quiet: bool = False, ready=None) -> None:
    """Serve the studio until Ctrl-C (or `server.shutdown()`); `ready(server)` is called once it listens."""
    try:
        server = StudioServer((host, port), studio, quiet=quiet)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    if not is_loopback(host):
        print(f"perceiver-music serve: warning: listening on {host}, not only on this machine: anyone who can "
              "reach it can use the model and read the takes", file=sys.stderr)
    if ready is not None:
        ready(server)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
