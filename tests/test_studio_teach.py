"""The studio's "Teach it your music": sets of files (MIDI and zips, with their limits), fine-tuning
in the studio's queue (progress, stop, the new model in the list, takes that name their model),
what a restarted studio says of unfinished work, the routes' checks, and the whole flow in
headless Chromium (upload, teach, generate with the new model, reload, restart).

STUDIO_TEACH_SCREENSHOT=docs/teach.png with STUDIO_CHECKPOINT=checkpoints/default,
STUDIO_TEACH_FILES=FOLDER (MIDI files to teach) and STUDIO_TEACH_MINUTES=M also saves a
screenshot of the panel for the README.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import time
import zipfile
from pathlib import Path

import pytest
from websockets.sync.client import connect

from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.studio import teach
from perceiver_ar_music.studio.engine import Studio
from perceiver_ar_music.studio.jobs import DONE, FAILED, QUEUED
from perceiver_ar_music.tools import midi_factory
from perceiver_ar_music.tools.browser import Browser, find_chromium
from tests.tiny import serving, studio_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return studio_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("songs")
    paths = []
    for i in range(4):
        midi_factory.write_performance(folder / f"song{i}.mid", seed=i, num_notes=150)
        paths.append(folder / f"song{i}.mid")
    return paths


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def studio(tmp_path, checkpoint):
    made = Studio(checkpoint, tmp_path / "studio", device="cpu")
    yield made
    made.close()


def wait(studio: Studio, job, timeout: float = 120) -> None:
    assert studio.queue.wait(job, timeout), "the job did not finish"


# ----- sets of files -----
def test_a_set_takes_midi_files_and_zips_and_refuses_what_it_cannot_use(studio, songs, tmp_path):
    teacher = studio.teacher
    set_id = teacher.new_set()["set"]
    answer = teacher.add(set_id, songs[0].read_bytes(), "My Song (take 1).mid")
    assert answer["added"] == ["My Song _take 1_.mid"] and answer["skipped"] == []
    midi_factory.write_no_notes(tmp_path / "silent.mid")
    archive = zipped({"album/a.mid": songs[1].read_bytes(), "../../escape.mid": songs[2].read_bytes(),
                      "album/silent.mid": (tmp_path / "silent.mid").read_bytes(), "cover.jpg": b"\xff\xd8",
                      "My Song (take 1).mid": songs[3].read_bytes()})
    answer = teacher.add(set_id, archive, "album.zip")
    assert sorted(answer["added"]) == ["My Song _take 1_-2.mid", "a.mid", "escape.mid"]
    reasons = dict(answer["skipped"])
    assert set(reasons) == {"silent.mid", "cover.jpg"} and "no notes" in reasons["silent.mid"]
    folder = teacher.lessons / set_id
    assert sorted(p.name for p in folder.iterdir()) == sorted(answer["files"]) and len(answer["files"]) == 4
    assert not (teacher.lessons.parent / "escape.mid").exists() and not (teacher.folder.parent / "escape.mid").exists()
    for data, name, message in [
        (b"", "empty.mid", "empty.mid: the file is empty"),
        (b"hello", "notes.txt", "notes.txt: neither a MIDI file nor a zip archive"),
        ((tmp_path / "silent.mid").read_bytes(), "silent.mid", "silent.mid: no usable MIDI file in it (silent.mid: "),
        (zipped({"readme.txt": b"x"}), "docs.zip", "docs.zip: no usable MIDI file in it (readme.txt: not a MIDI"),
        (b"PK\x03\x04" + bytes(50), "broken.zip", "broken.zip: not a readable zip archive"),
        (zipped({f"p{i}.mid": b"MThd" + bytes(1_500_000) for i in range(200)}), "bomb.zip",
         "bomb.zip: the archive's MIDI files would inflate to 286 MB; the limit is 256 MB"),
    ]:
        started = time.perf_counter()
        with pytest.raises(UserError) as caught:
            teacher.add(set_id, data, name)
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value), str(caught.value)
        assert time.perf_counter() - started < 2
    assert len(teacher.describe_set(set_id)["files"]) == 4  # nothing of a refused upload was kept
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    with pytest.raises(UserError, match="no such set"):
        teacher.add("set-0000000000000000", songs[0].read_bytes(), "a.mid")
    with pytest.raises(UserError, match="no such set"):
        teacher.add("../../etc", songs[0].read_bytes(), "a.mid")


def test_midi_bombs_are_refused_in_milliseconds_alone_or_zipped(studio):
    teacher = studio.teacher
    set_id = teacher.new_set()["set"]
    for name, data in midi_factory.MIDI_BOMBS.items():
        for upload, filename in [(data, f"{name}.mid"), (zipped({f"{name}.mid": data}), f"{name}.zip")]:
            started = time.perf_counter()
            with pytest.raises(UserError, match=f"^{filename}: no usable MIDI file in it") as caught:
                teacher.add(set_id, upload, filename)
            assert time.perf_counter() - started < 0.5 and "\n" not in str(caught.value)
    assert teacher.describe_set(set_id)["files"] == []


def test_a_set_has_limits_on_files_and_bytes(studio, songs, monkeypatch):
    teacher = studio.teacher
    set_id = teacher.new_set()["set"]
    monkeypatch.setattr(teach, "MAX_SET_FILES", 2)
    teacher.add(set_id, songs[0].read_bytes(), "a.mid")
    with pytest.raises(UserError, match="a set holds at most 2 files \\(1 already\\)"):
        teacher.add(set_id, zipped({"b.mid": songs[1].read_bytes(), "c.mid": songs[2].read_bytes()}), "more.zip")
    monkeypatch.setattr(teach, "MAX_FILE_BYTES", 100)
    with pytest.raises(UserError, match="too large"):
        teacher.add(set_id, songs[1].read_bytes(), "b.mid")
    assert teacher.describe_set(set_id)["files"] == ["a.mid"]


def test_a_full_disk_while_a_set_is_added_to_keeps_nothing_of_it(studio, songs, monkeypatch):
    teacher = studio.teacher
    set_id = teacher.new_set()["set"]

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(teach.os, "replace", full)
    with pytest.raises(UserError, match="^a.mid: cannot keep it: No space left on device$"):
        teacher.add(set_id, songs[0].read_bytes(), "a.mid")
    assert list((teacher.lessons / set_id).iterdir()) == []


def test_teach_requests_are_checked(studio, songs):
    teacher = studio.teacher
    empty = teacher.new_set()["set"]
    full = teacher.new_set()["set"]
    teacher.add(full, songs[0].read_bytes(), "a.mid")
    for form, message in [
        ({"set": empty}, "the set has no MIDI files yet"),
        ({"set": "set-nope"}, "no such set"),
        ({"set": full, "minutes": 0}, "minutes: expected a number from 0.05 to 1440"),
        ({"set": full, "minutes": "nan"}, "minutes: expected a number"),
        ({"set": full, "minutes": True}, "minutes: expected a number"),
        ({"set": full, "minutes": "ten"}, "minutes: expected a number, got 'ten'"),
        ({"set": full, "name": 3}, "name: expected text"),
        ({"set": full, "steps": 3}, "unknown field: 'steps'"),
    ]:
        with pytest.raises(UserError, match=message):
            teacher.request(form)
    assert [m["id"] for m in teacher.models()] == ["default"]  # nothing recorded for a refused request


# ----- fine-tuning in the queue -----
def test_teaching_makes_a_model_that_makes_takes_and_a_restart_keeps_it(studio, songs, checkpoint, tmp_path):
    teacher = studio.teacher
    set_id = teacher.new_set()["set"]
    for song in songs[:3]:
        teacher.add(set_id, song.read_bytes(), song.name)
    job = studio.teach({"set": set_id, "minutes": 0.05, "name": "  my\nsongs  "})
    behind = studio.submit({"primer": None, "settings": {"length": 8, "seed": 1}})  # one job at a time
    assert studio.job_status(behind)["position"] == 1 or studio.job_status(job)["state"] == DONE
    wait(studio, job)
    status = studio.job_status(job)
    assert status["state"] == DONE and status["kind"] == "teach" and status["model"] == "model-0001", status
    assert status["name"] == "my songs" and status["step"] > 0 and status["fraction"] > 0.5
    curve = status["curve"]
    assert curve["val"][0][0] == 0 and len(curve["val"]) >= 2 and curve["loss"]  # step 0 = before fine-tuning
    with pytest.raises(UserError, match="being taught or was taught already"):
        teacher.add(set_id, songs[3].read_bytes(), "late.mid")
    models = studio.models_status()
    assert models["teaching"] is None
    (own, mine) = models["models"]
    assert own["id"] == "default" and mine["id"] == "model-0001" and mine["usable"] and mine["state"] == DONE
    assert mine["ended_by"].startswith(("the time budget", "early stopping")) and mine["files"] == 3
    card = (teacher.models_dir / "model-0001" / "README.md").read_text()
    assert card.startswith("# model-0001") and f"Fine-tuned from `{Path(checkpoint).resolve()}`" in card

    wait(studio, behind)
    take_job = studio.submit({"primer": None, "model": "model-0001", "settings": {"length": 8, "seed": 1}})
    wait(studio, take_job)
    (name,) = take_job.result
    take = json.loads((studio.store.folder / f"{name}.json").read_text())
    assert take["model"] == "model-0001" and take["model_name"] == "my songs"
    assert "model-0001" in take["checkpoint"]
    first = json.loads((studio.store.folder / f"{behind.result[0]}.json").read_text())
    assert first["model"] == "default" and first["model_name"].startswith("the studio's model")
    with pytest.raises(UserError, match="no such model: 'model-0009'"):
        studio.submit({"model": "model-0009", "settings": {"length": 8}})

    studio.close()  # a restart keeps the model and its curve
    again = Studio(checkpoint, studio.store.folder, device="cpu")
    try:
        listed = again.models_status()
        assert [m["id"] for m in listed["models"]] == ["default", "model-0001"] and listed["restart_notes"] == []
        assert listed["models"][1]["curve"] == mine["curve"] and listed["models"][1]["usable"]
        job = again.submit({"primer": None, "model": "model-0001", "settings": {"length": 8, "seed": 1}})
        wait(again, job)
        assert job.state == DONE
    finally:
        again.close()


def test_a_teaching_job_stops_when_asked_and_keeps_what_it_learned(studio, songs):
    teacher = studio.teacher
    set_id = teacher.new_set()["set"]
    teacher.add(set_id, songs[0].read_bytes(), "a.mid")
    job = studio.teach({"set": set_id, "minutes": 30})
    deadline = time.monotonic() + 60
    while studio.job_status(job)["step"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert studio.models_status()["teaching"]["job"] == job.id  # what a reloaded page follows
    studio.queue.stop(job.id)
    wait(studio, job)
    (_, model) = studio.teacher.models()
    assert model["state"] == "stopped" and model["ended_by"] == "stop" and model["usable"]
    waiting_set = teacher.new_set()["set"]
    teacher.add(waiting_set, songs[1].read_bytes(), "b.mid")
    blocker = studio.submit({"primer": None, "settings": {"length": 100000, "seed": 1}})
    queued = studio.teach({"set": waiting_set, "minutes": 1})
    assert studio.job_status(queued)["position"] >= 1
    studio.queue.stop(queued.id)
    studio.queue.stop(blocker.id)
    wait(studio, blocker)
    assert [m["state"] for m in studio.teacher.models()][2] == "cancelled"


def test_a_model_trains_on_from_its_newest_checkpoint_for_more_minutes(studio, songs):
    teacher = studio.teacher
    set_id = teacher.new_set()["set"]
    teacher.add(set_id, songs[0].read_bytes(), "a.mid")
    job = studio.teach({"set": set_id, "minutes": 30, "name": "mine"})
    deadline = time.monotonic() + 60
    while studio.job_status(job)["step"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    studio.queue.stop(job.id)
    wait(studio, job)
    (_, before) = teacher.models()
    assert before["state"] == "stopped" and before["can_train_on"]
    more = studio.teach({"model": "model-0001", "minutes": 0.05}, train_on=True)
    with pytest.raises(UserError, match="'mine' cannot train on: it is (queued|running)"):
        studio.teach({"model": "model-0001", "minutes": 1}, train_on=True)
    wait(studio, more)
    status = studio.job_status(more)
    assert status["state"] == DONE and status["minutes"] == pytest.approx(30.05) and status["step"] > before["step"]
    (_, after) = teacher.models()
    assert after["state"] == DONE and after["ended_by"].startswith(("the time budget", "early stopping"))
    assert after["minutes"] == pytest.approx(30.05)
    assert after["step"] > before["step"] and after["usable"] and after.get("was") is None
    steps = [row[0] for row in after["curve"]["loss"]]
    assert steps == sorted(steps) and steps[-1] > before["step"]  # one run, resumed
    card = (teacher.models_dir / "model-0001" / "README.md").read_text()
    assert f"steps: {after['step']} (ended by {'time' if after['ended_by'] == 'the time budget' else 'early stopping'})" in card
    # a request to train on that is stopped while it waits leaves the model as it was
    other = teacher.new_set()["set"]
    teacher.add(other, songs[1].read_bytes(), "b.mid")
    job = studio.teach({"set": other, "minutes": 30, "name": "other"})
    while studio.job_status(job)["step"] < 3 and time.monotonic() < deadline + 60:
        time.sleep(0.05)
    studio.queue.stop(job.id)
    wait(studio, job)
    blocker = studio.submit({"primer": None, "settings": {"length": 100000, "seed": 1}})
    waiting = studio.teach({"model": "model-0002", "minutes": 1}, train_on=True)
    studio.queue.stop(waiting.id)
    studio.queue.stop(blocker.id)
    wait(studio, blocker)
    kept = teacher.models()[2]
    assert kept["state"] == "stopped" and kept["ended_by"] == "stop" and "it was to train on" in kept["note"]
    # what cannot go on
    record = json.loads((teacher.models_dir / "model-0001.json").read_text())
    (teacher.models_dir / "model-0001.json").write_text(json.dumps({**record, "ended_by": "early stopping (x)"}))
    with pytest.raises(UserError, match="early stopping ended it"):
        studio.teach({"model": "model-0001", "minutes": 1}, train_on=True)
    for form, message in [({"model": "model-0009"}, "no such model"), ({"model": "default"}, "no such model"),
                          ({"model": "model-0001", "minutes": -1}, "minutes: expected"),
                          ({"model": "model-0001", "set": "x"}, "unknown field: 'set'")]:
        with pytest.raises(UserError, match=message):
            studio.teach(form, train_on=True)


def test_a_restarted_studio_says_what_happened_to_unfinished_models(tmp_path, checkpoint, songs):
    folder = tmp_path / "studio"
    first = Studio(checkpoint, folder, device="cpu")
    teacher = first.teacher
    set_id = teacher.new_set()["set"]
    teacher.add(set_id, songs[0].read_bytes(), "a.mid")
    job = first.teach({"set": set_id, "minutes": 0.05})
    wait(first, job)
    first.close()
    # As a killed studio leaves them: one model was training (with a checkpoint), one was
    # training before its first checkpoint, one was waiting.
    records = teacher.models_dir
    running = json.loads((records / "model-0001.json").read_text())
    (records / "model-0001.json").write_text(json.dumps({**running, "state": "running"}))
    (records / "model-0002.json").write_text(json.dumps({**running, "id": "model-0002", "state": "running"}))
    (records / "model-0003.json").write_text(json.dumps({**running, "id": "model-0003", "state": "queued"}))
    leftover = teacher.lessons / set_id / ".unpack-killed"
    leftover.mkdir()
    (leftover / "half.mid").write_bytes(b"MThd")
    again = Studio(checkpoint, folder, device="cpu")
    try:
        listed = {m["id"]: m for m in again.models_status()["models"]}
        assert listed["model-0001"]["state"] == "interrupted" and listed["model-0001"]["usable"]
        assert "stopped while it was training: its checkpoint of step" in listed["model-0001"]["note"]
        assert f"Train on (or perceiver-music train --resume {records / 'model-0001'})" in listed["model-0001"]["note"]
        assert listed["model-0001"]["can_train_on"]
        assert listed["model-0002"]["state"] == "interrupted" and not listed["model-0002"]["usable"]
        assert "saved no checkpoint yet" in listed["model-0002"]["note"]
        assert listed["model-0003"]["state"] == "cancelled" and "before this model's turn" in listed["model-0003"]["note"]
        assert len(again.models_status()["restart_notes"]) == 3
        job = again.submit({"primer": None, "model": "model-0001", "settings": {"length": 8, "seed": 1}})
        wait(again, job)
        assert job.state == DONE
        with pytest.raises(UserError, match="has no saved checkpoint yet"):
            again.submit({"model": "model-0002", "settings": {"length": 8}})
        assert not leftover.exists()
    finally:
        again.close()


def test_a_set_the_model_cannot_learn_from_fails_with_one_line(studio, songs, monkeypatch):
    teacher = studio.teacher
    set_id = teacher.new_set()["set"]
    teacher.add(set_id, songs[0].read_bytes(), "a.mid")
    from perceiver_ar_music.training import finetune

    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device", "ckpt-10")

    monkeypatch.setattr(finetune, "finetune", no_room)
    job = studio.teach({"set": set_id, "minutes": 0.05})
    wait(studio, job)
    status = studio.job_status(job)
    assert status["state"] == FAILED and status["error"] == "cannot write: No space left on device: ckpt-10"
    (_, model) = studio.teacher.models()
    assert model["state"] == "failed" and model["error"] == status["error"] and not model["usable"]


# ----- the routes -----
def request(url: str, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request(method, path, body, {"Content-Length": str(len(body)), **(headers or {})})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, json.loads(data)


JSON = {"Content-Type": "application/json"}
OCTETS = {"Content-Type": "application/octet-stream"}


def test_the_routes_check_what_they_are_sent(studio, songs):
    with serving(studio) as url:
        status, answer = request(url, "POST", "/api/teach/sets", b"{}", JSON)
        assert status == 200 and answer["files"] == []
        set_id = answer["set"]
        status, answer = request(url, "POST", f"/api/teach/sets/{set_id}/files", songs[0].read_bytes(),
                                 {**OCTETS, "X-Filename": "my%20song.mid"})
        assert status == 200 and answer["added"] == ["my song.mid"]
        status, answer = request(url, "POST", f"/api/teach/sets/{set_id}/files", zipped({"b.mid": songs[1].read_bytes()}),
                                 {"Content-Type": "application/zip", "X-Filename": "b.zip"})
        assert status == 200 and answer["added"] == ["b.mid"]
        refusals = [
            ("POST", f"/api/teach/sets/{set_id}/files", b"MThd", {"Content-Type": "text/plain"}, 415),
            ("POST", f"/api/teach/sets/{set_id}/files", b"MThd", {**OCTETS, "Content-Length": str(65 * 2**20)}, 413),
            ("POST", "/api/teach/sets/set-0123456789abcdef/files", b"MThd", OCTETS, 400),
            ("POST", "/api/teach/sets", b'{"x": 1}', JSON, 400),
            ("POST", "/api/teach", b"[]", JSON, 400),
            ("POST", "/api/teach", b'{"set": "%s"}' % set_id.encode(), {**JSON, "Origin": "http://evil.example"}, 403),
            ("POST", "/api/teach/sets", b"{}", {**JSON, "Host": "evil.example"}, 403),
            ("POST", "/api/teach", b'{"set": "%s"}' % set_id.encode(), {"Content-Type": "text/plain"}, 415),
        ]
        for method, path, body, headers, expected in refusals:
            if headers.get("Content-Length"):
                host, port = url.removeprefix("http://").split(":")
                connection = http.client.HTTPConnection(host, int(port), timeout=30)
                connection.putrequest(method, path)
                for key, value in headers.items():
                    connection.putheader(key, value)
                connection.endheaders()
                response = connection.getresponse()
                status, answer = response.status, json.loads(response.read())
                connection.close()
            else:
                status, answer = request(url, method, path, body, headers)
            assert status == expected and "\n" not in answer["error"], (path, headers, status, answer)
        status, answer = request(url, "GET", "/api/models")
        assert status == 200 and [m["id"] for m in answer["models"]] == ["default"] and answer["teaching"] is None
        status, answer = request(url, "POST", "/api/teach", json.dumps({"set": set_id, "minutes": 0.05}).encode(), JSON)
        assert status == 200 and answer["kind"] == "teach" and answer["state"] in (QUEUED, "running")
        job = answer["job"]
        deadline = time.monotonic() + 120
        while answer["state"] not in ("done", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
            status, answer = request(url, "GET", f"/api/jobs/{job}")
        assert answer["state"] == "done", answer
        status, answer = request(url, "GET", f"/api/jobs/{job}/roll/0.png")
        assert status == 400 and answer["error"] == "this job makes no piano roll"
        status, answer = request(url, "POST", "/api/generate", json.dumps({"model": "model-0001", "settings": {"length": 8}}).encode(), JSON)
        assert status == 200 and answer["kind"] == "take"
        status, answer = request(url, "POST", "/api/teach/train-on", b'{"model": "model-0001", "minutes": 0.05}',
                                 {**JSON, "Origin": "http://evil.example"})
        assert status == 403
        # a duet with the taught model: chosen mid-duet, named in the saved take
        with connect(url.replace("http://", "ws://") + "/ws/duet") as socket:
            assert json.loads(socket.recv(timeout=30))["type"] == "ready"
            socket.send(json.dumps({"type": "model", "model": "model-0009"}))
            assert "no such model" in json.loads(socket.recv(timeout=30))["error"]
            socket.send(json.dumps({"type": "model", "model": "model-0001"}))
            assert json.loads(socket.recv(timeout=30)) == {"type": "model", "model": "model-0001"}
            socket.send(json.dumps({"type": "settings", "silence": 0.3, "answer_seconds": 2}))
            for t, pitch in enumerate([60, 64, 67]):
                socket.send(json.dumps({"type": "on", "pitch": pitch, "velocity": 80, "t": t * 0.2}))
                socket.send(json.dumps({"type": "off", "pitch": pitch, "t": t * 0.2 + 0.15}))
            seen = []
            while not seen or seen[-1].get("type") != "answer_end":
                seen.append(json.loads(socket.recv(timeout=60)))
            socket.send(json.dumps({"type": "save"}))
            while seen[-1].get("type") != "saved":
                seen.append(json.loads(socket.recv(timeout=60)))
        take = seen[-1]["take"]
        assert take["model"] == "model-0001" and take["model_name"] == "taught on 2 file(s)" and "model-0001" in take["checkpoint"]


# ----- the page in a real browser -----
def test_the_teach_panel_end_to_end(tmp_path, checkpoint, songs):
    executable = find_chromium() or pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    folder = tmp_path / "studio"
    files = sorted(Path(os.environ["STUDIO_TEACH_FILES"]).resolve().glob("*.mid")) if os.environ.get("STUDIO_TEACH_FILES") else songs
    minutes = os.environ.get("STUDIO_TEACH_MINUTES", "0.05")
    archive = tmp_path / "more.zip"  # the last two files come in a zip, one of them named to climb out
    archive.write_bytes(zipped({f"more/{files[-2].name}": files[-2].read_bytes(), f"../{files[-1].name}": files[-1].read_bytes(),
                                "x.txt": b""}))
    chosen = [*files[:-2], archive]
    browser = Browser(executable, tmp_path / "profile")
    studio = Studio(checkpoint, folder, device="cpu")
    try:
        with serving(studio) as url:
            browser.open(url + "/")
            browser.wait("document.body && document.body.dataset.ready === '1'")
            assert browser.js("document.getElementById('teach-panel').checkVisibility()") is False
            browser.js("document.querySelector('#tabs button[data-tab=teach]').click()")
            assert browser.js("document.getElementById('teach-panel').checkVisibility()")
            assert browser.js("document.getElementById('settings-panel').checkVisibility()") is False
            assert browser.js("document.getElementById('teach-start').disabled")
            browser.set_file("#teach-files", chosen)
            browser.wait(f"document.getElementById('teach-set').textContent.startsWith('{len(files)} file(s)')")
            assert "x.txt: not a MIDI file" in browser.js("document.getElementById('teach-skipped').textContent")
            browser.js(f"document.getElementById('teach-name').value = 'Fiddle tunes'; "
                       f"document.getElementById('teach-minutes').value = '{minutes}'")
            browser.js("document.getElementById('teach-start').click()")
            browser.wait("document.getElementById('teach-status').dataset.state === 'done'", timeout=600)
            browser.wait("!document.getElementById('teach-plot').hidden && "
                         "document.querySelectorAll('#teach-plot circle').length >= 2")
            assert browser.js("document.getElementById('teach-progress').value") == 1
            browser.wait("document.querySelector('#model-model-0001 .use-model') !== null")
            assert "Fiddle tunes" in browser.js("document.getElementById('model-model-0001').textContent")
            if os.environ.get("STUDIO_TEACH_SCREENSHOT"):
                browser.screenshot(Path(os.environ["STUDIO_TEACH_SCREENSHOT"]))
            browser.js("document.querySelector('#model-model-0001 .use-model').click()")
            assert browser.js("document.getElementById('model').value") == "model-0001"
            assert browser.js("document.getElementById('settings-panel').checkVisibility()")
            browser.js("document.getElementById('setting-length').value = '40'; document.getElementById('setting-seed').value = '2'")
            browser.js("document.getElementById('generate').click()")
            browser.wait("document.querySelectorAll('.take').length === 1")
            assert browser.js("document.querySelector('.take .by').textContent") == "by Fiddle tunes"
            browser.js("document.body.dataset.ready = '0'; location.reload()")  # a reload keeps everything
            browser.wait("document.body && document.body.dataset.ready === '1' && document.querySelectorAll('.take').length === 1")
            assert browser.js("[...document.getElementById('model').options].map(o => o.value)") == ["default", "model-0001"]
            assert browser.js("document.querySelector('.take .by').textContent") == "by Fiddle tunes"
            # a reload while a model is being taught follows it again, and Stop ends it
            browser.js("document.querySelector('#tabs button[data-tab=teach]').click()")
            browser.set_file("#teach-files", [files[0]])
            browser.wait("document.getElementById('teach-set').textContent.startsWith('1 file(s)')")
            browser.js("document.getElementById('teach-minutes').value = '30'; document.getElementById('teach-start').click()")
            browser.wait("/step \\d+/.test(document.getElementById('teach-status').textContent)")
            browser.js("document.body.dataset.ready = '0'; location.reload()")
            browser.wait("document.body && document.body.dataset.ready === '1'")
            browser.js("document.querySelector('#tabs button[data-tab=teach]').click()")
            browser.wait("document.getElementById('teach-status').dataset.state === 'running' && "
                         "!document.getElementById('teach-stop').disabled")
            browser.js("document.getElementById('teach-stop').click()")
            browser.wait("document.getElementById('teach-status').dataset.state === 'done'")
            browser.wait("document.getElementById('model-model-0002') && "
                         "document.getElementById('model-model-0002').textContent.includes('stopped (ended by stop)')")
            # Train on: the stopped model goes on for the budget in the form
            browser.js("document.getElementById('teach-minutes').value = '0.05'; "
                       "document.querySelector('#model-model-0002 .train-on').click()")
            browser.wait("document.getElementById('model-model-0002').textContent.includes('done (ended by ')")  # time or early stopping
            assert "of a 30.05-minute budget" in browser.js("document.getElementById('model-model-0002').textContent")
            browser.js("document.querySelector('#tabs button[data-tab=duet]').click()")
            assert browser.js("[...document.getElementById('duet-model').options].map(o => o.value)") == \
                ["default", "model-0001", "model-0002"]
            browser.js("const d = document.getElementById('duet-model'); d.value = 'model-0001'; d.dispatchEvent(new Event('change'))")
            browser.js("document.getElementById('duet-start').click()")
            browser.wait("document.body.dataset.duetModel === 'model-0001'")
        studio.close()
        studio = Studio(checkpoint, folder, device="cpu")  # a restarted server keeps the models
        with serving(studio) as url:
            browser.open(url + "/")
            browser.wait("document.body && document.body.dataset.ready === '1'")
            assert browser.js("[...document.getElementById('model').options].map(o => o.textContent)")[1:] == \
                ["Fiddle tunes", "taught on 1 file(s)"]
            assert browser.js("document.querySelector('.take .by').textContent") == "by Fiddle tunes"
    finally:
        studio.close()
        browser.close()
