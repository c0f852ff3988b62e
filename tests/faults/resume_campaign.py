"""A campaign run as its own process by test_resume.py, killed and resumed many times.

    python resume_campaign.py RUN_DIR N

Doubles the numbers 0..N-1 with four slots in flight, printing ``processed X`` for each result
it processes for real (not on replay); writes RUN_DIR/final.json when every number is done.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from steersman import (
    BaseThinker,
    LocalTaskServer,
    PipeQueues,
    ResourceCounter,
    Result,
    result_processor,
    task_submitter,
)


def slow_double(x: int) -> int:
    threading.Event().wait(0.02)  # a little work, so kills land with tasks in flight
    return 2 * x


class Doubler(BaseThinker):
    def __init__(self, queues: PipeQueues, run_dir: str, n: int):
        super().__init__(queues, ResourceCounter(4, ["sim"]), run_dir=run_dir, progress=False)
        self.n = n
        self.database: dict[int, int] = {}
        self.lock = threading.Lock()
        self.in_flight = {r.args[0] for r in self.campaign.pending} if self.resumed else set()
        self.rec.reallocate(None, "sim", 4)  # slots are not journaled: every run sets them

    @task_submitter(task_type="sim")
    def submit(self) -> None:
        with self.lock:
            todo = [x for x in range(self.n) if x not in self.database
                    and x not in self.in_flight]
            if todo:
                self.in_flight.add(todo[0])
        if not todo:  # the rest is in flight: give the slot back, wait for the end
            self.rec.release("sim", 1)
            self.done.wait()
            return
        self.queues.send_inputs(todo[0], method="slow_double", topic="default")

    @result_processor
    def receive(self, result: Result) -> None:
        self.rec.release("sim", 1)
        x = result.args[0]
        with self.lock:
            self.in_flight.discard(x)
            if result.success:
                self.database[x] = result.value
            else:
                print(f"failed {x}: {result.failure_info}", file=sys.stderr, flush=True)
            finished = len(self.database) == self.n
        if not self.campaign.replaying:
            print(f"processed {x}", flush=True)
        if finished:
            self.done.set()


def main() -> None:
    run_dir, n = sys.argv[1], int(sys.argv[2])
    queues = PipeQueues()
    server = LocalTaskServer(queues, [slow_double], threads=True, num_workers=4)
    server.start()
    thinker = Doubler(queues, run_dir, n)
    thinker.run()
    queues.send_kill_signal()
    server.join(30)
    (Path(run_dir) / "final.json").write_text(json.dumps(thinker.database))
    print("finished", flush=True)


if __name__ == "__main__":
    main()
