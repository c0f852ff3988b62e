"""The lane: requests that need nothing of the server go from the thinker to the workers.

Each test that says a request took (or did not take) the lane shows it by stopping the task
server's process (SIGSTOP): a lane task still runs and comes back, a request sent through the
server waits until the server is let go on.
"""

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from steersman import LocalTaskServer, PipeQueues, PythonGeneratorMethod
from steersman.queue.lane import LANE_BYTES


def square(x):
    return x * x


def size_of(data):
    return len(data)


def blob(n):
    return np.arange(n, dtype=np.uint8)


def stream(sizes):
    for size in sizes:
        yield b"x" * size
    return "done"


def report_pid(path):
    with open(path, "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(60)


def report_pid_and_wait(path, gate):
    """Write this worker's pid, then block until the test writes to the named pipe `gate`."""
    with open(path, "w") as handle:
        handle.write(str(os.getpid()))
    with open(gate) as stream:
        stream.read()
    return os.getpid()


def fail(message):
    raise ValueError(message)


def meet(directory, count):
    """Wait (up to 5 s) until `count` tasks have started; return the worker pids seen."""
    with open(os.path.join(directory, str(os.getpid())), "w"):
        pass
    deadline = time.monotonic() + 5
    while len(os.listdir(directory)) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    return sorted(os.listdir(directory))


METHODS = [square, size_of, blob, report_pid, report_pid_and_wait, fail, meet,
           PythonGeneratorMethod(stream)]


@pytest.fixture
def served() -> Iterator[tuple[PipeQueues, LocalTaskServer]]:
    queues = PipeQueues()
    server = LocalTaskServer(queues, METHODS, threads=False, num_workers=2)
    server.start()
    queues.send_inputs(1, method="square")  # the workers are up once a task came back
    assert queues.get_result(timeout=20).value == 1
    yield queues, server
    os.kill(server.pid, signal.SIGCONT)
    queues.send_kill_signal()
    server.join(20)
    assert server.exitcode == 0
    queues.close()


@contextmanager
def server_stopped(server: LocalTaskServer) -> Iterator[None]:
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


@pytest.mark.timeout(30)
def test_plain_requests_skip_the_server(served):
    queues, server = served
    with server_stopped(server):
        queues.send_inputs(7, method="square")
        result = queues.get_result(timeout=10)
    assert result is not None and result.success and result.value == 49
    assert result.timestamp.input_received is not None


@pytest.mark.timeout(30)
def test_after_a_request_that_needs_the_server_every_request_goes_through_it(served):
    queues, server = served
    queues.send_inputs(2, method="square", priority=3)
    assert queues.get_result(timeout=10).value == 4
    with server_stopped(server):
        queues.send_inputs(3, method="square")  # plain, but after a prioritized one
        assert queues.get_result(timeout=0.5) is None
    assert queues.get_result(timeout=10).value == 9


@pytest.mark.timeout(30)
def test_large_requests_go_through_the_server(served):
    queues, server = served
    with server_stopped(server):
        queues.send_inputs(b"x" * (2 * LANE_BYTES), method="size_of")
        assert queues.get_result(timeout=0.5) is None
    assert queues.get_result(timeout=10).value == 2 * LANE_BYTES
    # That result carried its large inputs back, so the server wrote it holding the result
    # pipe's write lock; a worker's direct result takes the lock too, so once one arrives the
    # server no longer holds it (stopped while holding it, it would hold up every worker).
    queues.send_inputs(2, method="square")
    assert queues.get_result(timeout=10).value == 4
    with server_stopped(server):  # a large request does not turn the lane off
        queues.send_inputs(5, method="square")
        assert queues.get_result(timeout=10).value == 25


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [100_000, 6_000_000])
def test_large_results_of_lane_tasks_arrive_whole(served, size):
    """Too large to go to the thinker in one atomic write: relayed by the server."""
    queues, _ = served
    queues.send_inputs(size, method="blob")
    result = queues.get_result(timeout=30)
    assert result is not None and result.success, result.failure_info
    assert np.array_equal(result.value, np.arange(size, dtype=np.uint8))


@pytest.mark.timeout(60)
def test_streamed_results_of_a_lane_task_keep_their_order(served):
    """Small, then one too large to go directly, then small: the later ones follow it."""
    queues, _ = served
    sizes = [10, 20, 100_000, 30, 40]
    queues.send_inputs(sizes, method="stream")
    results = [queues.get_result(timeout=30) for _ in range(len(sizes) + 1)]
    assert [len(r.value) for r in results[:-1]] == sizes
    assert all(r.complete is False for r in results[:-1])
    assert results[-1].complete and results[-1].value == "done"
    assert queues.active_count == 0


@pytest.mark.timeout(30)
def test_a_failing_lane_task_comes_back_failed(served):
    queues, server = served
    with server_stopped(server):
        queues.send_inputs("no good", method="fail")
        result = queues.get_result(timeout=10)
    assert result is not None and result.success is False
    assert "no good" in result.failure_info.exception


