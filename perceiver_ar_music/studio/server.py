"""The studio's HTTP routes, as a Starlette (ASGI) application.

Routes (JSON unless noted; errors are ``{"error": "one line"}`` with a 4xx status):

    GET  /  /static/studio.js  /static/studio.css     the page
    GET  /api/config                                  settings, defaults, limits
    GET  /api/takes                                   every take in the output folder
    GET  /api/primer?primer=REF&seconds=S             a primer's size, checked as `generate` does
    GET  /api/primer/roll.png?primer=REF&seconds=S    its piano roll (PNG)
    POST /api/primer  (body: the MIDI file, application/octet-stream, header X-Filename)
                                                      keep an uploaded primer
    POST /api/generate  {"primer": REF, "settings": {...}, "model": ID}  (application/json)
                                                      queue a request -> its status (429: queue full)
    GET  /api/models                                  the models (the studio's own, those taught here,
                                                      with their loss curves) and the fine-tuning job
                                                      that has not finished, if any
    POST /api/teach/sets  (application/json, {})      a new, empty set of files to teach
    POST /api/teach/sets/SET/files  (body: a MIDI file or a zip, application/octet-stream or
                                     application/zip, header X-Filename)   add to the set
    POST /api/teach  {"set": SET, "minutes": M, "name": TEXT}  queue fine-tuning -> its status
    POST /api/teach/train-on  {"model": ID, "minutes": M}      queue training a taught model on
    GET  /api/jobs/ID          progress: state, place in the queue, tokens, tokens/s, music
                               (a fine-tuning job: step, minutes, validation curve)
    GET  /api/jobs/ID/roll/K.png                      the piano roll of sample K so far
    POST /api/jobs/ID/stop  (application/json)        stop: the take keeps what was made
    GET  /files/NAME                                  a file of the output folder, by name only
                                                      (byte ranges, for the audio players)
    GET  /api/piano                                   the page's piano: its samples (rendered from
                                                      the soundfont the takes use) or none
    GET  /piano/NAME                                  one piano sample, by name only
    WS   /ws/jobs/ID     the job's first sample as notes while it is decoded (playback while generating)
    WS   /ws/duet        a duet (`duet.DuetSession`: keys in, the model's answers out)

`guard.Guard` checks Host and Origin before any route (WebSocket handshakes too); bodies are limited before they are read
(Content-Length first, then the bytes as they arrive, each chunk within `body_seconds`). The
studio's work (tokenizing, drawing, queueing) runs in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np
from importlib import resources
from typing import Any, Callable
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.studio.engine import Studio
from perceiver_ar_music.studio.guard import Guard

STATIC = {"index.html": "text/html; charset=utf-8", "studio.js": "text/javascript; charset=utf-8",
          "studio.css": "text/css; charset=utf-8", "piano.js": "text/javascript; charset=utf-8",
          "duet.js": "text/javascript; charset=utf-8", "teach.js": "text/javascript; charset=utf-8"}
STREAM_POLL_SECONDS = 0.03  # how often a job's stream looks for new final tokens
FILE_TYPES = {".mid": "audio/midi", ".png": "image/png", ".json": "application/json", ".ogg": "audio/ogg",
              ".flac": "audio/flac", ".wav": "audio/wav"}
MAX_JSON_BYTES = 64 * 1024
MAX_JSON_DEPTH = 16  # the requests are two levels deep; deeper nesting is refused before parsing
UPLOAD_TYPES = ("application/octet-stream", "audio/midi", "audio/x-midi", "audio/mid")
TEACH_UPLOAD_TYPES = UPLOAD_TYPES + ("application/zip", "application/x-zip-compressed")
DEFAULT_BODY_SECONDS = 30.0  # the longest wait for the next piece of a request body
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Content-Security-Policy": "frame-ancestors 'none'", "Referrer-Policy": "no-referrer"}
log = logging.getLogger("perceiver_ar_music.studio")


class HttpError(UserError):
    """A UserError with an HTTP status other than 400."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(studio: Studio, *, allowed_hosts: tuple[str, ...] = (),
               body_seconds: float = DEFAULT_BODY_SECONDS) -> Guard:
    """The studio as an ASGI application: the routes behind the Host/Origin guard."""
    routes = Routes(studio, body_seconds)
    app = Starlette(routes=[
        Route("/", routes.page, methods=["GET"]),
        Route("/static/{name}", routes.static, methods=["GET"]),
        Route("/api/config", routes.config, methods=["GET"]),
        Route("/api/takes", routes.takes, methods=["GET"]),
        Route("/api/primer", routes.primer, methods=["GET"]),
        Route("/api/primer", routes.upload, methods=["POST"]),
        Route("/api/primer/roll.png", routes.primer_roll, methods=["GET"]),
        Route("/api/generate", routes.generate, methods=["POST"]),
        Route("/api/models", routes.models, methods=["GET"]),
        Route("/api/teach/sets", routes.new_set, methods=["POST"]),
        Route("/api/teach/sets/{set}/files", routes.add_files, methods=["POST"]),
        Route("/api/teach", routes.teach, methods=["POST"]),
        Route("/api/teach/train-on", routes.train_on, methods=["POST"]),
        Route("/api/jobs/{job}", routes.job, methods=["GET"]),
        Route("/api/jobs/{job}/roll/{sample:int}.png", routes.job_roll, methods=["GET"]),
        Route("/api/jobs/{job}/stop", routes.stop, methods=["POST"]),
        Route("/files/{name}", routes.file, methods=["GET"]),
        Route("/api/piano", routes.piano, methods=["GET"]),
        Route("/piano/{name}", routes.piano_sample, methods=["GET"]),
        WebSocketRoute("/ws/jobs/{job}", routes.job_stream),
        WebSocketRoute("/ws/duet", routes.duet_socket),
    ], exception_handlers={HTTPException: _http_error, Exception: _internal_error})
    return Guard(app, allowed_hosts)


