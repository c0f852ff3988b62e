"""A result the queues refuse (Redis out of memory under ``noeviction``) does not leave the
thinker waiting forever: the server sends a small failed Result for the task instead, saying
that its result could not be sent and why."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import pytest

from steersman import LocalTaskServer
from steersman.queue.base import BaseQueues
from steersman.queue.redis import make_queue_pairs
from steersman.task_server import ExecutorTaskServer
from steersman.task_server.base import TaskServer

LIMIT = 4 << 20  # Redis's maxmemory
FORK = multiprocessing.get_context("fork")


def big(size: int) -> bytes:
    return b"x" * size


def small(x: int) -> int:
    return 2 * x


def _local(threads: bool, queues: BaseQueues) -> TaskServer:
    return LocalTaskServer(queues, [big, small], threads=threads, num_workers=1)


def _pool(queues: BaseQueues) -> TaskServer:
    return ExecutorTaskServer([big, small], queues,
                              {"pool": partial(ProcessPoolExecutor, 1, mp_context=FORK)})


SERVERS: dict[str, Callable[[BaseQueues], TaskServer]] = {
    "threads": partial(_local, True),
    "processes": partial(_local, False),  # a large result goes to Redis from the worker
    "process-pool": _pool,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", list(SERVERS))
def test_a_result_redis_refuses_comes_back_as_a_failure_saying_why(make_redis_server,
                                                                   engine: str) -> None:
    redis = make_redis_server("--maxmemory", str(LIMIT), "--maxmemory-policy", "noeviction")
    client, server_queues = make_queue_pairs(redis.host, redis.port, reconnect_timeout=5)
    server = SERVERS[engine](server_queues)
    server.start()
    try:
        task = client.send_inputs(4 * LIMIT, method="big")
        deadline = time.monotonic() + 20
        result = None
        while result is None and time.monotonic() < deadline:  # a torn large message that
            result = client.get_result(timeout=deadline - time.monotonic())  # the thinker drops
        assert result is not None, "the thinker never heard of the refused result"
        assert result.task_id == task and result.complete and not result.success
        exception = result.failure_info.exception
        assert "could not be sent" in exception and "OOM" in exception, exception
        client.send_inputs(21, method="small")  # the campaign goes on
        assert client.get_result(timeout=20).value == 42
    finally:
        client.send_kill_signal()
        server.join(20)
        if server.exitcode is None:
            server.kill()
            server.join()
        client.close()
    assert server.exitcode == 0
