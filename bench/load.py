"""Load: many tasks through a thinker at a fixed number in flight, with random failures retried.

    python bench/load.py                  # 100,000 tasks over pipes and over Redis
    python bench/load.py --tasks 5000     # a quick run
    python bench/load.py --backends pipe  # one backend

The thinker keeps `--in-flight` tasks out (a task submitter and a result processor sharing a
pool of slots). Each attempt of a task fails at random with probability `--fail-rate` and is
retried by the task server (up to `--retries` times). Results are not kept: the thinker records
only each task's latency and how many final results it got for it, in arrays sized up front, so
its memory should stay flat. A sampler thread reads the thinker's RSS over the run; the slope of
RSS against tasks done (second half of the run, after warm-up) is printed per 10,000 tasks.

Printed per backend: throughput, p50/p99 latency (send to receipt), peak RSS of the thinker, the
RSS slope, and the counts of lost results (sent, never received), duplicated results (received
twice) and tasks that still failed after their retries. Targets: slope near 0, lost = dup = 0.
A Redis run starts its own redis-server on a free port unless `--redis-host` is given.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil

from steersman import (
    BaseThinker,
    LocalTaskServer,
    PipeQueues,
    ResourceCounter,
    Result,
    result_processor,
    task_submitter,
)


def flaky(index: int, fail_rate: float) -> int:
    """The task: return its index, failing at random (each attempt) with `fail_rate`."""
    if random.random() < fail_rate:
        raise RuntimeError(f"task {index} failed at random")
    return index


class Load(BaseThinker):
    """Send `n` tasks keeping `in_flight` out; count each final result by task index."""

    def __init__(self, queues: Any, n: int, in_flight: int, fail_rate: float, retries: int):
        super().__init__(queues, ResourceCounter(in_flight, ["sim"]), progress=False)
        self.rec.reallocate(None, "sim", in_flight)  # type: ignore[union-attr]
        self.n, self.fail_rate, self.retries = n, fail_rate, retries
        self.next_index = 0
        self.received = np.zeros(n, dtype=np.uint8)  # final results per task
        self.latency = np.full(n, np.nan)
        self.failed_final = 0
        self.done_count = 0

    @task_submitter(task_type="sim")
    def submit(self) -> None:
        if self.next_index >= self.n:
            self.rec.release("sim", 1)  # type: ignore[union-attr]
            self.done.wait()  # all sent: wait here instead of spinning on free slots
            return
        index = self.next_index
        self.next_index += 1
        self.queues.send_inputs(index, self.fail_rate, method="flaky", keep_inputs=False,
                                max_retries=self.retries, task_info={"i": index})

    @result_processor
    def receive(self, result: Result) -> None:
        self.rec.release("sim", 1)  # type: ignore[union-attr]
        index = result.task_info["i"]
        self.received[index] = min(int(self.received[index]) + 1, 255)
        stamps = result.timestamp
        if stamps.result_received is not None:
            self.latency[index] = stamps.result_received - stamps.created
        if not result.success:
            self.failed_final += 1
        self.done_count += 1
        if self.done_count >= self.n:
            self.done.set()


@dataclass
class Row:
    backend: str
    tasks: int
    seconds: float
    p50_ms: float
    p99_ms: float
    peak_rss_mb: float
    slope_kb_per_10k: float
    lost: int
    duplicated: int
    failed_after_retries: int


class RssSampler:
    """Sample this process's RSS with the count of tasks done, every `interval` seconds."""

    def __init__(self, thinker: Load, interval: float):
        self.thinker, self.interval = thinker, interval
        self.samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._process = psutil.Process()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.samples.append((self.thinker.done_count, self._process.memory_info().rss))
            if self._stop.wait(self.interval):
                return

    def peak(self) -> int:
        return max(rss for _, rss in self.samples)

    def slope(self) -> float:
        """Bytes of RSS per task done, fitted over the second half of the run."""
        done = np.array([d for d, _ in self.samples], dtype=float)
        rss = np.array([r for _, r in self.samples], dtype=float)
        late = done >= done.max() / 2
        if late.sum() < 3 or np.ptp(done[late]) == 0:
            return float("nan")
        return float(np.polyfit(done[late], rss[late], 1)[0])


