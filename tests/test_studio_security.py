"""The studio as an attacker meets it: other sites (Host and Origin), lying bodies, floods, idle
and slow sockets, smuggled requests, bad JSON, a full queue, clients that leave. Every row runs
against a real uvicorn server on 127.0.0.1 (bounded loops, loopback only), except the
--allow-host rows, which use Starlette's test client."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from perceiver_ar_music.studio.engine import Studio
from perceiver_ar_music.studio.guard import host_allowed
from perceiver_ar_music.studio.jobs import JobQueue
from perceiver_ar_music.studio.listen import serve
from perceiver_ar_music.data.tokenizer import load_tokenizer
from tests.tiny import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "primer.mid"
HEAD_SECONDS = BODY_SECONDS = 1.5


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    checkpoint = write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), load_tokenizer())
    studio = Studio(checkpoint, tmp_path_factory.mktemp("studio") / "takes", device="cpu", max_upload_bytes=200_000)
    yield studio
    studio.close()


@pytest.fixture(scope="module")
def server(studio):
    ready, holder = threading.Event(), {}

    def started(listening):
        holder["server"] = listening
        ready.set()

    thread = threading.Thread(target=serve, args=(studio, "127.0.0.1", 0), daemon=True, kwargs={
        "quiet": True, "ready": started, "head_seconds": HEAD_SECONDS, "body_seconds": BODY_SECONDS})
    thread.start()
    assert ready.wait(20)
    yield holder["server"]
    holder["server"].shutdown()
    thread.join(10)


def exchange(server, raw: bytes, *, wait: float = 10.0) -> bytes:
    """Send raw bytes on a fresh connection; everything the server sends until it closes or
    goes quiet for 1 s (at most `wait` s)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as sock:
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):  # answered and closed before the rest was sent
            pass
        return read_until_quiet(sock, wait)


