"""Large payloads: seconds per echo round trip and memory copies, per queue and store.

Echo tasks carry a NumPy array in and out through a LocalTaskServer (one worker process), over
PipeQueues and RedisQueues, inline (raw pickle-5 frames) and through a ProxyStore file store.
The same run measures the floor (write the array to a file and read it back) and, with
``--peer``, the earlier library.

    python bench/payload.py [--sizes 1,10,100] [--peer /work/peer-venv/bin/python] [--big]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from steersman import LocalTaskServer
from steersman.queue.base import BaseQueues

MB = 1_000_000
THRESHOLD = 500_000
HERE = Path(__file__).parent


# --- task methods (run in the worker process) -------------------------------------------------


def echo(x: Any) -> Any:
    """Return the input unchanged."""
    return x


def trace_start() -> None:
    """Start counting allocations in the worker."""
    tracemalloc.start()
    tracemalloc.reset_peak()


def trace_stop() -> int:
    """Peak bytes the worker allocated since :func:`trace_start`."""
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


# --- paths ------------------------------------------------------------------------------------


def pipe_queues(**options: Any) -> tuple[BaseQueues, BaseQueues]:
    from steersman import PipeQueues

    queues = PipeQueues(**options)
    return queues, queues


def redis_queues(**options: Any) -> tuple[BaseQueues, BaseQueues]:
    import inspect

    from steersman.queue.redis import RedisQueues, make_queue_pairs

    if "proxystore_name" in inspect.signature(RedisQueues.__init__).parameters:
        return make_queue_pairs("127.0.0.1", 6379, **options)
    client, server = make_queue_pairs("127.0.0.1", 6379)
    if options:  # this RedisQueues does not forward the ProxyStore options yet: attach them
        from steersman.proxy import parse_proxy_options

        client._proxies = parse_proxy_options(options["proxystore_name"],
                                              options["proxystore_threshold"], client.topics)
    return client, server


@contextmanager
def served(make: Callable[..., tuple[BaseQueues, BaseQueues]],
           **options: Any) -> Iterator[BaseQueues]:
    """Client queues with an echo server (one worker process) behind them."""
    client, server_queues = make(**options)
    server = LocalTaskServer(server_queues, [echo, trace_start, trace_stop], threads=False,
                             num_workers=1)
    server.start()
    try:
        yield client
    finally:
        client.send_kill_signal()
        server.join(timeout=60)
        client.close()
        if hasattr(client, "purge"):
            client.purge()


def call(queues: BaseQueues, method: str, *args: Any) -> Any:
    queues.send_inputs(*args, method=method, keep_inputs=False)
    result = queues.get_result(timeout=600)
    if result is None or not result.success:
        raise RuntimeError(f"{method} failed: {result and result.failure_info}")
    return result.value


def round_trips(queues: BaseQueues, array: np.ndarray, repeats: int) -> float:
    """Median seconds per echo round trip, after one warm-up."""
    call(queues, "echo", array)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        back = call(queues, "echo", array)
        times.append(time.perf_counter() - start)
        assert back.shape == array.shape and back[-1] == array[-1]
        del back
    return statistics.median(times)


def copies(queues: BaseQueues, array: np.ndarray) -> tuple[float, float]:
    """Peak extra memory of one round trip, in payloads: (thinker, worker)."""
    call(queues, "trace_start")
    tracemalloc.start()
    tracemalloc.reset_peak()
    back = call(queues, "echo", array)
    thinker = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    worker = call(queues, "trace_stop")
    del back
    return thinker / array.nbytes, worker / array.nbytes


def floor(array: np.ndarray, directory: Path, repeats: int) -> float:
    """Median seconds to write the array to a file and read it back into a new array."""
    path = directory / f"floor-{uuid.uuid4().hex}.bin"
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with open(path, "wb") as f:
            f.write(memoryview(array).cast("B"))
        with open(path, "rb") as f:
            back = np.frombuffer(f.read(), dtype=array.dtype)
        times.append(time.perf_counter() - start)
        assert back[-1] == array[-1]
        path.unlink()
    return statistics.median(times[1:])


# --- the run ----------------------------------------------------------------------------------


def redis_available() -> bool:
    try:
        import redis

        from steersman.queue import redis as _  # noqa: F401 (being written: may be missing)

        return bool(redis.Redis("127.0.0.1", 6379, socket_connect_timeout=1).ping())
    except Exception:
        return False


def file_store(directory: Path) -> str:
    from steersman.proxy import stores_from_options

    names, _ = stores_from_options({"default": "file"}, THRESHOLD, file_dir=directory)
    return names["default"]


def measure(sizes: list[int], directory: Path) -> tuple[list[dict[str, Any]], dict[int, float]]:
    store = file_store(directory / "store")
    paths: list[tuple[str, str, Callable[..., Any], dict[str, Any]]] = [
        ("PipeQueues", "inline", pipe_queues, {}),
        ("PipeQueues", "file store", pipe_queues,
         {"proxystore_name": store, "proxystore_threshold": THRESHOLD}),
    ]
    if redis_available():
        paths += [
            ("RedisQueues", "inline", redis_queues, {}),
            ("RedisQueues", "file store", redis_queues,
             {"proxystore_name": store, "proxystore_threshold": THRESHOLD}),
        ]
    else:
        print("RedisQueues skipped: no steersman.queue.redis or no Redis on 127.0.0.1:6379",
              file=sys.stderr)
    rows = []
    arrays = {size: np.random.default_rng(0).random(size * MB // 8) for size in sizes}
    floors = {size: floor(arrays[size], directory, repeats(size)) for size in sizes}
    for size in sizes:
        rows.append({"path": "file write+read (floor)", "store": "-", "size": size,
                     "seconds": floors[size], "thinker": None, "worker": None})
    for name, store_label, make, options in paths:
        with served(make, **options) as queues:
            for size in sizes:
                seconds = round_trips(queues, arrays[size], repeats(size))
                thinker, worker = copies(queues, arrays[size])
                rows.append({"path": name, "store": store_label, "size": size,
                             "seconds": seconds, "thinker": thinker, "worker": worker})
                print(f"  {name} {store_label} {size} MB: {seconds:.3f} s", file=sys.stderr)
    return rows, floors


def repeats(size: int) -> int:
    return 10 if size <= 1 else 5 if size <= 10 else 7


def run_peer(python: str, sizes: list[int], directory: Path) -> list[dict[str, Any]]:
    """Run the earlier library's echo in its own interpreter; one JSON row per line back."""
    command = [python, str(HERE / "peer" / "payload_peer.py"), "--sizes",
               ",".join(map(str, sizes)), "--store-dir", str(directory / "peer-store"),
               "--threshold", str(THRESHOLD)]
    # Output to a file, not a pipe: stray processes of the peer must not hold the run up.
    with tempfile.TemporaryFile("w+") as out:
        done = subprocess.run(command, stdout=out, stderr=sys.stderr, timeout=1800)
        out.seek(0)
        lines = out.read().splitlines()
    if done.returncode != 0:
        print(f"peer run failed with exit code {done.returncode}", file=sys.stderr)
    return [json.loads(line) for line in lines if line.startswith("{")]


