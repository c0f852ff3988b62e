"""Fault 4: an agent, a result processor or a slot-holding event responder raises mid-campaign.

The thinker stops within 100 ms of the raise, `run()` raises AgentError naming the agent with
the original error as its cause, and no slot stays stranded in a pool it was gathered into.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import fault_tasks as tasks
import pytest
from fault_helpers import run_in_thread

from steersman import (
    AgentError,
    BaseThinker,
    LocalTaskServer,
    PipeQueues,
    ResourceCounter,
    Result,
    agent,
    event_responder,
    result_processor,
    task_submitter,
)

STOP_WITHIN = 0.1


@pytest.fixture
def queues() -> Iterator[PipeQueues]:
    queues = PipeQueues(topics=["sim", "ml"])
    server = LocalTaskServer(queues, [tasks.double, tasks.hang], threads=True, num_workers=4)
    server.start()
    yield queues
    queues.send_kill_signal()
    server.join(20)
    queues.close()


class Busy(BaseThinker):
    """A campaign in full swing: a submitter keeps 2 tasks in flight, a processor takes them."""

    def __init__(self, queues: PipeQueues, total: int = 4):
        super().__init__(queues, ResourceCounter(total, ["sim", "ml"]))
        self.rec.reallocate(None, "sim", 2)
        self.received = 0
        self.raised_at: float | None = None
        self.steady = threading.Event()  # set once some results came back

    @task_submitter(task_type="sim")
    def submit(self) -> None:
        self.queues.send_inputs(0.01, method="hang", topic="sim")

    @result_processor(topic="sim")
    def receive(self, result: Result) -> None:
        self.rec.release("sim", 1)
        self.received += 1
        if self.received >= 5:
            self.steady.set()

    def fail_now(self, error: Exception) -> None:
        self.raised_at = time.perf_counter()
        raise error


def _run_and_time(thinker: Busy) -> AgentError:
    thread, raised = run_in_thread(thinker)
    thread.join(3)
    ended = time.perf_counter()
    assert not thread.is_alive(), "run() hung after an agent failed"
    assert thinker.raised_at is not None
    late = ended - thinker.raised_at
    assert late < STOP_WITHIN, f"stopped {late:.3f} s after the raise"
    (error,) = raised
    assert isinstance(error, AgentError) and thinker.error is error
    assert thinker.done.is_set()
    snapshot = thinker.rec.snapshot()
    assert sum(allocated for allocated, _ in snapshot.values()) == thinker.rec.total_slots
    assert all(0 <= idle <= allocated for allocated, idle in snapshot.values())
    return error


@pytest.mark.timeout(20)
def test_agent_raising_mid_campaign(queues: PipeQueues) -> None:
    """A plain agent fails while tasks are in flight: run() names it and its KeyError."""

    class Thinker(Busy):
        @agent
        def monitor(self) -> None:
            self.steady.wait(10)
            self.fail_now(KeyError("monitor lost its key"))

    error = _run_and_time(Thinker(queues))
    assert error.agent == "monitor" and isinstance(error.__cause__, KeyError)
    assert "monitor lost its key" in str(error)


@pytest.mark.timeout(20)
def test_result_processor_raising(queues: PipeQueues) -> None:
    """The processor fails on one result among many: run() names it and why."""

    class Thinker(Busy):
        @result_processor(topic="sim")
        def receive(self, result: Result) -> None:
            Busy.receive(self, result)
            if self.received == 5:
                self.fail_now(ZeroDivisionError("bad result"))

    error = _run_and_time(Thinker(queues))
    assert error.agent == "receive" and isinstance(error.__cause__, ZeroDivisionError)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("holding", [
    pytest.param(False, id="gathered"),
    pytest.param(True, id="gathered-and-acquired"),
])
def test_event_responder_raising_with_reallocated_slots(queues: PipeQueues, holding: bool) -> None:
    """A responder fails while its pool holds gathered slots (idle, or acquired by it): run()
    names it, and every gathered slot goes back to the pool it came from."""

    class Thinker(Busy):
        def __init__(self, queues: PipeQueues):
            super().__init__(queues)
            self.retrain = threading.Event()

        @agent(startup=True)
        def trigger(self) -> None:
            self.steady.wait(10)
            self.retrain.set()

        @event_responder(event_name="retrain", reallocate_resources=True, gather_from=None,
                         gather_to="ml", disperse_to=None, max_slots=2)
        def train(self) -> None:
            assert self.rec.acquire("ml", 2, timeout=5)  # the gathered slots arrived
            if not holding:
                self.rec.release("ml", 2)
            self.fail_now(RuntimeError("training diverged"))

    thinker = Thinker(queues)
    error = _run_and_time(thinker)
    assert error.agent == "train" and isinstance(error.__cause__, RuntimeError)
    assert thinker.rec.allocated_slots("ml") == 0, "slots stranded in the responder's pool"
    assert thinker.rec.unallocated_slots == 2
