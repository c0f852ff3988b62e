"""Queues that carry task requests to a task server and results back, by topic."""

from steersman.queue.base import BaseQueues
from steersman.queue.pipe import PipeQueues

__all__ = ["BaseQueues", "PipeQueues", "RedisQueues", "make_queue_pairs"]


def __getattr__(name: str) -> object:
    # The Redis backend needs the optional `redis` package: import it only when asked for.
    if name in ("RedisQueues", "make_queue_pairs"):
        from steersman.queue import redis as backend

        return getattr(backend, name)
    raise AttributeError(f"module 'steersman.queue' has no attribute {name!r}")
