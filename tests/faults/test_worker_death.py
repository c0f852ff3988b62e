"""Fault 1: a worker process killed with SIGKILL mid-task, on the local engines.

The killed task comes back failed (``worker_lost``) or, with retries left, runs again and
succeeds; the other tasks of the campaign are not lost and nothing hangs.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import fault_tasks as tasks
import pytest
from fault_helpers import Collect, Request, make_fifo, read_pid, run_in_thread

from steersman import LocalTaskServer, PipeQueues
from steersman.task_server import ExecutorTaskServer, TaskServer

METHODS = [tasks.double, tasks.report_pid_and_block, tasks.survive_second_time]


def _local(queues: PipeQueues) -> TaskServer:
    return LocalTaskServer(queues, METHODS, threads=False, num_workers=2)


def _pool(queues: PipeQueues) -> TaskServer:
    return ExecutorTaskServer(METHODS, queues, {"pool": lambda: ProcessPoolExecutor(2)})


@pytest.fixture(params=[_local, _pool], ids=["local-processes", "executor-process-pool"])
def served(request: pytest.FixtureRequest) -> Iterator[PipeQueues]:
    make: Callable[[PipeQueues], TaskServer] = request.param
    queues = PipeQueues()
    server = make(queues)
    server.start()
    yield queues
    queues.send_kill_signal()
    server.join(20)
    assert server.exitcode == 0, "the server must shut down cleanly after losing a worker"
    queues.close()


def _campaign(queues: PipeQueues, victim: Request, fifo: Path) -> Collect:
    """Run the victim among ordinary tasks, killing the victim's worker once it reports."""
    others = [Request("double", (i,), {"max_retries": 2}) for i in range(8)]
    thinker = Collect(queues, [victim, *others])
    killed = threading.Event()

    def kill() -> None:
        os.kill(read_pid(fifo), signal.SIGKILL)
        killed.set()

    threading.Thread(target=kill, daemon=True).start()
    thread, raised = run_in_thread(thinker)
    thread.join(30)
    assert not thread.is_alive(), "the campaign hung after a worker was killed"
    assert not raised, raised
    assert killed.is_set()
    assert sorted(r.value for r in thinker.by_method("double")) == [2 * i for i in range(8)]
    assert not thinker.duplicates
    assert queues.active_count == 0
    return thinker


@pytest.mark.timeout(40)
def test_killed_worker_fails_its_task_and_the_campaign_goes_on(
    served: PipeQueues, tmp_path: Path,
) -> None:
    """Without retries the task comes back failed as worker_lost; the others all succeed."""
    fifo = make_fifo(tmp_path)
    thinker = _campaign(served, Request("report_pid_and_block", (str(fifo),)), fifo)
    (victim,) = thinker.by_method("report_pid_and_block")
    assert victim.success is False and victim.failure_info is not None
    assert victim.failure_info.worker_lost, victim.failure_info
    assert "WorkerLost" in victim.failure_info.exception


@pytest.mark.timeout(40)
def test_killed_worker_task_is_retried_and_succeeds(served: PipeQueues, tmp_path: Path) -> None:
    """With a retry left, the killed task runs again on a fresh worker and succeeds."""
    fifo = make_fifo(tmp_path)
    victim = Request("survive_second_time", (str(fifo), str(tmp_path / "marker")),
                     {"max_retries": 1})
    thinker = _campaign(served, victim, fifo)
    (result,) = thinker.by_method("survive_second_time")
    assert result.success, result.failure_info
    assert result.value == "survived" and result.retries == 1
