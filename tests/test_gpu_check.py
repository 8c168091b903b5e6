"""The GPU check script keeps working: its CPU dry run of the correctness sections passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    sections = ["check_fused_attention", "check_compiled_flash", "check_cached_decoding", "sweep_long_context"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), str(tmp_path), "--device", "cpu", "--tiny", "--budget-s", "1800", "--only", *sections],
        capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not [name for name in results if name.startswith("ERROR")], result.stdout[-2000:]
    checks = [value for value in results.values() if isinstance(value, dict) and "ok" in value]
    assert len(checks) >= 5 and all(value["ok"] for value in checks), checks
    assert results["section_seconds"].keys() == set(sections)
    assert result.stdout.rstrip().splitlines()[-1].startswith("total")  # the table comes last
