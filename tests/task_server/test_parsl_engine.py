"""ParslTaskServer on two real HighThroughputExecutors ('cpu' and 'gpu', one worker each).

One server serves the whole module (starting Parsl costs seconds); the last test stops it and
checks that no Parsl process is left behind.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import engine_tasks as tasks
import psutil
import pytest

from steersman import ExecutableMethod, PipeQueues

parsl = pytest.importorskip("parsl")

from parsl.config import Config  # noqa: E402
from parsl.executors import HighThroughputExecutor  # noqa: E402
from parsl.providers import LocalProvider  # noqa: E402

from steersman.task_server import ParslTaskServer  # noqa: E402


def htex(label: str) -> HighThroughputExecutor:
    return HighThroughputExecutor(
        label=label, address="127.0.0.1", max_workers_per_node=1, heartbeat_period=1,
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
    )


class Server:
    """The module's server, its queues, and a way to stop it once."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.queues = PipeQueues(topics=["probe"])
        config = Config(executors=[htex("cpu"), htex("gpu")], run_dir=str(run_dir),
                        strategy="none")
        methods = [(tasks.add, {"executors": ["cpu"]}), tasks.where, tasks.wait_fifo,
                   tasks.die_once, tasks.Shout(), ExecutableMethod(["false"], name="fails")]
        self.server = ParslTaskServer(methods, self.queues, config)
        self.server.start()

    def stop(self) -> None:
        if self.server.exitcode is None:
            self.queues.send_kill_signal()
            self.server.join(60)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("parsl"))
    yield server
    server.stop()


@pytest.fixture
def queues(served: Server) -> PipeQueues:
    return served.queues


def release(fifo: Path) -> None:
    """Unblock a wait_fifo task (opening for writing waits until the task is reading)."""
    with open(fifo, "w") as stream:
        stream.write("go")


def test_methods_run_on_their_executors_or_the_requested_one(queues):
    queues.send_inputs(2, 3, method="add")
    queues.send_inputs("here", method="where", executor="gpu")
    results = {r.method: r for r in (queues.get_result(timeout=60) for _ in range(2))}
    assert results["add"].value == 5 and results["add"].worker_info.executor == "cpu"
    assert results["where"].worker_info.executor == "gpu"
    with pytest.raises(ValueError, match=r"valid executors: \['cpu', 'gpu'\]"):
        queues.send_inputs("x", method="where", executor="default")


def test_executable_runs_as_a_bash_app_with_timed_steps(queues):
    queues.send_inputs("hello", method="shout", executor="cpu")
    result = queues.get_result(timeout=60)
    assert result.success, result.failure_info
    assert result.value == "HELLO" and result.worker_info.executor == "cpu"
    assert set(result.time.additional) == {"preprocess", "execute", "postprocess"}
    assert result.time.running >= result.time.additional["execute"] >= 0

    queues.send_inputs(method="fails")
    result = queues.get_result(timeout=60)
    assert not result.success and "false exited with code 1" in result.failure_info.exception


def test_timed_out_task_fails_and_its_late_result_is_dropped(queues, tmp_path):
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    queues.send_inputs(str(fifo), method="wait_fifo", executor="gpu", timeout=0.2,
                       topic="probe")
    result = queues.get_result("probe", timeout=60)
    assert result.timed_out and "timeout of 0.2 s" in result.failure_info.exception
    release(fifo)  # the task was not cancellable on Parsl: it now finishes late
    queues.send_inputs("after", method="where", executor="gpu", topic="probe")
    assert queues.get_result("probe", timeout=60).value == "after"
    assert queues.get_result("probe", timeout=0.2) is None and queues.active_count == 0


def test_killed_worker_is_retried(queues, tmp_path):
    queues.send_inputs(str(tmp_path / "died"), method="die_once", executor="gpu",
                       max_retries=1)
    result = queues.get_result(timeout=60)
    assert result.success and result.value == "survived" and result.retries == 1


def test_interchange_dispatches_higher_priority_first(queues, tmp_path):
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    queues.send_inputs(str(fifo), method="wait_fifo", executor="gpu", priority=100)
    for tag, priority in [("low", 0), ("high", 4), ("top", 8), ("low", 0)]:
        queues.send_inputs(tag, method="where", executor="gpu", priority=priority)
    queues.send_inputs(method="where", executor="gpu", timeout=0.01, priority=-100,
                       topic="probe")
    assert queues.get_result("probe", timeout=60).timed_out  # all the others went out before
    releaser = threading.Thread(target=release, args=(fifo,))
    releaser.start()
    results = [queues.get_result(timeout=60) for _ in range(5)]
    releaser.join()
    order = [r.value for r in sorted(results, key=lambda r: r.timestamp.compute_started)]
    assert order == ["go", "top", "high", "low", "low"]


def test_kill_signal_stops_the_server_and_every_parsl_process(served):
    server = psutil.Process(served.server.pid)
    started = server.children(recursive=True) + _processes_of(served.run_dir)
    assert any("interchange" in " ".join(p.cmdline()) for p in started)
    assert any("process_worker_pool" in " ".join(p.cmdline()) for p in started)
    served.stop()
    assert served.server.exitcode == 0
    gone, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, [p.cmdline() for p in alive]


def _processes_of(run_dir: Path) -> list[psutil.Process]:
    """Worker pools launched by the provider may be re-parented; find them by run directory."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if str(run_dir) in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found
