"""Dynamic reallocation: move worker slots from simulation to ML and back while a search runs.

The "simulation" evaluates the Ackley function at a point of a fixed pool. After every
``--retrain-every`` new results, an event responder moves slots from the simulation pool to the
ML pool, fits a Gaussian process to the results so far, ranks the points not yet run by their
expected improvement, reorders the task queue, and gives the slots back.

Run ``steersman run examples/reallocation`` or ``python examples/reallocation/campaign.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # the helpers shared by the examples live in examples/
    sys.path.insert(0, str(HERE.parent))

from _shared.cli import HelpFormatter  # noqa: E402
from _shared.plots import allocation_figure  # noqa: E402
from _shared.runlog import new_run_dir, read_allocation, read_results  # noqa: E402

from steersman import (  # noqa: E402
    BaseThinker,
    LocalTaskServer,
    PipeQueues,
    ResourceCounter,
    Result,
    event_responder,
    result_processor,
    task_submitter,
)
from steersman.thinker.events import Flag, wait_for_any  # noqa: E402

SIMULATE, ML = "simulate", "ml"
LABELS = {SIMULATE: "Simulation (Ackley)", ML: "ML (GP + expected improvement)"}


# --- the science ------------------------------------------------------------------------------


def ackley(x: np.ndarray, a: float = 20.0, b: float = 0.2, c: float = 2 * math.pi) -> np.ndarray:
    """The Ackley function (minimum 0 at the origin) of each row of `x`."""
    x = np.atleast_2d(x)
    d = x.shape[1]
    return (-a * np.exp(-b * np.sqrt((x**2).sum(axis=1) / d))
            - np.exp(np.cos(c * x).sum(axis=1) / d) + a + math.e)


def simulate(x: list[float], run_time: float) -> float:
    """A stand-in simulation: Ackley at `x`, after `run_time` seconds of emulated work."""
    time.sleep(run_time)
    return float(ackley(np.asarray(x))[0])


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float,
                         xi: float = 0.0) -> np.ndarray:
    """Expected improvement below `best` of a normal prediction (we minimise).

    EI = (best - mean - xi) * Phi(z) + std * phi(z), with z = (best - mean - xi) / std.
    """
    from scipy.stats import norm

    improvement = best - np.asarray(mean) - xi
    std = np.asarray(std)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(std > 0, improvement / std, 0.0)
    ei = improvement * norm.cdf(z) + std * norm.pdf(z)
    return np.where(std > 0, ei, np.maximum(improvement, 0.0))


def rank_by_ei(x_done: np.ndarray, y_done: np.ndarray, x_left: np.ndarray,
               xi: float = 0.01, seed: int = 0) -> dict[str, Any]:
    """Fit a Gaussian process to the results so far; the expected improvement of each point left.

    Returns the EI of each row of `x_left` with the model's prediction and the fit time.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    start = time.perf_counter()
    x_done, y_done, x_left = np.asarray(x_done), np.asarray(y_done), np.asarray(x_left)
    kernel = (ConstantKernel(1.0) * Matern(length_scale=np.ones(x_done.shape[1]), nu=2.5)
              + WhiteKernel(1e-2))
    model = GaussianProcessRegressor(kernel, normalize_y=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_done, y_done)
    mean, std = model.predict(x_left, return_std=True)
    ei = expected_improvement(mean, std, float(y_done.min()), xi)
    return {"ei": ei, "mean": mean, "std": std, "fit_time": time.perf_counter() - start}


def make_pool(dim: int, size: int, bound: float, seed: int) -> np.ndarray:
    """The candidate points: uniform in [-bound, bound]^dim, fixed by `seed`."""
    return np.random.default_rng(seed).uniform(-bound, bound, size=(size, dim))


# --- the steering policy ----------------------------------------------------------------------


