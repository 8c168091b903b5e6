"""The ``index.html`` of a folder of generated samples: listen, look, download, compare.

One self-contained page (HTML and inline CSS, no scripts, no external resources): the run's
details, then per sample an audio player (or a note saying why there is no audio), its piano
roll, links to its files and its statistics: with a full ``SampleReport``, a table of the primer,
the continuation and the continuation's windows side by side (with an inline SVG sparkline of
each figure over the windows), the drift from the first window to the last, the distance to
reference figures and memorisation. All text is HTML-escaped and every file is linked
by a relative, URL-quoted path, so the folder can be moved, zipped or served as it is.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import quote

from perceiver_ar_music.runtime.atomic import write_text_atomic
from perceiver_ar_music.listening.music_stats import (
    FIGURE_KEYS, FIGURE_LABELS, FIGURE_MEANINGS, MusicStats, SampleReport, format_figure, formatted_figures, full_windows, shown_windows,
)
from perceiver_ar_music.listening.pianoroll import CONTINUATION, PRIMER

INDEX_NAME = "index.html"

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class SampleEntry:
    """One sample on the page; file paths are relative to the page's folder (or absolute)."""

    title: str
    midi: PathLike
    audio: PathLike | None = None
    audio_note: str = "no audio was rendered"  # shown instead of the player when audio is None
    piano_roll: PathLike | None = None
    stats: MusicStats | Mapping[str, object] | None = None
    description: str = ""
    report: SampleReport | None = None  # primer vs continuation and windows (music_stats.sample_report)


def write_index(
    out_dir: PathLike,
    samples: Sequence[SampleEntry],
    title: str,
    details: Mapping[str, object] | None = None,
) -> Path:
    """Write ``out_dir/index.html`` atomically and return its path."""
    out_dir = Path(out_dir)
    page = render_index(out_dir, samples, title, details or {})
    path = out_dir / INDEX_NAME
    write_text_atomic(path, page)
    return path


def render_index(out_dir: Path, samples: Sequence[SampleEntry], title: str, details: Mapping[str, object]) -> str:
    """The page's HTML text (see ``write_index``)."""
    parts = [
        "<!doctype html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_text(title)}</title>",
        f"<style>{_css()}</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>{_text(title)}</h1>",
    ]
    if details:
        rows = "".join(f"<tr><th>{_text(key)}</th><td>{_text(_format(value))}</td></tr>" for key, value in details.items())
        parts.append(f'<table class="details">{rows}</table>')
    if any(sample.piano_roll is not None for sample in samples):
        parts.append(
            '<p class="legend"><span class="swatch primer"></span>primer '
            '<span class="swatch continuation"></span>continuation '
            "&mdash; the white line marks the end of the primer; brighter notes are louder.</p>"
        )
    parts.append("</header>")
    parts.append("<main>")
    for number, sample in enumerate(samples, start=1):
        parts.append(_sample_section(out_dir, number, sample))
    if not samples:
        parts.append('<p class="empty">No samples.</p>')
    parts += ["</main>", "</body>", "</html>", ""]
    return "\n".join(parts)


def _sample_section(out_dir: Path, number: int, sample: SampleEntry) -> str:
    lines = [f'<section class="sample" id="sample-{number}">', f"<h2>{_text(sample.title)}</h2>"]
    if sample.description:
        lines.append(f'<p class="description">{_text(sample.description)}</p>')
    if sample.audio is not None:
        src = _href(out_dir, sample.audio)
        lines.append(
            f'<audio controls preload="metadata" src="{src}">'
            f'Your browser cannot play this audio: <a href="{src}">download it</a>.</audio>'
        )
    else:
        lines.append(f'<p class="no-audio">{_text(sample.audio_note)}</p>')
    if sample.piano_roll is not None:
        lines.append(
            f'<div class="roll"><img src="{_href(out_dir, sample.piano_roll)}" '
            f'alt="{_text("Piano roll of " + sample.title)}"></div>'
        )
    links = [f'<a href="{_href(out_dir, sample.midi)}" download>MIDI</a>']
    if sample.audio is not None:
        links.append(f'<a href="{_href(out_dir, sample.audio)}" download>{_text(Path(sample.audio).suffix[1:].upper())}</a>')
    if sample.piano_roll is not None:
        links.append(f'<a href="{_href(out_dir, sample.piano_roll)}">PNG</a>')
    lines.append(f'<p class="links">{" · ".join(links)}</p>')
    if sample.stats is not None:
        rows = sample.stats.rows() if isinstance(sample.stats, MusicStats) else [
            (key, _format(value)) for key, value in sample.stats.items()
        ]
        pairs = "".join(f"<div><dt>{_text(key)}</dt><dd>{_text(value)}</dd></div>" for key, value in rows)
        lines.append(f'<dl class="stats">{pairs}</dl>')
    if sample.report is not None:
        lines.append(report_table(sample.report))
    lines.append("</section>")
    return "\n".join(lines)


