"""A task raising a BaseException (SystemExit, KeyboardInterrupt, a user's own subclass,
asyncio.CancelledError) fails like any other on every engine: a failed Result naming the
exception, the worker goes on with the next task, the server stops cleanly."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial

import fault_tasks as tasks
import pytest

from steersman import LocalTaskServer, PipeQueues
from steersman.task_server import ExecutorTaskServer
from steersman.task_server.base import TaskServer

METHODS = [tasks.raise_abort, tasks.raise_cancelled, tasks.exit_with, tasks.interrupt,
           tasks.double]
FORK = multiprocessing.get_context("fork")


def _local(threads: bool, queues: PipeQueues) -> TaskServer:
    return LocalTaskServer(queues, METHODS, threads=threads, num_workers=1)


def _pool(factory: Callable[[], object], queues: PipeQueues) -> TaskServer:
    return ExecutorTaskServer(METHODS, queues, {"pool": factory})  # type: ignore[dict-item]


SERVERS = {
    "threads": partial(_local, True),
    "processes": partial(_local, False),
    "thread-pool": partial(_pool, partial(ThreadPoolExecutor, 1)),
    "process-pool": partial(_pool, partial(ProcessPoolExecutor, 1, mp_context=FORK)),
}


@pytest.fixture(params=list(SERVERS))
def queues(request: pytest.FixtureRequest) -> Iterator[PipeQueues]:
    queues = PipeQueues()
    server = SERVERS[request.param](queues)
    server.start()
    yield queues
    queues.send_kill_signal()
    server.join(20)
    alive = server.exitcode is None
    if alive:
        server.kill()
        server.join()
    queues.close()
    assert not alive, "the server did not stop after a task raised a BaseException"
    assert server.exitcode == 0


@pytest.mark.timeout(60)
def test_a_base_exception_of_the_task_fails_it_and_the_worker_serves_on(
        queues: PipeQueues) -> None:
    queues.send_inputs("stop here", method="raise_abort")
    queues.send_inputs(method="raise_cancelled")
    queues.send_inputs(3, method="exit_with")
    queues.send_inputs(method="interrupt")
    queues.send_inputs(21, method="double")
    results = [queues.get_result(timeout=15) for _ in range(5)]
    assert None not in results, "a task that raised a BaseException never came back"
    by_method = {r.method: r for r in results}
    exited, interrupted = by_method["exit_with"], by_method["interrupt"]
    assert not exited.success and exited.failure_info.exception == "SystemExit(3)"
    assert not exited.failure_info.worker_lost
    assert not interrupted.success and "KeyboardInterrupt" in interrupted.failure_info.exception
    aborted, cancelled = by_method["raise_abort"], by_method["raise_cancelled"]
    assert not aborted.success and not aborted.failure_info.worker_lost
    assert aborted.failure_info.exception == "Abort('stop here')"
    assert not cancelled.success and not cancelled.failure_info.worker_lost
    assert "CancelledError('the coroutine was cancelled')" in cancelled.failure_info.exception
    assert by_method["double"].success and by_method["double"].value == 42
    queues.send_inputs(1, method="double")  # the one worker still serves
    assert queues.get_result(timeout=15).value == 2


class CancellingExecutor(ThreadPoolExecutor):
    """An executor whose own machinery fails every task with asyncio.CancelledError (a
    BaseException), outside the task's code."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        import asyncio
        from concurrent.futures import Future

        future: Future[object] = Future()
        future.set_running_or_notify_cancel()
        future.set_exception(asyncio.CancelledError("dropped by the executor"))
        return future


@pytest.mark.timeout(60)
def test_a_base_exception_from_the_executor_itself_fails_the_task() -> None:
    """The server's handling of a future's outcome lets no BaseException escape, and frees the
    executor's slot: both tasks come back failed, and the server stops."""
    queues = PipeQueues()
    server = ExecutorTaskServer([tasks.double], queues,
                                {"pool": partial(CancellingExecutor, 1)})
    server.start()
    try:
        queues.send_inputs(1, method="double")
        queues.send_inputs(2, method="double")
        results = [queues.get_result(timeout=15) for _ in range(2)]
        assert None not in results, "a task whose future raised a BaseException never came back"
        for result in results:
            assert not result.success
            assert "CancelledError('dropped by the executor')" in result.failure_info.exception
    finally:
        queues.send_kill_signal()
        server.join(20)
        if server.exitcode is None:
            server.kill()
            server.join()
    assert server.exitcode == 0
    queues.close()