class ReallocationThinker(BaseThinker):
    """Simulate points in queue order; every few results, borrow slots to reorder the queue.

    Args:
        queues: Client side of the queues.
        counter: Slots for the ``simulate`` and ``ml`` pools; all start in ``simulate``.
        pool: Candidate points, one per row.
        budget: How many simulations to run.
        retrain_every: New results between two reorderings; 0 keeps the random order.
        ml_slots: Slots moved to ML while it runs.
        run_time: Range (low, high) of the emulated simulation time, in seconds.
        seed: Seed of the initial random order and the run times.
        run_dir: Where the thinker records its parameters, results and slots.
        progress: The library's progress display: None (auto), True, 'rich', 'tqdm' or False.
    """

    def __init__(self, queues: PipeQueues, counter: ResourceCounter, pool: np.ndarray,
                 budget: int, retrain_every: int, ml_slots: int,
                 run_time: tuple[float, float], seed: int = 0, xi: float = 0.01,
                 run_dir: Path | None = None, progress: bool | str | None = None):
        super().__init__(queues, counter, run_dir=run_dir, progress=progress)
        self.pool = pool
        self.budget = min(budget, len(pool))
        self.retrain_every = retrain_every
        self.ml_slots = ml_slots
        self.run_time = run_time
        self.seed = seed
        self.xi = xi
        self.rng = np.random.default_rng(seed)
        self.task_queue: list[int] = [int(i) for i in self.rng.permutation(len(pool))]
        self.queue_lock = threading.Lock()
        # Points sent to simulation: on resume, those the replay hands back (done) and those the
        # journal will resend (pending) are never sent again, and both count toward the budget.
        self.sent: set[int] = set()
        if self.campaign is not None and self.resumed:
            self.sent.update(int(r.task_info["index"]) for r in self.campaign.pending
                             if r.topic == SIMULATE)
        self.database: list[tuple[int, float]] = []
        self.db_lock = threading.Lock()
        self.received = 0
        self.new_since_ml = 0
        self.start_ml = threading.Event()
        self.ml_done = Flag()
        self.ml_result: Result | None = None
        self.ml_runs: list[dict[str, Any]] = []
        counter.reallocate(None, SIMULATE, counter.total_slots)

    @property
    def submitted(self) -> int:
        """Simulations sent so far (on resume, those of the earlier sessions included)."""
        return len(self.sent)

    @task_submitter(task_type=SIMULATE, n_slots=1)
    def submit_simulation(self) -> None:
        """Send the point at the head of the task queue (skipping points already sent)."""
        with self.queue_lock:
            index = None
            while len(self.sent) < self.budget and self.task_queue:
                head = self.task_queue.pop(0)
                if head not in self.sent:
                    index = head
                    self.sent.add(index)
                    break
        if index is None:  # budget spent: give the slot back and wait for the end
            self.rec.release(SIMULATE, 1)  # type: ignore[union-attr]
            self.done.wait()
            return
        run_time = float(self.rng.uniform(*self.run_time))
        self.queues.send_inputs(self.pool[index].tolist(), run_time, method="simulate",
                                topic=SIMULATE, task_info={"index": index})

    @result_processor(topic=SIMULATE)
    def receive_simulation(self, result: Result) -> None:
        """Store the value, free the slot, and start the ML step after enough new results."""
        self.rec.release(SIMULATE, 1)  # type: ignore[union-attr]
        index = int(result.task_info["index"])
        with self.queue_lock:
            self.sent.add(index)  # replayed results of an earlier session count too
        with self.db_lock:
            self.received += 1
            if result.success:
                self.database.append((index, float(result.value)))
                self.new_since_ml += 1
            else:
                self.logger.warning("simulation failed: %s", result.failure_info)
            trigger = self.retrain_every > 0 and self.new_since_ml >= self.retrain_every
            finished = self.received >= self.budget
        if finished:
            self.done.set()
        elif trigger and not self.start_ml.is_set():
            self.start_ml.set()

    @event_responder(event_name="start_ml", reallocate_resources=True, gather_from=SIMULATE,
                     gather_to=ML, disperse_to=SIMULATE, max_slots="ml_slots")
    def reorder_queue(self) -> None:
        """Fit the model on the slots moved to ML; the result processor reorders the queue."""
        if not self.rec.acquire(ML, self.ml_slots, cancel_if=self.done):  # type: ignore[union-attr]
            return
        try:
            with self.db_lock:
                done = list(self.database)
                self.new_since_ml = 0
            with self.queue_lock:
                candidates = [i for i in self.task_queue if i not in self.sent]
            if not candidates or not done:
                return
            x_done = self.pool[[i for i, _ in done]]
            y_done = np.array([v for _, v in done])
            self.ml_done.clear()
            self.queues.send_inputs(x_done, y_done, self.pool[candidates], self.xi, self.seed,
                                    method="rank_by_ei", topic=ML, keep_inputs=False,
                                    task_info={"n_train": len(done),
                                               "candidates": candidates})
            wait_for_any([self.ml_done, self.done])  # set by receive_ml, or the run ended
        finally:
            self.rec.release(ML, self.ml_slots)  # type: ignore[union-attr]

    @result_processor(topic=ML)
    def receive_ml(self, result: Result) -> None:
        """Reorder the queue by the EI of the points ranked (also for replayed results)."""
        try:
            if not result.success:
                self.logger.warning("ML task failed: %s", result.failure_info)
                return
            candidates = [int(i) for i in result.task_info["candidates"]]
            n_train = int(result.task_info["n_train"])
            ei = np.asarray(result.value["ei"])
            score = dict(zip(candidates, ei.tolist()))
            with self.queue_lock:  # points sent meanwhile are skipped; the rest follow their EI
                self.task_queue.sort(key=lambda i: -score.get(i, 0.0))
            self.ml_runs.append({"n_train": n_train, "n_ranked": len(candidates),
                                 "fit_time": result.value["fit_time"],
                                 "max_ei": float(ei.max()) if len(ei) else 0.0})
            if self.campaign is not None and self.campaign.replaying:
                with self.db_lock:  # results after this model's training are still new
                    self.new_since_ml = len(self.database) - n_train
                    if self.new_since_ml < self.retrain_every:
                        self.start_ml.clear()
            else:
                self.logger.info("reordered %d points with a GP trained on %d results",
                                 len(candidates), n_train)
        finally:
            self.ml_done.set()


