"""How far a campaign got, read from its run directory (safe while it runs)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from steersman.campaign.journal import MAGIC
from steersman.campaign.rundir import JOURNAL, RESULTS, lock_holder, read_params
from steersman.campaign.session import JournalState

#: How many of the latest results `status` lists.
LAST_RESULTS = 5


def status(run_dir: str | os.PathLike[str], last: int = LAST_RESULTS) -> dict[str, Any]:
    """Counts per topic, the latest results, and whether a thinker is alive on `run_dir`.

    Returns:
        A JSON-safe dict: ``run_dir``, ``thinker``, ``campaign`` (how ``steersman run``
        launched it), ``state`` (``running``, ``finished``, ``failed``, ``interrupted``,
        ``killed`` — stopped without ending, resumable — or ``not started``), ``alive``,
        ``holder`` (pid and host of the live thinker), ``sessions``, ``started``,
        ``session_starts`` (when each session began), ``last_activity``, ``topics`` (per
        topic: ``submitted``, ``done``, ``failed``, ``pending``), ``results``, ``pending``,
        ``last_results`` and ``error``.

    Raises:
        FileNotFoundError: If `run_dir` is not a run directory.
    """
    path = Path(run_dir).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"run dir {str(path)!r} does not exist")
    journal = path / JOURNAL
    params = read_params(path)
    if not params and not journal.exists():
        raise FileNotFoundError(f"{str(path)!r} is not a run directory (no params.json, no "
                                f"{JOURNAL})")
    if journal.exists() and journal.stat().st_size >= len(MAGIC):
        state = JournalState.load(journal, check=False, with_frames=False)
    else:
        state = JournalState()
    holder = lock_holder(path)
    topics: dict[str, dict[str, int]] = {}

    def counts(topic: str) -> dict[str, int]:
        return topics.setdefault(topic, {"submitted": 0, "done": 0, "failed": 0, "pending": 0})

    for tid, record in state.requests.items():
        entry = counts(record.field(1))
        entry["submitted"] += 1
        if tid not in state.finals:
            entry["pending"] += 1
    for record in state.finals.values():
        entry = counts(record.field(1))
        entry["done" if "S" in record.field(2) else "failed"] += 1

    if holder is not None:
        run_state = "running"
    elif not state.sessions:
        run_state = "not started"
    elif state.ended is None:
        run_state = "killed"
    else:
        run_state = str(state.ended.get("status", "finished"))
    times = [r.time for r in (*state.requests.values(), *state.results)]
    return {
        "run_dir": str(path),
        "thinker": params.get("thinker"),
        "campaign": params.get("campaign"),
        "state": run_state,
        "alive": holder is not None,
        "holder": holder,
        "sessions": len(state.sessions),
        "started": state.sessions[0].get("started") if state.sessions else None,
        "session_starts": [s.get("started") for s in state.sessions],
        "last_activity": max(times) if times else None,
        "topics": dict(sorted(topics.items())),
        "results": len(state.finals),
        "pending": sum(t["pending"] for t in topics.values()),
        "last_results": last_results(path / RESULTS, last),
        "error": (state.ended or {}).get("error"),
    }


def last_results(path: Path, count: int) -> list[dict[str, Any]]:
    """The latest `count` results of a results.jsonl, summarised, oldest first."""
    lines = _tail_lines(path, count)
    out = []
    for line in lines:
        try:
            data = json.loads(line)
        except ValueError:
            continue
        value = data.get("value")
        text = json.dumps(value) if value is not None else "null"
        out.append({
            "task_id": data.get("task_id"),
            "topic": data.get("topic"),
            "method": data.get("method"),
            "success": data.get("success"),
            "value": text if len(text) <= 60 else text[:57] + "...",
            "received": (data.get("timestamp") or {}).get("result_received"),
        })
    return out


def _tail_lines(path: Path, count: int, block: int = 65536) -> list[bytes]:
    if count <= 0 or not path.exists():
        return []
    with open(path, "rb") as stream:
        stream.seek(0, os.SEEK_END)
        end = stream.tell()
        data = b""
        position = end
        while position > 0 and data.count(b"\n") <= count:
            step = min(block, position)
            position -= step
            stream.seek(position)
            data = stream.read(step) + data
    whole = data.split(b"\n")[:-1]  # the last piece is empty, or a torn line
    if position > 0:
        whole = whole[1:]  # the first line may be cut
    return [line for line in whole if line.strip()][-count:]
