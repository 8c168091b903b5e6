"""Text tables of music figures, as `perceiver-music stats` prints them: one sample's report
(`sample_table`: primer, continuation, windows, ratios, reference, memorisation) and a
collection's median and 10th-90th percentile band (`collection_table`)."""

from __future__ import annotations

from perceiver_ar_music.listening.music_stats import (
    FIGURE_KEYS, FIGURE_LABELS, ReferenceFigures, SampleReport, formatted_figures,
)


def _table(rows: list[tuple[str, list[str]]]) -> str:
    header = ["", *(FIGURE_LABELS[key] for key in FIGURE_KEYS)]
    lines = [header, *([label, *cells] for label, cells in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
        for line in lines
    )


def _cells(values) -> list[str]:
    return ["-"] * len(FIGURE_KEYS) if values is None else formatted_figures(values)


def _ratio_cells(ratios) -> list[str]:
    return ["-" if ratios.get(key) is None else f"{ratios[key]:.2f}x" for key in FIGURE_KEYS]


def sample_table(name: str, report: SampleReport) -> str:
    """One sample's figures under a title line, then the notes (outside the band, memorisation)."""
    has_primer = report.primer is not None
    title = f"{name}: " + (
        f"primer {report.primer_notes} notes, continuation from {report.boundary_s:.2f} s"
        if has_primer else "no primer"
    ) + f", {report.continuation.note_count if report.continuation else 0} notes generated"
    rows: list[tuple[str, list[str]]] = []
    if has_primer:
        rows.append(("primer", _cells(report.primer.as_dict())))
    rows.append(("continuation" if has_primer else "piece", _cells(report.continuation.as_dict() if report.continuation else None)))
    if has_primer and report.continuation:
        rows.append(("  / primer", _ratio_cells(report.vs_primer())))
    for window in report.windows:
        rows.append((f"  {window.label()}", _cells(window.stats.as_dict())))
    if len(report.windows) > 1:
        rows.append(("  last / first", _ratio_cells(report.drift)))
    if report.reference is not None:
        rows.append(("reference median", _cells(report.reference.median)))
        for part, comparison in report.vs_reference.items():
            label = part if has_primer else "piece"
            rows.append((f"  {label} / ref", _ratio_cells(comparison.ratio)))
    lines = [title, _table(rows)]
    for part, comparison in report.vs_reference.items():
        if comparison.outside:
            outside = ", ".join(FIGURE_LABELS[key] for key in comparison.outside)
            lines.append(f"{part if has_primer else 'piece'} outside the reference's 10-90% band: {outside}")
    if report.memorization is not None:
        lines += _memorization_lines(report.memorization, has_primer)
    return "\n".join(lines) + "\n"


def _memorization_lines(memo: dict, has_primer: bool) -> list[str]:
    lines = []
    for part in ("primer", "continuation"):
        match = memo.get(part)
        if match is None:
            continue
        label = part if has_primer else "piece"
        if not match["notes"]:
            lines.append(f"{label}: copies no passage of {memo['min_notes']}+ notes from the reference")
            continue
        lines.append(
            f"{label}: longest passage copied from the reference: {match['notes']} notes, "
            f"{match['seconds']:.1f} s (from {match['query_start_s']:.1f} s), from {match['name']} "
            f"at note {match['piece_note']} ({match['piece_start_s']:.1f} s)"
        )
    if has_primer and memo.get("continuation"):
        replay = " (that passage is also in the primer)" if memo["match_replays_primer"] else ""
        lines[-1] += replay
        replayed = memo["continuation_in_primer"]
        lines.append(
            f"continuation replays at most {replayed} successive notes of the primer" if replayed
            else f"continuation replays no passage of {memo['min_notes']}+ notes of the primer"
        )
    return lines


def collection_table(name: str, figures: ReferenceFigures) -> str:
    """The median and 10th-90th percentile band of a collection's `ReferenceFigures`."""
    rows = [("median", _cells(figures.median)), ("10th pct", _cells(figures.low)), ("90th pct", _cells(figures.high))]
    return f"{name}: {figures.pieces} pieces\n{_table(rows)}\n"