# --- running it -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="reallocation", description=__doc__.split("\n\n")[1],
        formatter_class=HelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="directory for the run's files (default: runs/reallocation-<time>)")
    parser.add_argument("--dim", type=int, default=4, help="dimensions of the Ackley function")
    parser.add_argument("--pool-size", type=int, default=1000, help="candidate points")
    parser.add_argument("--bound", type=float, default=5.0,
                        help="points are drawn uniformly from [-bound, bound]^dim")
    parser.add_argument("--pool-seed", type=int, default=0,
                        help="seed of the pool (kept fixed when comparing orders)")
    parser.add_argument("--budget", type=int, default=150, help="simulations to run")
    parser.add_argument("--workers", type=int, default=4, help="worker slots")
    parser.add_argument("--ml-slots", type=int, default=1, help="slots moved to ML while it runs")
    parser.add_argument("--retrain-every", type=int, default=16,
                        help="new results between two reorderings of the queue")
    parser.add_argument("--order", choices=["gp", "random"], default="gp",
                        help="gp: reorder by expected improvement; random: never reorder")
    parser.add_argument("--sim-time", type=float, nargs=2, default=[0.1, 0.5],
                        metavar=("LOW", "HIGH"), help="range of the random simulation time (s)")
    parser.add_argument("--xi", type=float, default=0.01, help="exploration margin of EI")
    parser.add_argument("--seed", type=int, default=0, help="seed of the order and run times")
    parser.add_argument("--target", type=float, default=None,
                        help="value to reach (default: the 10th best value in the pool)")
    parser.add_argument("--figure", type=Path, default=None,
                        help="also write the allocation figure here")
    parser.add_argument("--no-figure", action="store_true", help="skip the figure")
    parser.add_argument("--progress", choices=["auto", "rich", "tqdm", "off"], default="auto",
                        help="progress display (auto: rich on a terminal)")
    parser.add_argument("--quiet", action="store_true", help="same as --progress off")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be positive, got {args.workers}")
    if not 1 <= args.ml_slots <= args.workers:
        parser.error(f"need 1 <= --ml-slots <= --workers, got {args.ml_slots} and {args.workers}")
    if args.budget < 1 or args.pool_size < 1 or args.dim < 1:
        parser.error("--budget, --pool-size and --dim must be positive")
    low, high = args.sim_time
    if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high < low:
        parser.error(f"need 0 <= LOW <= HIGH for --sim-time, got {low:g} {high:g}")
    if not (math.isfinite(args.bound) and args.bound > 0):
        parser.error(f"--bound must be positive, got {args.bound:g}")
    if args.retrain_every < 0:
        parser.error("--retrain-every must be positive (or 0: never reorder)")
    return args


