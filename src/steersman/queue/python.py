"""Where the pipe queues live for code ported from the earlier module layout (``queue.python``)."""

from steersman.queue.pipe import PipeQueues

__all__ = ["PipeQueues"]
