"""Serving the studio's application with uvicorn on one socket we bind ourselves.

uvicorn (h11) parses HTTP strictly: a bad Content-Length (``-1``) or a malformed request answers
400 and closes the connection; chunked bodies are read as bodies; a listen backlog of
`BACKLOG`; idle keep-alive connections close after `KEEP_ALIVE_SECONDS`; past `MAX_CONNECTIONS`
open connections a request answers 503. What uvicorn does not time out, `HeadDeadline` does: a
connection must send a complete request head within `head_seconds` of opening (or of its last
answer), so neither silent nor trickling sockets are kept (a slow body is `server`'s to time out).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Callable

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.studio.engine import Studio
from perceiver_ar_music.studio.server import DEFAULT_BODY_SECONDS, create_app

BACKLOG = 512
KEEP_ALIVE_SECONDS = 5
MAX_CONNECTIONS = 256
DEFAULT_HEAD_SECONDS = 10.0
WS_MAX_BYTES = 64 * 1024  # the largest WebSocket message read (a duet message is checked for far less)


class HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head is not complete in time."""

    head_seconds = DEFAULT_HEAD_SECONDS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = self.loop.call_later(self.head_seconds, self._expire)

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        if self._deadline is None and (before is None or before.response_complete):  # a new head begins
            self._deadline = self.loop.call_later(self.head_seconds, self._expire)
        super().data_received(data)
        if self.cycle is not before and self._deadline is not None:  # the head is complete
            self._deadline.cancel()
            self._deadline = None

    def handle_websocket_upgrade(self, event) -> None:  # type: ignore[override]
        """The head was complete: the connection is the WebSocket protocol's from here on."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def _expire(self) -> None:
        self._deadline = None
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()


@dataclass
class Listening:
    """A running studio server: its address, and a way to stop it from another thread."""

    host: str
    port: int
    server: uvicorn.Server

    @property
    def url(self) -> str:
        return f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{self.port}"

    def shutdown(self) -> None:
        self.server.should_exit = True


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (a UserError when that is not possible)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(studio: Studio, host: str, port: int, *, quiet: bool = False, ready: Callable[[Listening], None] | None = None,
          allowed_hosts: tuple[str, ...] = (), head_seconds: float = DEFAULT_HEAD_SECONDS,
          body_seconds: float = DEFAULT_BODY_SECONDS) -> None:
    """Serve the studio until Ctrl-C (or `Listening.shutdown()`); `ready(listening)` is called
    once the socket listens."""
    sock = bind(host, port)
    if not is_loopback(host):
        print(f"perceiver-music serve: warning: listening on {host}, not only on this machine: anyone who can "
              "reach it can use the model and read the takes", file=sys.stderr)
    protocol = type("StudioProtocol", (HeadDeadline,), {"head_seconds": head_seconds})
    config = uvicorn.Config(
        create_app(studio, allowed_hosts=allowed_hosts, body_seconds=body_seconds), http=protocol, lifespan="off",
        ws="websockets-sansio", ws_max_size=WS_MAX_BYTES, access_log=not quiet, log_level="warning" if quiet else "info",
        log_config=None if quiet else uvicorn.config.LOGGING_CONFIG,
        backlog=BACKLOG, timeout_keep_alive=KEEP_ALIVE_SECONDS, limit_concurrency=MAX_CONNECTIONS,
        timeout_graceful_shutdown=2, server_header=False,
    )
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # the access log only, and problems
    server = uvicorn.Server(config)
    bound_host, bound_port = sock.getsockname()[:2]
    if ready is not None:
        ready_thread = threading.Thread(target=_when_started, args=(server, ready, Listening(bound_host, bound_port, server)),
                                        daemon=True)
        ready_thread.start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def _when_started(server: uvicorn.Server, ready: Callable[[Listening], None], listening: Listening) -> None:
    while not server.started and not server.should_exit:
        threading.Event().wait(0.02)
    if server.started:
        ready(listening)
