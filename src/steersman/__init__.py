"""steersman: steer computational campaigns with machine learning while they run.

A *thinker* of cooperating agents decides what to run, *queues* carry requests and results, and
a *task server* runs the tasks on an execution engine.
"""

from steersman.exceptions import AgentError, SteersmanError
from steersman.models import (
    ExecutableMethod,
    PythonGeneratorMethod,
    PythonMethod,
    ResourceRequirements,
    Result,
)
from steersman.queue import BaseQueues, PipeQueues
from steersman.task_server import LocalTaskServer
from steersman.thinker import (
    BaseThinker,
    ResourceCounter,
    agent,
    event_responder,
    result_processor,
    task_submitter,
)

__version__ = "0.1.0"

__all__ = [
    "AgentError",
    "BaseQueues",
    "BaseThinker",
    "ExecutableMethod",
    "LocalTaskServer",
    "PipeQueues",
    "PythonGeneratorMethod",
    "PythonMethod",
    "RedisQueues",
    "ResourceCounter",
    "ResourceRequirements",
    "Result",
    "SteersmanError",
    "__version__",
    "agent",
    "event_responder",
    "make_queue_pairs",
    "result_processor",
    "task_submitter",
]


def __getattr__(name: str) -> object:
    if name in ("RedisQueues", "make_queue_pairs"):
        from steersman import queue

        return getattr(queue, name)
    raise AttributeError(f"module 'steersman' has no attribute {name!r}")
