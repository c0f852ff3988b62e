"""Throughput of no-op tasks through a thinker and a ParslTaskServer, beside raw Parsl.

A thinker (a task submitter and a result processor, as in the seed notebook) keeps K tasks in
flight over a ParslTaskServer with one HighThroughputExecutor of two workers; raw Parsl runs
the same function as a ``python_app`` with the same K and no steersman; with ``--peer PYTHON``
the earlier library's ParslTaskServer runs the same thinker in that interpreter
(``bench/peer/parsl_peer.py``). All in one run, on one machine, so the ratios are comparable.

    python bench/engines.py                    # 2,000 tasks, K = 1 and 16
    python bench/engines.py --tasks 300        # quick
    python bench/engines.py --peer /work/peer-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from time import perf_counter

HERE = Path(__file__).resolve().parent


def noop(x: int) -> int:
    """The task: nothing but the round trip."""
    return x


def make_config(run_dir: str, workers: int):  # type: ignore[no-untyped-def]
    """One HighThroughputExecutor on this machine (the same for every contender)."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    executor = HighThroughputExecutor(
        label="htex", address="127.0.0.1", max_workers_per_node=workers,
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
    )
    return Config(executors=[executor], run_dir=run_dir, strategy="none")


# --- steersman --------------------------------------------------------------------------------


def run_steersman(n_tasks: int, ks: list[int], workers: int, run_dir: str) -> dict[int, float]:
    """Tasks per second through thinker -> pipes -> ParslTaskServer -> HTEx, for each K."""
    from steersman import BaseThinker, PipeQueues, ResourceCounter, result_processor, task_submitter
    from steersman.task_server.parsl import ParslTaskServer

    class Thinker(BaseThinker):
        def __init__(self, queues: PipeQueues, n: int, k: int):
            super().__init__(queues, ResourceCounter(k, ["sim"]))
            self.rec.reallocate(None, "sim", k)  # type: ignore[union-attr]
            self.to_send, self.to_receive = n, n

        @task_submitter(task_type="sim")
        def submit(self) -> None:
            if self.to_send > 0:
                self.to_send -= 1
                self.queues.send_inputs(1, method="noop")

        @result_processor
        def receive(self, result) -> None:  # type: ignore[no-untyped-def]
            assert result.success, result.failure_info
            self.rec.release("sim", 1)  # type: ignore[union-attr]
            self.to_receive -= 1
            if self.to_receive == 0:
                self.done.set()

    queues = PipeQueues()
    server = ParslTaskServer([noop], queues, make_config(run_dir, workers))
    server.start()
    try:
        Thinker(queues, 4 * workers, workers).run()  # warm up: workers connected
        rates = {}
        for k in ks:
            start = perf_counter()
            Thinker(queues, n_tasks, k).run()
            rates[k] = n_tasks / (perf_counter() - start)
    finally:
        queues.send_kill_signal()
        server.join()
    return rates


# --- raw Parsl --------------------------------------------------------------------------------


def run_raw_parsl(n_tasks: int, ks: list[int], workers: int, run_dir: str) -> dict[int, float]:
    """Tasks per second of a python_app with K futures in flight, for each K."""
    import parsl

    parsl.load(make_config(run_dir, workers))
    app = parsl.python_app(noop)
    try:
        _keep_in_flight(app, 4 * workers, workers)
        rates = {}
        for k in ks:
            start = perf_counter()
            _keep_in_flight(app, n_tasks, k)
            rates[k] = n_tasks / (perf_counter() - start)
    finally:
        parsl.dfk().cleanup()
        parsl.clear()
    return rates


def _keep_in_flight(app, n_tasks: int, k: int) -> None:  # type: ignore[no-untyped-def]
    slots = threading.Semaphore(k)
    done = threading.Event()
    remaining = [n_tasks]
    lock = threading.Lock()

    def finished(future) -> None:  # type: ignore[no-untyped-def]
        future.result()
        slots.release()
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()

    for _ in range(n_tasks):
        slots.acquire()
        app(1).add_done_callback(finished)
    done.wait()


# --- the earlier library (peer) ---------------------------------------------------------------


def run_peer(python: str, n_tasks: int, ks: list[int], workers: int,
             run_dir: str) -> dict[int, float]:
    """Run bench/peer/parsl_peer.py in the peer's interpreter; it prints its rates as JSON."""
    command = [python, str(HERE / "peer" / "parsl_peer.py"), "--tasks", str(n_tasks),
               "--workers", str(workers), "--run-dir", run_dir, "--k", *map(str, ks)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env,
                            cwd=run_dir).stdout
    return {int(k): v for k, v in json.loads(output.strip().splitlines()[-1]).items()}


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per measurement")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 16], help="tasks in flight")
    parser.add_argument("--workers", type=int, default=2, help="HTEx workers")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate the contenders this many times; the best round counts")
    parser.add_argument("--peer", metavar="PYTHON", help="interpreter with the earlier library")
    args = parser.parse_args()
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)  # Parsl's loggers run at DEBUG and propagate to the root
    logging.basicConfig(level=logging.WARNING, handlers=[handler])

    best: dict[str, dict[int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="steersman-bench-") as tmp:
        for round_ in range(args.rounds):
            contenders = {
                "steersman": lambda d: run_steersman(args.tasks, args.k, args.workers, d),
                "raw Parsl": lambda d: run_raw_parsl(args.tasks, args.k, args.workers, d),
            }
            if args.peer:
                contenders["peer"] = lambda d: run_peer(args.peer, args.tasks, args.k,
                                                        args.workers, d)
            for name, run in contenders.items():
                run_dir = os.path.join(tmp, f"{name.replace(' ', '-')}-{round_}")
                os.makedirs(run_dir)
                rates = run(run_dir)
                for k, rate in rates.items():
                    best.setdefault(name, {})[k] = max(best.get(name, {}).get(k, 0.0), rate)
    print_table(best, args)


def print_table(best: dict[str, dict[int, float]], args: argparse.Namespace) -> None:
    print(f"{args.tasks} no-op tasks, one HighThroughputExecutor with {args.workers} workers; "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; best of {args.rounds} "
          "round(s)")
    header = f"{'K':>3} | {'raw Parsl':>10} | {'steersman':>10} | {'vs raw':>7}"
    if "peer" in best:
        header += f" | {'peer':>10} | {'peer/raw':>8} | {'ours/peer':>9}"
    print(header + "   (tasks/s)")
    print("-" * len(header))
    for k in args.k:
        raw, ours = best["raw Parsl"][k], best["steersman"][k]
        line = f"{k:>3} | {raw:>10.0f} | {ours:>10.0f} | {ours / raw:>6.0%}"
        if "peer" in best:
            peer = best["peer"][k]
            line += f" | {peer:>10.0f} | {peer / raw:>7.0%} | {ours / peer:>8.1f}x"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
