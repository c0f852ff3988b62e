"""Fault 6: the code that started a task server fails, or its thinker process dies.

A running task's result would reach no one, so the server stops without waiting for it: when
the body of ``with server:`` raises, when a script that called ``server.start()`` exits without
stopping it, and when the thinker at the other end of pipe queues is killed. Tasks here block
for a minute; each test takes a fraction of a second.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import fault_tasks as tasks
import psutil
import pytest
from fault_helpers import make_fifo, read_pid

from steersman import LocalTaskServer, PipeQueues
from steersman.task_server import TaskServer
from steersman.task_server.local import ThreadEngine

#: Far above the second or so a prompt stop takes, far below the minute the tasks block.
PROMPTLY = 30.0

THREADS = pytest.mark.parametrize("threads", [True, False], ids=["threads", "processes"])


def gone(*pids: int) -> bool:
    """Whether every process has ended (a zombie waiting for its parent counts as ended)."""
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def wait_gone(*pids: int, timeout: float = PROMPTLY) -> bool:
    """Wait for processes that need not be children of this one to end: a pidfd becomes
    readable when its process ends (before anyone reaps it)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(fd)
    return gone(*pids)


def kill_all(*pids: int) -> None:
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(100)
@THREADS
def test_error_in_the_with_body_reaches_the_caller_without_waiting(threads: bool,
                                                                   tmp_path: Path) -> None:
    """Two running tasks (one sent to a worker directly, one through the server) are stopped
    (processes) or left behind (threads), and the server process ends at once."""
    queues = PipeQueues()
    first, second = make_fifo(tmp_path, "1.fifo"), make_fifo(tmp_path, "2.fifo")
    server = LocalTaskServer(queues, [tasks.report_pid_and_block], threads=threads,
                             num_workers=2)
    workers: list[int] = []
    with pytest.raises(RuntimeError, match="a bug in an agent"), server:
        queues.send_inputs(str(first), method="report_pid_and_block")
        queues.send_inputs(str(second), method="report_pid_and_block", priority=1)
        workers = [read_pid(first), read_pid(second)]  # both tasks run
        failed_at = time.perf_counter()
        raise RuntimeError("a bug in an agent")
    took = time.perf_counter() - failed_at
    try:
        assert server.exitcode is not None
        assert took < PROMPTLY, f"the error was held back {took:.1f} s"
        assert wait_gone(*workers)
    finally:
        if not gone(*workers):
            kill_all(*workers)
        queues.close()


