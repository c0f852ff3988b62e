"""A small resumable campaign for the tests: square the numbers 0..N-1, each exactly once.

Two styles of thinker, both written the way the contract in docs/campaign.md asks:

- ``Squares`` (seed style): a task submitter takes the next number that is neither done (state
  rebuilt from replayed results) nor in flight (``campaign.pending``); a result processor
  releases the slot and stores the value.
- ``Chain``: no submitter; a startup agent sends the first numbers and each result processor
  sends the next number, so sends happen inside result processors.

Both raise if a number is processed twice. With STEERSMAN_TEST_PROGRESS=1 in the environment the
campaign prints ``started`` and ``processed N`` lines, which the kill test synchronises on.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from steersman import (
    BaseThinker,
    LocalTaskServer,
    PipeQueues,
    ResourceCounter,
    Result,
    agent,
    result_processor,
    task_submitter,
)

REPORT = os.environ.get("STEERSMAN_TEST_PROGRESS") == "1"
if REPORT:  # let a test that times out dump every thread's stack (kill -USR1)
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def square(i: int, delay: float) -> int:
    time.sleep(delay)
    return i * i


class _Base(BaseThinker):
    def __init__(self, queues: PipeQueues, n: int, slots: int, delay: float,
                 run_dir: Path | None, **kwargs: Any):
        super().__init__(queues, ResourceCounter(slots, ["sim"]), run_dir=run_dir,
                         progress=False, **kwargs)
        self.n = n
        self.slots = slots
        self.delay = delay
        self.values: dict[int, int] = {}
        self.processed_ids: set[str] = set()
        self.lock = threading.Lock()
        pending = self.campaign.pending if self.campaign is not None else []
        self.in_flight = {r.args[0] for r in pending}
        self.rec.reallocate(None, "sim", slots)
        self.save_params(n=n, slots=slots)

    def store(self, result: Result) -> int:
        """Record a result; raise if its number or task id was processed before."""
        i = result.args[0]
        with self.lock:
            if result.task_id in self.processed_ids or i in self.values:
                raise RuntimeError(f"processed twice: {i} (task {result.task_id})")
            self.processed_ids.add(result.task_id)
            self.values[i] = result.value
            self.in_flight.discard(i)
            count = len(self.values)
        if REPORT:
            print(f"processed {count}", flush=True)
        if count >= self.n:
            self.done.set()
        return count


class Squares(_Base):
    """Seed style: submit when a slot is free, release it when the result comes back."""

    @task_submitter(task_type="sim")
    def submit(self) -> None:
        with self.lock:
            candidates = (i for i in range(self.n)
                          if i not in self.values and i not in self.in_flight)
            i = next(candidates, None)
            if i is None:
                return  # keep the slot: everything is sent
            self.in_flight.add(i)
        self.queues.send_inputs(i, self.delay, method="square", topic="sim")

    @result_processor(topic="sim")
    def receive(self, result: Result) -> None:
        self.rec.release("sim", 1)
        self.store(result)


class Chain(_Base):
    """Sends from inside result processors: number i + slots follows number i."""

    @agent(startup=True)
    def seed(self) -> None:
        for i in range(min(self.slots, self.n)):
            with self.lock:
                known = i in self.values or i in self.in_flight or self.followed(i)
            if not known:
                self.queues.send_inputs(i, self.delay, method="square", topic="sim")

    def followed(self, i: int) -> bool:
        """Whether a later number of i's chain is known (so i was sent before)."""
        return any(j in self.values or j in self.in_flight for j in range(i, self.n, self.slots))

    @result_processor(topic="sim")
    def receive(self, result: Result) -> None:
        self.store(result)
        follower = result.args[0] + self.slots
        if follower < self.n:
            self.queues.send_inputs(follower, self.delay, method="square", topic="sim")


STYLES = {"squares": Squares, "chain": Chain}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--delay", type=float, default=0.004)
    parser.add_argument("--style", choices=sorted(STYLES), default="squares")
    args = parser.parse_args(argv)
    queues = PipeQueues(topics=["sim"])
    server = LocalTaskServer(queues, [square], threads=True, num_workers=args.slots)
    server.start()
    try:
        thinker = STYLES[args.style](queues, args.tasks, args.slots, args.delay, args.run_dir)
        if REPORT:
            print("started", flush=True)
        thinker.run()
    finally:
        queues.send_kill_signal()
        server.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
