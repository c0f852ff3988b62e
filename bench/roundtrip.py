"""Round trip of no-op tasks driven by a thinker: throughput and latency at K tasks in flight.

    python bench/roundtrip.py                       # steersman over pipes (and Redis if up)
    python bench/roundtrip.py --peer /path/to/python  # also the earlier library, same thinker
    python bench/roundtrip.py --journal             # journaled and not: the journal's cost

Each configuration is measured in several rounds (``--rounds``), alternating with what it is
compared against, and medians are reported: on a shared machine one run is not a measurement.

The thinker is the seed's pattern: a task submitter that sends whenever a slot is free and a
result processor that releases the slot. The same code runs on the earlier library when this
file is executed by an interpreter that has it (``--library peer``): only the imports differ.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

PEER = "colmena"  # the earlier library's package name, used only to import it for comparison
PEER_TIMEOUT = 300  # seconds for one peer configuration


def noop() -> None:
    """The task: nothing, so that only the runtime's overhead is measured."""


def load(library: str) -> dict[str, Any]:
    """The names the benchmark needs, from steersman or from the earlier library."""
    root = "steersman" if library == "steersman" else PEER
    thinker = importlib.import_module(f"{root}.thinker")
    return {
        "BaseThinker": thinker.BaseThinker,
        "ResourceCounter": thinker.ResourceCounter,
        "task_submitter": thinker.task_submitter,
        "result_processor": thinker.result_processor,
        "PipeQueues": importlib.import_module(f"{root}.queue.python").PipeQueues,
        "RedisQueues": lambda **kw: importlib.import_module(f"{root}.queue.redis").RedisQueues(
            **kw),
        "LocalTaskServer": importlib.import_module(f"{root}.task_server.local").LocalTaskServer,
    }


def make_thinker(names: dict[str, Any]) -> type:
    """The benchmark thinker, built from either library's classes."""
    base, counter = names["BaseThinker"], names["ResourceCounter"]
    task_submitter, result_processor = names["task_submitter"], names["result_processor"]

    class RoundTrip(base):  # type: ignore[misc,valid-type]
        def __init__(self, queues: Any, n_tasks: int, in_flight: int, **kwargs: Any):
            super().__init__(queues, counter(in_flight, ["task"]), **kwargs)
            self.rec.reallocate(None, "task", in_flight)
            self.n_tasks, self.sent = n_tasks, 0
            self.latencies: list[float] = []

        @task_submitter(task_type="task")
        def submit(self) -> None:
            if self.sent < self.n_tasks:  # past the end, keep the slot: the submitter idles
                self.sent += 1
                self.queues.send_inputs(method="noop")

        @result_processor
        def receive(self, result: Any) -> None:
            stamps = result.timestamp
            self.latencies.append(stamps.result_received - stamps.created)
            self.rec.release("task", 1)
            if len(self.latencies) >= self.n_tasks:
                self.done.set()

    return RoundTrip


def measure(library: str, backend: str, n_tasks: int, in_flight: int, workers: int,
            journal_dir: str | None = None) -> dict[str, Any]:
    """Run one configuration and return its figures."""
    names = load(library)
    thinker_class = make_thinker(names)
    if backend == "pipe":
        queues = names["PipeQueues"]()
    else:
        queues = names["RedisQueues"](hostname="127.0.0.1", port=6379, topics=[])
    server = names["LocalTaskServer"](queues, [noop], threads=False, num_workers=workers)
    server.start()
    try:
        extra: dict[str, Any] = {}
        if journal_dir:  # a fresh run dir per configuration: an old journal would be resumed
            os.makedirs(journal_dir, exist_ok=True)
            extra = {"run_dir": tempfile.mkdtemp(prefix=f"{backend}-k{in_flight}-",
                                                 dir=journal_dir), "progress": False}
        thinker_class(queues, min(200, n_tasks), in_flight).run()  # warm up workers and imports
        thinker = thinker_class(queues, n_tasks, in_flight, **extra)
        start = time.perf_counter()
        thinker.run()
        elapsed = time.perf_counter() - start
    finally:
        queues.send_kill_signal()
        server.join(60)
        if "run_dir" in extra:  # measured: the run directory is not kept
            shutil.rmtree(extra["run_dir"], ignore_errors=True)
        if hasattr(queues, "purge"):  # a Redis campaign keeps its streams until purged
            queues.purge()
    latencies = sorted(thinker.latencies)
    return {
        "library": library, "backend": backend, "in_flight": in_flight, "tasks": n_tasks,
        "tasks_per_s": n_tasks / elapsed,
        "median_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1e3,
    }