def report_table(report: SampleReport) -> str:
    """The figures of a sample report as an HTML table (parts and windows as rows) and notes."""
    head = "".join(f'<th title="{_text(FIGURE_MEANINGS[key])}">{_text(FIGURE_LABELS[key])}</th>' for key in FIGURE_KEYS)
    rows: list[tuple[str, str, list[str]]] = []  # (css class, label, cells)
    if report.primer is not None:
        rows.append(("part", "primer", _cells(report.primer.as_dict())))
    if report.continuation is not None:
        rows.append(("part", "continuation", _cells(report.continuation.as_dict())))
    shown = shown_windows(report.windows, report.window_s)  # (not a short tail where notes ring out)
    compared = full_windows(report.windows, report.window_s)
    for index, window in enumerate(shown):
        rows.append(("window", window.label("–"), _cells(window.stats.as_dict())))
        if index < len(report.targets):
            rows.append(("target", "target", _target_cells(report.targets[index])))
    if len(compared) > 1:
        rows.append(("ratio", "last / first window", _ratios(report.drift)))
        trend = [_sparkline([float(getattr(w.stats, key)) for w in compared]) for key in FIGURE_KEYS]
        rows.append(("trend", "over the windows", trend))
    if report.reference is not None:
        rows.append(("reference", "reference median", _cells(report.reference.median)))
        for part, comparison in report.vs_reference.items():
            rows.append(("ratio", f"{part} / reference", _ratios(comparison.ratio)))
    body = "".join(
        f'<tr class="{kind}"><th>{_text(label)}</th>'
        + "".join(f"<td>{cell if kind == 'trend' else _text(cell)}</td>" for cell in cells)
        + "</tr>"
        for kind, label, cells in rows
    )
    parts = [f'<div class="figures"><table><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table></div>',
             _legend()]
    notes = []
    if len(shown) < len(report.windows):
        tail = report.windows[-1]
        notes.append(f"the last {tail.end_s - tail.start_s:.1f} s ({tail.label('–')}), where the last notes ring out, "
                     "is too short to compare and not shown as a window (it counts in the continuation's row)")
    for part, comparison in report.vs_reference.items():
        if comparison.outside:
            outside = ", ".join(FIGURE_LABELS[key] for key in comparison.outside)
            notes.append(f"{part} outside the reference's 10th–90th percentile band: {outside}")
    memo = report.memorization
    if memo is not None:
        for part in ("primer", "continuation"):
            match = memo.get(part)
            if match:
                notes.append(
                    f"{part}: longest passage copied from the reference: {match['notes']} notes, "
                    f"{match['seconds']:.1f} s, from {match['name']} at {match['piece_start_s']:.1f} s"
                    if match["notes"] else f"{part}: no passage of {memo['min_notes']}+ notes copied from the reference"
                )
    parts += [f'<p class="figure-note">{_text(note)}</p>' for note in notes]
    return "\n".join(parts)


def _legend() -> str:
    """What the columns mean, folded under the table."""
    items = "".join(f"<div><dt>{_text(FIGURE_LABELS[key])}</dt><dd>{_text(FIGURE_MEANINGS[key])}</dd></div>"
                    for key in FIGURE_KEYS)
    return f'<details class="figure-legend"><summary>What the columns mean</summary><dl>{items}</dl></details>'


def _cells(values: Mapping[str, object]) -> list[str]:
    return formatted_figures(values)


def _target_cells(target: Mapping[str, float]) -> list[str]:
    """A window's texture target in the figures' columns ('' where nothing is held)."""
    return ["" if key not in target else format_figure(key, target[key]) for key in FIGURE_KEYS]


def _ratios(ratios: Mapping[str, float | None]) -> list[str]:
    return ["–" if ratios.get(key) is None else f"{ratios[key]:.2f}×" for key in FIGURE_KEYS]


