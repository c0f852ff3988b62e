"""Task servers: receive requests from the queues and run them on an engine.

:class:`TaskServer` is the one server loop; each engine module fills the small
:class:`Engine` contract. The Parsl and Globus Compute servers are imported on first use, so
``import steersman`` does not import those packages.
"""

from steersman.task_server.base import TaskServer
from steersman.task_server.engine import Engine, WorkerContext
from steersman.task_server.executor import ExecutorTaskServer
from steersman.task_server.local import LocalTaskServer

__all__ = [
    "Engine",
    "ExecutorTaskServer",
    "GlobusComputeTaskServer",
    "LocalTaskServer",
    "ParslTaskServer",
    "TaskServer",
    "WorkerContext",
]

_LAZY = {
    "ParslTaskServer": "steersman.task_server.parsl",
    "GlobusComputeTaskServer": "steersman.task_server.globus",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'steersman.task_server' has no attribute {name!r}")