def big_check(gigabytes: float) -> str:
    """One echo of a huge array over PipeQueues, if this machine has the memory for it."""
    nbytes = int(gigabytes * 1e9)
    available = _available_memory()
    if available < 5 * nbytes:
        return (f"--big skipped: {available / 1e9:.1f} GB available, a {gigabytes} GB echo "
                f"needs about {5 * gigabytes:.1f} GB")
    array = np.ones(nbytes // 8)
    with served(pipe_queues) as queues:
        start = time.perf_counter()
        back = call(queues, "echo", array)
        seconds = time.perf_counter() - start
    ok = back.shape == array.shape and bool(back[-1] == 1.0)
    return (f"--big: {gigabytes} GB array echoed over PipeQueues in {seconds:.1f} s "
            f"({'intact' if ok else 'CORRUPT'})")


def _available_memory() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| path | store | size | s / round trip | x floor | extra memory thinker | "
          "extra memory worker |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        mem = [f"{row[k]:.1f} x" if row.get(k) is not None else "-"
               for k in ("thinker", "worker")]
        seconds = row["seconds"]
        shown = f"{seconds:.3f}" if isinstance(seconds, float) else str(seconds)
        ratio = f"{row['x_floor']:.1f}" if row.get("x_floor") is not None else "-"
        print(f"| {row['path']} | {row['store']} | {row['size']} MB | {shown} | {ratio} | "
              f"{mem[0]} | {mem[1]} |")


FOOTER = """
Seconds: median wall time of one echo round trip (array in and out, `keep_inputs=False`) over
{repeats} repeats after a warm-up, thinker to thinker, with LocalTaskServer(threads=False,
num_workers=1). x floor: that time over the floor, one write of the array to a file in {tmp} and
one read back into a new array (a round trip moves the array twice, so 2.0 x floor is what a
shared file system would cost). Extra memory: tracemalloc peak during one round trip, in
payloads, in the thinker's process and in the worker's process (each one started before the
round trip, so the input array itself is not counted, the landing buffer of the returned value
is): 1.0 x in the thinker is the array that comes back. Not counted: kernel copies (pipe and
socket buffers, page cache), the Redis server, and the task server process, which relays each
request and each result its worker does not send itself (pipes: read into one buffer, written
out with vectored writes; Redis: a message of 1 MiB or more is read from its chunk keys straight
into one mapped buffer, and a worker sends such a result to Redis itself). Peer rows: the
earlier library, same echo in its own interpreter; its memory is not traced.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100", help="array sizes in MB, comma separated")
    parser.add_argument("--peer", help="python of a virtualenv with the earlier library")
    parser.add_argument("--big", action="store_true", help="also echo a 2.5 GB array (pipes)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="steersman-bench-") as tmp:
        directory = Path(tmp)
        rows, floors = measure(sizes, directory)
        if args.peer:
            rows += run_peer(args.peer, sizes, directory)
    for row in rows:
        if isinstance(row["seconds"], float) and row["size"] in floors:
            row["x_floor"] = row["seconds"] / floors[row["size"]]
    print(f"steersman payload benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}, NumPy {np.__version__}\n")
    print_table(rows)
    print(FOOTER.format(repeats="10/5/7 (1/10/100 MB)", tmp=tempfile.gettempdir()))
    if args.big:
        print(big_check(2.5))


if __name__ == "__main__":
    main()