def run(backend: str, queues: Any, server_queues: Any, args: argparse.Namespace) -> Row:
    server = LocalTaskServer(server_queues, [flaky], threads=True, num_workers=args.workers)
    server.start()
    try:
        warm = Load(queues, 200, args.in_flight, 0.0, 0)  # connections and threads up
        warm.run()
        thinker = Load(queues, args.tasks, args.in_flight, args.fail_rate, args.retries)
        start = time.perf_counter()
        with RssSampler(thinker, args.sample_interval) as sampler:
            thinker.run()
        seconds = time.perf_counter() - start
        extra = 0
        while queues.get_result(timeout=0.5) is not None:  # anything arriving late is a dup
            extra += 1
    finally:
        queues.send_kill_signal()
        server.join(60)
    latency_ms = thinker.latency[~np.isnan(thinker.latency)] * 1000
    return Row(
        backend=backend, tasks=args.tasks, seconds=seconds,
        p50_ms=float(np.percentile(latency_ms, 50)), p99_ms=float(np.percentile(latency_ms, 99)),
        peak_rss_mb=sampler.peak() / 2**20, slope_kb_per_10k=sampler.slope() * 10_000 / 1024,
        lost=int((thinker.received == 0).sum()),
        duplicated=int(np.clip(thinker.received.astype(int) - 1, 0, None).sum()) + extra,
        failed_after_retries=thinker.failed_final,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis() -> tuple[subprocess.Popen[str], int]:
    """A throwaway redis-server on a free loopback port, without persistence."""
    executable = shutil.which("redis-server")
    if executable is None:
        sys.exit("redis-server is not on PATH: install it, pass --redis-host, or --backends pipe")
    port = free_port()
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--logfile", ""],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if "Ready to accept connections" in line:
            break
    else:
        sys.exit("redis-server did not start")
    threading.Thread(target=process.stdout.read, daemon=True).start()
    return process, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks per backend")
    parser.add_argument("--in-flight", type=int, default=64, help="tasks out at once")
    parser.add_argument("--fail-rate", type=float, default=0.01,
                        help="chance that an attempt fails (default 0.01)")
    parser.add_argument("--retries", type=int, default=3, help="max_retries of each task")
    parser.add_argument("--workers", type=int, default=4, help="task server threads")
    parser.add_argument("--backends", default="pipe,redis", help="comma-separated: pipe,redis")
    parser.add_argument("--redis-host", default=None, help="use this Redis, not a new one")
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--sample-interval", type=float, default=0.25,
                        help="seconds between RSS samples")
    args = parser.parse_args()
    if args.tasks < 1 or args.in_flight < 1:
        parser.error("--tasks and --in-flight must be positive")

    rows = []
    for backend in args.backends.split(","):
        if backend == "pipe":
            queues = PipeQueues()
            rows.append(run("pipe", queues, queues, args))
            queues.close()
        elif backend == "redis":
            from steersman.queue.redis import make_queue_pairs

            redis_process = None
            host, port = args.redis_host, args.redis_port
            if host is None:
                redis_process, port = start_redis()
                host = "127.0.0.1"
            try:
                client, server = make_queue_pairs(host, port)
                rows.append(run("redis", client, server, args))
                client.close()
                client.purge()
            finally:
                if redis_process is not None:
                    redis_process.terminate()
                    redis_process.wait(20)
        else:
            parser.error(f"unknown backend {backend!r}; choose pipe or redis")
        print_rows(rows[-1:], args, header=len(rows) == 1)


def print_rows(rows: list[Row], args: argparse.Namespace, header: bool) -> None:
    if header:
        print(f"# {args.tasks} tasks, {args.in_flight} in flight, {args.fail_rate:.0%} of "
              f"attempts fail (max_retries={args.retries}), {args.workers} server threads, "
              f"{os.cpu_count()} cores")
        print(f"{'backend':>7} | {'tasks/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | "
              f"{'peak RSS MB':>11} | {'RSS slope KB/10k':>16} | {'lost':>4} | {'dup':>3} | "
              f"{'failed':>6}")
    for row in rows:
        print(f"{row.backend:>7} | {row.tasks / row.seconds:>8.0f} | {row.p50_ms:>7.2f} | "
              f"{row.p99_ms:>7.2f} | {row.peak_rss_mb:>11.1f} | {row.slope_kb_per_10k:>16.1f} | "
              f"{row.lost:>4} | {row.duplicated:>3} | {row.failed_after_retries:>6}", flush=True)


if __name__ == "__main__":
    main()
