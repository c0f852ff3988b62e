"""Kill a running campaign with SIGKILL at random points, resume it each time, compare.

The campaign runs in a subprocess through the CLI (``steersman run`` then ``steersman
resume``). The test reads the campaign's ``processed N`` lines and kills it once N reaches a
random target: sometimes during replay, sometimes while live results flow, once right after
start-up. After the last resume, the union of results must equal a clean run's, with each
number processed once (the campaign raises otherwise) and each task id recorded once.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steersman.campaign import status

CAMPAIGN = Path(__file__).parent / "campaigns" / "squares.py"
SRC = Path(__file__).resolve().parents[2] / "src"
TASKS = 200
KILLS = 7


def _start(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, STEERSMAN_TEST_PROGRESS="1",
               PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "steersman.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _kill_when(process: subprocess.Popen[str], target: int) -> int | None:
    """Read progress lines until `target` results are processed, then SIGKILL the campaign.

    Returns the last count read, or None if the campaign ended first.
    """
    assert process.stdout is not None
    count = 0
    for line in process.stdout:
        if line.startswith("processed "):
            count = int(line.split()[1])
        if (line.startswith("started") and target == 0) or (target and count >= target):
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            _reap(process)
            return count
    return None


def _reap(process: subprocess.Popen[str]) -> None:
    """Kill what is left of the campaign's process group (its task server)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def _finish(process: subprocess.Popen[str]) -> None:
    out, err = process.communicate(timeout=60)
    _reap(process)
    assert process.returncode == 0, err[-3000:]


def _released(run_dir: Path) -> dict:
    """The status once every process of the killed campaign has exited: SIGKILL is sent to
    the whole group at once, but each process takes its own moment to die and drop the lock."""
    deadline = time.monotonic() + 10
    info = status(run_dir)
    while info["alive"] and time.monotonic() < deadline:
        time.sleep(0.01)
        info = status(run_dir)
    return info


def _results(run_dir: Path) -> tuple[list[str], dict[int, int]]:
    ids, values = [], {}
    for line in (run_dir / "results.jsonl").read_text().splitlines():
        data = json.loads(line)
        ids.append(data["task_id"])
        values[data["inputs"][0][0]] = data["value"]
    return ids, values


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_sigkill_at_random_points_then_resume(tmp_path: Path) -> None:
    args = ["--tasks", str(TASKS), "--slots", "4", "--delay", "0.004"]
    clean_dir = tmp_path / "clean"
    _finish(_start("run", str(CAMPAIGN), "--run-dir", str(clean_dir), *args))
    clean_ids, clean = _results(clean_dir)
    assert len(clean_ids) == len(set(clean_ids)) == TASKS

    run_dir = tmp_path / "killed"
    rng = random.Random(20261121)
    process = _start("run", str(CAMPAIGN), "--run-dir", str(run_dir), *args)
    done, kills, early = 0, 0, 0
    for round_ in range(KILLS):
        if round_ == 1:
            target = 0  # right after start-up, before any result is replayed
        elif done and rng.random() < 0.3:
            target = rng.randint(1, done)  # while the journal is being replayed
        else:
            target = min(TASKS - 1, done + rng.randint(5, 35))  # while results flow
        reached = _kill_when(process, target)
        if reached is None:  # finished before the target
            break
        kills += 1
        early += target == 0  # killed before run(): no session recorded
        done = max(done, reached)
        info = _released(run_dir)
        assert info["state"] == "killed" and not info["alive"]
        process = _start("resume", str(run_dir))
    _finish(process)
    assert kills >= KILLS - 2

    ids, values = _results(run_dir)
    assert len(ids) == len(set(ids)), "a task id was recorded twice"
    assert values == clean, "the resumed campaign's results differ from a clean run's"
    info = status(run_dir)
    assert info["state"] == "finished" and info["pending"] == 0
    # a kill right after start-up may land before or after the session is recorded
    assert kills + 1 - early <= info["sessions"] <= kills + 1
