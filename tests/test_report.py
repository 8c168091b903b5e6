"""The samples' index.html: structure, escaping, relative links, and a real load in headless
Chromium (skipped when Chromium is not installed) with every audio player and image resolving."""

from __future__ import annotations

import functools
import html.parser
import http.server
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import soundfile

from perceiver_ar_music.listening.music_stats import FIGURE_KEYS, music_stats
from perceiver_ar_music.listening.pianoroll import draw_piano_roll
from perceiver_ar_music.listening.report import SampleEntry, write_index

NOTES = np.array([[60, 0.0, 1.0, 90], [64, 0.5, 1.5, 70], [67, 1.5, 2.5, 100]])
EVIL = '<script>alert("x")</script> & \'quotes\''


class Page(html.parser.HTMLParser):
    """Tags with their attributes, and the page's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def write_sine(path: Path, seconds: float, rate: int = 22_050) -> None:
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(str(path), 0.3 * np.sin(2 * np.pi * 440 * t), rate, subtype="PCM_16")


def make_site(folder: Path) -> list[SampleEntry]:
    """Three samples: a WAV with a space and '#' in its name, a FLAC in a subfolder, none."""
    (folder / "audio").mkdir(parents=True)
    write_sine(folder / "sample 1 #a.wav", 1.5)
    write_sine(folder / "audio" / "sample-2.flac", 2.5)
    for name in ("sample 1 #a", "sample-2", "sample-3"):
        (folder / f"{name}.mid").write_bytes(b"MThd")
        draw_piano_roll(NOTES, 1.0, folder / f"{name}.png")
    return [
        SampleEntry("Sample 1 " + EVIL, "sample 1 #a.mid", "sample 1 #a.wav", piano_roll="sample 1 #a.png",
                    stats=music_stats(NOTES), description=EVIL),
        SampleEntry("Sample 2", folder / "sample-2.mid", folder / "audio" / "sample-2.flac",
                    piano_roll=Path("sample-2.png"), stats={"tokens": 1200, "temperature": 1.0, EVIL: EVIL}),
        SampleEntry("Sample 3", "sample-3.mid", None, audio_note="no audio: " + EVIL, piano_roll="sample-3.png"),
    ]


def test_page_structure_and_links(tmp_path):
    samples = make_site(tmp_path)
    index = write_index(tmp_path, samples, "Run " + EVIL, {"checkpoint": EVIL, "top_p": 0.95, "seed": 3})
    assert index == tmp_path / "index.html"
    text = index.read_text(encoding="utf-8")
    page = Page(text)
    assert [a["src"] for a in page.all("audio")] == ["sample%201%20%23a.wav", "audio/sample-2.flac"]
    assert all("controls" in a for a in page.all("audio"))
    assert [img["src"] for img in page.all("img")] == ["sample%201%20%23a.png", "sample-2.png", "sample-3.png"]
    links = [a["href"] for a in page.all("a")]
    for url in [a["src"] for a in page.all("audio")] + [img["src"] for img in page.all("img")] + links:
        assert (tmp_path / unquote(url)).is_file(), url  # relative, and pointing at real files
    assert {"sample%201%20%23a.mid", "sample-2.mid", "sample-3.mid"} <= set(links)
    assert len(page.all("section")) == 3
    # All text escaped: the only script-like thing is text, there are no scripts or external resources.
    assert not page.all("script") and "<script>" not in text
    # <title>, <h1>, a detail, a sample title, a description, a stats key and value, an audio note
    assert "".join(page.text).count(EVIL) == 8
    assert page.all("img")[0]["alt"] == "Piano roll of Sample 1 " + EVIL
    assert "http" not in text and "//" not in text.replace("://", "")
    joined = "".join(page.text)
    assert "temperature" in joined and "1.0" in joined and "polyphony mean / max" in joined


def test_write_is_atomic_and_replaces(tmp_path):
    make_site(tmp_path)
    write_index(tmp_path, [], "first")
    write_index(tmp_path, [SampleEntry("only", "sample-3.mid")], "second")
    text = (tmp_path / "index.html").read_text()
    assert "second" in text and "first" not in text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ----- a real browser -----
PROBE = """<script>
for (const a of document.querySelectorAll('audio')) {
  const mark = (state) => { a.dataset.state = state; a.dataset.duration = String(a.duration); };
  a.addEventListener('loadedmetadata', () => mark('loaded'));
  a.addEventListener('error', () => mark('error'));
  if (a.readyState >= 1) mark('loaded');
}
window.addEventListener('load', () => {
  for (const img of document.querySelectorAll('img')) img.dataset.width = String(img.naturalWidth);
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.skip("chromium is not installed (Debian: apt-get install chromium)")


def dump_dom(browser: str, url: str, profile: Path) -> str:
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_page_loads_in_chromium(tmp_path):
    browser = chromium()
    site = tmp_path / "site"
    samples = make_site(site)
    samples.append(SampleEntry("Broken", "sample-3.mid", "missing.wav"))  # proves the probe sees errors
    index = write_index(site, samples, "Chromium check", {"seed": 1})
    (site / "probe.html").write_text(index.read_text().replace("</body>", PROBE + "\n</body>"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dom = dump_dom(browser, f"http://127.0.0.1:{server.server_address[1]}/probe.html", tmp_path / "profile")
    finally:
        server.shutdown()
        server.server_close()
    page = Page(dom)
    audio = page.all("audio")
    assert [a.get("data-state") for a in audio] == ["loaded", "loaded", "error"]
    assert float(audio[0]["data-duration"]) == pytest.approx(1.5, abs=0.01)
    assert float(audio[1]["data-duration"]) == pytest.approx(2.5, abs=0.01)
    widths = [int(img["data-width"]) for img in page.all("img")]
    assert len(widths) == 3 and min(widths) > 100
    assert "Chromium check" in "".join(page.text)


def test_full_report_table_with_windows_sparklines_reference_and_memorisation(tmp_path):
    from perceiver_ar_music.listening.music_stats import reference_figures, sample_report

    primer = [(60 + i % 5, 0.5 * i, 0.5 * i + 0.4, 70) for i in range(20)]
    continuation = [(70 + i % 3, 10 + 0.25 * i, 10 + 0.25 * i + 5.0 * (i % 10 == 0), 80) for i in range(100)]
    notes = np.array(primer + continuation, dtype=np.float64)
    reference = reference_figures([music_stats(notes[:20]), music_stats(notes[20:])], EVIL)
    memo = {"min_notes": 12, "primer": {"notes": 20, "seconds": 9.9, "name": EVIL, "piece_start_s": 1.5},
            "continuation": {"notes": 0}}
    report = sample_report(notes, 20, 10.0, window_s=10.0, reference=reference, memorization=memo)
    (tmp_path / "a.mid").write_bytes(b"MThd")
    text = write_index(tmp_path, [SampleEntry("A", "a.mid", report=report, stats=report.continuation)], "t").read_text()
    page = Page(text)
    table = text[text.index('<div class="figures">'):]
    joined = "".join(page.text)
    for label in ("primer", "continuation", "10–20 s", "20–30 s", "30–37.5 s", "last / first window", "reference median",
                  "continuation / reference", "notes/s", "silence %", "len p99 s"):
        assert label in joined, label
    assert table.count("<svg") == len(FIGURE_KEYS) and "<polyline" in table  # one sparkline per figure
    assert "copied from the reference: 20 notes" in joined and EVIL in joined  # escaped, as text
    assert "no passage of 12+ notes" in joined
    assert not page.all("script") and "<script>" not in text
    assert "10.0" in joined  # the continuation's >4 s share: 10 of 100 notes


def test_the_figures_table_has_a_legend_and_no_stub_of_a_last_window(tmp_path):
    """In headless Chromium: every short column label is explained under the table, and a last
    window of a fraction of a second (where the last notes ring out) is not a row of dashes."""
    from perceiver_ar_music.listening.music_stats import FIGURE_LABELS, FIGURE_MEANINGS, sample_report
    from perceiver_ar_music.listening.report import SampleEntry, write_index
    from tests.test_studio import Browser, chromium

    primer = [(60 + i % 7, 0.5 * i, 0.5 * i + 0.4, 70) for i in range(20)]
    continuation = [(64 + i % 5, 10 + 0.25 * i, 10 + 0.25 * i + 0.2, 80) for i in range(241)]  # to 70.2 s
    notes = np.array(primer + continuation, dtype=np.float64)
    report = sample_report(notes, 20, 10.0)
    assert [round(w.end_s - w.start_s, 1) for w in report.windows] == [30.0, 30.0, 0.2]
    (tmp_path / "sample-01.mid").write_bytes(b"")
    write_index(tmp_path, [SampleEntry("Sample 1", Path("sample-01.mid"), report=report)], "samples")
    browser = Browser(chromium(), tmp_path / "profile")
    try:
        browser.open((tmp_path / "index.html").as_uri())
        browser.wait("document.readyState === 'complete' && document.querySelector('.figures') !== null", timeout=30)
        rows = browser.js("[...document.querySelectorAll('.figures tbody tr.window th')].map(th => th.textContent)")
        assert rows == ["10–40 s", "40–70 s"]
        assert "the last 0.2 s (70–70.2 s)" in browser.js("document.body.innerText")
        browser.js("document.querySelector('.figure-legend summary').click()")
        legend = browser.wait("(() => { const d = document.querySelector('.figure-legend'); return d.open && d.innerText; })()")
        for key, label in FIGURE_LABELS.items():
            assert f"{label}\n{FIGURE_MEANINGS[key]}" in legend
    finally:
        browser.close()
