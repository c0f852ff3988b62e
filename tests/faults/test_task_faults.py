"""Fault 5: tasks that time out, return what pickle cannot carry, flood stdout, or raise half
way through a generator — each comes back as a clear failed (or successful) Result, and the
campaign around them finishes with every other result."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import fault_tasks as tasks
import pytest
from fault_helpers import Collect, Request, make_fifo, run_in_thread

from steersman import LocalTaskServer, PipeQueues

MEGABYTES = 100


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = make_fifo(tmp_path, "gate.fifo")
    yield path
    tasks.release_fifo(str(path))  # a timed-out thread cannot be killed: let it end


@pytest.fixture(params=[True, False], ids=["threads", "processes"])
def start_server(request: pytest.FixtureRequest, fifo: Path) -> Iterator[Callable[[], PipeQueues]]:
    """Start a server when called: from the test itself, so it prints into the test's capfd."""
    started: list[tuple[PipeQueues, LocalTaskServer]] = []

    def start() -> PipeQueues:
        queues = PipeQueues()
        server = LocalTaskServer(queues, [tasks.double, tasks.wait_fifo, tasks.unpicklable,
                                          tasks.shout, tasks.half_then_raise],
                                 threads=request.param, num_workers=3)
        server.start()
        started.append((queues, server))
        return queues

    yield start
    for queues, server in started:
        tasks.release_fifo(str(fifo))
        queues.send_kill_signal()
        server.join(20)
        assert server.exitcode == 0
        queues.close()


@pytest.mark.timeout(40)
def test_bad_tasks_fail_clearly_and_the_campaign_finishes(
    start_server: Callable[[], PipeQueues], fifo: Path, capfd: pytest.CaptureFixture[str],
) -> None:
    """Every bad task gets a final Result saying what went wrong; the good ones all succeed.

    The 100 MB of output go to the server's stdout (captured here), not into any message.
    """
    queues = start_server()
    requests = [
        Request("wait_fifo", (str(fifo),), {"timeout": 0.2}),
        Request("unpicklable"),
        Request("shout", (MEGABYTES,)),
        Request("half_then_raise", (3,)),
        *(Request("double", (i,)) for i in range(10)),
    ]
    thinker = Collect(queues, requests)
    thread, raised = run_in_thread(thinker)
    try:
        thread.join(30)
    finally:
        printed = len(capfd.readouterr().out)  # read it all: never shown in a report
    assert not thread.is_alive(), "the campaign hung on a bad task"
    assert not raised, raised

    (timed_out,) = thinker.by_method("wait_fifo")
    assert timed_out.success is False and timed_out.timed_out
    assert "exceeded its timeout of 0.2 s" in timed_out.failure_info.exception

    (unpicklable,) = thinker.by_method("unpicklable")
    assert unpicklable.success is False
    assert "could not be serialized" in unpicklable.failure_info.exception
    assert "lock" in unpicklable.failure_info.exception

    (shout,) = thinker.by_method("shout")
    assert shout.success, shout.failure_info
    assert shout.value == MEGABYTES << 20
    assert printed >= MEGABYTES << 20, "the output went missing"

    (generator,) = thinker.by_method("half_then_raise")
    assert generator.success is False
    assert "generator broke after 3 items" in generator.failure_info.exception
    assert [r.value for r in thinker.intermediate] == [0, 1, 2]

    assert sorted(r.value for r in thinker.by_method("double")) == [2 * i for i in range(10)]
    assert not thinker.duplicates and queues.active_count == 0
