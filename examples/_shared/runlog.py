"""Where an example's run goes, and reading back what the thinker recorded there.

The thinker itself (``BaseThinker(run_dir=...)``) writes ``results.jsonl``, ``allocation.jsonl``,
``params.json`` and the log; the examples read them back to draw their figures.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any


def new_run_dir(name: str, run_dir: str | Path | None = None) -> Path:
    """The directory a run writes to: `run_dir` if given, else ``runs/<name>-<timestamp>``."""
    if run_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        run_dir = Path("runs") / f"{name}-{stamp}"
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    """The lines of a ``results.jsonl`` file, as dictionaries."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_allocation(path: Path) -> list[dict[str, Any]]:
    """The lines of an ``allocation.jsonl`` file, as dictionaries."""
    return read_results(path)