@pytest.mark.timeout(60)
def test_a_worker_killed_in_a_lane_task_fails_it_and_work_goes_on(served, tmp_path):
    queues, _ = served
    path = tmp_path / "pid"
    queues.send_inputs(str(path), method="report_pid")
    deadline = time.monotonic() + 20
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, "the lane task never started"
        time.sleep(0.01)
    os.kill(int(path.read_text()), signal.SIGKILL)
    result = queues.get_result(timeout=20)
    assert result is not None and result.success is False
    assert result.failure_info.worker_lost and "WorkerLost" in result.failure_info.exception
    assert result.method == "report_pid" and result.args == (str(path),)
    for i in range(10):  # both workers, the replacement among them, still serve the lane
        queues.send_inputs(i, method="square")
    assert sorted(queues.get_result(timeout=20).value for _ in range(10)) == [
        i * i for i in range(10)]
    assert queues.active_count == 0


@pytest.mark.timeout(60)
def test_lane_tasks_sent_before_the_kill_signal_all_finish():
    queues = PipeQueues()
    server = LocalTaskServer(queues, METHODS, threads=False, num_workers=2)
    server.start()
    for i in range(500):
        queues.send_inputs(i, method="square")
    queues.send_kill_signal()
    values = sorted(queues.get_result(timeout=20).value for _ in range(500))
    server.join(20)
    assert server.exitcode == 0
    assert values == [i * i for i in range(500)]
    queues.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("waiting", ["exclusive where the kernel has it", "plain poll"])
def test_lane_requests_sent_at_once_wake_every_idle_worker(tmp_path, monkeypatch, waiting):
    """A lane request wakes one waiting worker, not all: requests sent together must still
    reach every idle worker together, not wait for the first one woken."""
    if waiting == "plain poll":  # the workers are forked: they see the change
        monkeypatch.setattr("steersman.task_server.local._EXCLUSIVE_WAKE_UPS", False)
    workers, rounds = 3, 3
    queues = PipeQueues()
    server = LocalTaskServer(queues, METHODS, threads=False, num_workers=workers)
    server.start()
    try:
        queues.send_inputs(1, method="square")  # the workers are up once a task came back
        assert queues.get_result(timeout=20).value == 1
        for round_ in range(rounds):
            directory = tmp_path / str(round_)
            directory.mkdir()
            for _ in range(workers):
                queues.send_inputs(str(directory), workers, method="meet")
            seen = [queues.get_result(timeout=20) for _ in range(workers)]
            assert all(result.success for result in seen), seen
            assert all(len(result.value) == workers for result in seen), (
                "the tasks did not all run at once:", [result.value for result in seen])
    finally:
        queues.send_kill_signal()
        server.join(20)
        queues.close()
    assert server.exitcode == 0


@pytest.mark.timeout(120)
def test_many_requests_sent_before_any_result_is_read_do_not_deadlock(served):
    """More requests than the lane holds, and more results than the result pipe holds."""
    queues, _ = served
    count = 20_000
    for i in range(count):
        queues.send_inputs(b"y" * (i % 1000), method="size_of")
    sizes = sorted(queues.get_result(timeout=30).value for _ in range(count))
    assert sizes == sorted(i % 1000 for i in range(count))
    assert queues.active_count == 0


@contextmanager
def one_worker() -> Iterator[PipeQueues]:
    queues = PipeQueues()
    server = LocalTaskServer(queues, METHODS, threads=False, num_workers=1)
    server.start()
    try:
        yield queues
    finally:
        queues.send_kill_signal()
        server.join(20)
        assert server.exitcode == 0
        queues.close()


def _release(gate) -> bool:
    """Let a task blocked reading the named pipe `gate` go on; False if none reads it."""
    try:
        descriptor = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # no reader
        return False
    os.close(descriptor)
    return True


def _started(path) -> int:
    deadline = time.monotonic() + 20
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.01)
    return int(path.read_text())


@pytest.mark.timeout(60)
def test_a_server_task_waiting_behind_a_lost_lane_task_runs_on_the_replacement(tmp_path):
    with one_worker() as queues:
        path = tmp_path / "pid"
        lane_task = queues.send_inputs(str(path), method="report_pid")
        pid = _started(path)
        server_task = queues.send_inputs(6, method="square", priority=1)  # to the busy worker
        time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        results = {r.task_id: r for r in (queues.get_result(timeout=20) for _ in range(2))}
    assert results[lane_task].success is False and results[lane_task].failure_info.worker_lost
    assert results[server_task].success and results[server_task].value == 36


@pytest.mark.timeout(60)
def test_a_timeout_behind_a_lane_task_fails_it_and_leaves_the_lane_task_alone(tmp_path):
    """The timed-out task was given to the worker busy with a lane task and never started:
    it fails as timed out, the worker skips it, and the lane task (innocent) completes on the
    same worker, which is not replaced."""
    with one_worker() as queues:
        path, gate = tmp_path / "pid", tmp_path / "gate"
        os.mkfifo(gate)
        lane_task = queues.send_inputs(str(path), str(gate), method="report_pid_and_wait")
        pid = _started(path)
        timed = queues.send_inputs(6, method="square", timeout=0.3)
        first = queues.get_result(timeout=20)
        assert first.task_id == timed and first.success is False and first.timed_out
        assert _release(gate), "the lane task is gone: its worker was killed"
        lane = queues.get_result(timeout=20)
        assert lane.task_id == lane_task, lane.failure_info
        assert lane.success and lane.value == pid
        queues.send_inputs(4, method="square")
        after = queues.get_result(timeout=20)
        assert after.value == 16 and after.worker_info.pid == pid  # never killed
        assert queues.get_result(timeout=0.3) is None  # nothing late of the skipped task
