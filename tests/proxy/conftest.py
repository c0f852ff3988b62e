"""Fixtures for the ProxyStore tests: real file and Redis stores of each test's own."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from proxystore.connectors.file import FileConnector
from proxystore.connectors.redis import RedisConnector
from proxystore.store import Store, register_store, unregister_store

from steersman import LocalTaskServer, PipeQueues


def echo(x: Any) -> Any:
    """Return the input: the value is as large as the input."""
    return x


def add_one(x: Any) -> Any:
    """Modify the input in place, which needs a writable array."""
    x += 1
    return x


def size_of(x: Any) -> int:
    """A small value from a large input."""
    return int(x.nbytes)


def make(n: int) -> Any:
    """A large value from a small input."""
    import numpy as np

    return np.ones(n)


def count_up(n: int, size: int) -> Any:
    """A generator: each intermediate value is large."""
    import numpy as np

    for i in range(n):
        yield np.full(size, float(i))
    return n


def fail(x: Any) -> Any:
    raise ValueError("task failed on purpose")


METHODS = [echo, add_one, size_of, make, count_up, fail]


@pytest.fixture
def methods() -> list[Callable[..., Any]]:
    """The task methods of these tests."""
    return METHODS


@pytest.fixture
def redis_store(make_redis_server: Callable[..., Any]) -> Iterator[Store[Any]]:
    """A registered Redis store on a redis-server of the test's own (so its keys can be counted)."""
    server = make_redis_server()
    store = Store(f"test-redis-{uuid.uuid4().hex[:8]}", RedisConnector(server.host, server.port),
                  cache_size=0)
    store.redis_server = server  # type: ignore[attr-defined]
    register_store(store)
    yield store
    unregister_store(store)
    store.close()


def _stored_objects(store: Store[Any]) -> int:
    connector = store.connector
    if isinstance(connector, FileConnector):
        return len(list(Path(connector.store_dir).glob("*.ready")))
    return int(store.redis_server.client().dbsize())  # type: ignore[attr-defined]


@pytest.fixture
def stored_objects() -> Callable[[Store[Any]], int]:
    """How many objects a test store holds right now."""
    return _stored_objects


@pytest.fixture
def serve() -> Iterator[Callable[..., PipeQueues]]:
    """Start a local task server over new pipe queues; stopped after the test."""
    running: list[tuple[PipeQueues, LocalTaskServer]] = []

    def start(threads: bool = False, **options: Any) -> PipeQueues:
        queues = PipeQueues(topics=["big", "small"], **options)
        server = LocalTaskServer(queues, METHODS, threads=threads, num_workers=1)
        server.start()
        running.append((queues, server))
        return queues

    yield start
    for queues, server in running:
        queues.send_kill_signal()
        server.join(timeout=20)
        queues.close()
