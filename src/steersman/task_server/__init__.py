"""Task servers: receive requests from the queues and run them on an engine."""

from steersman.task_server.base import TaskServer
from steersman.task_server.engine import Engine, WorkerContext
from steersman.task_server.local import LocalTaskServer

__all__ = ["Engine", "LocalTaskServer", "TaskServer", "WorkerContext"]
