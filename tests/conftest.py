"""Shared test setup: make the repository importable and keep torch on a fixed thread count."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True, scope="session")
def _project_cache(tmp_path_factory):
    """perceiver-music's cache (MIDI folders prepared by train/evaluate) in a temporary folder."""
    import os

    os.environ["PERCEIVER_MUSIC_CACHE"] = str(tmp_path_factory.mktemp("perceiver-music-cache"))
    yield


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Every test starts from the same torch RNG state."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        yield
        return
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """torch on one thread for the test (a steady pace on a shared machine); see `pytestmark`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Synthetic performances prepared into train/validation/test, once per module."""
    from tests.tiny import prepared_corpus

    return prepared_corpus(tmp_path_factory.mktemp("corpus"))
