"""Proxies and raw payloads over Redis queues, whose messages arrive as read-only bytes."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from proxystore.store import Store

from steersman import LocalTaskServer
from steersman.proxy import parse_proxy_options
from steersman.queue.redis import RedisQueues, make_queue_pairs

pytestmark = pytest.mark.timeout(40)
BIG = np.arange(50_000, dtype=float)
Count = Callable[[Store[Any]], int]
_FORWARDS = "proxystore_name" in inspect.signature(RedisQueues.__init__).parameters


def redis_pair(redis_server: Any, **options: Any) -> tuple[RedisQueues, RedisQueues]:
    """Queues through Redis, with ProxyStore options (attached directly until redis.py
    forwards them: the machinery is the same, backend-neutral code)."""
    if _FORWARDS or not options:
        return make_queue_pairs(redis_server.host, redis_server.port, topics=["big"], **options)
    client, server = make_queue_pairs(redis_server.host, redis_server.port, topics=["big"])
    client._proxies = parse_proxy_options(options["proxystore_name"],
                                          options["proxystore_threshold"], client.topics)
    return client, server


@pytest.fixture
def served(redis_server: Any,
           methods: list[Callable[..., Any]]) -> Iterator[Callable[..., RedisQueues]]:
    running: list[tuple[RedisQueues, LocalTaskServer]] = []

    def start(**options: Any) -> RedisQueues:
        client, server_queues = redis_pair(redis_server, **options)
        server = LocalTaskServer(server_queues, methods, threads=False, num_workers=1)
        server.start()
        running.append((client, server))
        return client

    yield start
    for client, server in running:
        client.send_kill_signal()
        server.join(timeout=20)
        client.close()
        client.purge()


def test_raw_payload_over_redis_arrives_writable(served: Callable[..., RedisQueues]) -> None:
    client = served()
    client.send_inputs(BIG, method="add_one", topic="big")
    result = client.get_result("big", timeout=20)
    assert result is not None and result.success, result and result.failure_info
    assert np.array_equal(result.value, BIG + 1) and result.value.flags.writeable
    assert result.message_sizes["inputs"] > BIG.nbytes  # raw bytes, no store


def test_proxies_over_redis_queues(served: Callable[..., RedisQueues], redis_store: Store[Any],
                                   stored_objects: Count) -> None:
    client = served(proxystore_name=redis_store.name, proxystore_threshold=100_000)
    for _ in range(3):
        client.send_inputs(BIG, method="add_one", topic="big")
    for _ in range(3):
        result = client.get_result("big", timeout=20)
        assert result is not None and result.success, result and result.failure_info
        assert np.array_equal(result.value, BIG + 1) and result.value.flags.writeable
        assert result.message_sizes["value_proxied"] > BIG.nbytes
    assert stored_objects(redis_store) == 0
