"""Run tasks on Globus Compute endpoints, one SDK ``Executor`` per endpoint.

The SDK's Executor is a ``concurrent.futures.Executor``, so this module only builds one per
endpoint (in the task server's process, with the SDK's batching of submissions) and hands them
to the same engine as :class:`~steersman.task_server.executor.ExecutorTaskServer`. Retries,
timeouts and priorities are ours, as on every engine; Globus Compute cannot cancel a task once
it left the client, so a timed-out task runs to its end on the endpoint and its result is
dropped. Endpoints need steersman installed, since each task runs our worker code there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from functools import partial
from typing import Any

from steersman.models.methods import TaskMethod
from steersman.queue.base import BaseQueues
from steersman.task_server.base import TaskServer
from steersman.task_server.executor import (
    ExecutorBackend,
    ExecutorEngine,
    InFlight,
    MethodSpec,
    parse_methods,
)

#: Builds the Executor of one endpoint: ``factory(endpoint_id, batch_size)``.
ExecutorFactory = Callable[[str, int], Executor]


class GlobusComputeTaskServer(TaskServer):
    """A task server running each method on its Globus Compute endpoint.

    Args:
        methods: Each method (function or TaskMethod) and the endpoint id it runs on.
        queues: Server side of the queues.
        batch_size: Most tasks the SDK sends in one request to the service.
        max_in_flight: Tasks handed to each endpoint at once (None: no limit); beyond it,
            waiting tasks go out highest priority first.
        executor_factory: Builds an endpoint's Executor (default: the SDK's
            ``globus_compute_sdk.Executor``); any ``concurrent.futures.Executor`` fits, which is
            how the tests run this server without the live service.
    """

    def __init__(self, methods: Mapping[TaskMethod | Callable[..., Any], str], queues: BaseQueues,
                 batch_size: int = 128, max_in_flight: InFlight = None,
                 executor_factory: ExecutorFactory | None = None):
        if not methods:
            raise ValueError("methods must map at least one function to an endpoint id")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        factory = executor_factory or sdk_executor
        endpoints = list(dict.fromkeys(str(endpoint) for endpoint in methods.values()))
        backends = {endpoint: ExecutorBackend(partial(factory, endpoint, batch_size),
                                              max_in_flight) for endpoint in endpoints}
        specs: list[MethodSpec] = [(method, {"executors": [str(endpoint)]})
                                   for method, endpoint in methods.items()]
        tasks, placement = parse_methods(specs, endpoints)
        super().__init__(queues, tasks, ExecutorEngine(backends, placement))


def sdk_executor(endpoint_id: str, batch_size: int) -> Executor:
    """The Globus Compute SDK's Executor for one endpoint (needs ``globus-compute-sdk``)."""
    try:
        from globus_compute_sdk import Executor as ComputeExecutor
    except ImportError as exc:
        raise ImportError("GlobusComputeTaskServer needs the globus-compute-sdk package: "
                          "pip install 'steersman[globus]'") from exc
    executor: Executor = ComputeExecutor(endpoint_id=endpoint_id, batch_size=batch_size)
    return executor
