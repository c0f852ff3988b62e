"""The report: every plot and the summary from a real run; sensible output without data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import reallocating

from steersman.campaign import write_report
from steersman.campaign.inspection import status
from steersman.campaign.report import (
    Trace,
    assign_lanes,
    busy_average,
    load_trace,
    slot_capacity,
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "run"
    assert reallocating.main(["--run-dir", str(path), "--simulations", "24", "--workers", "3",
                              "--retrain-every", "8", "--sim-delay", "0.005",
                              "--ml-delay", "0.02"]) == 0
    return path


def test_report_writes_every_plot_and_a_summary(run_dir: Path) -> None:
    out = write_report(run_dir)
    assert out == run_dir / "report"
    for name in ("allocation.png", "utilisation.png", "durations.png", "overhead.png",
                 "best.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    text = (out / "summary.txt").read_text()
    assert "State: finished" in text
    assert "Best value (min, topic 'simulate')" in text  # the goal the thinker saved
    assert "ackley" in text and "reorder" in text


def test_report_options_and_errors(run_dir: Path, tmp_path: Path) -> None:
    out = write_report(run_dir, out_dir=tmp_path / "elsewhere", goal="max",
                       value_topic="simulate")
    assert "Best value (max" in (out / "summary.txt").read_text()
    with pytest.raises(ValueError, match=r"unknown goal 'best'; valid goals: \['max', 'min'\]"):
        write_report(run_dir, goal="best")
    with pytest.raises(ValueError, match="unknown value_topic 'nope'"):
        write_report(run_dir, value_topic="nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "missing")


def test_report_of_a_run_without_results(tmp_path: Path) -> None:
    (tmp_path / "params.json").write_text(json.dumps({"thinker": "x.Y"}))
    out = write_report(tmp_path)
    assert "No results yet" in (out / "summary.txt").read_text()
    assert not list(out.glob("*.png"))


def test_lanes_never_overlap_and_busy_average_is_exact(run_dir: Path) -> None:
    trace = load_trace(run_dir / "results.jsonl")
    lanes = assign_lanes(trace)
    assert 1 <= len(lanes.labels) <= 3 + 1  # 3 workers (+1: an ML task may outlive done)
    started, ended = trace.array("started"), trace.array("ended")
    for row in range(len(lanes.labels)):
        tasks = sorted((started[i], ended[i]) for i in range(len(trace)) if lanes.row[i] == row)
        assert all(a[1] <= b[0] for a, b in zip(tasks, tasks[1:]))
    import numpy as np

    busy = busy_average(np.array([0.0, 1.0]), np.array([2.0, 3.0]), np.array([0.0, 1.0, 2.0,
                                                                             3.0]))
    assert busy.tolist() == [1.0, 2.0, 1.0]


def two_sessions() -> Trace:
    """Two workers busy the whole time in each of two sessions 100 s apart (new processes in
    the second: a resumed campaign)."""
    trace = Trace()
    for session, pids in ((0.0, (1, 2)), (110.0, (3, 4))):
        for pid in pids:
            for k in range(10):
                trace.task_id.append(f"{pid}-{k}")
                trace.worker.append(f"host pid {pid}")
                trace.started.append(1000 + session + k)
                trace.ended.append(1000 + session + k + 1)
    return trace


def test_utilisation_of_a_resumed_run_counts_each_session_alone() -> None:
    """Not 4 slots over 120 s (8%): 2 slots over 10 s, twice, all busy."""
    trace = two_sessions()
    capacity = slot_capacity(trace, assign_lanes(trace), [999.0, 1109.5])
    assert capacity.slots == [2, 2] and capacity.most_at_once == 2
    assert capacity.utilisation == pytest.approx(1.0)
    alone = slot_capacity(trace, assign_lanes(trace), [])  # no sessions known: one span
    assert alone.slots == [4] and alone.utilisation == pytest.approx(40 / (4 * 120))


def test_status_gives_session_starts_and_one_session_reads_plainly(run_dir: Path) -> None:
    info = status(run_dir, last=0)
    assert info["session_starts"] and info["sessions"] == len(info["session_starts"])
    text = (write_report(run_dir) / "summary.txt").read_text()
    assert "Workers: " in text and "sessions" not in text.split("Workers: ")[1].split("\n")[0]
