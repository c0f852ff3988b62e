"""Load the examples' command lines by path (each directory has its own ``campaign.py``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_example(name: str, module: str = "campaign") -> ModuleType:
    """Import ``examples/<name>/<module>.py`` under a name of its own."""
    unique = f"steersman_example_{name}" + ("" if module == "campaign" else f"_{module}")
    if unique in sys.modules:
        return sys.modules[unique]
    spec = importlib.util.spec_from_file_location(unique, EXAMPLES / name / f"{module}.py")
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[unique] = loaded
    spec.loader.exec_module(loaded)
    return loaded


def is_png(path: Path) -> bool:
    """Whether `path` is a non-empty PNG file."""
    return path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.fixture(name="load_example")
def _load_example() -> object:
    """The loader of example modules, for tests."""
    return load_example


@pytest.fixture(name="is_png")
def _is_png() -> object:
    """The PNG check, for tests."""
    return is_png


@pytest.fixture(autouse=True)
def _quiet_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
