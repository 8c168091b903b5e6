"""scripts/bench_long_continuations.py's summary over seeds: medians per primer and rules."""

from __future__ import annotations


import numpy as np
import pytest

from perceiver_ar_music.listening.music_stats import sample_report

from perceiver_ar_music.tools import long_continuations as bench



def run(mode: str, per_second: float, held: bool, cache: bool = True) -> dict:
    """One bench sample: 120 s of one voice at `per_second` notes/s, the last note held 10 s."""
    step = 1.0 / per_second
    notes = [(60 + i % 12, i * step, i * step + 0.8 * step, 80) for i in range(int(120 * per_second))]
    if held:
        notes[-1] = (notes[-1][0], notes[-1][1], notes[-1][1] + 10.0, 80)
    report = sample_report(np.array(notes, dtype=float), 0, 0.0, 30.0)
    return {"primer": "/x/primer.mid", "seed": 0, "mode": mode, "cache": cache, "report": report.as_dict()}


def test_the_summary_takes_medians_over_seeds_and_pools_long_notes():
    samples = [run("off", 2.0, True), run("off", 4.0, False), run("off", 8.0, False),
               run("guards", 3.0, False), run("off", 50.0, False, cache=False)]  # the reference run: left out
    rows = {r["mode"]: r for r in bench.mode_summary(samples)}
    assert set(rows) == {"off", "guards"}
    off = rows["off"]
    assert off["samples"] == 3 and off["primer"] == "primer"
    assert off["notes_per_second"] == pytest.approx(4.0, rel=0.02)  # the median, not the mean (4.67)
    assert off["long_note_fraction"] == pytest.approx(1 / (240 + 480 + 960))  # one held note of all
    assert off["drift_notes_per_second"] == pytest.approx(1.0, rel=0.05)
    assert rows["guards"]["long_note_fraction"] == 0.0
    lines = bench.summary_table(bench.mode_summary(samples))
    assert lines[1].startswith("primer | off | 3 |") and len(lines) == 3
