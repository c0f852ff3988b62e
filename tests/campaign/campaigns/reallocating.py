"""A small seed-000-style campaign: Ackley 'simulations' and an ML task that reorders the queue.

Slots move from simulation to ML while the model trains and back afterwards. Used by the tests
and to look at the report's plots.
"""

from __future__ import annotations

import argparse
import math
import random
import threading
import time
from pathlib import Path

import numpy as np

from steersman import (
    BaseThinker,
    LocalTaskServer,
    PipeQueues,
    ResourceCounter,
    Result,
    event_responder,
    result_processor,
    task_submitter,
)


def ackley(x: list[float], delay: float) -> float:
    """The Ackley function (minimum 0 at the origin), after a pretend simulation time."""
    time.sleep(delay)
    a = np.asarray(x)
    return float(-20 * math.exp(-0.2 * math.sqrt(np.mean(a**2)))
                 - math.exp(np.mean(np.cos(2 * math.pi * a))) + 20 + math.e)


def reorder(database: list[tuple[list[float], float]], queue: list[list[float]],
            delay: float) -> list[int]:
    """Pretend to train a model: rank the queue by distance to the best point so far."""
    time.sleep(delay)
    best = np.asarray(min(database, key=lambda item: item[1])[0])
    distance = [float(np.sum((np.asarray(x) - best) ** 2)) for x in queue]
    return sorted(range(len(queue)), key=lambda i: -distance[i])  # best last: popped first


class Reallocator(BaseThinker):
    def __init__(self, queues: PipeQueues, n_sims: int, workers: int, run_dir: Path | None,
                 seed: int, retrain_every: int, sim_delay: float, ml_delay: float):
        super().__init__(queues, ResourceCounter(workers, ["simulate", "ml"]), run_dir=run_dir)
        rng = random.Random(seed)
        self.task_queue = [[rng.uniform(-3, 3), rng.uniform(-3, 3)] for _ in range(n_sims * 2)]
        self.n_sims = n_sims
        self.retrain_every = retrain_every
        self.sim_delay = sim_delay
        self.ml_delay = ml_delay
        self.database: dict[tuple[float, ...], float] = {}
        self.in_flight = {tuple(r.args[0]) for r in self.campaign.pending} if self.resumed \
            else set()
        self.lock = threading.Lock()
        self.start_training = threading.Event()
        self.rng = rng
        self.rec.reallocate(None, "simulate", workers)
        self.save_params(n_sims=n_sims, workers=workers, seed=seed, goal="min",
                         value_topic="simulate")

    @task_submitter(task_type="simulate")
    def submit(self) -> None:
        with self.lock:
            while self.task_queue:
                x = self.task_queue.pop()
                if tuple(x) not in self.database and tuple(x) not in self.in_flight:
                    break
            else:
                return
            self.in_flight.add(tuple(x))
        delay = self.sim_delay * self.rng.uniform(0.5, 1.5)
        self.queues.send_inputs(x, delay, method="ackley", topic="simulate")

    @result_processor(topic="simulate")
    def receive(self, result: Result) -> None:
        self.rec.release("simulate", 1)
        x = tuple(result.args[0])
        with self.lock:
            self.in_flight.discard(x)
            if result.success:
                self.database[x] = result.value
            count = len(self.database)
        if count >= self.n_sims:
            self.done.set()
        elif count % self.retrain_every == 0:
            self.start_training.set()

    @event_responder(event_name="start_training", reallocate_resources=True,
                     gather_from="simulate", gather_to="ml", disperse_to="simulate", max_slots=1)
    def train(self) -> None:
        self.rec.acquire("ml", 1, cancel_if=self.done)
        with self.lock:
            data = [(list(k), v) for k, v in self.database.items()]
            queue = list(self.task_queue)
        self.queues.send_inputs(data, queue, self.ml_delay, method="reorder", topic="ml")
        result = self.queues.get_result(topic="ml")
        self.rec.release("ml", 1)
        if result is not None and result.success:
            with self.lock:
                if len(self.task_queue) == len(queue):
                    self.task_queue = [queue[i] for i in result.value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--simulations", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--retrain-every", type=int, default=16)
    parser.add_argument("--sim-delay", type=float, default=0.03)
    parser.add_argument("--ml-delay", type=float, default=0.15)
    args = parser.parse_args(argv)
    queues = PipeQueues(topics=["simulate", "ml"])
    server = LocalTaskServer(queues, [ackley, reorder], threads=True, num_workers=args.workers)
    server.start()
    try:
        thinker = Reallocator(queues, args.simulations, args.workers, args.run_dir, args.seed,
                              args.retrain_every, args.sim_delay, args.ml_delay)
        thinker.run()
    finally:
        queues.send_kill_signal()
        server.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