def simulations_to_reach(values: list[float], target: float) -> int | None:
    """How many results (in arrival order) it took for the best value to reach `target`."""
    best = math.inf
    for count, value in enumerate(values, start=1):
        best = min(best, value)
        if best <= target:
            return count
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one campaign; print the best value found and where the files are."""
    args = parse_args(argv)
    run_dir = new_run_dir("reallocation", args.run_dir)
    pool = make_pool(args.dim, args.pool_size, args.bound, args.pool_seed)
    pool_values = np.sort(ackley(pool))
    target = args.target if args.target is not None else float(pool_values[min(9, len(pool) - 1)])

    import sklearn.gaussian_process  # noqa: F401  (imported once, before the server forks)

    queues = PipeQueues(topics=[SIMULATE, ML])
    server = LocalTaskServer(queues, [simulate, rank_by_ei], threads=True,
                             num_workers=args.workers)
    counter = ResourceCounter(args.workers, [SIMULATE, ML])
    progress = "off" if args.quiet else args.progress
    thinker = ReallocationThinker(
        queues, counter, pool, args.budget,
        args.retrain_every if args.order == "gp" else 0, args.ml_slots,
        (args.sim_time[0], args.sim_time[1]), seed=args.seed, xi=args.xi, run_dir=run_dir,
        progress=None if progress == "auto" else progress)
    thinker.save_params(**{**vars(args), "target": target, "goal": "min",
                           "value_topic": SIMULATE})
    print(f"Ackley in {args.dim} dimension{'s' if args.dim != 1 else ''}: {args.budget} "
          f"simulations from a pool of {len(pool)} points on {args.workers} workers, "
          f"queue order: {args.order}")
    print(f"run directory: {run_dir}", flush=True)
    started = time.perf_counter()
    with server:
        thinker.run()
    elapsed = time.perf_counter() - started

    results = read_results(run_dir / "results.jsonl")
    values = [r["value"] for r in results if r["topic"] == SIMULATE and r["success"]]
    best = min(values) if values else math.inf
    summary = {"order": args.order, "seed": args.seed, "simulations": len(values),
               "best_value": best, "pool_best": float(pool_values[0]), "target": target,
               "simulations_to_target": simulations_to_reach(values, target),
               "ml_runs": len(thinker.ml_runs), "elapsed_s": elapsed}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (run_dir / "ml_runs.jsonl").open("w") as handle:
        for run in thinker.ml_runs:
            handle.write(json.dumps(run) + "\n")
    figure = None
    if not args.no_figure:
        figure = allocation_figure(
            results, read_allocation(run_dir / "allocation.jsonl"), run_dir / "allocation.png",
            f"Ackley d={args.dim}: {len(values)} simulations, {len(thinker.ml_runs)} GP "
            f"reorderings, {args.workers} workers", LABELS)
        if args.figure is not None:
            args.figure.parent.mkdir(parents=True, exist_ok=True)
            args.figure.write_bytes(figure.read_bytes())

    print(f"best value found: {best:.4f} (best in pool {pool_values[0]:.4f}) "
          f"after {len(values)} simulations in {elapsed:.1f} s")
    reached = summary["simulations_to_target"]
    if reached is not None:
        print(f"target {target:.4f} reached after {reached} simulations")
    else:
        print(f"target {target:.4f} not reached in {len(values)} simulations")
    if figure is not None:
        print(f"figure: {figure}" + (f" (copied to {args.figure})" if args.figure else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
