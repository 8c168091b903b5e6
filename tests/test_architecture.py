"""The tree reads as the pipeline (docs/architecture.md): every module is named in the doc, and
no stage imports the rooms on top of it (commands, studio, cli) or, for `runtime`, any stage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "perceiver_ar_music"
STAGES = ("data", "model", "training", "sampling", "listening", "runtime")
ON_TOP = ("commands", "studio", "cli")
TOOLS = "tools"  # on top too: the scripts' logic drives the commands (e.g. the bundled recipe's flags)


def modules(stage: str) -> list[Path]:
    return sorted(p for p in (PACKAGE / stage).glob("*.py") if p.name != "__init__.py")


def imported(path: Path) -> set[str]:
    """The perceiver_ar_music modules a file imports (at any depth of its code)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("perceiver_ar_music"):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("perceiver_ar_music"))
    return names


def test_every_module_of_every_stage_is_named_in_the_architecture_doc():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = [f"{stage}/{p.stem}" for stage in (*STAGES, TOOLS) for p in modules(stage) if f"`{p.stem}`" not in doc]
    assert not missing, f"docs/architecture.md does not name: {missing}"


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_the_rooms_on_top(stage):
    upward = {f"{stage}/{p.name}": sorted(n for n in imported(p)
                                          if any(n.startswith(f"perceiver_ar_music.{top}") for top in (*ON_TOP, TOOLS)))
              for p in modules(stage)}
    assert not {k: v for k, v in upward.items() if v}


def test_runtime_stands_on_nothing_of_the_package():
    for p in modules("runtime"):
        above = [n for n in imported(p) if not n.startswith("perceiver_ar_music.runtime")]
        assert not above, f"runtime/{p.name} imports {above}"


def test_scripts_are_thin_entry_points_listed_by_kind():
    """Every script is in scripts/README.md's table; none edits sys.path (but gpu_check, which runs
    where the package is not installed) or imports another script."""
    readme = (ROOT / "scripts" / "README.md").read_text()
    scripts = sorted(p for p in (ROOT / "scripts").iterdir() if p.suffix in (".py", ".sh"))
    assert [p.name for p in scripts if f"`{p.name}`" not in readme] == []
    names = {p.stem for p in scripts}
    for p in scripts:
        if p.suffix != ".py":
            continue
        text = p.read_text()
        if p.name != "gpu_check.py":
            assert "sys.path" not in text, p.name
        assert not (imported_top_level(p) & names), p.name


def imported_top_level(path: Path) -> set[str]:
    """Top-level module names a script imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names
