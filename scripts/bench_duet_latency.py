"""Duet latency (issue 28): from the end of the player's pause to the first answering note.

Server side: a studio with the model (default: the bundled one) on `--threads` CPU threads; a
client plays a phrase over /ws/duet, pauses, and the studio measures, per turn, the time from the
end of the pause (the last key up + the silence) to its first note event written to the socket
(`DuetSession.latencies_ms`). The client then plays the next phrase, which also stops the answer.
`--lead 0` turns the speculative decoding off (decoding starts when the pause ends): the cold cost.

Browser side (`--browser`): the same page in headless Chromium, played with a Web MIDI stand-in;
per answer the page records its handling of the first notes message, the scheduling margin
(`duet.js` LOOKAHEAD) and the audio context's own base and output latency; the socket's one-way
time is taken as half the round trip of pings.

    .venv/bin/python scripts/bench_duet_latency.py --threads 2 --turns 50 --browser --json out/duet_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from perceiver_ar_music.tools import REPO as ROOT

PHRASES = [  # (pitch, seconds) pairs: short phrases in C, a player's kind of input
    [(60, 0.25), (64, 0.25), (67, 0.25), (72, 0.5), (71, 0.25), (67, 0.25), (64, 0.5)],
    [(62, 0.3), (65, 0.3), (69, 0.3), (72, 0.6), (70, 0.3), (67, 0.6)],
    [(55, 0.2), (59, 0.2), (62, 0.2), (67, 0.4), (65, 0.2), (62, 0.2), (59, 0.4), (60, 0.8)],
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def start_studio(checkpoint: Path, out: Path):
    from perceiver_ar_music.studio.engine import Studio
    from perceiver_ar_music.studio.listen import serve

    studio = Studio(checkpoint, out, device="cpu")
    ready, holder = threading.Event(), {}

    def started(listening):
        holder["server"] = listening
        ready.set()

    threading.Thread(target=serve, args=(studio, "127.0.0.1", 0), kwargs={"quiet": True, "ready": started},
                     daemon=True).start()
    if not ready.wait(30):
        raise SystemExit("the studio did not start")
    studio.piano.ready.wait(300)
    return studio, holder["server"]


def server_turns(url: str, turns: int, silence: float, answer_seconds: float) -> list[float]:
    """Play `turns` phrases, each answered; the studio's own latency figures (ms)."""
    from websockets.sync.client import connect

    def until(socket, kind: str) -> dict:
        while True:
            message = json.loads(socket.recv(timeout=60))
            if message["type"] == kind:
                return message
            if message["type"] == "error":
                raise SystemExit(f"the studio said: {message['error']}")

    with connect(url.replace("http://", "ws://") + "/ws/duet", max_size=2**22) as socket:
        until(socket, "ready")
        socket.send(json.dumps({"type": "settings", "silence": silence, "answer_seconds": answer_seconds}))
        until(socket, "settings")
        t = 0.0
        for turn in range(turns):
            for pitch, length in PHRASES[turn % len(PHRASES)]:
                socket.send(json.dumps({"type": "on", "pitch": pitch, "velocity": 80, "t": round(t, 3)}))
                socket.send(json.dumps({"type": "off", "pitch": pitch, "t": round(t + length * 0.9, 3)}))
                t += length
            answer = until(socket, "answer")
            until(socket, "notes")
            time.sleep(0.3)  # listen a little, then play again (which stops the answer)
            t = max(t, answer["start"]) + 0.3 + 0.5
        socket.send(json.dumps({"type": "stats"}))
        return until(socket, "stats")["latencies_ms"]


def browser_turns(url: str, turns: int, silence: float) -> dict[str, list[float]]:
    """What the page adds, per answer, in headless Chromium (see the module docstring)."""
    from perceiver_ar_music.tools.browser import WEB_MIDI_STAND_IN as FAKE_MIDI, Browser, require_chromium as chromium

    with tempfile.TemporaryDirectory() as profile:
        browser = Browser(chromium(), Path(profile))
        try:
            browser.open(url + "/", before=FAKE_MIDI)
            browser.wait("document.body && document.body.dataset.ready === '1'", 60)
            browser.js("document.querySelector('#tabs button[data-tab=duet]').click()")
            browser.js(f"document.getElementById('duet-silence').value = '{silence}'; document.getElementById('duet-length').value = '4'")
            browser.js("document.getElementById('duet-midi').click()")
            browser.wait("document.body.dataset.duet === 'ready' && StudioPiano.context().state === 'running'", 60)
            browser.wait("StudioPiano.state.kind !== 'none'", 300)
            rtts = []
            for turn in range(turns):
                phrase = [pitch for pitch, _ in PHRASES[turn % len(PHRASES)]]
                browser.js("""(async () => { for (const p of %s) { __midi.send([0x90, p, 80]);
                    await new Promise(r => setTimeout(r, 120)); __midi.send([0x80, p, 0]); } })()""" % phrase)
                browser.wait(f"Duet.state.stats.browser.length >= {turn + 1}", 60)
                browser.js("Duet.state.stats.rtt = null; Duet.send({type: 'ping', t: performance.now()})")
                rtts.append(browser.wait("Duet.state.stats.rtt", 10))
                time.sleep(0.3)
            stats = browser.js("Duet.state.stats.browser")
        finally:
            browser.close()
    figures = {key: [row[key] for row in stats] for key in stats[0]}
    figures["socket_one_way_ms"] = [rtt / 2 for rtt in rtts]
    return figures


