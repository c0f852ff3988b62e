"""Redis-backed queues under the module path older campaign scripts import (``redis.queue``)."""
