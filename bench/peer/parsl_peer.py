"""The earlier library's side of bench/engines.py: the same thinker over its ParslTaskServer.

Run by ``bench/engines.py --peer PYTHON`` in the interpreter that has the earlier library
installed (it imports that library under its own name). It uses pipe queues, as our side does,
and prints one JSON line: tasks per second for each K.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from time import perf_counter

from colmena.queue.python import PipeQueues
from colmena.task_server.parsl import ParslTaskServer
from colmena.thinker import BaseThinker, ResourceCounter, result_processor, task_submitter
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider


def noop(x: int) -> int:
    """The task: nothing but the round trip."""
    return x


class Thinker(BaseThinker):
    """Keep K tasks in flight until n have come back."""

    def __init__(self, queues, n: int, k: int):
        super().__init__(queues, ResourceCounter(k, ["sim"]))
        self.rec.reallocate(None, "sim", k)
        self.to_send, self.to_receive = n, n

    @task_submitter(task_type="sim")
    def submit(self) -> None:
        if self.to_send > 0:
            self.to_send -= 1
            self.queues.send_inputs(1, method="noop")

    @result_processor
    def receive(self, result) -> None:
        assert result.success, result.failure_info
        self.rec.release("sim", 1)
        self.to_receive -= 1
        if self.to_receive == 0:
            self.done.set()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--run-dir", default="runinfo")
    args = parser.parse_args()
    # Parsl's workers start with the first process_worker_pool.py on the PATH: use this venv's.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.WARNING, handlers=[handler])

    executor = HighThroughputExecutor(
        label="htex", address="127.0.0.1", max_workers_per_node=args.workers,
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
    )
    config = Config(executors=[executor], run_dir=args.run_dir, strategy="none")
    queues = PipeQueues(keep_inputs=True)
    server = ParslTaskServer([noop], queues, config)
    server.start()
    rates = {}
    try:
        Thinker(queues, 4 * args.workers, args.workers).run()  # warm up
        for k in args.k:
            start = perf_counter()
            Thinker(queues, args.tasks, k).run()
            rates[k] = args.tasks / (perf_counter() - start)
    finally:
        queues.send_kill_signal()
        server.join()
    print(json.dumps(rates))


if __name__ == "__main__":
    main()