@pytest.mark.timeout(100)
def test_shutdown_waits_until_running_tasks_are_given_up_on(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    """The thread that stops the server at once may still be giving up the running tasks
    when the loop, woken by it, reaches the engine's shutdown: the loop waits for it, not for
    the tasks. Slow cancelling, and a kill signal read late, make that so here (the server
    process is forked with these patches)."""
    cancel, stop_requested = ThreadEngine.cancel, TaskServer._stop_requested

    def slow_cancel(self: ThreadEngine, future: Any) -> bool:
        time.sleep(0.3)
        return cancel(self, future)

    def late_stop_requested(self: TaskServer) -> bool:
        time.sleep(0.1)
        return stop_requested(self)

    monkeypatch.setattr(ThreadEngine, "cancel", slow_cancel)
    monkeypatch.setattr(TaskServer, "_stop_requested", late_stop_requested)
    queues = PipeQueues()
    fifo = make_fifo(tmp_path)
    server = LocalTaskServer(queues, [tasks.report_pid_and_block], threads=True, num_workers=1)
    with pytest.raises(RuntimeError, match="a bug in an agent"), server:
        queues.send_inputs(str(fifo), method="report_pid_and_block")
        read_pid(fifo)
        failed_at = time.perf_counter()
        raise RuntimeError("a bug in an agent")
    took = time.perf_counter() - failed_at
    assert server.exitcode == 0, "the server was killed: it did not stop on its own"
    assert took < PROMPTLY, f"the error was held back {took:.1f} s"
    queues.close()


def test_graceful_exit_of_the_with_body_still_waits_for_running_tasks() -> None:
    queues = PipeQueues()
    with LocalTaskServer(queues, [tasks.hang], threads=False, num_workers=1) as server:
        queues.send_inputs(0.3, method="hang", priority=1)
    assert server.exitcode == 0
    result = queues.get_result(timeout=30)
    assert result is not None and result.success
    queues.close()


STARTS_AND_FAILS = """
import sys
import fault_tasks as tasks
from steersman import LocalTaskServer, PipeQueues

queues = PipeQueues()
server = LocalTaskServer(queues, [tasks.report_pid_and_block], threads={threads},
                         num_workers=1)
server.start()
queues.send_inputs(sys.argv[1], method="report_pid_and_block")
with open(sys.argv[1]) as fifo:
    print(server.pid, fifo.read().strip(), flush=True)
{ending}
"""


@contextmanager
def run_script(tmp_path: Path, threads: bool, ending: str, template: str = STARTS_AND_FAILS,
               *args: str) -> Iterator[subprocess.Popen[str]]:
    """Run the script in a process group of its own, killed whole at the end."""
    script = tmp_path / "campaign.py"
    script.write_text(template.format(threads=threads, ending=textwrap.dedent(ending)))
    fifo = make_fifo(tmp_path)
    process = subprocess.Popen([sys.executable, str(script), str(fifo), *args], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        yield process
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


@pytest.mark.timeout(100)
@THREADS
def test_script_that_fails_after_start_exits(threads: bool, tmp_path: Path) -> None:
    """The README's pattern: ``server.start()``, then the campaign raises before it sends
    the kill signal. The interpreter exits (instead of waiting for the server for good),
    and takes the server and its worker with it."""
    with run_script(tmp_path, threads, 'raise RuntimeError("the campaign failed")') as process:
        assert process.stdout is not None
        server, worker = map(int, process.stdout.readline().split())
        try:
            _, stderr = process.communicate(timeout=PROMPTLY)
        except subprocess.TimeoutExpired:
            pytest.fail("the script did not exit: it waits for its task server")
        assert process.returncode == 1
        assert "RuntimeError: the campaign failed" in stderr
        assert "stopping it without waiting for running tasks" in stderr
        assert wait_gone(server, worker)


@pytest.mark.timeout(100)
@THREADS
def test_server_stops_when_its_thinker_is_killed(threads: bool, tmp_path: Path) -> None:
    """Over pipes the thinker's death ends the server within moments, with one log line and
    no traceback, even though its task would block for a minute."""
    with run_script(tmp_path, threads, "import time; time.sleep(60)") as process:
        assert process.stdout is not None
        server, worker = map(int, process.stdout.readline().split())
        os.kill(process.pid, signal.SIGKILL)
        assert wait_gone(server, worker), "the task server outlived its thinker"
        _, stderr = process.communicate(timeout=PROMPTLY)  # every writer of stderr ended
        assert stderr.count("stopping without waiting for running tasks") == 1, stderr
        assert "Traceback" not in stderr, stderr


SENDS_KILL_THEN_DIES = """
import sys, time
import fault_tasks as tasks
from steersman import LocalTaskServer, PipeQueues

queues = PipeQueues()
server = LocalTaskServer(queues, [tasks.wait_fifo, tasks.wait_fifo_then_yield],
                         threads={threads}, num_workers=1)
server.start()
queues.send_inputs(sys.argv[1], method=sys.argv[2], priority=1)
queues.send_kill_signal()
print(server.pid, flush=True)
{ending}
"""


@pytest.mark.timeout(100)
@pytest.mark.parametrize("method", ["wait_fifo", "wait_fifo_then_yield"])
@THREADS
def test_server_finishing_tasks_after_the_kill_signal_stops_when_its_thinker_is_gone(
        threads: bool, method: str, tmp_path: Path) -> None:
    """The thinker sent the kill signal and died while a task ran: the server finds out when
    it cannot send the task's (final or intermediate) result, and stops with one log line,
    no traceback."""
    with run_script(tmp_path, threads, "time.sleep(60)", SENDS_KILL_THEN_DIES,
                    method) as process:
        assert process.stdout is not None
        server = int(process.stdout.readline())
        with open(tmp_path / "pid.fifo", "w") as fifo:  # opens once the task reads it
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            fifo.write("done")  # the task returns on closing
        assert wait_gone(server), "the task server outlived its thinker"
        _, stderr = process.communicate(timeout=PROMPTLY)
        assert stderr.count("stopping without waiting for running tasks") == 1, stderr
        assert "Traceback" not in stderr, stderr
