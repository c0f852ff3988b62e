"""The timer of task timeouts and the priority gate, on their own."""

from __future__ import annotations

import queue
import threading

import pytest

from steersman.task_server.deadlines import Deadlines
from steersman.task_server.engine import PriorityGate


def test_deadlines_expire_in_order_from_one_thread():
    expired: queue.Queue[tuple[str, str]] = queue.Queue()
    deadlines: Deadlines[str] = Deadlines(
        lambda item: expired.put((item, threading.current_thread().name)))
    deadlines.add(0.2, "late")
    deadlines.add(0.01, "early")  # earlier than the one the thread already waits for
    first, second = expired.get(timeout=5), expired.get(timeout=5)
    assert [first[0], second[0]] == ["early", "late"]
    assert first[1] == second[1] == "steersman-timeouts"
    deadlines.stop()


def test_deadlines_stop_forgets_pending_and_survives_bad_callbacks():
    calls: queue.Queue[str] = queue.Queue()

    def expire(item: str) -> None:
        calls.put(item)
        raise RuntimeError("a failing handler must not kill the timer")

    deadlines: Deadlines[str] = Deadlines(expire)
    deadlines.add(0.01, "a")
    deadlines.add(0.02, "b")
    assert {calls.get(timeout=5), calls.get(timeout=5)} == {"a", "b"}
    deadlines.add(3600, "never")
    deadlines.stop()
    assert len(deadlines) == 0
    deadlines.add(0.01, "after stop")  # ignored
    assert calls.empty()


def test_no_thread_without_deadlines():
    before = threading.active_count()
    deadlines: Deadlines[str] = Deadlines(lambda item: None)
    assert threading.active_count() == before
    deadlines.stop()


def test_gate_starts_highest_priority_first_and_skips_cancelled():
    gate = PriorityGate(1)
    started: list[str] = []

    def task(name: str, alive: bool = True):
        def start() -> bool:
            if alive:
                started.append(name)
            return alive
        return start

    gate.offer(0, task("first"))
    gate.offer(1, task("low"))
    gate.offer(5, task("cancelled", alive=False))
    gate.offer(3, task("high"))
    gate.offer(3, task("high-later"))
    assert started == ["first"] and gate.waiting == 4 and gate.running == 1
    for _ in range(3):
        gate.release()
    assert started == ["first", "high", "high-later", "low"]
    gate.release()
    assert gate.running == 0 and gate.waiting == 0


def test_gate_without_capacity_starts_everything():
    gate = PriorityGate(None)
    started: list[int] = []
    for i in range(5):
        gate.offer(i, lambda i=i: started.append(i) is None)
    assert started == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("capacity", [0, -1, 1.5, "2"])
def test_gate_rejects_bad_capacity(capacity):
    with pytest.raises(ValueError, match="capacity must be a positive integer"):
        PriorityGate(capacity)
