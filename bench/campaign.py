"""Resume and report times for a run directory holding many results.

    python bench/campaign.py        # 100,000 results (targets: resume < 5 s, report < 30 s)
    python bench/campaign.py --results 20000 --keep /tmp/run

Builds a run directory the way a thinker records one (journal, results.jsonl, allocation.jsonl,
params.json) for a campaign of two topics on 8 workers whose thinker was killed, then times:

- *resume*: building a thinker on it (loading the journal) and running it until every result
  was replayed to its result processors;
- *status*: ``steersman status``'s reading of the run directory;
- *report*: ``steersman report``, every plot and the summary.

Journal overhead on the round trip is measured by ``bench/roundtrip.py --journal``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from steersman import BaseThinker, PipeQueues, ResourceCounter, Result, agent, result_processor
from steersman.campaign import status, write_report
from steersman.campaign.journal import RecordKind
from steersman.campaign.progress import Counters
from steersman.campaign.rundir import RunDirectory, to_json
from steersman.campaign.session import JournalState, Recording
from steersman.models.result import WorkerInformation

WORKERS = 8


class Rebuild(BaseThinker):
    """Rebuilds its state from replayed results, then ends at once (nothing left to do)."""

    def __init__(self, queues: PipeQueues, run_dir: Path):
        super().__init__(queues, ResourceCounter(WORKERS, ["simulate", "train"]),
                         run_dir=run_dir, progress=False)
        self.database: dict[Any, float] = {}
        self.models = 0

    @result_processor(topic="simulate")
    def simulated(self, result: Result) -> None:
        assert self.rec is not None
        self.rec.release("simulate", 1)  # a no-op while replaying: slots belong to live tasks
        self.database[result.args[0]] = result.value

    @result_processor(topic="train")
    def trained(self, result: Result) -> None:
        self.models += 1

    @agent
    def finish(self) -> None:
        """The campaign is complete once replayed: end it."""


def build(run_dir: Path, n_results: int, seed: int = 1) -> None:
    """Write a run directory of `n_results` results as a killed thinker would leave it."""
    rng = random.Random(seed)
    directory = RunDirectory(run_dir, owner="bench")
    directory.update_params(lambda p: p.update(
        {"created": time.time(), "thinker": f"{__name__}.Rebuild",
         "params": {"goal": "min", "value_topic": "simulate"}}))
    recording = Recording(directory, JournalState(), Counters())
    journal = recording.journal
    journal.append(RecordKind.SESSION, [to_json({"pid": os.getpid(), "host": "bench",
                                                 "thinker": f"{__name__}.Rebuild",
                                                 "started": time.time(),
                                                 "resumed": False}).encode()])
    start = time.time() - n_results * 0.01
    free = [start] * WORKERS
    best = 10.0
    allocation = {None: 0, "simulate": WORKERS, "train": 0}
    directory.write_allocation(allocation, start)
    for i in range(n_results):
        train = i % 500 == 499
        topic = "train" if train else "simulate"
        worker = min(range(WORKERS), key=free.__getitem__)
        created = free[worker] - rng.uniform(0, 0.002)
        duration = rng.uniform(0.5, 1.5) if train else rng.lognormvariate(-3.5, 0.4)
        request = Result(method="train" if train else "simulate", topic=topic,
                         inputs=((i, rng.uniform(-3, 3)), {}))
        request.timestamp.created = created
        request.encode_inputs()
        recording.request_sent(request, (topic, 1))
        stamps = request.timestamp
        stamps.input_received = created + rng.uniform(1e-4, 3e-4)
        stamps.compute_started = stamps.input_received + rng.uniform(5e-5, 2e-4)
        stamps.compute_ended = stamps.compute_started + duration
        stamps.result_sent = stamps.compute_ended + 5e-5
        stamps.result_received = stamps.result_sent + rng.uniform(2e-4, 8e-4)
        request.worker_info = WorkerInformation(hostname="node", pid=1000 + worker,
                                                executor="bench")
        best = min(best, rng.uniform(best * 0.98, 12))
        request.set_result(None if train else best + rng.expovariate(0.5))
        request.encode_value()
        recording.result_received(request)
        journal.defer(RecordKind.PROCESSED, request.task_id)
        free[worker] = stamps.compute_ended
        if train:  # slots move to training and back, as in the seed's re-allocation demo
            directory.write_allocation({None: 0, "simulate": WORKERS - 1, "train": 1},
                                       stamps.compute_started)
            directory.write_allocation(allocation, stamps.compute_ended)
    recording.close(None)  # no END record: the thinker was killed
    directory.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=int, default=100_000, help="results in the run dir")
    parser.add_argument("--keep", metavar="DIR", default=None,
                        help="build the run directory here and keep it")
    args = parser.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="steersman-bench-"))
    run_dir = base / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    rows: list[tuple[str, float, str]] = []
    try:
        t0 = time.perf_counter()
        build(run_dir, args.results)
        rows.append(("build run dir", time.perf_counter() - t0, "(setup, not a target)"))
        size = sum(p.stat().st_size for p in run_dir.iterdir() if p.is_file())

        queues = PipeQueues(topics=["simulate", "train"])
        t0 = time.perf_counter()
        thinker = Rebuild(queues, run_dir)
        loaded = time.perf_counter() - t0
        thinker.run()
        resumed = time.perf_counter() - t0
        assert len(thinker.database) + thinker.models == args.results, "replay lost results"
        rows.append(("resume: load journal", loaded, ""))
        rows.append(("resume: load + replay all", resumed, "target < 5 s"))

        t0 = time.perf_counter()
        info = status(run_dir)
        rows.append(("status", time.perf_counter() - t0, ""))
        assert info["results"] == args.results

        t0 = time.perf_counter()
        out = write_report(run_dir)
        rows.append(("report (5 PNGs + summary)", time.perf_counter() - t0, "target < 30 s"))
        assert len(list(out.glob("*.png"))) == 5
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    print(f"# {args.results} results, run dir {size / 1e6:.0f} MB, {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}")
    print(f"{'step':28} {'seconds':>8}  note")
    for name, seconds, note in rows:
        print(f"{name:28} {seconds:>8.2f}  {note}")


if __name__ == "__main__":
    main()
