"""Benchmark of steersman.allocation with simulated applications whose true curves are known.

Run: ``python bench/allocation.py`` (add ``--quick`` for a fast smoke run). Prints one table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import statistics
import threading
import time
from collections.abc import Callable
from datetime import date
from multiprocessing.connection import Connection

import numpy as np

from steersman.allocation import (
    AllocationClient,
    AmdahlCurve,
    Constraint,
    ManagerProcess,
    Planner,
    PointsCurve,
    makespan_of,
    maximize_throughput,
    minimize_makespan,
    static_split,
    total_throughput,
)
from steersman.allocation import throughput as throughput_module
from steersman.allocation.hysteresis import moved_cores

Row = tuple[str, str, str]
FRACTIONS = (0.01, 0.05, 0.10, 0.30)


def exact_optimum(cons: list[Constraint], total: int) -> float:
    """Optimum by the plain dynamic programme over every application, whatever the curves."""
    his = [total if c.max is None else c.max for c in cons]
    items = [(np.arange(c.min, h + 1), c.weight * (c.curve or AmdahlCurve(0.0)).values(h)[c.min:])
             for c, h in zip(cons, his)]
    alloc = throughput_module._dynamic_programme(items, total)
    return total_throughput(cons, {c.name: a for c, a in zip(cons, alloc)})


def amdahl_apps(workload: float | None = None) -> list[Constraint]:
    return [Constraint(f"f{f}", curve=AmdahlCurve(f), workload=workload) for f in FRACTIONS]


def bench_amdahl() -> list[Row]:
    cons, total = amdahl_apps(), 64
    best = total_throughput(cons, maximize_throughput(cons, total))
    opt = exact_optimum(cons, total)
    static = total_throughput(cons, static_split(cons, total))
    return [("4 Amdahl apps, R=64: policy / optimum", f"{best / opt:.3f}", "target 1.000"),
            ("4 Amdahl apps, R=64: static split / optimum", f"{static / opt:.3f}", "about 0.73")]


def powers_of_two(scale: float, top: int) -> PointsCurve:
    """Throughput grows only at powers of two cores (efficiency 0.9 per doubling)."""
    points, k = [], 0
    while 2 ** (k + 1) <= top:
        c, v = 2 ** k, scale * (2 ** k) * 0.9 ** k
        points += [[c, v]] + ([[2 * c - 1, v]] if c > 1 else [])
        k += 1
    points.append([2 ** k, scale * (2 ** k) * 0.9 ** k])
    return PointsCurve(points)


def bench_non_concave() -> list[Row]:
    rows = []
    for total in (64, 1024):
        cons = [Constraint(f"p{i}", curve=powers_of_two(s, total)) for i, s in
                enumerate((1.0, 1.3, 0.7))] + [Constraint("amdahl", curve=AmdahlCurve(0.05))]
        opt = exact_optimum(cons, total)
        static = total_throughput(cons, static_split(cons, total))
        got = total_throughput(cons, maximize_throughput(cons, total))
        saved = throughput_module.DP_BUDGET
        throughput_module.DP_BUDGET = 20_000  # as if R were far too large for the exact programme
        try:
            hull = total_throughput(cons, maximize_throughput(cons, total))
        finally:
            throughput_module.DP_BUDGET = saved
        rows += [
            (f"powers-of-two + Amdahl, R={total}: policy / optimum", f"{got / opt:.3f}",
             ">= 0.99"),
            (f"powers-of-two + Amdahl, R={total}: over-budget fallback / optimum",
             f"{hull / opt:.3f}",
             f"static {static / opt:.3f}"),
        ]
    return rows


def bench_makespan() -> list[Row]:
    cons, total = amdahl_apps(workload=100.0), 64
    results = {
        "min-max policy": makespan_of(cons, minimize_makespan(cons, total)),
        "static split": makespan_of(cons, static_split(cons, total)),
        "throughput policy": makespan_of(cons, maximize_throughput(cons, total)),
    }
    return [(f"makespan, 4 equal jobs (W=100), R=64: {k}", f"{v:.2f} s", "lower is better")
            for k, v in results.items()]


def bench_noise(rounds: int) -> list[Row]:
    rows = []
    truth = amdahl_apps()
    optimum = exact_optimum(truth, 64)
    for threshold in (0.0, 0.01):
        rng = np.random.default_rng(7)
        planner = Planner("throughput", threshold=threshold)
        current: dict[str, int] = {}
        moves = cores = 0
        quality = []
        for _ in range(rounds):
            noisy = [Constraint(c.name, curve=AmdahlCurve(
                min(1.0, f * (1 + 0.05 * rng.standard_normal())),
                1 + 0.05 * rng.standard_normal())) for c, f in zip(truth, FRACTIONS)]
            plan = planner.plan(noisy, 64, current)
            step = moved_cores(current, plan) if current else 0
            moves += step > 0
            cores += step
            current = plan
            quality.append(total_throughput(truth, plan) / optimum)
        rows.append((f"{rounds} re-optimisations, 5% noise, threshold {threshold:.0%}",
                     f"{moves} moves", f"{cores} cores moved, mean true thr. "
                                       f"{statistics.mean(quality):.3f} of optimum"))
    return rows


def _time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_decision(quick: bool) -> list[Row]:
    rng = np.random.default_rng(3)
    rows = []
    for n, total, repeat in ((16, 1024, 200), (1000, 100_000, 3)):
        if quick:
            repeat = 1
        cons = [Constraint(f"a{i}", curve=AmdahlCurve(float(f)), workload=float(w))
                for i, (f, w) in enumerate(zip(rng.uniform(0, 0.3, n), rng.uniform(1, 100, n)))]
        thr = _time(lambda: maximize_throughput(cons, total), repeat)  # noqa: B023
        mk = _time(lambda: minimize_makespan(cons, total), repeat)  # noqa: B023
        target = "target < 1 ms" if n == 16 else ""
        rows.append((f"decision time N={n}, R={total}: throughput", f"{thr * 1e3:.2f} ms",
                     target))
        rows.append((f"decision time N={n}, R={total}: makespan", f"{mk * 1e3:.2f} ms", ""))
    return rows


def _burst_worker(address: str, count: int, pipe: Connection) -> None:
    """Open `count` clients, invade all at once on the signal, send back the round trips."""
    clients = [AllocationClient(address, heartbeat=60.0) for _ in range(count)]
    barrier = threading.Barrier(count + 1)
    times: list[float] = []
    lock = threading.Lock()

    def one(client: AllocationClient) -> None:
        barrier.wait()
        start = time.perf_counter()
        client.invade(1, 2, curve={"amdahl": 0.1}, timeout=120)
        took = time.perf_counter() - start
        with lock:
            times.append(took)

    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    pipe.send("ready")
    pipe.recv()  # the signal
    barrier.wait()
    for t in threads:
        t.join()
    pipe.send(times)
    pipe.recv()  # hold the cores until every process is done
    for c in clients:
        c.close()


def bench_invade_burst(total_invades: int, processes: int = 4) -> list[Row]:
    ctx = multiprocessing.get_context("spawn")
    with ManagerProcess(2 * total_invades, liveness_timeout=120.0) as manager:
        pipes, procs = [], []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_burst_worker,
                               args=(manager.address, total_invades // processes, child))
            proc.start()
            pipes.append(parent)
            procs.append(proc)
        for pipe in pipes:
            assert pipe.recv() == "ready"
        start = time.perf_counter()
        for pipe in pipes:
            pipe.send("go")
        times = [t for pipe in pipes for t in pipe.recv()]
        wall = time.perf_counter() - start
        for pipe in pipes:
            pipe.send("done")
        for proc in procs:
            proc.join(60)
    p50, p99 = np.percentile(times, [50, 99])
    label = f"invade round trip, burst of {len(times)} ({processes} processes, unix socket)"
    return [(label + ": p50", f"{p50 * 1e3:.1f} ms", f"all served in {wall:.2f} s"),
            (label + ": p99", f"{p99 * 1e3:.1f} ms", "")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller burst")
    args = parser.parse_args()
    rows: list[Row] = []
    rows += bench_amdahl()
    rows += bench_non_concave()
    rows += bench_makespan()
    rows += bench_noise(40 if args.quick else 200)
    rows += bench_decision(args.quick)
    rows += bench_invade_burst(100 if args.quick else 1000)
    width = max(len(r[0]) for r in rows)
    print(f"steersman.allocation benchmark  {date.today()}  {platform.node()}  "
          f"{multiprocessing.cpu_count()} cores  Python {platform.python_version()}")
    print(f"{'measure':<{width}}  {'value':>12}  note")
    print("-" * (width + 40))
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")


if __name__ == "__main__":
    main()
