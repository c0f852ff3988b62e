"""Fault 2: the task server process killed with SIGKILL in the middle of a campaign.

Over pipes the thinker notices at once, even while processes the server started outlive it and
hold its pipes open; `run()` raises naming the agent and TaskServerDied, and no worker of a
local server outlives it. Over Redis a new server takes over the outstanding requests and
the campaign finishes with every result; with no server alive for `server_timeout` seconds,
a waiting thinker raises TaskServerDied.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import fault_tasks as tasks
import psutil
import pytest
from fault_helpers import Collect, Request, make_fifo, read_pid, run_in_thread

from steersman import AgentError, LocalTaskServer, PipeQueues, Result
from steersman.exceptions import TaskServerDied
from steersman.task_server.base import TaskServer
from steersman.task_server.executor import ExecutorTaskServer

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


def fork_helper_and_block(fifo: str) -> None:
    """A task that starts a long-lived helper process (it inherits the server's pipes, as any
    child forked without closing descriptors does), reports the helper's pid, then hangs."""
    helper = os.fork()
    if helper == 0:
        time.sleep(60)
        os._exit(0)
    with open(fifo, "w") as stream:
        stream.write(f"{helper}\n")
    threading.Event().wait(60)


def _pool() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(2)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("engine", ["process-pool", "forked-helper"])
def test_death_is_reported_while_its_children_hold_the_pipes(engine: str,
                                                             tmp_path: Path) -> None:
    """A SIGKILLed server whose children outlive it and keep its pipes open (a process
    pool's workers, a helper process a task forked) is reported all the same, at once."""
    queues = PipeQueues()
    fifo = make_fifo(tmp_path)
    server: TaskServer
    if engine == "process-pool":
        server = ExecutorTaskServer([tasks.report_pid_and_block], queues, {"pool": _pool})
        method = "report_pid_and_block"
    else:
        server = LocalTaskServer(queues, [fork_helper_and_block], threads=True, num_workers=1)
        method = "fork_helper_and_block"
    server.start()
    children: list[psutil.Process] = []
    try:
        queues.send_inputs(str(fifo), method=method)
        holder = psutil.Process(read_pid(fifo))  # runs, holding the pipes
        children = [*psutil.Process(server.pid).children(), holder]
        os.kill(server.pid, signal.SIGKILL)
        start = time.perf_counter()
        with pytest.raises(TaskServerDied, match="1 task"):
            queues.get_result(timeout=10)
        assert time.perf_counter() - start < 2
        assert holder.is_running(), "the test needs a child that outlives the server"
    finally:
        for process in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        server.join(5)
        queues.close()


@pytest.mark.timeout(30)
def test_a_second_server_on_pipe_queues_fails_and_the_first_serves_on() -> None:
    """Pipe queues connect one server: a second one exits with an error; the first one's
    death is still reported."""
    queues = PipeQueues()
    first = LocalTaskServer(queues, METHODS, threads=True, num_workers=1)
    first.start()
    second = LocalTaskServer(queues, METHODS, threads=True, num_workers=1)
    try:
        second.start()
        second.join(10)
        assert second.exitcode == 1
        queues.send_inputs(2, method="double")
        assert queues.get_result(timeout=10).value == 4
        queues.send_inputs(60.0, method="hang")
        os.kill(first.pid, signal.SIGKILL)
        with pytest.raises(TaskServerDied):
            queues.get_result(timeout=10)
    finally:
        first.join(5)
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


def _redis_queues(redis: Any, prefix: str | None = None, **options: Any) -> Any:
    from steersman.queue.redis import RedisQueues

    return RedisQueues(redis.host, redis.port, prefix=prefix, **options)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("thinker_first", [True, False], ids=["thinker-first", "resumed-thinker"])
def test_redis_thinker_reports_its_only_server_dead(redis_server: Any, tmp_path: Path,
                                                    thinker_first: bool) -> None:
    """The only server SIGKILLed mid-task: the waiting thinker raises TaskServerDied once no
    server announced itself for `server_timeout` seconds, instead of waiting forever; also a
    thinker that came after the server (a resumed one)."""
    from steersman.queue.redis import new_prefix

    prefix = new_prefix()
    if thinker_first:
        queues = _redis_queues(redis_server, prefix, server_timeout=1)
    server = LocalTaskServer(_redis_queues(redis_server, prefix, server_timeout=1),
                             [tasks.report_pid_and_block], threads=True, num_workers=1)
    server.start()
    if not thinker_first:
        queues = _redis_queues(redis_server, prefix, server_timeout=1)
    fifo = make_fifo(tmp_path)
    try:
        queues.send_inputs(str(fifo), method="report_pid_and_block")
        read_pid(fifo)  # it runs: the server announced itself by now
        assert queues.get_result(timeout=0.5) is None  # alive: nothing to report
        os.kill(server.pid, signal.SIGKILL)
        start = time.perf_counter()
        with pytest.raises(TaskServerDied, match=r"server_timeout=1\b.*1 task"):
            queues.get_result(timeout=10)
        assert time.perf_counter() - start < 4
    finally:
        server.join(5)
        queues.close()
        queues.purge()


@pytest.mark.timeout(30)
def test_redis_thinker_waits_for_a_server_that_starts_later(redis_server: Any) -> None:
    """A server never seen alive (none started yet, or only announcements older than
    `server_timeout` from an earlier run) is not reported dead: the thinker waits for one."""
    queues = _redis_queues(redis_server, server_timeout=0.5)
    raw = redis_server.client()
    raw.zadd(queues.servers_key, {"a-server-of-an-earlier-run": 1000})
    server = None
    try:
        queues.send_inputs(4, method="double")
        assert queues.get_result(timeout=2) is None  # four times the grace: no error
        server = LocalTaskServer(_redis_queues(redis_server, queues.prefix, server_timeout=0.5),
                                 [tasks.double], threads=True, num_workers=1)
        server.start()
        result = queues.get_result(timeout=10)
        assert result is not None and result.value == 8
    finally:
        if server is not None:
            queues.send_kill_signal()
            server.join(10)
        queues.close()
        queues.purge()


@pytest.mark.timeout(30)
def test_redis_server_timeout_none_waits_for_servers(redis_server: Any) -> None:
    """`server_timeout=None`: a thinker whose server stopped keeps waiting, as before."""
    client = _redis_queues(redis_server, server_timeout=None)
    server = _redis_queues(redis_server, client.prefix, server_timeout=0.4)
    watcher = _redis_queues(redis_server, client.prefix, server_timeout=0.4)
    try:
        assert server.get_task(timeout=0.1) is None  # a server: it announced itself
        client.send_inputs(1, method="double")
        watcher.track("not-a-task", "default")
        assert watcher.get_result(timeout=0.2) is None  # it saw the server alive
        server.close()  # which is gone now
        assert client.get_result(timeout=1.5) is None
        with pytest.raises(TaskServerDied):  # the same wait with a timeout raises
            watcher.get_result(timeout=1.5)
    finally:
        client.close()
        watcher.close()
        client.purge()
