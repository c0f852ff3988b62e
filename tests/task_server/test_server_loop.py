"""What the one server loop does on every engine: timeouts, retries, lost workers, priority,
placement errors and shutdown — exercised here on the local engines."""

from __future__ import annotations

from collections.abc import Iterator

import engine_tasks as tasks
import pytest
from engine_tasks import GATE

from steersman import LocalTaskServer, PipeQueues


def _serve(threads: bool, workers: int) -> tuple[PipeQueues, LocalTaskServer]:
    GATE.clear()
    queues = PipeQueues(topics=["probe"])
    server = LocalTaskServer(queues, [tasks.add, tasks.wait_gate, tasks.die_once, tasks.die,
                                      tasks.where], threads=threads, num_workers=workers)
    server.start()
    return queues, server


def _stop(queues: PipeQueues, server: LocalTaskServer) -> None:
    GATE.set()
    queues.send_kill_signal()
    server.join(30)
    assert server.exitcode == 0


@pytest.fixture(params=[True, False], ids=["threads", "processes"])
def served(request) -> Iterator[PipeQueues]:
    queues, server = _serve(request.param, 2)
    yield queues
    _stop(queues, server)


@pytest.fixture
def processes() -> Iterator[PipeQueues]:
    queues, server = _serve(False, 1)
    yield queues
    _stop(queues, server)


def test_timeout_fails_the_task_as_timed_out(served):
    served.send_inputs(method="wait_gate", timeout=0.1)
    result = served.get_result(timeout=30)
    assert not result.success and result.timed_out and result.retries == 0
    assert "exceeded its timeout of 0.1 s" in result.failure_info.exception
    served.send_inputs(1, 2, method="add")  # the server (and a worker) is still there
    assert served.get_result(timeout=30).value == 3


def test_timed_out_task_is_retried_with_the_attempt_count(served):
    served.send_inputs(method="wait_gate", timeout=0.05, max_retries=2)
    result = served.get_result(timeout=30)
    assert result.timed_out and result.retries == 2 and result.max_retries == 2


def test_late_result_of_a_timed_out_task_is_dropped(served):
    served.send_inputs(method="wait_gate", timeout=0.05, topic="probe")
    assert served.get_result("probe", timeout=30).timed_out
    GATE.set()  # a thread cannot be killed: the task now finishes late
    served.send_inputs(1, 1, method="add", topic="probe")
    assert served.get_result("probe", timeout=30).value == 2
    assert served.get_result("probe", timeout=0.2) is None
    assert served.active_count == 0


def test_killed_worker_is_retried_and_never_lost(processes, tmp_path):
    processes.send_inputs(str(tmp_path / "died"), method="die_once", max_retries=1)
    result = processes.get_result(timeout=30)
    assert result.success and result.value == "survived" and result.retries == 1

    processes.send_inputs(method="die")
    result = processes.get_result(timeout=30)
    assert not result.success and result.failure_info.worker_lost


def test_timeout_kills_the_running_worker_process(processes):
    processes.send_inputs(method="where")
    before = processes.get_result(timeout=30).worker_info.pid
    processes.send_inputs(method="wait_gate", timeout=0.1)
    assert processes.get_result(timeout=30).timed_out
    processes.send_inputs(method="where")  # runs on the worker that replaced the killed one
    after = processes.get_result(timeout=30)
    assert after.success and after.worker_info.pid != before


def test_waiting_requests_run_highest_priority_first(processes):
    processes.send_inputs(method="wait_gate", priority=100)  # occupies the only worker
    for tag, priority in [("low", 0), ("high", 5), ("low", 0), ("top", 9), ("high", 5)]:
        processes.send_inputs(tag, method="where", priority=priority)
    processes.send_inputs(method="where", timeout=0.01, priority=-1, topic="probe")
    assert processes.get_result("probe", timeout=30).timed_out  # all were dispatched
    GATE.set()
    results = [processes.get_result(timeout=30) for _ in range(6)]
    order = [r.value for r in sorted(results, key=lambda r: r.timestamp.compute_started)]
    assert order == [True, "top", "high", "high", "low", "low"]


def test_unknown_executor_fails_at_send_time(served):
    with pytest.raises(ValueError, match=r"unknown executor 'gpu'; valid executors: \['default'\]"):
        served.send_inputs(1, 2, method="add", executor="gpu")
    served.send_inputs(1, 2, method="add", executor="default")
    assert served.get_result(timeout=30).value == 3


def test_kill_signal_waits_for_running_tasks():
    queues, server = _serve(False, 1)
    queues.send_inputs(method="wait_gate")
    queues.send_kill_signal()
    server.join(0.3)
    assert server.is_alive()  # still waiting for the running task
    GATE.set()
    result = queues.get_result(timeout=30)
    assert result.success and result.value is True
    server.join(30)
    assert server.exitcode == 0


def test_shutdown_does_not_wait_for_an_abandoned_thread():
    queues, server = _serve(True, 1)
    queues.send_inputs(method="wait_gate", timeout=0.05)  # would block its thread for 30 s
    assert queues.get_result(timeout=30).timed_out
    queues.send_kill_signal()
    server.join(10)
    assert server.exitcode == 0
    GATE.set()
