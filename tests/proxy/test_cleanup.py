"""No store is left growing: every object the queues store is evicted once it is not needed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from proxystore.store import Store

from steersman import AgentError, BaseThinker, PipeQueues, Result, agent, result_processor
from steersman.exceptions import TaskServerDied

Count = Callable[[Store[Any]], int]
pytestmark = pytest.mark.timeout(40)
BIG = np.arange(40_000, dtype=float)
THRESHOLD = 100_000


def new_queues(**options: Any) -> PipeQueues:
    """Pipe queues without a server, for tests that only send and close."""
    return PipeQueues(**options)


def campaign(queues: PipeQueues) -> list[Any]:
    """Every kind of task: echoes with and without inputs kept, failures, retries, streams."""
    sent = [
        *({"args": (BIG + i,), "method": "echo", "keep_inputs": bool(i % 2)} for i in range(6)),
        {"args": (BIG,), "method": "fail"},
        {"args": (BIG,), "method": "fail", "max_retries": 1},
        {"args": (3, 20_000), "method": "count_up"},
    ]
    for task in sent:
        queues.send_inputs(*task.pop("args"), topic="big", **task)
    results = []
    while queues.active_count:
        result = queues.get_result("big", timeout=20)
        assert result is not None, "a result did not arrive"
        results.append(result)
    return results


@pytest.mark.parametrize("store", ["file_store", "redis_store"])
def test_a_campaign_leaves_its_store_empty(
    serve: Callable[..., PipeQueues], store: str, request: pytest.FixtureRequest,
    stored_objects: Count,
) -> None:
    store_obj: Store[Any] = request.getfixturevalue(store)
    queues = serve(proxystore_name=store_obj.name, proxystore_threshold=THRESHOLD)
    results = campaign(queues)
    assert stored_objects(store_obj) == 0
    assert queues._proxies is not None and queues._proxies.outstanding == 0
    echoes = [r for r in results if r.method == "echo"]
    assert len(echoes) == 6 and all(r.success for r in echoes)
    assert sorted(float(r.value[0]) for r in echoes) == [0, 1, 2, 3, 4, 5]
    failures = [r for r in results if r.method == "fail"]
    # The retried task still found its input: inputs live until the final result.
    assert all("task failed on purpose" in r.failure_info.exception for r in failures)
    assert [r.retries for r in failures if r.max_retries] == [1]
    stream = [r for r in results if r.method == "count_up"]
    assert [float(r.value[0]) for r in stream if r.complete is False] == [0, 1, 2]
    assert all(r.message_sizes.get("value_proxied") for r in stream if r.complete is False)


def test_close_evicts_inputs_of_tasks_that_never_came_back(
    file_store: Store[Any], stored_objects: Count
) -> None:
    queues = new_queues(topics=["big"], proxystore_name=file_store.name,
                        proxystore_threshold=THRESHOLD)  # no server: nothing comes back
    queues.send_inputs(BIG, method="echo", topic="big")
    queues.send_inputs(BIG, method="echo", topic="big")
    assert stored_objects(file_store) == 2
    queues.close()
    assert stored_objects(file_store) == 0


def test_inputs_of_a_request_that_could_not_be_sent_are_evicted(
    file_store: Store[Any], monkeypatch: pytest.MonkeyPatch, stored_objects: Count
) -> None:
    queues = new_queues(proxystore_name=file_store.name, proxystore_threshold=THRESHOLD)

    def gone(parts: Any) -> None:
        raise TaskServerDied("the task server is gone")

    monkeypatch.setattr(queues, "_send_request", gone)
    with pytest.raises(TaskServerDied):
        queues.send_inputs(BIG, method="echo")
    assert stored_objects(file_store) == 0
    queues.close()


def test_inputs_of_a_request_resent_by_a_resumed_campaign_are_evicted_when_it_returns(
    serve: Callable[..., PipeQueues], file_store: Store[Any], stored_objects: Count
) -> None:
    from steersman.models.messages import Kind, decode, encode, join

    sent: list[Any] = []

    class Keep:
        def request_sent(self, result: Any) -> None:
            sent.append(result)

        def result_received(self, result: Any) -> None:
            pass

    options = {"proxystore_name": file_store.name, "proxystore_threshold": THRESHOLD}
    first = new_queues(topics=["big"], **options)
    first.add_observer(Keep())
    first.send_inputs(BIG, method="echo", topic="big")
    request = decode(join(encode(Kind.REQUEST, sent[0]))).result  # as a journal gives it back
    assert request is not None
    request.decode_inputs()
    first._proxies._stored.clear()  # type: ignore[union-attr]  # killed: nothing evicted
    first.close()
    assert stored_objects(file_store) == 1

    resumed = serve(**options)
    resumed.resend(request)
    result = resumed.get_result("big", timeout=20)
    assert result is not None and result.success, result and result.failure_info
    assert np.array_equal(result.value, BIG)
    assert stored_objects(file_store) == 0


class SendsThenStops(BaseThinker):
    """Sends two tasks with large inputs, unless resuming; stops early when told to (the
    user pressing Ctrl-C), else waits for both results."""

    def __init__(self, queues: PipeQueues, run_dir: Path, interrupt: bool):
        super().__init__(queues, run_dir=run_dir, progress=False)
        self.interrupt = interrupt
        self.values: list[float] = []

    @agent(startup=True)
    def send(self) -> None:
        if self.campaign is not None and self.campaign.resumed:
            return  # the two requests are resent by the resume
        for i in range(2):
            self.queues.send_inputs(BIG + i, method="echo", topic="big")
        if self.interrupt:
            raise KeyboardInterrupt

    @result_processor(topic="big")
    def receive(self, result: Result) -> None:
        assert result.success, result.failure_info
        self.values.append(float(result.value[0]))
        if len(self.values) == 2:
            self.done.set()


def test_inputs_of_an_interrupted_campaign_stay_for_its_resume(
    serve: Callable[..., PipeQueues], file_store: Store[Any], stored_objects: Count,
    tmp_path: Path,
) -> None:
    """A graceful stop (not a kill) keeps the inputs of tasks not back: resume needs them,
    and evicts them once their results are in."""
    options = {"proxystore_name": file_store.name, "proxystore_threshold": THRESHOLD}
    first = new_queues(topics=["big"], **options)  # no server: nothing comes back
    with pytest.raises(AgentError):
        SendsThenStops(first, tmp_path / "run", interrupt=True).run()
    first.close()
    assert stored_objects(file_store) == 2

    resumed = SendsThenStops(serve(**options), tmp_path / "run", interrupt=False)
    resumed.run()
    assert sorted(resumed.values) == [0.0, 1.0]
    assert stored_objects(file_store) == 0
