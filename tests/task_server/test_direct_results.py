"""Worker processes hand small successful results straight to the thinker.

The server is left out of the return path; everything it decides (retries, timeouts, the order
of streamed results, the end of the campaign) must come out as before.
"""

import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest

from steersman import LocalTaskServer, PipeQueues, PythonGeneratorMethod
from steersman.queue.pipe import DirectWriter, PipeChannel


def slow_square(x, delay):
    time.sleep(delay)
    return x * x


def array_of(n):
    return np.arange(n, dtype=np.float64)


def stream(n):
    yield from range(n)
    return "done"


def fail_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return "second attempt"


@pytest.fixture
def served():
    queues = PipeQueues()
    methods = [slow_square, array_of, fail_once, PythonGeneratorMethod(stream, name="stream")]
    server = LocalTaskServer(queues, methods, threads=False, num_workers=2)
    server.start()
    yield queues, server
    os.kill(server.pid, signal.SIGCONT)
    queues.send_kill_signal()
    server.join(30)
    assert server.exitcode == 0


def test_small_result_arrives_while_the_server_is_stopped(served):
    queues, server = served
    queues.send_inputs(3, 0.5, method="slow_square")
    time.sleep(0.2)  # the worker has the task; the server will not run again until SIGCONT
    os.kill(server.pid, signal.SIGSTOP)
    result = queues.get_result(timeout=10)
    assert result.success and result.value == 9


def test_large_result_still_goes_through_the_server(served):
    queues, server = served
    x = np.arange(100_000.0)
    queues.send_inputs(x, 0.5, method="slow_square", keep_inputs=False)
    time.sleep(0.2)
    os.kill(server.pid, signal.SIGSTOP)
    assert queues.get_result(timeout=1.5) is None  # 800 kB: not whole in one atomic write
    os.kill(server.pid, signal.SIGCONT)
    assert np.array_equal(queues.get_result(timeout=30).value, x * x)


def test_small_and_large_results_from_two_workers_stay_whole(served):
    """Direct writes and the server's large writes share the pipe without mixing."""
    queues, _ = served
    sizes = [10, 300_000, 1, 50_000, 3, 200_000, 7, 120_000] * 10
    for n in sizes:
        queues.send_inputs(n, method="array_of", keep_inputs=True)
    seen = []
    for _ in sizes:
        result = queues.get_result(timeout=30)
        n = result.args[0]
        assert np.array_equal(result.value, np.arange(float(n)))
        seen.append(n)
    assert sorted(seen) == sorted(sizes)
    assert queues.wait_until_done(timeout=5)


def test_streamed_results_come_before_the_final_one(served):
    queues, _ = served
    queues.send_inputs(5, method="stream")
    values = []
    while True:
        result = queues.get_result(timeout=30)
        values.append(result.value)
        if result.complete:
            break
    assert values == [0, 1, 2, 3, 4, "done"]


def test_failures_go_through_the_server_and_are_retried(served, tmp_path):
    queues, _ = served
    queues.send_inputs(str(tmp_path / "marker"), method="fail_once", max_retries=1)
    result = queues.get_result(timeout=30)
    assert result.success and result.value == "second attempt" and result.retries == 1


def test_a_timed_out_task_is_reported_once(served):
    queues, _ = served
    queues.send_inputs(1, 5.0, method="slow_square", timeout=0.3)
    result = queues.get_result(timeout=30)
    assert result.success is False and result.timed_out
    assert queues.get_result(timeout=0.5) is None  # the worker was killed: no late result


def test_the_server_waits_for_direct_results_before_stopping():
    queues = PipeQueues()
    server = LocalTaskServer(queues, [slow_square], threads=False, num_workers=2)
    server.start()
    for i in range(6):
        queues.send_inputs(i, 0.1, method="slow_square")
    queues.send_kill_signal()
    values = sorted(queues.get_result(timeout=30).value for _ in range(6))
    server.join(30)
    assert values == [i * i for i in range(6)] and server.exitcode == 0


def test_direct_writer_declines_messages_larger_than_an_atomic_write():
    channel = PipeChannel()
    writer = channel.direct_writer()
    try:
        assert writer([b"x" * 100])
        assert not writer([b"x" * DirectWriter.limit])
        assert bytes(channel.read(1)) == b"x" * 100
        assert channel.read(0.05) is None  # the declined message wrote nothing
    finally:
        writer.close()


def _write_small(writer: DirectWriter, count: int) -> None:
    for _ in range(count):
        assert writer([b"s" * 64])


def test_shared_lock_keeps_direct_writes_out_of_a_large_write():
    """Another process's direct writes wait while a large message is being written."""
    channel = PipeChannel()
    writer = channel.direct_writer()
    big = b"b" * (3 << 20)  # larger than the pipe buffer: written in pieces as it is read
    writers = [multiprocessing.get_context("fork").Process(target=_write_small, args=(writer, 100))
               for _ in range(2)]
    big_writer = threading.Thread(target=channel.write, args=([big],))
    try:
        big_writer.start()
        for process in writers:
            process.start()
        messages = [bytes(channel.read(10)) for _ in range(201)]
    finally:
        big_writer.join(10)
        for process in writers:
            process.join(10)
        writer.close()
    assert messages.count(big) == 1
    assert messages.count(b"s" * 64) == 200
    assert all(process.exitcode == 0 for process in writers)