def take_first_notes(url: str, runs: int) -> list[dict]:
    """Playback while generating: from pressing Generate (the example primer, 30 s, texture on) to
    the first note arriving and to its sounding, in headless Chromium (ms)."""
    from perceiver_ar_music.tools.browser import Browser, require_chromium as chromium

    found = []
    with tempfile.TemporaryDirectory() as profile:
        browser = Browser(chromium(), Path(profile))
        try:
            browser.open(url + "/")
            browser.wait("document.body && document.body.dataset.ready === '1'", 60)
            browser.js("document.querySelector('input[name=primer-source][value=example]').click()")
            browser.wait("document.getElementById('primer-info').textContent.includes('notes')", 60)
            browser.js("document.getElementById('setting-seconds').value = '30'")
            for run in range(runs):
                takes = browser.js("document.querySelectorAll('.take').length")
                browser.js(f"document.getElementById('setting-seed').value = '{run}'; document.getElementById('generate').click()")
                found.append(browser.wait("live.firstAt", 60))
                browser.js("document.getElementById('stop').click()")
                browser.wait(f"document.querySelectorAll('.take').length > {takes}", 120)
        finally:
            browser.close()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--silence", type=float, default=1.5)
    parser.add_argument("--answer-seconds", type=float, default=4.0)
    parser.add_argument("--lead", type=float, default=None,
                        help="seconds of speculative decoding before the pause ends (default: the studio's; 0: none)")
    parser.add_argument("--browser", action="store_true", help="also measure the page in headless Chromium")
    parser.add_argument("--browser-turns", type=int, default=12)
    parser.add_argument("--take-runs", type=int, default=5, help="takes timed from Generate to their first note")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    os.environ["PERCEIVER_MUSIC_THREADS"] = str(args.threads)  # the studio's thread choice, before each duet
    import torch

    from perceiver_ar_music.studio import duet

    torch.set_num_threads(args.threads)
    if args.lead is not None:
        duet.SPECULATE_LEAD_S = args.lead
    with tempfile.TemporaryDirectory() as out:
        studio, server = start_studio(args.checkpoint, Path(out) / "takes")
        try:
            latencies = server_turns(server.url, args.turns, args.silence, args.answer_seconds)
            result = {"threads": args.threads, "turns": len(latencies), "silence": args.silence,
                      "lead_s": duet.SPECULATE_LEAD_S, "checkpoint": str(args.checkpoint),
                      "server_ms": {"median": statistics.median(latencies), "p95": percentile(latencies, 95),
                                    "max": max(latencies), "all": latencies}}
            print(f"server, pause end -> first note sent, {len(latencies)} turns on {args.threads} thread(s), "
                  f"lead {duet.SPECULATE_LEAD_S:g} s: median {result['server_ms']['median']:.1f} ms, "
                  f"p95 {result['server_ms']['p95']:.1f} ms, max {max(latencies):.1f} ms")
            if args.browser:
                figures = browser_turns(server.url, args.browser_turns, args.silence)
                result["browser_ms"] = {key: {"median": statistics.median(v), "p95": percentile(v, 95)}
                                        for key, v in figures.items()}
                adds = sum(stats["median"] for stats in result["browser_ms"].values())
                result["browser_adds_median_ms"] = adds
                for key, stats in result["browser_ms"].items():
                    print(f"browser {key}: median {stats['median']:.2f} ms, p95 {stats['p95']:.2f} ms")
                print(f"the browser adds {adds:.1f} ms (sum of medians); pause end -> first note sounding: "
                      f"{result['server_ms']['median'] + adds:.1f} ms median")
                takes = take_first_notes(server.url, args.take_runs)
                result["take_first_note_ms"] = {key: {"median": statistics.median(r[key] for r in takes),
                                                      "max": max(r[key] for r in takes)} for key in takes[0]}
                for key, stats in result["take_first_note_ms"].items():
                    print(f"a take, Generate -> first note {key.removesuffix('_ms')}: median {stats['median']:.0f} ms, "
                          f"max {stats['max']:.0f} ms ({len(takes)} takes)")
        finally:
            server.shutdown()
            studio.close()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
