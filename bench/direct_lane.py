"""How much faster could the round trip be without the task server's hop? An upper bound.

    python bench/direct_lane.py --in-flight 1,16,64 --rounds 3

Not a steersman path: an experiment to size a design before building it. Today a request goes
thinker → task server → worker, and the worker's result goes straight back to the thinker (the
server gets a note). Here the thinker sends each request into one ``SOCK_SEQPACKET`` socket that
both worker processes receive from (one whole message per receive, so no lock between them),
and the workers write results straight back as today: no server process at all. What the server
does and this leaves out (priority order, timeouts, retries, reports of lost workers, the kill
signal) is what a real design would have to keep, so the figures bound what it could reach.

Each round runs the same thinker as ``bench/roundtrip.py`` on the real path, on the lane, and on
the lane with a note per task from each worker to a supervising process (what a design that
keeps the server informed of every task would add), back to back; medians are printed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import roundtrip  # noqa: E402

from steersman.models.messages import join  # noqa: E402
from steersman.models.methods import as_method  # noqa: E402
from steersman.queue.python import PipeQueues  # noqa: E402
from steersman.task_server.worker import execute_request  # noqa: E402

_LARGEST = 1 << 16  # the no-op requests are about 1 KB


def measure_lane(n_tasks: int, in_flight: int, workers: int, notes: bool) -> dict[str, Any]:
    """One run on the lane; with `notes`, each worker also tells a supervising process of
    each task it finished (as today's workers tell the server), which reads and drops them."""
    thinker_class = roundtrip.make_thinker(roundtrip.load("steersman"))
    queues = PipeQueues(methods=["noop"])
    send, receive = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    context = multiprocessing.get_context("fork")
    note_read, note_write = os.pipe() if notes else (-1, -1)
    processes = [context.Process(target=_serve, args=(queues, send, receive, note_write))
                 for _ in range(workers)]
    if notes:
        processes.append(context.Process(target=_supervise, args=(send, note_read, note_write)))
    for process in processes:
        process.start()
    receive.close()
    for fd in (note_read, note_write):
        if fd >= 0:
            os.close(fd)
    queues.detach_server_ends()
    queues._send_request = lambda parts: send.sendall(join(parts))  # type: ignore[method-assign]
    try:
        thinker_class(queues, min(200, n_tasks), in_flight).run()  # warm up, as roundtrip does
        thinker = thinker_class(queues, n_tasks, in_flight)
        start = time.perf_counter()
        thinker.run()
        elapsed = time.perf_counter() - start
    finally:
        send.close()  # the workers see end-of-file and exit
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
    latencies = sorted(thinker.latencies)
    return {"tasks_per_s": n_tasks / elapsed, "median_ms": statistics.median(latencies) * 1e3}


def _serve(queues: PipeQueues, sender: socket.socket, lane: socket.socket, note: int) -> None:
    """A lane worker: its results go to the thinker's end of the result pipe."""
    sender.close()  # only the thinker sends: its close ends the lane
    outcomes = queues._outcomes
    outcomes.close_reader()
    queues._requests.close_reader()
    queues._requests.close_writer()
    methods = {"noop": as_method(roundtrip.noop)}
    while data := lane.recv(_LARGEST):
        for parts in execute_request(methods, data, None, None, "lane", time.time()):
            outcomes.write(parts)
        if note >= 0:
            os.write(note, data[16:48])  # 32 bytes: the size of a task id


def _supervise(sender: socket.socket, note_read: int, note_write: int) -> None:
    """Read the workers' notes until they are all gone."""
    sender.close()
    os.close(note_write)
    while os.read(note_read, 1 << 16):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per configuration")
    parser.add_argument("--in-flight", default="1,16,64", help="comma-separated K values")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    args = parser.parse_args()
    print(f"# {args.tasks} no-op tasks, {args.workers} worker processes, "
          f"{multiprocessing.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
          f"medians of {args.rounds} round(s)")
    print(f"{'K':>3} {'server hop/s':>13} {'median ms':>10} {'lane/s':>8} {'median ms':>10} "
          f"{'ratio':>6} {'+notes/s':>9} {'median ms':>10} {'ratio':>6}")
    for k in map(int, args.in_flight.split(",")):
        runs: list[list[dict[str, Any]]] = [[], [], []]
        for _ in range(args.rounds):
            runs[0].append(roundtrip.measure("steersman", "pipe", args.tasks, k, args.workers))
            runs[1].append(measure_lane(args.tasks, k, args.workers, notes=False))
            runs[2].append(measure_lane(args.tasks, k, args.workers, notes=True))
        rate = [statistics.median(r["tasks_per_s"] for r in rows) for rows in runs]
        median = [statistics.median(r["median_ms"] for r in rows) for rows in runs]
        print(f"{k:>3} {rate[0]:>13.0f} {median[0]:>10.3f} {rate[1]:>8.0f} {median[1]:>10.3f} "
              f"{rate[1] / rate[0]:>6.2f} {rate[2]:>9.0f} {median[2]:>10.3f} "
              f"{rate[2] / rate[0]:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
