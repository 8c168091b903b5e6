"""Duet mode and playback while generating: the note stream, the duet's turns over its WebSocket
(answer, interruption, save, limits), a take's notes streamed while it is decoded, and the page
end to end in headless Chromium with a test-only Web MIDI keyboard.

STUDIO_SCREENSHOT_DUET=docs/duet.png (with STUDIO_CHECKPOINT=checkpoints/default) also saves a
screenshot of the duet page for the README.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
from websockets.sync.client import connect

from perceiver_ar_music.data.events import ids_to_notes
from perceiver_ar_music.data.tokenizer import load_tokenizer
from perceiver_ar_music.sampling.continuation import load_primer
from perceiver_ar_music.studio.duet import DuetLimits
from perceiver_ar_music.studio.engine import Studio
from perceiver_ar_music.studio.notestream import NoteStream
from perceiver_ar_music.tools.browser import WEB_MIDI_STAND_IN, Browser
from tests.test_studio import chromium
from tests.tiny import serving, studio_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "primer.mid"


# ----- the note stream -----
def test_the_note_stream_gives_the_decoders_notes_piece_by_piece():
    tokenizer = load_tokenizer()
    ids = load_primer(tokenizer, EXAMPLE)
    reference = ids_to_notes(ids, tokenizer.vocab)
    reference = reference[reference[:, 2] > reference[:, 1]]
    rng = np.random.default_rng(0)
    stream, events, at = NoteStream(tokenizer.vocab), [], 0
    while at < len(ids):
        size = int(rng.integers(1, 12))
        events += stream.feed(ids[at:at + size])
        at += size
        assert len(stream.ids) < 200  # decoded again only from the oldest sounding note
    events += stream.close()
    notes: dict[int, list[float]] = {}
    for event in events:
        if "pitch" in event:
            assert event["id"] not in notes
            notes[event["id"]] = [event["pitch"], event["start"], event["end"], event["velocity"]]
        else:
            assert notes[event["id"]][2] is None  # an end only for a note sent sounding
            notes[event["id"]][2] = event["end"]
    got = np.array([notes[key] for key in sorted(notes)], dtype=float)
    assert got.shape == reference.shape and np.allclose(got, reference, atol=1e-6)


def test_a_note_waits_for_its_velocity_and_for_time_to_move():
    """A note is sent once its velocity is known and time has moved past its start (a note
    released at the instant it is struck makes no sound, and the take's MIDI file leaves it out)."""
    vocab = load_tokenizer().vocab
    stream = NoteStream(vocab)
    assert stream.feed([vocab.note_on_id[60]]) == []
    velocity = max(range(len(vocab.velocity)), key=lambda i: vocab.velocity[i])  # the loudest bin
    assert stream.feed([velocity]) == []  # it could still end here
    (event,) = stream.feed([vocab.shift_id[50]])
    assert (event["pitch"], event["velocity"], event["start"], event["end"]) == (60, vocab.velocity[velocity], 0.0, None)
    assert stream.feed([vocab.note_off_id[60]]) == [{"id": 0, "end": 0.5}]
    # struck and released at once: never sent; the next note keeps its place
    assert stream.feed([vocab.note_on_id[62], velocity, vocab.note_off_id[62], vocab.note_on_id[64], velocity]) == []
    (event,) = stream.feed([vocab.shift_id[10]])
    assert (event["id"], event["pitch"], event["start"]) == (2, 64, 0.5)


# ----- the duet over its WebSocket -----
@pytest.fixture(scope="module")
def studio_server(tmp_path_factory):
    studio = Studio(studio_checkpoint(tmp_path_factory.mktemp("ckpt")), tmp_path_factory.mktemp("duet") / "takes",
                    device="cpu")
    try:
        with serving(studio) as url:
            studio.piano.ready.wait(120)
            yield url, studio
    finally:
        studio.close()


def messages(socket, until: str, timeout: float = 60) -> list[dict]:
    """Messages up to and including the first of type `until`."""
    seen, deadline = [], time.monotonic() + timeout
    while True:
        message = json.loads(socket.recv(timeout=max(0.1, deadline - time.monotonic())))
        seen.append(message)
        if message["type"] == until:
            return seen


def play(socket, pitches, start: float, step: float = 0.2) -> float:
    t = start
    for pitch in pitches:
        socket.send(json.dumps({"type": "on", "pitch": pitch, "velocity": 80, "t": t}))
        socket.send(json.dumps({"type": "off", "pitch": pitch, "t": t + step * 0.9}))
        t += step
    return t


def duet_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/ws/duet"


def test_a_duet_answers_stops_when_the_player_plays_and_saves(studio_server):
    url, studio = studio_server
    with connect(duet_url(url)) as socket:
        assert json.loads(socket.recv(timeout=30))["type"] == "ready"
        socket.send(json.dumps({"type": "settings", "silence": 0.4, "answer_seconds": 3}))
        assert messages(socket, "settings")[-1]["settings"]["silence"] == 0.4
        end = play(socket, [60, 64, 67, 72], 0.0)
        first = messages(socket, "answer")[-1]
        assert first["start"] == pytest.approx(end - 0.2 + 0.18 + 0.4, abs=0.02)  # the last key up + the silence
        turn = messages(socket, "answer_end")
        notes = [note for message in turn if message["type"] == "notes" for note in message["notes"] if "pitch" in note]
        assert notes and notes[0]["start"] == 0.0  # it answers at once
        assert all(note["start"] < 3 for note in notes) and turn[-1]["stopped_by"] == "length"

        # A longer answer, cut by the player: the duet keeps what sounded before the key.
        socket.send(json.dumps({"type": "settings", "answer_seconds": 60}))
        messages(socket, "settings")
        t = play(socket, [62, 65], first["start"] + 4)
        answer = messages(socket, "answer")[-1]
        messages(socket, "notes")
        cut = answer["start"] + 0.5
        socket.send(json.dumps({"type": "on", "pitch": 70, "velocity": 90, "t": cut}))
        stopped = messages(socket, "answer_end")[-1]
        assert stopped["stopped_by"] == "player" and stopped["seconds"] == pytest.approx(0.5)
        socket.send(json.dumps({"type": "off", "pitch": 70, "t": cut + 0.2}))
        socket.send(json.dumps({"type": "save"}))
        saved = messages(socket, "saved")[-1]["take"]
    midi = pretty_midi.PrettyMIDI(str(studio.store.folder / saved["midi"]))
    player, model = midi.instruments
    assert (player.name, model.name) == ("player", "model") and len(player.notes) == 7
    assert model.notes and saved["model_notes"] == len(model.notes) and saved["kind"] == "duet"
    second = [n for n in model.notes if n.start >= answer["start"] - 0.01]
    assert all(n.start < cut and n.end <= cut + 0.01 for n in second)  # nothing after the player's key
    assert (studio.store.folder / saved["roll"]).is_file()
    assert saved["name"] in [take["name"] for take in studio.store.takes()]


def test_the_duets_inputs_are_limited_before_any_work(studio_server, monkeypatch):
    url, studio = studio_server
    monkeypatch.setattr(studio, "duet_limits", DuetLimits(max_notes=3, max_seconds=100))
    with connect(duet_url(url)) as socket:
        messages(socket, "ready")
        bad = [
            ("x" * 3000, "2048 bytes"), ("{nope", "JSON"), ("[1]", '"type"'), ('{"type": "dance"}', "unknown duet message"),
            ('{"type": "on", "pitch": 5, "velocity": 80, "t": 0}', "pitch: a piano key"),
            ('{"type": "on", "pitch": 60, "velocity": 0, "t": 0}', "velocity: 1..127"),
            ('{"type": "on", "pitch": 60, "velocity": 80, "t": 1e9}', "too long"),
            ('{"type": "on", "pitch": 60, "velocity": 80, "t": NaN}', "t: expected a number"),
            ('{"type": "on", "pitch": 60, "velocity": 80, "t": 0, "x": 1}', "unknown field"),
            ('{"type": "settings", "silence": 0.01}', "silence: must be between"),
            ('{"type": "settings", "answer_seconds": 1000}', "answer_seconds: must be between"),
            ('{"type": "settings", "candidates": 2.5}', "whole number"),
            ('{"type": "settings", "checkpoint": "/etc"}', "unknown duet setting"),
            ('{"type": "save"}', "nothing to save"),
        ]
        for text, words in bad:
            socket.send(text)
            error = messages(socket, "error", 10)[-1]["error"]
            assert words in error, (text, error)
        socket.send(json.dumps({"type": "settings", "silence": 10}))  # (no answer while this test plays)
        messages(socket, "settings")
        play(socket, [60, 62, 64], 0.0)
        socket.send(json.dumps({"type": "on", "pitch": 65, "velocity": 80, "t": 1.0}))
        assert "the most it may have" in messages(socket, "error", 10)[-1]["error"]
    # Messages past the rate limit are refused, and the connection stays usable.
    with connect(duet_url(url)) as socket:
        messages(socket, "ready")
        for _ in range(260):
            socket.send(json.dumps({"type": "ping", "t": 1}))
        answers = [json.loads(socket.recv(timeout=10)) for _ in range(260)]
        assert sum(m["type"] == "error" and "too many messages" in m["error"] for m in answers) >= 50


# ----- playback while generating -----
def test_a_takes_notes_stream_while_it_is_decoded(studio_server):
    url, studio = studio_server
    job = studio.submit({"primer": "example", "settings": {"primer_seconds": 6, "seconds": 20, "seed": 3}})
    received, done_at_first = [], None
    with connect(url.replace("http://", "ws://") + f"/ws/jobs/{job.id}") as socket:
        while True:
            message = json.loads(socket.recv(timeout=120))
            if message["type"] == "notes" and done_at_first is None and any("pitch" in n for n in message["notes"]):
                done_at_first = job.state
            received.append(message)
            if message["type"] == "end":
                break
    assert done_at_first == "running"  # the first notes came while it was being decoded
    assert studio.queue.wait(job, 60) and job.state == "done"
    take = json.loads((studio.store.folder / f"{job.result[0]}.json").read_text())
    notes = {}
    for message in received[:-1]:
        for event in message["notes"]:
            if "pitch" in event:
                notes[event["id"]] = (event["pitch"], event["start"])
    continuation = pretty_midi.PrettyMIDI(str(studio.store.folder / take["midi"])).instruments[1].notes
    written = sorted((n.pitch, round(n.start - take["boundary_seconds"], 2)) for n in continuation)
    streamed = sorted((p, round(s, 2)) for p, s in notes.values())
    # (the MIDI file's reading of a random model's overlapping same-pitch notes may differ a little)
    assert len(set(streamed) & set(written)) >= 0.9 * max(len(written), len(streamed)) > 0


def test_a_job_stream_for_no_such_job_is_closed(studio_server):
    url, _ = studio_server
    with connect(url.replace("http://", "ws://") + "/ws/jobs/job-0000000000000000") as socket:
        with pytest.raises(Exception):
            socket.recv(timeout=10)
        assert socket.close_code == 4404


# ----- the page, end to end -----
FAKE_MIDI = WEB_MIDI_STAND_IN


def test_the_duet_page_end_to_end(studio_server, tmp_path, monkeypatch):
    url, studio = studio_server
    monkeypatch.setattr(studio, "duet_seed", 0)  # the tiny random model's answers, the same every run
    browser = Browser(chromium(), tmp_path / "profile")
    try:
        browser.open(url + "/", before=FAKE_MIDI)
        browser.wait("document.body && document.body.dataset.ready === '1'")
        browser.js("document.querySelector('#tabs button[data-tab=duet]').click()")
        assert browser.js("document.getElementById('duet-panel').checkVisibility() && "
                          "!document.getElementById('primer-panel').checkVisibility()")
        browser.js("document.getElementById('duet-silence').value = '0.5'; document.getElementById('duet-length').value = '30'")
        browser.js("document.getElementById('duet-midi').click()")
        assert browser.wait("document.getElementById('duet-midi-status').textContent") == "listening to Test keyboard"
        browser.wait("document.body.dataset.duet === 'ready' && StudioPiano.context().state === 'running'")
        browser.wait("StudioPiano.state.kind !== 'none'")
        # A phrase on the MIDI keyboard: each key sounds at once.
        phrase = [60, 64, 67, 64, 72]
        browser.js("""(async () => { for (const p of %s) { __midi.send([0x90, p, 90]);
            await new Promise(r => setTimeout(r, 150)); __midi.send([0x80, p, 0]); await new Promise(r => setTimeout(r, 30)); } })()""" % phrase)
        assert browser.js("StudioPiano.state.scheduled") == len(phrase)
        # The pause: the answer arrives and is scheduled on the running audio clock.
        browser.wait("Duet.state.answer && Duet.state.answer.voices.size >= 3", 60)
        assert browser.js("StudioPiano.context().state") == "running"
        assert browser.js("Duet.state.notes.filter(n => n.part === 'model').length") >= 3
        assert browser.js("Duet.state.stats.browser.length") == 1
        # Play again: the answer stops at once (scheduled notes never sound) and the model listens.
        answer = browser.js("Duet.state.answer.number")
        browser.js("__midi.send([0x90, 62, 80])")
        assert browser.js("Duet.state.answer") is None
        assert browser.js(f"Duet.state.cancelled.has({answer})")
        assert browser.js("[...StudioPiano.state.voices].filter(v => v.note && v.note.part === 'model' && !v.ended && "
                          "(v.when > StudioPiano.context().currentTime || !v.released)).length") == 0
        browser.js("__midi.send([0x80, 62, 0])")
        # Computer keys play too (a home-row key is a C).
        browser.js("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'a'}))")
        assert browser.js("Duet.state.held.has(60)")
        browser.js("document.dispatchEvent(new KeyboardEvent('keyup', {key: 'a'}))")
        browser.wait("Duet.state.answer && Duet.state.answer.voices.size >= 1", 60)
        if os.environ.get("STUDIO_SCREENSHOT_DUET"):
            time.sleep(3)
            browser.screenshot(Path(os.environ["STUDIO_SCREENSHOT_DUET"]))
        # Save: one MIDI file with both parts, listed with the takes.
        browser.js("document.getElementById('duet-save').click()")
        name = browser.wait("(() => { const a = document.querySelector('#duet-saved a'); return a && a.textContent; })()", 60)
        browser.wait(f"document.getElementById({json.dumps(name.removesuffix('.mid'))}) !== null", 60)
        midi = pretty_midi.PrettyMIDI(str(studio.store.folder / name))
        assert [len(track.notes) > 0 for track in midi.instruments] == [True, True]
        assert len(midi.instruments[0].notes) == len(phrase) + 2
    finally:
        browser.close()


def test_a_take_is_heard_while_it_is_made(studio_server, tmp_path):
    url, studio = studio_server
    browser = Browser(chromium(), tmp_path / "profile")
    try:
        browser.open(url + "/")
        browser.wait("document.body && document.body.dataset.ready === '1'")
        browser.js("document.querySelector('input[name=primer-source][value=example]').click()")
        browser.wait("document.getElementById('primer-info').textContent.includes('notes')")
        browser.js("document.getElementById('setting-seconds').value = '60'; document.getElementById('setting-seed').value = '2'")
        browser.js("document.getElementById('generate').click()")
        browser.wait("live.scheduled > 0", 60)
        # notes were scheduled while the take was still being made
        assert browser.js("fetch(`/api/jobs/${state.job}`).then(r => r.json()).then(j => j.state)") == "running"
        first = browser.js("live.firstAt")
        assert first["sounds_ms"] < 10_000  # (about a second on an idle machine: docs/benchmarks.md)
        assert browser.js("StudioPiano.context().state") == "running"
        browser.js("document.getElementById('stop').click()")
        browser.wait("document.querySelectorAll('.take').length >= 1", 120)
    finally:
        browser.close()
