"""Headless Chromium driven over the Chrome DevTools Protocol, for the page's tests and the duet
latency benchmark: open a page (with a script of its own run first, such as the Web MIDI stand-in
below), evaluate JavaScript, wait for a condition, set a file input, take a screenshot. Needs
only a Chromium executable (Debian: apt-get install chromium)."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1200,1800", "--hide-scrollbars", "--remote-debugging-pipe",
    "--autoplay-policy=no-user-gesture-required",  # the page's audio clock runs in a headless test
]


# what the DevTools protocol answers to an evaluation that a navigation cut off
NAVIGATION_ERRORS = ("Inspected target navigated or closed", "Cannot find context with specified id",
                     "Execution context was destroyed")


class Browser:
    """Headless Chromium driven over the Chrome DevTools Protocol on its pipe (fd 3 in, fd 4 out)."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}', executable, *CHROMIUM_FLAGS,
             f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buffer, self.next_id, self.session = b"", 0, None

    def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session:
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self.buffer:
                ready, _, _ = select.select([self.from_browser], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise TimeoutError(f"no answer to {method}")
                chunk = os.read(self.from_browser, 1 << 16)
                if not chunk:
                    raise ConnectionError("chromium closed its pipe")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str, before: str | None = None) -> None:
        """Open `url` in a new tab; `before` is a script run in the page before its own (a test's stand-in)."""
        target = self.send("Target.createTarget", {"url": "about:blank" if before else url})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        if before:
            self.send("Page.enable")
            self.send("Page.addScriptToEvaluateOnNewDocument", {"source": before})
            self.send("Page.navigate", {"url": url})

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 180):  # generous: CI machines are shared
        """`expression`'s value once it is truthy; asked again while a reload replaces the page
        (an evaluation the navigation cuts off is not an answer)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.js(expression)
            except RuntimeError as error:
                if not any(cut in str(error) for cut in NAVIGATION_ERRORS):
                    raise
                value = None
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"still false after {timeout} s: {expression}\n{self.js('document.body.innerText')}")

    def set_file(self, selector: str, path: Path | list[Path]) -> None:
        """Choose a file (or several, for an input with `multiple`) in a file input, as a user would."""
        paths = path if isinstance(path, list) else [path]
        node = self.send("Runtime.evaluate", {"expression": f"document.querySelector({json.dumps(selector)})"})
        self.send("DOM.setFileInputFiles", {"files": [str(p) for p in paths], "objectId": node["result"]["objectId"]})

    def screenshot(self, path: Path) -> None:
        height = self.js("document.documentElement.scrollHeight")
        self.send("Emulation.setDeviceMetricsOverride", {"width": 1200, "height": min(int(height), 2400),
                                                         "deviceScaleFactor": 1, "mobile": False})
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)
        os.close(self.to_browser)
        os.close(self.from_browser)


def find_chromium() -> str | None:
    """The installed Chromium's executable, or None."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


# A Web MIDI stand-in: `navigator.requestMIDIAccess` answers with one input, "Test keyboard", and
# `__midi.send([status, pitch, velocity])` plays it, as a MIDI keyboard would.
WEB_MIDI_STAND_IN = """
(() => {
  const input = { name: "Test keyboard", onmidimessage: null };
  window.__midi = { input, send: (data) => input.onmidimessage && input.onmidimessage({ data: new Uint8Array(data) }) };
  navigator.requestMIDIAccess = async () => ({ inputs: new Map([["test", input]]), outputs: new Map() });
})();
"""


def require_chromium() -> str:
    """The installed Chromium's executable; SystemExit with one line when there is none."""
    path = find_chromium()
    if path is None:
        raise SystemExit("error: chromium is not installed (Debian: apt-get install chromium)")
    return path
