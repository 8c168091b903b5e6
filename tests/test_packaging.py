"""Packaging: the tokenizer presets live in the top-level tokenization/ folder of the checkout and
ship inside the package (perceiver_ar_music/tokenization/) in a wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import pytest

from perceiver_ar_music.data import tokenizer
from perceiver_ar_music.data.tokenizer import available_presets, load_tokenizer, preset_dir

ROOT = Path(__file__).resolve().parents[1]
PACKAGED_PRESETS = "perceiver_ar_music/tokenization"


def _installed_copy(site: Path) -> Path:
    """A package folder under `site` laid out as a wheel installs it (the presets only)."""
    package = site / "perceiver_ar_music"
    (package / "tokenization").mkdir(parents=True)
    shutil.copy(ROOT / "tokenization" / "performance.json", package / "tokenization")
    return package


def test_checkout_presets_are_found():
    assert "performance" in available_presets()
    assert preset_dir() == ROOT / "tokenization"


def test_without_the_checkout_folder_the_package_copy_is_used(monkeypatch, tmp_path):
    monkeypatch.setattr(tokenizer, "PRESET_DIR", tmp_path / "missing" / "tokenization")
    assert preset_dir() == Path(str(resources.files("perceiver_ar_music"))) / "tokenization"

    package = _installed_copy(tmp_path / "site")
    monkeypatch.setattr(tokenizer, "resources", SimpleNamespace(files={"perceiver_ar_music": package}.__getitem__))
    assert preset_dir() == package / "tokenization"
    assert available_presets() == ["performance"]
    assert load_tokenizer().hash == load_tokenizer(ROOT / "tokenization" / "performance.json").hash


def test_a_tokenization_folder_outside_a_checkout_is_not_the_presets(monkeypatch, tmp_path):
    """Beside an installed package (site-packages) a stray top-level tokenization/ is ignored."""
    stray = tmp_path / "site-packages" / "tokenization"
    stray.mkdir(parents=True)
    (stray / "other.json").write_text("{}")
    package = _installed_copy(tmp_path / "site-packages")
    monkeypatch.setattr(tokenizer, "PRESET_DIR", stray)
    monkeypatch.setattr(tokenizer, "resources", SimpleNamespace(files={"perceiver_ar_music": package}.__getitem__))
    assert available_presets() == ["performance"]


def test_setuptools_lists_every_package_and_maps_the_presets():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "perceiver_ar_music").rglob("__init__.py")
    }
    assert set(config["packages"]) == on_disk | {"perceiver_ar_music.tokenization"}
    assert config["package-dir"] == {"perceiver_ar_music.tokenization": "tokenization"}
    assert config["package-data"]["perceiver_ar_music.tokenization"] == ["*.json"]


def _build_wheel(out: Path) -> Path:
    """Build the wheel offline from a copy of the sources (the checkout gets no build/ folder)."""
    pytest.importorskip("setuptools")
    pytest.importorskip("pip")
    source = out / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("perceiver_ar_music", "tokenization"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "--no-cache-dir", "--disable-pip-version-check", "-q", "-w", str(out / "dist"), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (out / "dist").glob("perceiver_ar_music-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_ships_the_presets_inside_the_package(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert f"{PACKAGED_PRESETS}/performance.json" in names
        shipped = json.loads(archive.read(f"{PACKAGED_PRESETS}/performance.json"))
        (top_level,) = [name for name in names if name.endswith(".dist-info/top_level.txt")]
        assert archive.read(top_level).decode().split() == ["perceiver_ar_music"]
        archive.extractall(tmp_path / "site")
    assert shipped == json.loads((ROOT / "tokenization" / "performance.json").read_text())
    assert not any(name.startswith("tokenization/") for name in names)  # no top-level package
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "perceiver_ar_music").rglob("*.py")}
    assert modules <= names

    # The unpacked wheel, imported ahead of the checkout, finds its own presets.
    probe = (
        "import perceiver_ar_music.data.tokenizer as t; "
        "print(t.__file__); print(t.preset_dir()); print(t.available_presets()); print(t.load_tokenizer().hash)"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    module_file, presets_dir, names_listed, digest = done.stdout.split("\n")[:4]
    assert Path(module_file).is_relative_to(tmp_path / "site")
    assert Path(presets_dir) == tmp_path / "site" / "perceiver_ar_music" / "tokenization"
    assert names_listed == "['performance']"
    assert digest == load_tokenizer().hash
