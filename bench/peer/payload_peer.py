"""The payload benchmark's echo, run with the earlier library (in its own virtualenv).

Called by ``bench/payload.py --peer PYTHON``; prints one JSON row per measurement. The payload is a
NumPy array when NumPy is installed there, else a ``bytes`` object of the same size (both pickle
in-band in that library). Each size runs against a fresh server with a deadline, so a size the
embedded queue cannot carry is reported instead of hanging the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import statistics
import sys
import time
from typing import Any

from colmena.queue.python import PipeQueues
from colmena.task_server.local import LocalTaskServer

MB = 1_000_000
DEADLINE = 60.0


def echo(x: Any) -> Any:
    """Return the input unchanged."""
    return x


def payload(size: int) -> tuple[Any, str]:
    try:
        import numpy as np

        return np.random.default_rng(0).random(size * MB // 8), "ndarray"
    except ImportError:
        return bytes(size * MB), "bytes"


def one_size(size: int, repeats: int, store: str | None, threshold: int,
             out: Any) -> None:
    """Measure in a child process, so a failed or stuck server cannot stop the run."""
    options: dict[str, Any] = {}
    if store is not None:
        from proxystore.connectors.file import FileConnector
        from proxystore.store import Store, register_store

        directory = f"{store}/{size}mb"  # one directory per measurement, never cleared
        register_store(Store("peer-file", FileConnector(directory, clear=False)))
        options = {"proxystore_name": "peer-file", "proxystore_threshold": threshold}
    queues = PipeQueues(keep_inputs=False, **options)
    server = LocalTaskServer(queues, [echo], threads=False, num_workers=1)
    server.start()
    data, kind = payload(size)
    times = []
    try:
        for _ in range(repeats + 1):
            start = time.perf_counter()
            queues.send_inputs(data, method="echo")
            result = queues.get_result(timeout=DEADLINE)
            if result is None or not result.success:
                raise RuntimeError(f"task failed: {result and result.failure_info}")
            value = result.value
            assert len(value) == len(data)
            times.append(time.perf_counter() - start)
        out.put({"seconds": statistics.median(times[1:]), "kind": kind})
    except BaseException as exc:  # report, whatever it is
        out.put({"error": f"{type(exc).__name__}: {exc}"[:120], "kind": kind})
    finally:
        stop(server)


def stop(server: Any) -> None:
    """End the server and its pool's workers, which terminate() alone leaves running."""
    try:
        import psutil

        workers = psutil.Process(server.pid).children(recursive=True)
    except Exception:
        workers = []
    server.terminate()
    for worker in workers:
        with contextlib.suppress(Exception):
            worker.kill()


def measure(size: int, store: str | None, threshold: int) -> dict[str, Any]:
    repeats = 10 if size <= 1 else 5 if size <= 10 else 3
    out: multiprocessing.Queue[dict[str, Any]] = multiprocessing.Queue()
    child = multiprocessing.Process(target=one_size, args=(size, repeats, store, threshold, out))
    child.start()
    try:
        outcome = out.get(timeout=DEADLINE * (repeats + 2))
    except Exception:
        outcome = {"error": f"no answer within {DEADLINE * (repeats + 2):.0f} s"}
    child.join(timeout=10)
    if child.is_alive():
        child.kill()
    label = "file store" if store else "inline"
    seconds = outcome.get("seconds", f"failed ({outcome.get('error')})")
    return {"path": "peer PipeQueues", "store": f"{label} ({outcome.get('kind', '?')})",
            "size": size, "seconds": seconds, "thinker": None, "worker": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100")
    parser.add_argument("--store-dir", required=True)
    parser.add_argument("--threshold", type=int, default=500_000)
    args = parser.parse_args()
    sizes = sorted({4, *(int(s) for s in args.sizes.split(","))})
    for store in (None, args.store_dir):
        for size in sizes:
            row = measure(size, store, args.threshold)
            print(json.dumps(row), flush=True)
            print(f"  peer {row['store']} {size} MB: {row['seconds']}", file=sys.stderr)


if __name__ == "__main__":
    main()
