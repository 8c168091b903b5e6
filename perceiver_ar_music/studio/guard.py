"""Who may talk to the studio: the Host check (against DNS rebinding) and the cross-site check.

The studio listens on the user's machine, and any page the user visits can send requests to it.
Two rules close it to other sites, applied to every request before any route sees it:

- **Host**: the request's Host must be an IP address (a rebinding attack needs a name of its own),
  ``localhost`` or a name given with ``serve --allow-host``. A page of ``attacker.example`` whose
  name was re-pointed at 127.0.0.1 sends ``Host: attacker.example`` and is refused, so it can
  read nothing.
- **Origin** (requests that change something, i.e. anything but GET and HEAD, and every
  WebSocket handshake, which any page may open and which the same-origin policy does not guard): a browser's
  ``Origin`` must be the studio's own (``http://`` + the Host), its ``Sec-Fetch-Site`` (when sent)
  ``same-origin`` or ``none``. Clients outside a browser send neither and are let through: they
  run on this machine already. The routes then require a JSON or binary Content-Type, which no
  HTML form can send, so a browser without Origin headers is covered too.

Refusals are ``403`` with ``{"error": "one line"}``, like every other error of the studio; a
refused WebSocket handshake is closed before it is accepted (the client sees HTTP 403).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Awaitable, Callable, Iterable

SAFE_METHODS = ("GET", "HEAD")
log = logging.getLogger("perceiver_ar_music.studio")
SAME_SITE_FETCHES = ("same-origin", "none")

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def host_name(host_header: str) -> str:
    """The name or address of a Host header, without the port (IPv6 without its brackets)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(host_header: str | None, allowed_names: Iterable[str] = ()) -> bool:
    """Whether a request with this Host header may be answered (see the module docstring)."""
    if not host_header:
        return False
    name = host_name(host_header)
    return is_ip_address(name) or name == "localhost" or name in {n.lower() for n in allowed_names}


def cross_site_reason(method: str, headers: dict[str, str]) -> str | None:
    """Why a request that changes something comes from another site, or None when it does not."""
    if method in SAFE_METHODS:
        return None
    origin = headers.get("origin")
    if origin is not None and origin != f"http://{headers.get('host', '')}":
        return f"cross-site request refused (Origin {origin[:100]})"
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in SAME_SITE_FETCHES:
        return f"cross-site request refused (Sec-Fetch-Site {fetch_site[:40]})"
    return None


class Guard:
    """ASGI middleware: answers 403 to a request with a foreign Host or from another site."""

    def __init__(self, app: Callable, allowed_names: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed_names = tuple(allowed_names)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        if not host_allowed(headers.get("host"), self.allowed_names):
            reason = (f"unknown Host {headers.get('host', '')[:100]!r}: the studio answers to its IP address, localhost "
                      "or a name given with --allow-host")
        else:  # a WebSocket handshake is a GET that opens a channel able to change things
            reason = cross_site_reason(scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET", headers)
        if reason is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            log.warning("refused a WebSocket to %s: %s", scope.get("path", ""), reason)
            await receive()  # the websocket.connect message
            await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})
            return
        body = json.dumps({"error": reason}).encode("utf-8")
        await send({"type": "http.response.start", "status": 403, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
