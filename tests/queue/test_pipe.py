"""The embedded pipe backend and the queue contract it shares with every backend."""

import multiprocessing
import os
import threading
import time

import numpy as np
import pytest
from tests.conftest import echo_server

from steersman.exceptions import TaskServerDied
from steersman.models.messages import Kind
from steersman.queue import PipeQueues


def test_send_and_get_by_topic(pipe_queues):
    server = echo_server(pipe_queues)
    pipe_queues.send_inputs(1, method="f", topic="sim")
    assert pipe_queues.get_result(topic="ml", timeout=0.05) is None
    result = pipe_queues.get_result(topic="sim")
    assert result.args == (1,) and result.value == (1,) and result.success
    assert result.timestamp.result_received >= result.timestamp.created
    pipe_queues.send_kill_signal()
    server.join(5)
    assert not server.is_alive()


def test_timeout_is_sub_second(pipe_queues):
    start = time.perf_counter()
    assert pipe_queues.get_result(timeout=0.1) is None
    assert time.perf_counter() - start < 0.5


def test_unknown_topic_and_method_list_valid_ones():
    queues = PipeQueues(topics=["sim"], methods=["simulate"])
    valid = r"unknown topic 'nope'; valid topics: \['default', 'sim'\]"
    with pytest.raises(ValueError, match=valid):
        queues.send_inputs(1, method="simulate", topic="nope")
    with pytest.raises(ValueError, match=r"unknown method 'train'; valid methods: \['simulate'\]"):
        queues.send_inputs(1, method="train")
    with pytest.raises(ValueError, match="unknown topic"):
        queues.get_result(topic="nope")
    assert queues.active_count == 0


def test_json_serialization_rejects_objects_before_sending():
    queues = PipeQueues(serialization_method="json")
    with pytest.raises(TypeError, match="argument 0 of type ndarray"):
        queues.send_inputs(np.zeros(2), method="f")
    assert queues.active_count == 0


def test_active_count_and_wait_until_done(pipe_queues):
    gate = threading.Event()
    server = echo_server(pipe_queues, handler=lambda x: gate.wait(5) and x)
    for i in range(3):
        pipe_queues.send_inputs(i, method="f")
    assert pipe_queues.active_count == 3
    assert not pipe_queues.wait_until_done(timeout=0.05)
    gate.set()
    values = sorted(pipe_queues.get_result().value for _ in range(3))
    assert values == [0, 1, 2]
    assert pipe_queues.wait_until_done(timeout=1)
    assert pipe_queues.active_count == 0
    pipe_queues.send_kill_signal()
    server.join(5)


