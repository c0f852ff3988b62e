"""Tasks that time out and hang keep their worker busy where it cannot be stopped (a thread).
Later tasks still run, and the kill signal still stops the server: the local thread engine
replaces a thread it gave up on; an executor whose every worker is held by such tasks fails
the tasks that wait for it when the server is told to stop."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import fault_tasks as tasks
import pytest
from fault_helpers import make_fifo, strand_then_stop

from steersman import LocalTaskServer, PipeQueues
from steersman.task_server import ExecutorTaskServer
from steersman.task_server.base import TaskServer


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = make_fifo(tmp_path, "gate.fifo")
    yield path
    while tasks.release_fifo(str(path)):  # every hung task that still waits
        pass


def _stop(queues: PipeQueues, server: TaskServer, seconds: float = 20) -> bool:
    """Send the kill signal; whether the server stopped within `seconds` (killed if not)."""
    queues.send_kill_signal()
    server.join(seconds)
    stopped = server.exitcode is not None
    if not stopped:
        server.kill()
        server.join()
    queues.close()
    return stopped


@pytest.mark.timeout(60)
def test_threads_given_up_on_are_replaced(fifo: Path) -> None:
    """The one thread hangs in a timed-out task, then its replacement does: later tasks run on
    the next replacement, and once the hung tasks end their threads exit, leaving one."""
    queues = PipeQueues()
    server = LocalTaskServer(queues, [tasks.wait_fifo, tasks.double, tasks.other_task_threads],
                             threads=True, num_workers=1)
    server.start()
    stopped = False
    try:
        for _ in range(2):
            queues.send_inputs(str(fifo), method="wait_fifo", timeout=0.2)
        hung = [queues.get_result(timeout=10) for _ in range(2)]
        assert all(r is not None and r.timed_out for r in hung), hung
        for i in range(4):
            queues.send_inputs(i, method="double")
        doubled = [queues.get_result(timeout=10) for _ in range(4)]
        assert None not in doubled, "tasks sent after the timeouts never ran"
        assert sorted(r.value for r in doubled) == [0, 2, 4, 6]
        while tasks.release_fifo(str(fifo)):
            pass
        queues.send_inputs(method="other_task_threads")
        left = queues.get_result(timeout=20)
        assert left.success and left.value == [], left.value
        assert queues.get_result(timeout=0.3) is None  # late results of the hung tasks dropped
    finally:
        stopped = _stop(queues, server)
    assert stopped and server.exitcode == 0


@pytest.mark.timeout(60)
def test_kill_signal_fails_tasks_no_thread_of_the_pool_can_start(fifo: Path) -> None:
    """A thread pool's only thread hangs in a timed-out task: the tasks waiting for it come
    back failed when the server is told to stop, and the server stops."""
    queues = PipeQueues()
    server = ExecutorTaskServer([tasks.wait_fifo, tasks.double], queues,
                                {"pool": partial(ThreadPoolExecutor, 1)})
    server.start()
    stopped = False
    try:
        failed = strand_then_stop(queues, fifo, timeout=0.2, waiting=3, wait=10)
        assert all("'pool'" in result.failure_info.exception for result in failed)
        server.join(20)
        stopped = server.exitcode is not None
    finally:
        if not stopped:
            stopped = _stop(queues, server)
        else:
            queues.close()
    assert stopped, "the server did not stop: its only thread hangs"
    assert server.exitcode == 0