def _answer(handler: Callable) -> Callable:
    """A route whose UserErrors become ``{"error": ...}`` answers with their status (400 by default)."""
    async def route(self: "Routes", request: Request) -> Response:
        try:
            return await handler(self, request)
        except UserError as exc:
            status = getattr(exc, "status", 400)
            headers = {**HEADERS, "Connection": "close"} if status in (408, 413) else HEADERS  # body left unread
            return JSONResponse({"error": str(exc)}, status, headers=headers)
    return route


class Routes:
    """The handlers, each a thin call into `Studio`."""

    def __init__(self, studio: Studio, body_seconds: float) -> None:
        self.studio = studio
        self.body_seconds = body_seconds

    async def page(self, request: Request) -> Response:
        return self._static("index.html")

    @_answer
    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC or name == "index.html":
            raise HttpError(404, "not found")
        return self._static(name)

    @_answer
    async def config(self, request: Request) -> Response:
        return _json(await run_in_threadpool(self.studio.config))

    @_answer
    async def takes(self, request: Request) -> Response:
        return _json({"takes": await run_in_threadpool(self.studio.store.takes)})

    @_answer
    async def primer(self, request: Request) -> Response:
        ref, seconds = request.query_params.get("primer"), self._seconds(request)
        return _json(await run_in_threadpool(self.studio.primer_info, ref, seconds))

    @_answer
    async def primer_roll(self, request: Request) -> Response:
        ref, seconds = request.query_params.get("primer"), self._seconds(request)
        return _png(await run_in_threadpool(self.studio.primer_roll, ref, seconds))

    @_answer
    async def upload(self, request: Request) -> Response:
        _require_type(request, UPLOAD_TYPES, "a MIDI file (application/octet-stream)")
        data = await self._body(request, self.studio.store.max_upload_bytes, "the file")
        name = unquote(request.headers.get("x-filename", "upload.mid"))
        return _json(await run_in_threadpool(self.studio.upload, data, name))

    @_answer
    async def generate(self, request: Request) -> Response:
        form = await self._json_body(request)
        if not isinstance(form, dict):
            raise UserError("the request is not a JSON object")
        unknown = sorted(set(form) - {"primer", "settings", "model"})
        if unknown:
            raise UserError(f"unknown field: {unknown[0]!r}")
        if not isinstance(form.get("settings") or {}, dict):
            raise UserError("settings: expected an object of generate's settings")
        job = await run_in_threadpool(self.studio.submit, form)
        return _json(self.studio.job_status(job))

    @_answer
    async def models(self, request: Request) -> Response:
        return _json(await run_in_threadpool(self.studio.models_status))

    @_answer
    async def new_set(self, request: Request) -> Response:
        form = await self._json_body(request)
        if form not in ({}, None):
            raise UserError("a new set takes no fields")
        return _json(await run_in_threadpool(self.studio.teacher.new_set))

    @_answer
    async def add_files(self, request: Request) -> Response:
        from perceiver_ar_music.studio.teach import MAX_ARCHIVE_BYTES

        _require_type(request, TEACH_UPLOAD_TYPES, "a MIDI file or a zip archive (application/octet-stream)")
        set_id = request.path_params["set"]
        self.studio.teacher.set_folder(set_id)  # an unknown set is refused before the body is read
        data = await self._body(request, MAX_ARCHIVE_BYTES, "the file")
        name = unquote(request.headers.get("x-filename", "upload.mid"))
        return _json(await run_in_threadpool(self.studio.teacher.add, set_id, data, name))

    @_answer
    async def teach(self, request: Request) -> Response:
        form = await self._json_body(request)
        if not isinstance(form, dict):
            raise UserError("the request is not a JSON object")
        job = await run_in_threadpool(self.studio.teach, form)
        return _json(self.studio.job_status(job))

    @_answer
    async def train_on(self, request: Request) -> Response:
        form = await self._json_body(request)
        if not isinstance(form, dict):
            raise UserError("the request is not a JSON object")
        job = await run_in_threadpool(self.studio.teach, form, True)
        return _json(self.studio.job_status(job))

    @_answer
    async def job(self, request: Request) -> Response:
        job = self._job(request)
        return _json(await run_in_threadpool(self.studio.job_status, job))

    @_answer
    async def job_roll(self, request: Request) -> Response:
        job = self._job(request)
        return _png(await run_in_threadpool(self.studio.live_roll, job, request.path_params["sample"]))

    @_answer
    async def stop(self, request: Request) -> Response:
        await self._json_body(request)
        job = self._job(request)
        self.studio.queue.stop(job.id)
        return _json(self.studio.job_status(job))

    @_answer
    async def file(self, request: Request) -> Response:
        name = request.path_params["name"]
        path = self.studio.store.file(name)
        if path is None:
            raise HttpError(404, f"no such file: {name[:100]}")
        return FileResponse(path, media_type=FILE_TYPES[path.suffix], headers=HEADERS)

    @_answer
    async def piano(self, request: Request) -> Response:
        return _json(await run_in_threadpool(self.studio.piano.describe))

    @_answer
    async def piano_sample(self, request: Request) -> Response:
        path = self.studio.piano.file(request.path_params["name"])
        if path is None:
            raise HttpError(404, "not found")
        return FileResponse(path, media_type=FILE_TYPES[path.suffix], headers=HEADERS)

    async def job_stream(self, socket: WebSocket) -> None:
        """The job's first sample as note events while it is decoded, then ``{"type": "end"}``."""
        from perceiver_ar_music.studio.engine import Progress
        from perceiver_ar_music.studio.jobs import FINISHED
        from perceiver_ar_music.studio.notestream import NoteStream

        from perceiver_ar_music.studio.teach import TeachRequest

        job = self.studio.queue.get(socket.path_params["job"])
        await socket.accept()
        if job is None or isinstance(job.request, TeachRequest):
            await socket.close(4404, "no such job")
            return
        stream, done = NoteStream(self.studio.vocab), 0
        budget = job.request.settings.seconds or float("inf")
        eos = self.studio.vocab.eos_id
        try:
            while True:
                finished = job.state in FINISHED  # (read first: the tokens below are then all there)
                progress = job.progress
                if isinstance(progress, Progress):
                    ids = progress.final_ids(0, done)
                    done += len(ids)
                    ended = np.flatnonzero(ids == eos)
                    events = [event for event in stream.feed(ids[: ended[0]] if len(ended) else ids)
                              if "pitch" not in event or event["start"] < budget]  # the take keeps no more
                    if events:
                        await socket.send_text(json.dumps({"type": "notes", "notes": events}))
                    if len(ended):
                        finished = True
                if finished:
                    closing = stream.close()
                    if closing:
                        await socket.send_text(json.dumps({"type": "notes", "notes": closing}))
                    await socket.send_text(json.dumps({"type": "end", "state": job.state, "seconds": stream.seconds}))
                    await socket.close()
                    return
                await asyncio.sleep(STREAM_POLL_SECONDS)
        except (WebSocketDisconnect, RuntimeError):  # the page went away
            return

    async def duet_socket(self, socket: WebSocket) -> None:
        """A duet: JSON messages both ways (see `duet.DuetSession`)."""
        from perceiver_ar_music.runtime import threads
        from perceiver_ar_music.studio.duet import DuetSession

        await socket.accept()
        lock = asyncio.Lock()  # one message at a time, in order

        async def send(message: dict) -> None:
            async with lock:
                await socket.send_text(json.dumps(message))

        await run_in_threadpool(threads.refresh)
        model = await run_in_threadpool(lambda: self.studio.duet_model)
        session = DuetSession(model, send, self.studio.duet_limits, save=self.studio.save_duet,
                              choose=self.studio.duet_model_for)
        session.seed = self.studio.duet_seed  # None: a new draw each answer (tests fix it)
        log.info("duet: a player joined")
        try:
            await send({"type": "ready", "settings": session.settings.__dict__, "limits": session.limits.as_dict()})
            while True:
                message = await socket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is None:
                    await send({"type": "error", "error": "the duet speaks JSON text messages"})
                    continue
                await session.receive(message["text"])
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            session.close()
            log.info("duet: the player left (%d notes)", len(session.notes))

    # ----- helpers -----
    def _static(self, name: str) -> Response:
        data = resources.files("perceiver_ar_music.studio").joinpath("static", name).read_bytes()
        return Response(data, media_type=STATIC[name], headers=HEADERS)

    def _job(self, request: Request) -> Any:
        job_id = request.path_params["job"]
        job = self.studio.queue.get(job_id)
        if job is None:
            raise HttpError(404, f"no such job: {job_id[:40]}")
        return job

    def _seconds(self, request: Request) -> float | None:
        """The `seconds` of a primer request, checked like `generate --primer-seconds`."""
        from perceiver_ar_music.studio.settings import parse_settings

        text = request.query_params.get("seconds", "")
        return parse_settings({"primer_seconds": text}, self.studio.parser).primer_seconds if text else None

    async def _json_body(self, request: Request) -> Any:
        _require_type(request, ("application/json",), "JSON (application/json)")
        return parse_json(await self._body(request, MAX_JSON_BYTES, "the request"))

    async def _body(self, request: Request, limit: int, what: str) -> bytes:
        """The request body, refused (413) as soon as it is known to pass `limit` bytes: by its
        Content-Length before reading, or by the bytes received (a chunked body); 408 when the
        client stops sending for `body_seconds`."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HttpError(413, _too_large(what, int(declared), limit))
        chunks, size = [], 0
        stream = request.stream().__aiter__()
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), self.body_seconds)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise HttpError(408, f"{what} did not arrive (nothing for {self.body_seconds:g} s)") from None
            size += len(chunk)
            if size > limit:
                raise HttpError(413, _too_large(what, size, limit))
            chunks.append(chunk)
        return b"".join(chunks)


def parse_json(data: bytes) -> Any:
    """A request body as JSON; a UserError for anything else, also for nesting deeper than
    MAX_JSON_DEPTH (checked on the bytes before parsing, so deep nesting costs nothing)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:  # at most MAX_JSON_BYTES
        if in_string:
            escaped, in_string = (False, True) if escaped else (byte == 0x5C, byte != 0x22)
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    if deepest > MAX_JSON_DEPTH:
        raise UserError(f"the request is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise UserError("the request is not JSON") from None


def _require_type(request: Request, kinds: tuple[str, ...], wanted: str) -> None:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in kinds:
        raise HttpError(415, f"expected {wanted}, got Content-Type {kind[:60] or 'none'!r}")


def _too_large(what: str, size: int, limit: int) -> str:
    return f"{what} is too large ({size / 2**20:.1f} MB; the limit is {limit / 2**20:g} MB)"


def _json(obj: Any, status: int = 200) -> Response:
    return JSONResponse(obj, status, headers=HEADERS)


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers=HEADERS)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route: 404, wrong method: 405) as one-line JSON errors."""
    status = getattr(exc, "status_code", 400)
    detail = {404: "not found", 405: "method not allowed"}.get(status, str(getattr(exc, "detail", "bad request")))
    return JSONResponse({"error": detail}, status, headers=HEADERS)


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug answers 500 with one line; its traceback goes to the log, and the server goes on."""
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500, headers=HEADERS)
