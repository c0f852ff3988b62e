"""Redis-backed queues under the module path older campaign scripts import.

The implementation lives in :mod:`steersman.queue.redis`.
"""

from steersman.queue.redis import RedisQueues, make_queue_pairs

__all__ = ["RedisQueues", "make_queue_pairs"]
