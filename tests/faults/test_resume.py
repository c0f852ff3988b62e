"""Fault 6: the thinker's process killed with SIGKILL at random points and resumed on its run
directory, again and again: in the end every input has exactly its result, none lost."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

SCRIPT = Path(__file__).with_name("resume_campaign.py")
N = 40
KILLS = 6


def _start(run_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(run_dir), str(N)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.timeout(80)
def test_killed_and_resumed_many_times_loses_nothing(tmp_path: Path) -> None:
    """Kill the thinker after a random number of processed results, KILLS times, then let it
    finish: the final database holds every input's result exactly once."""
    rng = random.Random(2026)
    run_dir = tmp_path / "run"
    for _ in range(KILLS):
        process = _start(run_dir)
        assert process.stdout is not None
        wanted = rng.randint(1, 6)
        seen = 0
        for line in process.stdout:  # blocks on the thinker's output: no polling
            if line.startswith("processed"):
                seen += 1
                if seen == wanted:
                    break
        if process.poll() is not None:  # it finished before the kill: nothing left to test
            break
        children = psutil.Process(process.pid).children(recursive=True)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        process.stdout.close()
        assert process.stderr is not None
        process.stderr.close()
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"the killed thinker's task server lingers: {alive}"
    final = _start(run_dir)
    out, err = final.communicate(timeout=60)
    assert final.returncode == 0, err[-3000:]
    database = {int(k): v for k, v in json.loads((run_dir / "final.json").read_text()).items()}
    assert database == {x: 2 * x for x in range(N)}, "a result was lost or wrong"
    lines = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    finals = sorted(line["inputs"][0][0] for line in lines if line["complete"])
    assert finals == list(range(N)), "the results record lost or repeated a task"