def read_until_quiet(sock: socket.socket, wait: float) -> bytes:
    data, deadline = b"", time.monotonic() + wait
    sock.settimeout(1.0)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            if data:
                break
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def request(server, method: str, path: str, body: bytes = b"", headers: dict | None = None,
            host: str | None = None) -> tuple[int, dict]:
    """One HTTP/1.1 request (Connection: close); (status, JSON body or {"raw": bytes})."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{server.port}'}", "Connection: close",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    raw = exchange(server, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return status_of(raw), body_of(raw)


def status_of(raw: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 ([0-9]{3}) ", raw)
    assert match, raw[:200]
    return int(match.group(1))


def body_of(raw: bytes) -> dict:
    payload = raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else b""
    try:
        return json.loads(payload)
    except ValueError:
        return {"raw": payload}


JSON = {"Content-Type": "application/json"}
MIDI = {"Content-Type": "application/octet-stream"}
GOOD_JOB = json.dumps({"settings": {"length": 4, "seed": 0}}).encode()


# ----- 1 and 2: other sites -----
@pytest.mark.parametrize("host, allowed", [
    ("127.0.0.1:8000", True), ("localhost:8000", True), ("[::1]:8000", True), ("192.168.1.5", True),
    ("LOCALHOST", True), ("attacker.example", False), ("attacker.example:8000", False),
    ("127.0.0.1.nip.io:8000", False), ("localhost.attacker.example", False), ("", False), (None, False),
])
def test_host_rule(host, allowed):
    assert host_allowed(host) is allowed


@pytest.mark.parametrize("path", ["/", "/api/takes", "/api/config", "/files/take-0001.mid", "/static/studio.js",
                                  "/api/primer?primer=example"])
def test_dns_rebinding_reads_nothing(server, path):
    status, body = request(server, "GET", path, host=f"attacker.example:{server.port}")
    assert status == 403 and "unknown Host" in body["error"], body
    assert "checkpoint" not in json.dumps(body)


def test_requests_without_a_host_are_refused(server):
    raw = exchange(server, b"GET /api/config HTTP/1.0\r\n\r\n")
    assert status_of(raw) in (400, 403) and b"checkpoint" not in raw


# (method, path, body, headers, expected status): every one a request another site could make
CROSS_SITE = [
    ("POST", "/api/generate", GOOD_JOB, {**JSON, "Origin": "http://attacker.example"}, 403),
    ("POST", "/api/generate", GOOD_JOB, {**JSON, "Origin": "null"}, 403),
    ("POST", "/api/generate", GOOD_JOB, {**JSON, "Origin": "http://127.0.0.1:1"}, 403),
    ("POST", "/api/generate", GOOD_JOB, {**JSON, "Sec-Fetch-Site": "cross-site"}, 403),
    ("POST", "/api/generate", GOOD_JOB, {**JSON, "Sec-Fetch-Site": "same-site"}, 403),
    ("POST", "/api/generate", GOOD_JOB, {"Content-Type": "text/plain"}, 415),  # fetch no-cors / form text/plain
    ("POST", "/api/generate", b'{"settings":{"length":8},"primer":"=","primer":null}', {"Content-Type": "text/plain"}, 415),
    ("POST", "/api/generate", b"settings=x", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ("POST", "/api/generate", GOOD_JOB, {}, 415),
    ("POST", "/api/primer", EXAMPLE.read_bytes(), {"Content-Type": "multipart/form-data; boundary=x"}, 415),
    ("POST", "/api/primer", EXAMPLE.read_bytes(), {"Content-Type": "text/plain"}, 415),
    ("POST", "/api/primer", EXAMPLE.read_bytes(), {**MIDI, "Origin": "http://attacker.example"}, 403),
    ("POST", "/api/jobs/job-0123456789abcdef/stop", b"", {"Content-Type": "text/plain"}, 415),
    ("POST", "/api/jobs/job-0123456789abcdef/stop", b"{}", {**JSON, "Origin": "http://attacker.example"}, 403),
    ("PUT", "/api/generate", GOOD_JOB, {**JSON, "Origin": "http://attacker.example"}, 403),
    ("OPTIONS", "/api/generate", b"", {"Origin": "http://attacker.example", "Access-Control-Request-Method": "POST"}, 403),
]


@pytest.mark.parametrize("method, path, body, headers, expected", CROSS_SITE)
def test_other_sites_change_nothing(server, studio, method, path, body, headers, expected):
    jobs, primers = len(studio.queue.jobs), len(list(studio.store.folder.glob("primer-*")))
    status, answer = request(server, method, path, body, headers)
    assert status == expected and "error" in answer, (status, answer)
    assert len(studio.queue.jobs) == jobs and len(list(studio.store.folder.glob("primer-*"))) == primers


def test_the_page_itself_may_change_things(server, studio):
    origin = {"Origin": f"http://127.0.0.1:{server.port}", "Sec-Fetch-Site": "same-origin"}
    status, job = request(server, "POST", "/api/generate", GOOD_JOB, {**JSON, **origin})
    assert status == 200 and re.fullmatch(r"job-[0-9a-f]{16}", job["job"]), job
    status, stopped = request(server, "POST", f"/api/jobs/{job['job']}/stop", b"{}", {**JSON, **origin})
    assert status == 200 and stopped["job"] == job["job"]
    status, primer = request(server, "POST", "/api/primer", EXAMPLE.read_bytes(), {**MIDI, **origin, "X-Filename": "a.mid"})
    assert status == 200 and primer["primer"].startswith("primer-")
    assert studio.queue.wait(studio.queue.get(job["job"]), 60)


def test_allow_host_adds_a_name(studio):
    from starlette.testclient import TestClient

    from perceiver_ar_music.studio.server import create_app

    named = TestClient(create_app(studio, allowed_hosts=("studio.lan",)), base_url="http://studio.lan:8000")
    assert named.get("/api/takes").status_code == 200
    other = TestClient(create_app(studio, allowed_hosts=("studio.lan",)), base_url="http://other.lan:8000")
    assert other.get("/api/takes").status_code == 403
    response = named.post("/api/generate", content=b"{", headers={**JSON, "Origin": "http://studio.lan:8000"})
    assert response.status_code == 400 and response.json()["error"] == "the request is not JSON"


def test_pages_cannot_be_framed(server):
    raw = exchange(server, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nConnection: close\r\n\r\n".encode())
    head = raw.split(b"\r\n\r\n", 1)[0].lower()
    assert status_of(raw) == 200 and b"x-frame-options: deny" in head and b"frame-ancestors 'none'" in head


# ----- 11: bad JSON answers 400, never 500 -----
BAD_JSON = [
    (b'{"settings":"length=4"}', "settings: expected an object"),
    (b'{"settings":["length"]}', "settings: expected an object"),
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    (b'{"settings":' * 3000 + b"{}" + b"}" * 3000, "nested too deeply"),
    (b'{"settings":{"length":[1]}}', "--length"),
    (b'{"settings":{"length":{"a":1}}}', "--length"),
    (b'{"settings":{"no_guards":"yes"}}', "--no-guards"),
    (b'{"primer":5}', "primer: expected a name"),
    (b'{"primer":"../../etc/passwd"}', "no such primer"),
    (b'{"x":1}', "unknown field"),
    (b"[]", "not a JSON object"),
    (b"null", "not a JSON object"),
    (b'"text"', "not a JSON object"),
    (b"\xff\xfe", "not JSON"),
    (b"", "not JSON"),
    (b'{"settings":{"length":1e999}}', "--length"),
    (b'{"settings":{"seed":NaN}}', "--seed"),
]


@pytest.mark.parametrize("body, words", BAD_JSON)
def test_bad_json_answers_400(server, body, words):
    status, answer = request(server, "POST", "/api/generate", body, JSON)
    assert status == 400 and words in answer["error"] and "\n" not in answer["error"], (status, answer)


# ----- 5 and 13: bodies that lie about their size -----
def test_content_length_lies_are_refused_before_reading(server, studio):
    head = f"POST /api/primer HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/octet-stream\r\n"
    for length in ("-1", "abc", "1e9", "0x10", "+5", ""):
        raw = exchange(server, (head + f"Content-Length: {length}\r\n\r\n").encode() + b"MThd" + bytes(60_000), wait=5)
        assert status_of(raw) == 400, (length, raw[:100])
    # a declared size over the limit answers 413 at once, without waiting for the body
    started = time.monotonic()
    raw = exchange(server, (head + f"Content-Length: {10**12}\r\n\r\n").encode(), wait=5)
    assert status_of(raw) == 413 and "too large" in body_of(raw)["error"] and time.monotonic() - started < 2


def chunked(data: bytes, size: int = 4096) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size]) for i in range(0, len(data), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def test_chunked_bodies_are_read_as_bodies_and_limited(server, studio):
    head = (f"POST /api/primer HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/octet-stream\r\n"
            "X-Filename: chunked.mid\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    raw = exchange(server, head + chunked(EXAMPLE.read_bytes(), 100))
    assert status_of(raw) == 200 and body_of(raw)["label"] == "chunked.mid"
    raw = exchange(server, head + chunked(b"MThd" + bytes(400_000)), wait=10)
    assert status_of(raw) == 413 and "too large" in body_of(raw)["error"]
    # a request hidden in a chunked body is part of the body, never served
    hidden = f"GET /api/config HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
    smuggle = (f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
               "Transfer-Encoding: chunked\r\n\r\n").encode() + chunked(hidden)
    raw = exchange(server, smuggle, wait=4)
    assert status_of(raw) == 400 and raw.count(b"HTTP/1.1 ") == 1 and b"checkpoint" not in raw
    both = (f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n").encode() + chunked(hidden)
    raw = exchange(server, both, wait=4)
    assert raw.count(b"HTTP/1.1 ") == 1 and b"checkpoint" not in raw


# ----- 9 and 10: many clients, idle and slow clients -----
def test_parallel_clients_are_all_answered(server):
    def upload(index: int) -> int:
        return request(server, "POST", "/api/primer", EXAMPLE.read_bytes(), {**MIDI, "X-Filename": f"p{index}.mid"})[0]

    def config(index: int) -> int:
        return request(server, "GET", "/api/config")[0]

    with ThreadPoolExecutor(max_workers=40) as pool:
        statuses = list(pool.map(upload, range(20))) + list(pool.map(config, range(40)))
    assert statuses == [200] * 60


def test_idle_and_slow_connections_are_closed(server):
    threads_before = threading.active_count()
    silent = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(100)]
    trickle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    short_body = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    short_body.sendall((f"POST /api/primer HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                        "Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\nMThd").encode())
    try:
        assert threading.active_count() - threads_before < 5  # connections are not threads
        deadline = time.monotonic() + HEAD_SECONDS + 2
        for byte in b"GET /api/config HTTP/1.1\r\n":  # a byte at a time, never finishing the head
            if time.monotonic() > deadline:
                break
            try:
                trickle.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.2)
        for sock in silent + [trickle]:
            assert read_until_quiet(sock, HEAD_SECONDS + 5) == b""  # closed by the server, answer-less
        raw = read_until_quiet(short_body, BODY_SECONDS + 5)
        assert status_of(raw) == 408 and "did not arrive" in body_of(raw)["error"]
    finally:
        for sock in silent + [trickle, short_body]:
            sock.close()
    assert request(server, "GET", "/api/config")[0] == 200


# ----- 16: a full queue, clients that leave -----
def test_a_full_queue_answers_429(server, studio, monkeypatch):
    monkeypatch.setattr(studio.queue, "max_waiting", 0)
    status, answer = request(server, "POST", "/api/generate", GOOD_JOB, JSON)
    assert status == 429 and "already waiting" in answer["error"]


def test_clients_that_leave_leave_no_traceback(server, studio, caplog, capfd):
    big = studio.store.folder / "take-0998.wav"
    big.write_bytes(bytes(8 * 2**20))
    details = big.with_suffix(".json")
    details.write_text(json.dumps({"name": "take-0998"}))
    try:
        with caplog.at_level(logging.DEBUG):
            for _ in range(5):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                sock.sendall(f"GET /files/take-0998.wav HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
                sock.recv(100)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset
                sock.close()
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Length: 10\r\n".encode())
            sock.close()
            time.sleep(1)
            assert request(server, "GET", "/api/config")[0] == 200
    finally:
        big.unlink()
        details.unlink()
    logged = "\n".join(record.getMessage() + str(record.exc_info or "") for record in caplog.records)
    printed = capfd.readouterr().err
    for words in ("Traceback", "BrokenPipe", "ConnectionReset", "Exception in ASGI"):
        assert words not in logged and words not in printed


# ----- 3: MIDI bombs, uploaded or previewed -----
def test_midi_bombs_are_refused_in_milliseconds(server, studio):
    from tests.test_midi_bombs import BOMBS

    kept = sorted(studio.store.folder.glob("primer-*"))
    for name, data in BOMBS.items():
        started = time.monotonic()
        status, answer = request(server, "POST", "/api/primer", data, {**MIDI, "X-Filename": f"{name}.mid"})
        assert status == 400 and answer["error"].startswith(f"primer {name}.mid: too long"), answer
        assert time.monotonic() - started < 1.0
    assert sorted(studio.store.folder.glob("primer-*")) == kept
    # a bomb placed in the folder under a primer's name (as if kept by an older studio) is refused too
    bomb = studio.store.folder / "primer-0999.mid"
    bomb.write_bytes(BOMBS["late_note"])
    try:
        for path in ("/api/primer?primer=primer-0999.mid", "/api/primer/roll.png?primer=primer-0999.mid"):
            status, answer = request(server, "GET", path)
            assert status == 400 and "too long" in answer["error"]
        status, answer = request(server, "POST", "/api/generate", b'{"primer":"primer-0999.mid"}', JSON)
        assert status == 400 and "too long" in answer["error"]
    finally:
        bomb.unlink()


# ----- 14 and 15: job ids, a finished job's figures -----
def test_job_ids_are_random_and_never_restart():
    first, second = JobQueue(lambda job: None), JobQueue(lambda job: None)
    ids = [queue.submit(n).id for queue in (first, second) for n in range(3)]
    assert len(set(ids)) == 6 and all(re.fullmatch(r"job-[0-9a-f]{16}", job_id) for job_id in ids)
    first.close(5), second.close(5)


def test_a_finished_jobs_tokens_per_second_stays(server, studio):
    status, job = request(server, "POST", "/api/generate", GOOD_JOB, JSON)
    assert status == 200
    assert studio.queue.wait(studio.queue.get(job["job"]), 60)
    first = request(server, "GET", f"/api/jobs/{job['job']}")[1]
    time.sleep(1.0)
    second = request(server, "GET", f"/api/jobs/{job['job']}")[1]
    assert first["state"] == "done" and first["tokens"] > 0 and first["tokens_per_second"] > 0
    assert second["tokens_per_second"] == first["tokens_per_second"]


def test_stop_works_while_a_job_is_being_prepared(studio):
    """A job stopped before sampling starts (its prompt still being read) makes nothing."""
    from perceiver_ar_music.studio.jobs import Job

    job = Job("job-test", studio.submit({"settings": {"length": 4}}).request)
    job.stop_event.set()
    started = time.monotonic()
    assert studio._run(job) == [] and time.monotonic() - started < 5


def test_a_finished_jobs_tokens_are_those_its_take_kept(server, studio):
    """A seconds budget is checked every few tokens: the status of a finished job gives the tokens
    the take kept (and those drawn apart), and the take's seconds are its statistics' seconds."""
    form = json.loads(GOOD_JOB)
    form["settings"] = {**form.get("settings", {}), "seconds": 1, "length": "", "seed": 4}
    status, job = request(server, "POST", "/api/generate", json.dumps(form).encode(), JSON)
    assert status == 200
    assert studio.queue.wait(studio.queue.get(job["job"]), 60)
    done = request(server, "GET", f"/api/jobs/{job['job']}")[1]
    take = json.loads((studio.store.folder / f"{done['takes'][0]}.json").read_text())
    assert done["state"] == "done" and done["tokens"] == take["new_tokens"] < done["drawn"]  # (seed 4: it overshot)
    stats = dict(take["stats"])
    assert f"{take['new_seconds']:.1f} s" == stats["duration"]


# ----- WebSockets: the same Host and Origin rules at the handshake -----
@pytest.mark.parametrize("path", ["/ws/duet", "/ws/jobs/job-0000000000000000"])
@pytest.mark.parametrize("headers, refused", [
    ({"Origin": "http://attacker.example"}, True),  # another site's page
    ({"Origin": "null"}, True),  # a sandboxed frame or a file:// page
    ({"Host": "attacker.example", "Origin": "http://attacker.example"}, True),  # DNS rebinding
    ({"Sec-Fetch-Site": "cross-site"}, True),
    ({}, False),  # not a browser (no Origin): a program on this machine
    ({"Origin": "SELF"}, False),  # the studio's own page
])
def test_websockets_from_other_sites_are_refused(server, path, headers, refused):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    own = f"127.0.0.1:{server.port}"
    headers = {key: value.replace("SELF", f"http://{own}") for key, value in headers.items()}
    host = headers.pop("Host", "127.0.0.1")
    url = f"ws://{host}:{server.port}{path}"  # (the Host header names it; the socket goes to 127.0.0.1)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        with connect(url, sock=sock, additional_headers=headers, origin=None, open_timeout=10) as channel:
            first = channel.recv(timeout=10) if path == "/ws/duet" else None
        assert not refused, "a cross-site WebSocket was accepted"
        assert first is None or json.loads(first)["type"] == "ready"
    except InvalidStatus as exc:
        assert refused and exc.response.status_code == 403, exc
