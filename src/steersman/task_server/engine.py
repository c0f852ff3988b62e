"""The contract between the task server loop and the engine that runs tasks.

An engine takes encoded request messages and returns, through a Future, the encoded result
messages a worker produced (intermediate ones first, the final one last). The server loop does
the rest — method lookup, retries, forwarding results — once for every engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from steersman.models.methods import TaskMethod
from steersman.models.result import Result
from steersman.models.serialization import Frame

#: One message as a list of buffers (a single joined buffer is a list of one).
Parts = Sequence[Frame]


@dataclass
class WorkerContext:
    """What every engine needs to run tasks.

    Attributes:
        methods: The methods, by name.
        key: Signing key for messages, if the queues use one.
        emit: Forwards an intermediate result message (topic, parts) to the thinker at once.
        in_forked_child: Call in a process forked from the server to drop inherited handles.
    """

    methods: Mapping[str, TaskMethod]
    key: bytes | None = None
    emit: Callable[[str, Parts], None] | None = None
    in_forked_child: Callable[[], None] = field(default=lambda: None)


class Engine(ABC):
    """Where tasks run: a local pool, Parsl, Globus Compute, any Executor."""

    #: Names a request may give as `executor=` to pick where it runs.
    executors: Sequence[str] = ("default",)

    @abstractmethod
    def start(self, context: WorkerContext) -> None:
        """Acquire workers; called once in the task server's process."""

    @abstractmethod
    def submit(self, request: Result, parts: Parts) -> Future[list[Parts]]:
        """Run one encoded request; the future gives the encoded result messages."""

    @abstractmethod
    def shutdown(self) -> None:
        """Release every worker and process the engine started."""
