"""Bad input: each mistake is a clear error at the call that received it, and nothing is sent."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import fault_tasks as tasks
import pytest

from steersman import LocalTaskServer, PipeQueues, ResourceCounter
from steersman.exceptions import QueueConnectionError
from steersman.queue.base import BaseQueues


@pytest.fixture(params=["pipe", "redis"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[BaseQueues, Callable[[], int]]]:
    """Client queues with a running server, and a count of requests waiting in the channel."""
    if request.param == "pipe":
        queues: BaseQueues = PipeQueues(topics=["sim"])
        waiting: Callable[[], int] = lambda: 0  # noqa: E731 (a pipe cannot be inspected)
    else:
        from steersman.queue.redis import RedisQueues

        redis = request.getfixturevalue("redis_server")
        queues = RedisQueues(redis.host, redis.port, topics=["sim"])
        raw = redis.client()
        waiting = lambda: raw.xlen(queues.requests_key)  # noqa: E731
    server = LocalTaskServer(queues, [tasks.double], num_workers=1)
    server.start()
    yield queues, waiting
    queues.send_kill_signal()
    server.join(20)
    queues.close()
    if request.param == "redis":
        queues.purge()  # type: ignore[attr-defined]


def _nothing_was_sent(queues: BaseQueues, waiting: Callable[[], int]) -> None:
    assert queues.active_count == 0 and waiting() == 0
    queues.send_inputs(5, method="double", topic="sim")  # the next real request is the only one
    result = queues.get_result("sim", timeout=20)
    assert result is not None and result.value == 10
    assert queues.get_result("sim", timeout=0.1) is None
    assert queues.get_result("default", timeout=0.1) is None


@pytest.mark.timeout(30)
@pytest.mark.parametrize("call, message", [
    (dict(method="simulate"), r"unknown method 'simulate'; valid methods: \['double'\]"),
    (dict(method="double", topic="train"), r"unknown topic 'train'; valid topics: \['default', "),
    (dict(method=""), "method must be a method name"),
    (dict(method="double", max_retries=-1), "max_retries must be a non-negative integer"),
    (dict(method="double", timeout=0), "timeout must be a positive number"),
    (dict(method="double", executor="gpu"), "unknown executor 'gpu'"),
], ids=["method", "topic", "empty-method", "retries", "timeout", "executor"])
def test_bad_request_is_refused_before_sending(
    served: tuple[BaseQueues, Callable[[], int]], call: dict[str, Any], message: str,
) -> None:
    """A bad name or option raises ValueError listing the valid choices; no request leaves."""
    queues, waiting = served
    with pytest.raises(ValueError, match=message):
        queues.send_inputs(1, **call)
    _nothing_was_sent(queues, waiting)


@pytest.mark.timeout(30)
def test_json_cannot_encode_argument(redis_server: Any) -> None:
    """Under JSON serialisation an object argument is named in a TypeError; nothing is sent."""
    from steersman.queue.redis import RedisQueues

    queues = RedisQueues(redis_server.host, redis_server.port, serialization_method="json",
                         methods=["double"])
    try:
        with pytest.raises(TypeError, match="keyword argument 'x' of type object cannot be "
                                            "encoded as JSON.*serialization_method='pickle'"):
            queues.send_inputs(method="double", input_kwargs={"x": object()})
        with pytest.raises(TypeError, match="argument 0 of type set"):
            queues.send_inputs({1, 2}, method="double")
        assert queues.active_count == 0
        assert redis_server.client().xlen(queues.requests_key) == 0
    finally:
        queues.close()
        queues.purge()


@pytest.mark.parametrize("call", [
    lambda rec: rec.acquire("sim", -1),
    lambda rec: rec.acquire("sim", 1.5),
    lambda rec: rec.acquire("sim", True),
    lambda rec: rec.release("sim", -2),
    lambda rec: rec.reallocate(None, "sim", -1),
    lambda rec: rec.reallocate(None, "sim", "half"),
    lambda rec: ResourceCounter(-4, ["sim"]),
    lambda rec: ResourceCounter(2.0, ["sim"]),
], ids=["acquire-negative", "acquire-float", "acquire-bool", "release-negative",
        "reallocate-negative", "reallocate-word", "counter-negative", "counter-float"])
def test_bad_slot_counts(call: Callable[[ResourceCounter], Any]) -> None:
    """Negative or non-integer slot counts raise ValueError naming the value; counts unchanged."""
    rec = ResourceCounter(4, ["sim"])
    rec.reallocate(None, "sim", 2)
    before = rec.snapshot()
    with pytest.raises(ValueError, match="must be a non-negative integer, got"):
        call(rec)
    assert rec.snapshot() == before


def test_unknown_pool_and_releasing_slots_never_acquired() -> None:
    """Unknown pools list the valid ones; releasing more than acquired names the counts."""
    rec = ResourceCounter(4, ["sim", "ml"])
    rec.reallocate(None, "sim", 2)
    with pytest.raises(ValueError, match=r"unknown task type 'train'; pools are \['sim', 'ml'"):
        rec.acquire("train", 1)
    with pytest.raises(ValueError, match="cannot release 1 slots of pool 'sim': only 0"):
        rec.release("sim", 1)
    assert rec.acquire("sim", 1, timeout=0)
    with pytest.raises(ValueError, match="cannot release 2 slots of pool 'sim': only 1"):
        rec.release("sim", 2)
    assert rec.snapshot()["sim"] == (2, 1)


@pytest.mark.timeout(10)
def test_reallocating_from_an_empty_pool_with_a_timeout_is_refused() -> None:
    """An empty pool cannot give slots: with a timeout that is a clear error at once, nothing
    moves; a pool that holds the slots but has them busy still waits out its timeout."""
    rec = ResourceCounter(4, ["sim", "ml"])
    before = rec.snapshot()
    with pytest.raises(ValueError, match="from pool 'ml': it holds 0"):
        rec.reallocate("ml", "sim", 2, timeout=0.1)
    assert rec.snapshot() == before
    rec.reallocate(None, "ml", 2)
    rec.acquire("ml", 2)
    start = time.perf_counter()
    assert rec.reallocate("ml", "sim", 2, timeout=0.1) is False
    assert 0.1 <= time.perf_counter() - start < 1.0
    with pytest.raises(ValueError, match="cannot move 5 slots: the counter has 4"):
        rec.reallocate(None, "sim", 5, timeout=0.1)


def test_unregistered_proxystore_name() -> None:
    """A ProxyStore name no store was registered under fails when the queues are built."""
    pytest.importorskip("proxystore")
    with pytest.raises(ValueError, match="no-such-store"):
        PipeQueues(proxystore_name="no-such-store", proxystore_threshold=1000)


@pytest.mark.timeout(30)
def test_redis_host_that_does_not_resolve() -> None:
    """A server or client on a host that does not resolve fails at once, naming the host."""
    from steersman.queue.redis import RedisQueues

    queues = RedisQueues("no-such-host.invalid", 6379, methods=["double"])
    start = time.perf_counter()
    with pytest.raises(QueueConnectionError, match="no-such-host.invalid:6379"):
        LocalTaskServer(queues, [tasks.double])  # publishing its methods needs Redis
    with pytest.raises(QueueConnectionError, match="no-such-host.invalid:6379"):
        queues.send_inputs(1, method="double")
    assert queues.active_count == 0
    assert time.perf_counter() - start < 10
    queues.close()


@pytest.mark.timeout(30)
def test_invade_with_impossible_bounds() -> None:
    """min > max fails before anything is sent; min > the cores managed is refused by name."""
    from steersman.allocation import AllocationClient, ManagerProcess

    with ManagerProcess(4, thread=True) as manager, AllocationClient(manager.address) as client:
        with pytest.raises(ValueError, match="min=3 > max=2"):
            client.invade(min=3, max=2, timeout=5)
        with pytest.raises(ValueError, match="min=5 exceeds the 4 cores managed"):
            client.invade(min=5, max=8, timeout=5)
        with pytest.raises(ValueError, match="min=-1"):
            client.invade(min=-1, max=2, timeout=5)
        assert client.cores == []
        with AllocationClient(manager.address) as other:  # the manager still serves
            assert len(other.invade(min=1, max=4, timeout=5)) == 4
