"""Parsl cannot stop a running task: a HighThroughputExecutor whose only worker hangs in a
timed-out task cannot start the tasks queued behind it. Told to stop, the server fails them
(they would never start) and stops: Parsl's clean-up stops the hung worker."""

from __future__ import annotations

import logging
from pathlib import Path

import fault_tasks as tasks
import pytest
from fault_helpers import make_fifo, strand_then_stop

from steersman import PipeQueues

pytest.importorskip("parsl")


@pytest.mark.timeout(90)
def test_kill_signal_fails_tasks_no_parsl_worker_can_start(tmp_path: Path) -> None:
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    from steersman.task_server.parsl import ParslTaskServer

    executor = HighThroughputExecutor(
        label="htex", address="127.0.0.1", max_workers_per_node=1, heartbeat_period=1,
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
    )
    config = Config(executors=[executor], run_dir=str(tmp_path / "runinfo"), strategy="none")
    for name in ("parsl", "database_manager"):  # Parsl logs at DEBUG through the root logger
        logging.getLogger(name).setLevel(logging.WARNING)
    fifo = make_fifo(tmp_path, "gate.fifo")
    queues = PipeQueues()
    server = ParslTaskServer([tasks.double, tasks.wait_fifo], queues, config)
    server.start()
    try:
        queues.send_inputs(1, method="double")
        assert queues.get_result(timeout=60).value == 2  # the worker is up
        strand_then_stop(queues, fifo, timeout=0.5, waiting=2, wait=30)
        server.join(30)
        assert server.exitcode == 0, "the server did not stop: its only worker hangs"
    finally:
        if server.exitcode is None:
            server.kill()
            server.join()
        tasks.release_fifo(str(fifo))
        queues.close()
