"""Fault 1 on Parsl: a HighThroughputExecutor worker killed with SIGKILL mid-task.

One Parsl configuration serves the whole module (starting it costs seconds). The worker pool's
heartbeat is set to one second so a lost worker is noticed quickly; with Parsl's default (30 s)
the outcome is the same, only later.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import fault_tasks as tasks
import pytest
from fault_helpers import Collect, Request, make_fifo, read_pid, run_in_thread

from steersman import PipeQueues

pytest.importorskip("parsl")


@pytest.fixture(scope="module")
def parsl_queues(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipeQueues]:
    """Pipe queues to a ParslTaskServer with one local HighThroughputExecutor of two workers."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    from steersman.task_server.parsl import ParslTaskServer

    run_dir = tmp_path_factory.mktemp("parsl")
    executor = HighThroughputExecutor(
        label="htex", address="127.0.0.1", max_workers_per_node=2, heartbeat_period=1,
        heartbeat_threshold=5, provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
    )
    config = Config(executors=[executor], run_dir=str(run_dir), strategy="none")
    queues = PipeQueues()
    for name in ("parsl", "database_manager"):  # Parsl logs at DEBUG through the root logger
        logging.getLogger(name).setLevel(logging.WARNING)
    server = ParslTaskServer([tasks.double, tasks.report_pid_and_block,
                              tasks.survive_second_time], queues, config)
    server.start()
    queues.send_inputs(1, method="double")
    ready = queues.get_result(timeout=60)  # workers are up
    assert ready is not None and ready.value == 2
    yield queues
    queues.send_kill_signal()
    server.join(30)
    assert server.exitcode == 0
    queues.close()


def _campaign(queues: PipeQueues, victim: Request, fifo: Path) -> Collect:
    others = [Request("double", (i,), {"max_retries": 2}) for i in range(6)]
    thinker = Collect(queues, [victim, *others])
    killer = threading.Thread(target=lambda: os.kill(read_pid(fifo), signal.SIGKILL),
                              daemon=True)
    killer.start()
    thread, raised = run_in_thread(thinker)
    thread.join(30)
    assert not thread.is_alive(), "the campaign hung after a Parsl worker was killed"
    assert not raised, raised
    assert not killer.is_alive()
    assert sorted(r.value for r in thinker.by_method("double")) == [2 * i for i in range(6)]
    assert not thinker.duplicates and queues.active_count == 0
    return thinker


@pytest.mark.timeout(45)
def test_killed_htex_worker_fails_its_task(parsl_queues: PipeQueues, tmp_path: Path) -> None:
    """Without retries the task comes back failed as worker_lost; the campaign finishes."""
    fifo = make_fifo(tmp_path)
    thinker = _campaign(parsl_queues, Request("report_pid_and_block", (str(fifo),)), fifo)
    (victim,) = thinker.by_method("report_pid_and_block")
    assert victim.success is False and victim.failure_info is not None
    assert victim.failure_info.worker_lost, victim.failure_info


@pytest.mark.timeout(45)
def test_killed_htex_worker_task_is_retried(parsl_queues: PipeQueues, tmp_path: Path) -> None:
    """With a retry left, the task runs again on the replacement worker and succeeds."""
    fifo = make_fifo(tmp_path)
    victim = Request("survive_second_time", (str(fifo), str(tmp_path / "marker")),
                     {"max_retries": 1})
    thinker = _campaign(parsl_queues, victim, fifo)
    (result,) = thinker.by_method("survive_second_time")
    assert result.success and result.value == "survived" and result.retries == 1
