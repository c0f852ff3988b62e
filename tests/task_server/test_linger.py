"""A worker that finished a task looks for the next one awake for a moment before it sleeps,
one worker at a time: the thinker's next request then finds it running, not halted.

These tests drive a worker's inputs (its server pipe and the lane) in this process and record
every wait for readiness: `None` is a sleep, 0 a look. The turn to linger belongs to a
process, so other workers are played by forked processes.
"""

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from steersman.queue.lane import Lane, LaneSlot
from steersman.queue.pipe import PipeChannel
from steersman.task_server import local
from steersman.task_server.local import LingerTurn


class Inputs:
    def __init__(self, lingering) -> None:
        self.requests, self.lane, self.slot = PipeChannel(), Lane(), LaneSlot()
        self.inbound = local._Inbound(self.requests, self.lane.receiver, self.slot, lingering)
        self.waits: list[int | None] = []
        ready = self.inbound._ready

        def recorded(timeout: int | None) -> set[int]:
            self.waits.append(timeout)
            return ready(timeout)

        self.inbound._ready = recorded  # type: ignore[method-assign]

    def send_later(self, request: bytes, delay: float) -> threading.Thread:
        def send() -> None:
            time.sleep(delay)
            self.lane.send([request], None)

        thread = threading.Thread(target=send)
        thread.start()
        return thread

    def close(self) -> None:
        self.lane.close_sender()
        self.lane.receiver.close()
        self.requests.close_reader()
        self.requests.close_writer()


@pytest.fixture
def lingering() -> Iterator[LingerTurn]:
    turn = LingerTurn()
    yield turn
    turn.close()


@contextmanager
def held_by_another_worker(turn: LingerTurn, die: bool = False) -> Iterator[int]:
    """A forked process takes the turn and keeps it until the block ends (or, with `die`,
    is killed while holding it, at once)."""
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other worker
        try:
            os.write(ready_write, b"1" if turn.take() else b"0")
            if die:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(ready_write)  # a child that dies before it answers reads as an empty answer
    try:
        assert os.read(ready_read, 1) == b"1", "the other worker could not take the turn"
        if die:
            os.waitpid(pid, 0)
        yield pid
    finally:
        if not die:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(ready_read)


@pytest.fixture
def inputs(lingering) -> Iterator[Inputs]:
    made = Inputs(lingering)
    yield made
    made.close()


@pytest.mark.timeout(30)
def test_a_request_sent_while_the_worker_lingers_is_taken_without_sleeping(inputs, monkeypatch):
    monkeypatch.setattr(local, "LINGER", 10.0)  # longer than the test: it must not matter
    sender = inputs.send_later(b"request", 0.05)
    start = time.monotonic()
    assert inputs.inbound.next() == b"request"
    sender.join()
    assert time.monotonic() - start < 5
    assert None not in inputs.waits, "the worker slept before the request came"
    assert len(inputs.waits) > 1, "the worker did not look again while it waited"


@pytest.mark.timeout(30)
def test_only_one_worker_lingers_at_a_time(inputs, lingering, monkeypatch):
    monkeypatch.setattr(local, "LINGER", 10.0)
    with held_by_another_worker(lingering):
        sender = inputs.send_later(b"request", 0.05)
        assert inputs.inbound.next() == b"request"
        sender.join()
    assert inputs.waits[0] == 0 and None in inputs.waits, "it lingered alongside another"
    assert inputs.waits.count(0) <= 2, "it looked again and again instead of sleeping"


@pytest.mark.timeout(30)
def test_a_worker_killed_while_lingering_gives_its_turn_up(lingering):
    with held_by_another_worker(lingering, die=True):
        assert lingering.take(), "the dead worker's turn was never given back"
    lingering.give_back()


@pytest.mark.timeout(30)
def test_lingering_ends_after_its_time_and_lets_another_worker_linger(inputs, lingering,
                                                                     monkeypatch):
    monkeypatch.setattr(local, "LINGER", 0.05)
    start = time.monotonic()
    assert inputs.inbound._linger() == set()
    assert time.monotonic() - start >= 0.05
    with held_by_another_worker(lingering):  # it could take the turn: the worker gave it back
        pass
    sender = inputs.send_later(b"later", 0.2)  # after lingering: a sleeping worker wakes for it
    assert inputs.inbound.next() == b"later"
    sender.join()
    assert None in inputs.waits


def _busy_at_low_priority(cpu: int, seconds: float) -> tuple[int, int]:
    """Fork a process that runs on `cpu` at niceness 10, says it is ready, keeps the CPU
    busy for `seconds`, then reports the CPU time it got (ms); returns (pid, report fd)."""
    report_read, report_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.sched_setaffinity(0, {cpu})
            os.nice(10)
            os.write(report_write, b"r")
            start, deadline = time.thread_time(), time.monotonic() + seconds
            while time.monotonic() < deadline:
                pass
            os.write(report_write, str(int((time.thread_time() - start) * 1000)).encode())
        finally:
            os._exit(0)
    os.close(report_write)
    return pid, report_read


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
@pytest.mark.timeout(30)
def test_a_lingering_worker_gives_its_cpu_to_any_process_ready_to_run(inputs, monkeypatch):
    """Lingering spends only time no one else wants: a process of lower priority on the same
    CPU (the results.jsonl writer, say) runs as if the worker slept."""
    monkeypatch.setattr(local, "LINGER", 1.5)
    before = os.sched_getaffinity(0)
    cpu = min(before)
    os.sched_setaffinity(0, {cpu})  # this thread lingers on the busy process's CPU
    try:
        pid, report = _busy_at_low_priority(cpu, 0.5)
        assert os.read(report, 1) == b"r"
        assert inputs.inbound._linger() == set()  # lingers while the other runs, throughout
    finally:
        os.sched_setaffinity(0, before)
    got_ms = int(os.read(report, 16))
    os.close(report)
    os.waitpid(pid, 0)
    # Without yielding, the weights of niceness 10 and 0 would give it about 10%.
    assert got_ms > 0.3 * 500, f"the busy process got {got_ms} ms of CPU in 500 ms"