def run_peer(python: str, args: argparse.Namespace, backend: str, k: int) -> dict[str, Any]:
    command = [python, __file__, "--library", "peer", "--backends", backend,
               "--in-flight", str(k), "--tasks", str(args.tasks), "--workers", str(args.workers),
               "--rounds", "1", "--json"]
    # The earlier library sometimes hangs: report it instead of waiting forever, and kill its
    # whole process group (its task server and workers would keep the output pipe open).
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=PEER_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # it may have ended just now
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return {"tasks_per_s": float("nan"), "median_ms": float("nan"), "hung": True}
    if process.returncode:
        raise RuntimeError(f"the peer's run failed ({process.returncode}): {stderr[-2000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def redis_available(library: str) -> bool:
    try:
        import redis

        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=0.5).ping()
        importlib.import_module(f"{'steersman' if library == 'steersman' else PEER}.queue.redis")
        return True
    except Exception:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per configuration")
    parser.add_argument("--in-flight", default="1,16,64", help="comma-separated K values")
    parser.add_argument("--backends", default="pipe,redis", help="pipe, redis or both")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--peer", metavar="PYTHON", help="interpreter with the earlier library")
    parser.add_argument("--journal", metavar="DIR", nargs="?", const=tempfile.gettempdir(),
                        help="journal the thinker (run_dir=a new directory under DIR, removed "
                        "after the run; default DIR: the system's temporary directory), and "
                        "run it unjournaled in each round too: the loss is the journal's cost")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per configuration; medians are reported (default 3)")
    parser.add_argument("--library", default="steersman", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON line per row")
    args = parser.parse_args()

    backends = [backend for backend in args.backends.split(",")
                if backend != "redis" or redis_available(args.library)]
    rows = []
    for backend in backends:
        for k in map(int, args.in_flight.split(",")):
            row = measure_rounds(args, backend, k)
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if not args.json:
        print_table(rows, args)


def measure_rounds(args: argparse.Namespace, backend: str, k: int) -> dict[str, Any]:
    """Median figures of `args.rounds` rounds; in each, the compared runs back to back."""
    rounds = []
    for _ in range(args.rounds):
        row = measure(args.library, backend, args.tasks, k, args.workers, args.journal)
        if args.journal:
            row["plain_tasks_per_s"] = measure(args.library, backend, args.tasks, k,
                                               args.workers)["tasks_per_s"]
            row["loss"] = 1 - row["tasks_per_s"] / row["plain_tasks_per_s"]
        if args.peer:
            peer = run_peer(args.peer, args, backend, k)
            row["peer_tasks_per_s"] = peer["tasks_per_s"]
            row["peer_median_ms"] = peer["median_ms"]
            row["ratio"] = row["tasks_per_s"] / peer["tasks_per_s"]
        rounds.append(row)
    median = dict(rounds[0])
    for key in ("tasks_per_s", "median_ms", "p99_ms", "plain_tasks_per_s", "loss",
                "peer_tasks_per_s", "peer_median_ms", "ratio"):
        if key in median:  # the median of each figure over the rounds the peer did not hang
            values = [r[key] for r in rounds if not math.isnan(r[key])]
            median[key] = statistics.median(values) if values else math.nan
    if args.peer:
        median["peer_hung"] = sum(math.isnan(r["peer_tasks_per_s"]) for r in rounds)
    if args.rounds > 1:
        median["rounds"] = {key: [r[key] for r in rounds]
                            for key in ("tasks_per_s", "ratio", "loss") if key in median}
    return median


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"# {args.tasks} no-op tasks, {args.workers} worker processes, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, medians of {args.rounds} "
          f"round(s){', journaled' if args.journal else ''}")
    header = f"{'backend':8} {'K':>3} {'tasks/s':>9} {'median ms':>10} {'p99 ms':>8}"
    if args.journal:
        header += f" {'unjournaled':>12} {'loss':>6}"
    if args.peer:
        header += f" {'peer tasks/s':>13} {'peer med ms':>12} {'ratio':>6}"
    print(header)
    for row in rows:
        line = (f"{row['backend']:8} {row['in_flight']:>3} {row['tasks_per_s']:>9.0f} "
                f"{row['median_ms']:>10.3f} {row['p99_ms']:>8.3f}")
        if args.journal:
            line += f" {row['plain_tasks_per_s']:>12.0f} {row['loss']:>6.0%}"
        if args.peer:
            line += (f" {row['peer_tasks_per_s']:>13.0f} {row['peer_median_ms']:>12.3f}"
                     f" {row['ratio']:>6.1f}")
            if row["peer_hung"]:
                line += f"  (the peer hung in {row['peer_hung']} of {args.rounds} rounds)"
        print(line)


if __name__ == "__main__":
    if "--library" in sys.argv and "peer" in sys.argv:
        sys.path = [p for p in sys.path if not p.endswith("/src")]
    main()