def test_many_threads_send_and_receive_at_once(pipe_queues):
    server = echo_server(pipe_queues, handler=lambda i: i)
    n_threads, per_thread = 8, 200
    received: list[int] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        for i in range(per_thread):
            pipe_queues.send_inputs(offset + i, method="f", topic="sim")
        for _ in range(per_thread):
            value = pipe_queues.get_result(topic="sim", timeout=10).value
            with lock:
                received.append(value)

    threads = [threading.Thread(target=worker, args=(t * 10_000,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    expected = sorted(t * 10_000 + i for t in range(n_threads) for i in range(per_thread))
    assert sorted(received) == expected
    pipe_queues.send_kill_signal()
    server.join(5)


def test_large_messages_do_not_deadlock(pipe_queues):
    """Both pipes full at once: the receivers keep draining, so nothing blocks forever."""
    server = echo_server(pipe_queues)
    payload = np.random.default_rng(0).random(2_000_000)  # 16 MB each way, pipe buffer is 1 MB
    for _ in range(4):
        pipe_queues.send_inputs(payload, method="f")
    for _ in range(4):
        result = pipe_queues.get_result(timeout=30)
        assert np.array_equal(result.value[0], payload)
    pipe_queues.send_kill_signal()
    server.join(5)


def test_sending_many_tasks_before_waiting_does_not_deadlock(pipe_queues):
    """A one-thread server blocks sending results nobody waits for yet, so it stops reading
    requests; the thinker, finding the request pipe full, reads results meanwhile."""
    server = echo_server(pipe_queues)
    payload = b"x" * (3 << 20)  # below the size that goes through shared memory
    sender = threading.Thread(target=lambda: [
        pipe_queues.send_inputs(payload, method="f", keep_inputs=False) for _ in range(12)])
    sender.start()
    sender.join(20)
    assert not sender.is_alive(), "sending blocked: nobody read the results"
    values = [pipe_queues.get_result(timeout=20).value for _ in range(12)]
    assert values == [(payload,)] * 12
    pipe_queues.send_kill_signal()
    server.join(5)


def test_waiters_on_different_topics_each_get_their_own(pipe_queues):
    """One waiter reads for all; results of the other topic reach their waiter, and when the
    reader leaves, a remaining waiter takes over reading."""
    server = echo_server(pipe_queues)
    got: dict[str, list[int]] = {"sim": [], "ml": []}

    def collect(topic: str, count: int) -> None:
        for _ in range(count):
            got[topic].append(pipe_queues.get_result(topic, timeout=10).value[0])

    threads = [threading.Thread(target=collect, args=("sim", 30)),
               threading.Thread(target=collect, args=("ml", 60))]
    for thread in threads:
        thread.start()
    for i in range(60):
        if i < 30:
            pipe_queues.send_inputs(i, method="f", topic="sim")
        pipe_queues.send_inputs(100 + i, method="f", topic="ml")
        time.sleep(0.001)
    for thread in threads:
        thread.join(20)
    assert sorted(got["sim"]) == list(range(30))
    assert sorted(got["ml"]) == list(range(100, 160))
    pipe_queues.send_kill_signal()
    server.join(5)


def test_wake_stops_a_waiter_that_is_reading(pipe_queues):
    stop = threading.Event()
    returned: list[object] = []
    waiter = threading.Thread(
        target=lambda: returned.append(pipe_queues.wait_result("sim", None, stop.is_set)))
    waiter.start()
    time.sleep(0.1)  # blocked reading the pipe
    start = time.perf_counter()
    stop.set()
    pipe_queues.wake()
    waiter.join(5)
    assert returned == [None] and time.perf_counter() - start < 0.1


def test_close_ends_a_waiting_reader(pipe_queues):
    raised: list[BaseException] = []

    def wait() -> None:
        try:
            pipe_queues.get_result()
        except Exception as exc:  # noqa: BLE001
            raised.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    pipe_queues.close()
    waiter.join(5)
    assert not waiter.is_alive() and "closed" in str(raised[0])


def _serve_in_child(queues: PipeQueues) -> None:
    queues.on_server_process()
    while True:
        message = queues.get_task()
        if message.kind is Kind.KILL:
            return
        result = message.result
        result.set_result(sum(result.decode_inputs()[0]))
        queues.send_result(result)


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_queues_can_be_pickled_into_a_child_process(start_method):
    queues = PipeQueues()
    process = multiprocessing.get_context(start_method).Process(
        target=_serve_in_child, args=(queues,)
    )
    process.start()
    queues.on_server_started()
    queues.send_inputs(2, 3, method="add")
    assert queues.get_result(timeout=30).value == 5
    queues.send_kill_signal()
    process.join(30)
    assert process.exitcode == 0


def test_dead_server_is_reported_not_a_hang():
    queues = PipeQueues()
    process = multiprocessing.get_context("fork").Process(target=lambda: None)
    process.start()
    queues.on_server_started()
    process.join()
    with pytest.raises(TaskServerDied, match="task server"):
        queues.get_result(timeout=5)


def _serve_leave_a_holder_and_die(queues: PipeQueues, answers: int, release: tuple[int, int],
                                  cut: bool = False) -> None:
    """A server that answers `answers` requests, forks a helper holding every end of the
    pipes it holds (as a process pool's workers do) until `release` is closed, and dies with
    SIGKILL; with `cut`, it dies in the middle of writing one more result."""
    import signal

    os.close(release[1])  # only the test holds it: closing it frees the helper
    queues.on_server_process()
    for _ in range(answers):
        message = queues.get_task()
        result = message.result
        result.set_result(sum(result.decode_inputs()[0]))
        queues.send_result(result)
    if cut:  # a length prefix and a few bytes of the message it announces
        os.write(queues._outcomes._writer.fileno(), (1000).to_bytes(8, "little") + b"abc")
    if os.fork() == 0:
        os.read(release[0], 1)
        os._exit(0)
    os.kill(os.getpid(), signal.SIGKILL)


def _start_dying_server(queues: PipeQueues, answers: int, cut: bool = False
                        ) -> tuple[multiprocessing.Process, tuple[int, int]]:
    release = os.pipe()
    process = multiprocessing.get_context("fork").Process(
        target=_serve_leave_a_holder_and_die, args=(queues, answers, release, cut))
    process.start()
    os.close(release[0])
    queues.on_server_started(process)
    return process, release


@pytest.mark.timeout(30)
@pytest.mark.parametrize("cut", [False, True], ids=["whole", "cut-mid-message"])
def test_death_is_reported_while_a_child_of_the_server_holds_the_pipes(cut):
    """The pipes see no end of file while a process the server started holds them open; the
    server's own end is watched. Results it sent before dying come first; a message cut short
    by its death ends the wait too."""
    queues = PipeQueues()
    process, release = _start_dying_server(queues, answers=3, cut=cut)
    try:
        for i in range(3):
            queues.send_inputs(i, 1, method="add")
        process.join()  # no timeout: a join with one waits on the sentinel, which its child holds
        values = sorted(queues.get_result(timeout=5).value for _ in range(3))
        assert values == [1, 2, 3]
        queues.send_inputs(1, 1, method="add")
        start = time.perf_counter()
        with pytest.raises(TaskServerDied, match="1 task"):
            queues.get_result(timeout=5)
        assert time.perf_counter() - start < 1
        with pytest.raises(TaskServerDied):  # and every later wait
            queues.get_result(timeout=5)
    finally:
        os.close(release[1])
        queues.close()


@pytest.mark.timeout(30)
def test_sending_into_a_full_pipe_of_a_dead_server_raises():
    """A request pipe held open by the dead server's child fills up: the send raises instead
    of waiting for room forever."""
    queues = PipeQueues()
    process, release = _start_dying_server(queues, answers=0)
    try:
        process.join()
        payload = np.zeros(1 << 15)  # 256 KB a request: the 1 MB pipe fills after a few
        with pytest.raises(TaskServerDied):
            for _ in range(64):
                queues.send_inputs(payload, method="f")
    finally:
        os.close(release[1])
        queues.close()


def _wait_for_release(release: tuple[int, int]) -> None:
    os.close(release[1])
    os.read(release[0], 1)


@pytest.mark.timeout(30)
def test_several_watched_servers_are_dead_once_all_ended():
    """A death is reported once every watched process ended, as the pipes' end of file is."""
    queues = PipeQueues()
    release_r, release_w = os.pipe()
    context = multiprocessing.get_context("fork")
    first = context.Process(target=lambda: None)
    second = context.Process(target=_wait_for_release, args=((release_r, release_w),))
    first.start()
    second.start()
    queues.on_server_started(first)
    queues.on_server_started(second)
    try:
        first.join(10)
        queues.track("abc", "default")
        assert queues.get_result(timeout=0.2) is None  # the second one still runs
        os.close(release_w)
        second.join(10)
        with pytest.raises(TaskServerDied):
            queues.get_result(timeout=5)
    finally:
        os.close(release_r)
        queues.close()


def test_wait_result_stops_when_told(pipe_queues):
    stop = threading.Event()
    threading.Timer(0.05, lambda: (stop.set(), pipe_queues.wake())).start()
    start = time.perf_counter()
    assert pipe_queues.wait_result("sim", None, stop.is_set) is None
    assert time.perf_counter() - start < 2


def test_a_result_delivered_twice_is_processed_once(pipe_queues):
    """At-least-once transports may redeliver; the thinker sees each task's result once."""
    def serve_twice() -> None:
        message = pipe_queues.get_task()
        result = message.result
        result.set_result(result.decode_inputs()[0][0])
        parts = pipe_queues.encode_result(result)
        pipe_queues.send_encoded_result("default", parts)
        pipe_queues.send_encoded_result("default", parts)

    server = threading.Thread(target=serve_twice)
    server.start()
    pipe_queues.send_inputs(7, method="f")
    assert pipe_queues.get_result(timeout=10).value == 7
    assert pipe_queues.get_result(timeout=0.2) is None
    assert pipe_queues.active_count == 0
    server.join(5)


def test_results_of_tracked_tasks_count_down(pipe_queues):
    """A resumed campaign tracks requests sent before a restart; their results count down."""
    pipe_queues.track("abc", "sim")
    pipe_queues.track("abc", "sim")  # idempotent
    assert pipe_queues.active_count == 1 and pipe_queues.active_in("sim") == 1
    with pytest.raises(ValueError, match="unknown topic"):
        pipe_queues.track("x", "nope")


# --- shared buffers: memory another process gets by name -------------------------------------


def _pipe_bytes(channel) -> int:
    """Bytes waiting in a channel's pipe."""
    import fcntl
    import struct
    import termios

    raw = fcntl.ioctl(channel._reader.fileno(), termios.FIONREAD, b"\0" * 4)
    return struct.unpack("i", raw)[0]


def test_a_shared_buffer_crosses_a_pipe_by_name():
    from steersman.queue.pipe import PipeChannel, shared_buffer

    data = np.random.default_rng(1).bytes(3_000_000)  # below the size pipes spill at
    buffer = shared_buffer(len(data))
    buffer[:] = data
    channel = PipeChannel()
    channel.write([memoryview(buffer)])
    assert _pipe_bytes(channel) < 200  # the name and its length, not three megabytes
    received = channel.read(5)
    assert bytes(received) == data
    path = buffer.path
    del buffer
    assert not os.path.exists(path)  # handed on: the reader removed it


def test_a_shared_buffer_not_handed_on_goes_with_its_mapping():
    import gc

    from steersman.queue.pipe import shared_buffer

    buffer = shared_buffer(1 << 20)
    path = buffer.path
    assert os.path.exists(path)
    del buffer
    gc.collect()
    assert not os.path.exists(path)


def test_a_shared_buffer_that_cannot_be_made_raises(monkeypatch, tmp_path):
    from steersman.queue import pipe

    monkeypatch.setattr(pipe, "SPILL_DIR", str(tmp_path / "missing"))
    with pytest.raises(OSError):
        pipe.shared_buffer(1 << 20)


def test_a_kept_buffer_is_mapped_by_name_and_left_to_its_writer():
    from steersman.queue.pipe import PipeChannel, kept_buffer

    data = np.random.default_rng(2).bytes(3_000_000)
    buffer = kept_buffer(len(data))
    buffer[:] = data
    channel = PipeChannel()
    for _ in range(2):  # handed on as often as needed (a retried request, say)
        channel.write([memoryview(buffer)])
        assert _pipe_bytes(channel) < 200  # by name
        received = channel.read(5)
        assert bytes(received) == data
        assert os.path.exists(buffer.path)  # the reader left it
        assert buffer.mapped_elsewhere()  # and locks it while it maps it
        del received
        assert not buffer.mapped_elsewhere()
    path = buffer.path
    buffer.remove()
    assert not os.path.exists(path)


def test_messages_written_together_are_read_one_by_one_from_fewer_reads(monkeypatch):
    from steersman.queue import pipe

    channel = pipe.PipeChannel()
    small = [[f"message {i}".encode()] for i in range(50)]
    large = [bytes(range(256)) * 800]  # 200 kB: larger than what one read keeps aside
    channel.write_messages([*small[:25], large, *small[25:]])
    channel.close_writer()
    calls = []
    real = os.readv
    monkeypatch.setattr(pipe.os, "readv", lambda fd, views: calls.append(fd) or real(fd, views))
    got = [bytes(channel.read(None)) for _ in range(51)]
    assert got == [b"".join(m) for m in [*small[:25], large, *small[25:]]]
    assert len(calls) < 10  # one call used to read each length and each message: 102
    with pytest.raises(EOFError):
        channel.read(None)


def test_write_all_delivers_every_part_in_order_through_a_full_pipe():
    """Thousands of parts, some empty, some larger than the pipe: short writes resume at the
    right byte, and a full non-blocking pipe waits for room."""
    from steersman.queue.pipe import write_all

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    parts = [bytes([i % 251]) * (i % 7) for i in range(5000)]
    parts += [b"", os.urandom(300_000), b"end"]
    expected = b"".join(parts)
    received = bytearray()
    fulls = []

    def drain():
        while len(received) < len(expected):
            received.extend(os.read(read_fd, 4096))
            time.sleep(0.0001)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        write_all(write_fd, parts, on_full=lambda: fulls.append(1))
        reader.join(30)
    finally:
        os.close(write_fd)
        os.close(read_fd)
    assert bytes(received) == expected
    assert fulls  # the pipe was full at least once: the wait was exercised


def _refuse_to_unpickle():
    raise RuntimeError("cannot rebuild this value here")


class _OnlyPicklable:
    """Pickles anywhere, unpickles nowhere."""

    def __reduce__(self):
        return (_refuse_to_unpickle, ())


def test_a_result_that_cannot_be_decoded_comes_back_as_a_failure(pipe_queues):
    server = echo_server(pipe_queues, handler=lambda: _OnlyPicklable())
    pipe_queues.send_inputs(method="f", topic="sim")
    result = pipe_queues.get_result(topic="sim", timeout=10)
    assert result is not None and result.success is False and result.complete
    assert "cannot rebuild this value here" in result.failure_info.exception
    assert result.timestamp.result_received is not None
    assert pipe_queues.active_count == 0 and pipe_queues.wait_until_done(timeout=1)
    pipe_queues.send_kill_signal()
    server.join(5)


def test_an_observer_that_fails_does_not_leave_its_task_outstanding(pipe_queues):
    class Failing:
        def request_sent(self, result):
            pass

        def result_received(self, result):
            raise OSError("disk full")

    pipe_queues.add_observer(Failing())
    server = echo_server(pipe_queues)
    pipe_queues.send_inputs(1, method="f", topic="sim")
    with pytest.raises(OSError, match="disk full"):
        pipe_queues.get_result(topic="sim", timeout=10)
    assert pipe_queues.active_count == 0 and pipe_queues.wait_until_done(timeout=1)
    pipe_queues.send_kill_signal()
    server.join(5)


def test_queues_closed_and_dropped_leave_no_file_open():
    import gc

    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    PipeQueues().close()  # the first may open files kept for the process
    gc.collect()
    before = open_fds()
    for _ in range(20):
        PipeQueues().close()
    gc.collect()
    assert open_fds() - before < 5