def _sparkline(values: Sequence[float], width: int = 44, height: int = 16) -> str:
    """An inline SVG polyline of `values` scaled to their own range (a flat line when constant)."""
    low, high = min(values), max(values)
    span = high - low or 1.0
    step = width / max(len(values) - 1, 1)
    points = " ".join(f"{i * step:.1f},{height - 2 - (v - low) / span * (height - 4):.1f}" for i, v in enumerate(values))
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_text(" → ".join(f"{v:.3g}" for v in values))}">'
        f'<polyline points="{points}" fill="none" stroke="currentColor" stroke-width="1.5"/></svg>'
    )


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def _format(value: object) -> str:
    """Floats to 4 significant digits, still looking like floats (1.0, not 1)."""
    if isinstance(value, float):
        text = f"{value:.4g}"
        return text if any(c in text for c in ".en") else text + ".0"
    return str(value)


def _href(out_dir: Path, path: PathLike) -> str:
    """A relative, URL-quoted, HTML-escaped link from the page to `path`."""
    path = Path(path)
    if path.is_absolute():
        path = Path(os.path.relpath(path.resolve(), out_dir.resolve()))
    return _text(quote(path.as_posix(), safe="/"))


def _rgb(colour) -> str:
    return "rgb({}, {}, {})".format(*(int(c) for c in colour))


def _css() -> str:
    return f"""
:root {{ color-scheme: light dark; --fg: #1d1f24; --muted: #5c6270; --bg: #f6f7f9; --card: #fff;
  --line: #dde0e6; --accent: #2a6fdb; }}
@media (prefers-color-scheme: dark) {{ :root {{ --fg: #e6e8ec; --muted: #9aa1ad; --bg: #14161a;
  --card: #1c1f25; --line: #2c3038; --accent: #78a9ff; }} }}
* {{ box-sizing: border-box; }}
body {{ margin: 0 auto; max-width: 1100px; padding: 24px 20px 48px; background: var(--bg);
  color: var(--fg); font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }}
h1 {{ font-size: 1.6em; margin: 0 0 12px; }}
h2 {{ font-size: 1.15em; margin: 0 0 8px; }}
a {{ color: var(--accent); }}
table {{ border-collapse: collapse; margin: 8px 0; font-size: 0.92em; }}
th, td {{ text-align: left; padding: 2px 14px 2px 0; vertical-align: top; }}
th {{ color: var(--muted); font-weight: 500; white-space: nowrap; }}
td {{ font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }}
.legend {{ color: var(--muted); font-size: 0.92em; }}
.swatch {{ display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin: 0 4px 0 0;
  vertical-align: -1px; }}
.swatch.primer {{ background: {_rgb(PRIMER)}; }}
.swatch.continuation {{ background: {_rgb(CONTINUATION)}; margin-left: 10px; }}
.sample {{ background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 16px 18px; margin: 18px 0; }}
.description {{ color: var(--muted); margin: 0 0 8px; }}
audio {{ width: 100%; max-width: 640px; display: block; margin: 6px 0; }}
.no-audio {{ color: var(--muted); font-style: italic; border-left: 3px solid var(--line);
  padding-left: 10px; }}
.roll {{ overflow-x: auto; margin: 10px 0; border-radius: 6px; background: #111318; }}
.roll img {{ display: block; max-width: none; }}
.links {{ margin: 6px 0; }}
.stats {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 2px 18px;
  margin: 8px 0 0; font-size: 0.92em; }}
.stats div {{ display: flex; justify-content: space-between; gap: 10px;
  border-bottom: 1px solid var(--line); padding: 2px 0; }}
.stats dt {{ color: var(--muted); }}
.stats dd {{ margin: 0; font-variant-numeric: tabular-nums; text-align: right; }}
.figures {{ overflow-x: auto; margin: 10px 0 0; }}
.figures table {{ font-size: 0.82em; }}
.figures td {{ text-align: right; padding: 1px 0 1px 9px; white-space: nowrap; }}
.figures thead th {{ text-align: right; padding-left: 9px; }}
.figures tr.part th, .figures tr.part td {{ font-weight: 600; }}
.figures tr.window th {{ padding-left: 12px; }}
.figures tr.target th, .figures tr.target td {{ color: var(--muted); font-style: italic; padding-left: 12px; }}
.figures tr.ratio td, .figures tr.reference td {{ color: var(--muted); }}
.figures .spark {{ color: var(--accent); vertical-align: middle; }}
.figure-note {{ color: var(--muted); font-size: 0.9em; margin: 4px 0; }}
"""
