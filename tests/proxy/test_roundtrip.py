"""Large values by reference through a real task server, small ones inline as raw bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from proxystore.store import Store

from steersman import PipeQueues, Result

Count = Callable[[Store[Any]], int]
pytestmark = pytest.mark.timeout(30)
BIG = np.arange(50_000, dtype=float)  # 400 kB
THRESHOLD = 100_000


def run(queues: PipeQueues, method: str, *args: Any, topic: str = "big",
        **options: Any) -> Result:
    queues.send_inputs(*args, method=method, topic=topic, **options)
    result = queues.get_result(topic, timeout=20)
    assert result is not None, "no result within 20 s"
    return result


@pytest.mark.parametrize("threads", [False, True], ids=["processes", "threads"])
def test_large_input_and_value_travel_by_reference(
    serve: Callable[..., PipeQueues], file_store: Store[Any], threads: bool, stored_objects: Count
) -> None:
    queues = serve(threads, proxystore_name=file_store.name, proxystore_threshold=THRESHOLD)
    result = run(queues, "echo", BIG)
    assert result.success, result.failure_info
    assert type(result.value) is np.ndarray and np.array_equal(result.value, BIG)
    assert type(result.args[0]) is np.ndarray and np.array_equal(result.args[0], BIG)
    assert result.message_sizes["inputs_proxied"] > BIG.nbytes
    assert result.message_sizes["value_proxied"] > BIG.nbytes
    assert result.message_sizes["inputs"] < 5_000 and result.message_sizes["value"] < 5_000
    for span in ("proxy_store_inputs", "proxy_resolve", "proxy_store_value",
                 "proxy_resolve_value"):
        assert getattr(result.time, span) is not None, span
    assert stored_objects(file_store) == 0


def test_arrays_arriving_are_writable(serve: Callable[..., PipeQueues],
                                      file_store: Store[Any]) -> None:
    queues = serve(proxystore_name=file_store.name, proxystore_threshold=THRESHOLD)
    result = run(queues, "add_one", BIG)  # proxied input, modified in place by the task
    assert result.success, result.failure_info
    assert np.array_equal(result.value, BIG + 1) and result.value.flags.writeable
    small = run(queues, "add_one", np.zeros(10_000))  # 80 kB: inline, out-of-band frame
    assert small.success and small.value.flags.writeable


def test_values_below_the_threshold_travel_inline(
    serve: Callable[..., PipeQueues], file_store: Store[Any], stored_objects: Count
) -> None:
    queues = serve(proxystore_name=file_store.name, proxystore_threshold=THRESHOLD)
    result = run(queues, "size_of", BIG)  # large input, small value
    assert result.value == BIG.nbytes
    assert "inputs_proxied" in result.message_sizes
    assert "value_proxied" not in result.message_sizes
    result = run(queues, "make", 50_000)  # small input, large value
    assert result.value.shape == (50_000,)
    assert "inputs_proxied" not in result.message_sizes
    assert result.message_sizes["value_proxied"] > 400_000
    assert stored_objects(file_store) == 0


def test_only_the_configured_topics_proxy(serve: Callable[..., PipeQueues],
                                          file_store: Store[Any]) -> None:
    queues = serve(proxystore_name={"big": file_store.name}, proxystore_threshold=THRESHOLD)
    result = run(queues, "echo", BIG, topic="small")
    assert np.array_equal(result.value, BIG)
    assert result.proxystore_name is None and "inputs_proxied" not in result.message_sizes
    assert result.message_sizes["inputs"] > BIG.nbytes  # raw bytes in the message


def test_redis_store_round_trip(
    serve: Callable[..., PipeQueues], redis_store: Store[Any], stored_objects: Count
) -> None:
    queues = serve(proxystore_name=redis_store.name, proxystore_threshold=THRESHOLD)
    result = run(queues, "add_one", BIG, keep_inputs=False)
    assert result.success, result.failure_info
    assert np.array_equal(result.value, BIG + 1) and result.value.flags.writeable
    assert result.message_sizes["value_proxied"] > BIG.nbytes
    assert stored_objects(redis_store) == 0


def test_user_proxies_pass_through_unresolved(
    serve: Callable[..., PipeQueues], file_store: Store[Any], stored_objects: Count
) -> None:
    from proxystore.proxy import Proxy, is_resolved

    queues = serve(proxystore_name=file_store.name, proxystore_threshold=THRESHOLD)
    mine = file_store.proxy(BIG, populate_target=False)
    result = run(queues, "echo", mine)  # the worker neither resolves nor re-proxies it
    assert isinstance(result.value, Proxy) and not is_resolved(result.value)
    assert np.array_equal(result.value, BIG)
    assert stored_objects(file_store) == 1  # the user's own object: the user evicts it


def test_a_resumed_campaign_replays_plain_values_and_inputs_not_proxies(
    serve: Callable[..., PipeQueues], file_store: Store[Any], stored_objects: Count,
    tmp_path: Any,
) -> None:
    from steersman import BaseThinker, agent, result_processor

    class Echo(BaseThinker):
        seen: list[tuple[bool, Any, Any]] = []

        @agent(startup=True)
        def submit(self) -> None:
            if not self.resumed:
                self.queues.send_inputs(BIG, method="echo", topic="big")

        @result_processor(topic="big")
        def receive(self, result: Result) -> None:
            self.seen.append((self.campaign.replaying, result.value, result.args[0]))
            self.done.set()

    for _ in range(2):  # the second run replays the first's journal
        queues = serve(proxystore_name=file_store.name, proxystore_threshold=THRESHOLD)
        Echo(queues, run_dir=tmp_path / "run", progress=False).run()
    assert [replaying for replaying, _, _ in Echo.seen] == [False, True]
    for _, value, arg in Echo.seen:
        assert type(value) is np.ndarray and np.array_equal(value, BIG)
        assert type(arg) is np.ndarray and np.array_equal(arg, BIG)
    assert stored_objects(file_store) == 0
