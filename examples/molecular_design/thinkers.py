"""Three steering policies for the molecular search: random, batched and interleaved.

All three simulate molecules from a priority list as slots free up. The random thinker never
learns. The others retrain a model after every ``batch_size`` new results and reorder the list by
its predictions; the batched thinker pauses submission while it learns, the interleaved thinker
keeps simulating on the slots it did not move to learning.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steersman import (
    BaseThinker,
    PipeQueues,
    ResourceCounter,
    Result,
    event_responder,
    result_processor,
    task_submitter,
)
from steersman.thinker import Flag
from steersman.thinker.events import wait_for_any

SIMULATE, TRAIN, INFER, ML = "simulate", "train", "infer", "ml"
TOPICS = [SIMULATE, TRAIN, INFER]


class RandomThinker(BaseThinker):
    """Simulate molecules in a random order; the baseline.

    Args:
        queues: Client side of the queues.
        n_workers: Worker slots; all start on simulation.
        molecules: The search space, as SMILES.
        n_to_evaluate: Simulations to run.
        seed: Seed of the random order.
        initial_count: Results before the first training.
        batch_size: New results between two trainings.
        n_conformers: Conformers each simulation screens.
        on_event: Called with ``('started' | 'finished', result_or_None)`` for progress bars.
        run_dir: Where the thinker records its parameters, results and slots.
        progress: The library's progress display (None: auto, off while tqdm bars are open).
    """

    learns = False
    pause_while_learning = False

    def __init__(self, queues: PipeQueues, n_workers: int, molecules: Sequence[str],
                 n_to_evaluate: int, seed: int = 0, initial_count: int = 8, batch_size: int = 4,
                 n_conformers: int = 8,
                 on_event: Callable[[str, Result | None], None] | None = None,
                 run_dir: Path | None = None, progress: bool | str | None = None):
        super().__init__(queues, ResourceCounter(n_workers, [SIMULATE, ML]), run_dir=run_dir,
                         progress=progress)
        self.n_to_evaluate = min(n_to_evaluate, len(molecules))
        self.initial_count = initial_count
        self.batch_size = batch_size
        self.n_conformers = n_conformers
        self.on_event = on_event or (lambda kind, result: None)
        order = np.random.default_rng(seed).permutation(len(molecules))
        self.priority_list: list[str] = [molecules[i] for i in order]
        self.list_lock = threading.Lock()
        # Molecules sent: on resume, those the replay hands back and those the journal resends
        # are not sent again, and count toward n_to_evaluate.
        self.sent: set[str] = set()
        if self.campaign is not None and self.resumed:
            self.sent.update(r.args[0] for r in self.campaign.pending if r.topic == SIMULATE)
        self.database: dict[str, float] = {}
        self.received = 0
        self.new_since_training = 0
        self.trained_once = False
        self.db_lock = threading.Lock()
        self.start_training = threading.Event()
        self.resume = Flag()  # cleared while a batched thinker learns
        self.resume.set()
        self.simulation_results: list[Result] = []
        self.learning_results: list[Result] = []
        self.ml_slots = 1
        self.rec.reallocate(None, SIMULATE, n_workers)  # type: ignore[union-attr]

    @task_submitter(task_type=SIMULATE, n_slots=1)
    def submit_calc(self) -> None:
        """Simulate the molecule at the head of the priority list."""
        wait_for_any([self.resume, self.done])  # a batched thinker pauses here while learning
        with self.list_lock:
            smiles = None
            while (smiles is None and len(self.sent) < self.n_to_evaluate and self.priority_list
                   and not self.done.is_set()):
                head = self.priority_list.pop(0)
                if head not in self.sent:
                    smiles = head
                    self.sent.add(smiles)
        if smiles is None:  # nothing left to send: free the slot for learning, wait for the end
            self.rec.release(SIMULATE, 1)  # type: ignore[union-attr]
            self.done.wait()
            return
        self.queues.send_inputs(smiles, self.n_conformers, method="compute_vertical",
                                topic=SIMULATE)
        self.on_event("started", None)

    @result_processor(topic=SIMULATE)
    def receive_calc(self, result: Result) -> None:
        """Store the result; start learning once enough new data arrived."""
        self.rec.release(SIMULATE, 1)  # type: ignore[union-attr]
        with self.list_lock:
            self.sent.add(result.args[0])  # replayed results of an earlier session count too
        with self.db_lock:
            self.received += 1
            self.simulation_results.append(result)
            if result.success:
                self.database[result.args[0]] = float(result.value)
                self.new_since_training += 1
            else:
                self.logger.warning("simulation of %s failed: %s", result.args[0],
                                    result.failure_info.exception if result.failure_info else "")
            needed = self.batch_size if self.trained_once else self.initial_count
            trigger = self.learns and self.new_since_training >= needed
            finished = self.received >= self.n_to_evaluate
        self.on_event("finished", result)
        if finished:
            self.done.set()
        elif trigger and not self.start_training.is_set():
            if self.pause_while_learning:
                self.resume.clear()
            self.start_training.set()

    @event_responder(event_name="start_training", reallocate_resources=True,
                     gather_from=SIMULATE, gather_to=ML, disperse_to=SIMULATE, max_slots="ml_slots")
    def learn(self) -> None:
        """Train on the slot moved to ML, predict the molecules left, reorder the list."""
        try:
            if self.rec.acquire(ML, 1, cancel_if=self.done):  # type: ignore[union-attr]
                try:
                    self._train_and_reorder()
                finally:
                    self.rec.release(ML, 1)  # type: ignore[union-attr]
        finally:
            self.resume.set()

    def _train_and_reorder(self) -> None:
        with self.db_lock:
            smiles, values = list(self.database), list(self.database.values())
            self.new_since_training = 0
            self.trained_once = True
        self.queues.send_inputs(smiles, values, method="train_model", topic=TRAIN,
                                keep_inputs=False, task_info={"n_train": len(smiles)})
        trained = self.queues.get_result(topic=TRAIN)
        assert trained is not None
        self.learning_results.append(trained)
        if not trained.success:
            self.logger.warning("training failed: %s", trained.failure_info)
            return
        with self.list_lock:
            candidates = [s for s in self.priority_list if s not in self.sent]
        self.queues.send_inputs(trained.value, candidates, method="run_model", topic=INFER,
                                keep_inputs=False, task_info={"n_infer": len(candidates)})
        inferred = self.queues.get_result(topic=INFER)
        assert inferred is not None
        self.learning_results.append(inferred)
        if not inferred.success:
            self.logger.warning("inference failed: %s", inferred.failure_info)
            return
        score: dict[str, Any] = dict(zip(candidates, inferred.value.tolist()))
        with self.list_lock:  # highest predicted IP first; molecules sent meanwhile are gone
            self.priority_list.sort(key=lambda s: -score.get(s, -np.inf))
        self.logger.info("retrained on %d molecules, reordered %d", len(smiles), len(candidates))


class BatchedThinker(RandomThinker):
    """Retrain after each batch of results, pausing submission until the list is reordered."""

    learns = True
    pause_while_learning = True


class InterleavedThinker(RandomThinker):
    """Retrain after each batch of results on one borrowed slot while simulations go on."""

    learns = True
    pause_while_learning = False


THINKERS: dict[str, type[RandomThinker]] = {
    "random": RandomThinker, "batched": BatchedThinker, "interleaved": InterleavedThinker,
}
