"""Fault 2: the task server process killed with SIGKILL in the middle of a campaign.

Over pipes the thinker notices at once, `run()` raises naming the agent and TaskServerDied, and
no worker outlives the server. Over Redis a new server takes over the outstanding requests and
the campaign finishes with every result.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import fault_tasks as tasks
import psutil
import pytest
from fault_helpers import Collect, Request, make_fifo, read_pid, run_in_thread

from steersman import AgentError, LocalTaskServer, PipeQueues, Result
from steersman.exceptions import TaskServerDied

METHODS = [tasks.double, tasks.report_pid_and_block, tasks.hang]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("threads", [True, False], ids=["threads", "processes"])
def test_thinker_reports_a_dead_server_within_seconds(threads: bool, tmp_path: Path) -> None:
    """run() raises AgentError(TaskServerDied) right after the kill, naming the agent."""
    queues = PipeQueues()
    server = LocalTaskServer(queues, METHODS, threads=threads, num_workers=2)
    server.start()
    fifo = make_fifo(tmp_path)
    requests = [Request("report_pid_and_block", (str(fifo),)), Request("double", (1,))]
    thinker = Collect(queues, requests)
    thread, raised = run_in_thread(thinker)
    read_pid(fifo)  # a task is running: the server holds outstanding work
    killed_at = time.perf_counter()
    os.kill(server.pid, signal.SIGKILL)
    thread.join(10)
    noticed = time.perf_counter() - killed_at
    server.join(5)
    queues.close()
    assert not thread.is_alive(), "the thinker hung after its task server died"
    assert noticed < 2.0, f"took {noticed:.2f} s to notice"
    (error,) = raised
    assert isinstance(error, AgentError) and error.agent == "receive"
    assert isinstance(error.__cause__, TaskServerDied)
    assert "task server exited" in str(error) and "outstanding" in str(error)


@pytest.mark.timeout(30)
def test_workers_do_not_outlive_a_killed_server(tmp_path: Path) -> None:
    """A worker process running a task when its server is SIGKILLed ends with it."""
    queues = PipeQueues()
    server = LocalTaskServer(queues, METHODS, threads=False, num_workers=2)
    server.start()
    fifo = make_fifo(tmp_path)
    queues.send_inputs(str(fifo), 60.0, method="report_pid_and_block")
    busy = psutil.Process(read_pid(fifo))
    workers = psutil.Process(server.pid).children()  # all started before any task runs
    os.kill(server.pid, signal.SIGKILL)
    server.join(5)
    try:
        with pytest.raises(TaskServerDied):
            queues.get_result(timeout=5)
        gone, alive = psutil.wait_procs(workers, timeout=3)
        assert busy in workers
        assert not alive, f"workers still running after their server died: {alive}"
    finally:
        for process in workers:
            if process.is_running():
                process.kill()
        queues.close()


def _redis_server_process(redis: Any, prefix: str) -> LocalTaskServer:
    from steersman.queue.redis import RedisQueues

    queues = RedisQueues(redis.host, redis.port, prefix=prefix, claim_idle=0.3)
    return LocalTaskServer(queues, [tasks.double, tasks.hang], threads=True, num_workers=2)


@pytest.mark.timeout(45)
def test_redis_restarted_server_picks_up_outstanding_requests(redis_server: Any) -> None:
    """A server killed with requests outstanding: a new one runs them; nothing lost or doubled."""
    from steersman.queue.redis import RedisQueues

    queues = RedisQueues(redis_server.host, redis_server.port, claim_idle=0.3)
    first = _redis_server_process(redis_server, queues.prefix)
    first.start()
    n = 30
    some_back = threading.Event()

    def count(thinker: Collect, result: Result) -> None:
        if len(thinker.results) == 5:
            some_back.set()

    # Each task holds a worker a little, so requests are queued and running at the kill.
    requests = [Request("hang", (0.05,), {"task_info": {"i": i}}) for i in range(n)]
    thinker = Collect(queues, requests, on_result=count)
    thread, raised = run_in_thread(thinker)
    second = None
    try:
        assert some_back.wait(20)
        os.kill(first.pid, signal.SIGKILL)
        first.join(5)
        assert queues.active_count > 0, "the kill must leave requests outstanding"
        second = _redis_server_process(redis_server, queues.prefix)
        second.start()
        thread.join(30)
        assert not thread.is_alive(), "outstanding requests were never picked up"
        assert not raised, raised
        infos = sorted(r.task_info["i"] for r in thinker.results.values())
        assert infos == list(range(n)), "a request was lost"
        assert all(r.success for r in thinker.results.values())
        assert not thinker.duplicates, [r.task_id for r in thinker.duplicates]
        assert queues.active_count == 0
    finally:
        if second is not None:
            queues.send_kill_signal()
            second.join(20)
        queues.close()
        queues.purge()


@pytest.mark.timeout(30)
def test_result_sent_twice_by_a_server_that_died_before_acknowledging(redis_server: Any) -> None:
    """A server that sent a result but died before acknowledging its request: the request is
    run again elsewhere and its result sent twice. The thinker must take it once and keep its
    count of outstanding tasks right (a negative count hangs result processors forever)."""
    from steersman.queue.redis import RedisQueues, make_queue_pairs

    client, dying = make_queue_pairs(redis_server.host, redis_server.port, claim_idle=0.2)
    other = RedisQueues(redis_server.host, redis_server.port, prefix=client.prefix,
                        claim_idle=0.2)
    try:
        task_id = client.send_inputs(4, method="double")
        for server in (dying, other):  # `dying` never acknowledges: `other` takes it over
            message = server.get_task(timeout=10)
            assert message is not None and message.result is not None
            assert message.result.task_id == task_id
            message.result.set_result(8)
            server.send_result(message.result)
            if server is dying:
                dying.close()
        other.request_done(task_id)
        first = client.get_result(timeout=10)
        assert first is not None and first.value == 8
        again = client.get_result(timeout=1)
        assert again is None, "the same final result was delivered twice"
        assert client.active_count == 0
    finally:
        client.close()
        other.close()
        client.purge()
