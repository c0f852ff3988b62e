"""The contract between the task server loop and the engine that runs tasks.

An engine takes encoded request messages and returns, through a Future, the encoded result
messages a worker produced (intermediate ones first, the final one last), or :data:`DELIVERED`
when the worker handed its final result straight to the thinker (see
``WorkerContext.direct_results``). The server loop does the rest — method lookup, retries,
timeouts, forwarding results — once for every engine.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from steersman.models.messages import Routing
from steersman.models.methods import TaskMethod
from steersman.models.serialization import Frame

#: One message as a list of buffers (a single joined buffer is a list of one).
Parts = Sequence[Frame]
#: What an engine's future gives when the worker sent the final result to the thinker itself.
DELIVERED: list[Parts] = []


@dataclass
class WorkerContext:
    """What every engine needs to run tasks.

    Attributes:
        methods: The methods, by name.
        key: Signing key for messages, if the queues use one.
        emit: Forwards an intermediate result message (topic, parts) to the thinker at once.
        in_forked_child: Call in a process forked from the server to drop inherited handles.
        direct_results: Call in the server before forking workers: a function with which those
            workers hand a successful final result message to the thinker themselves (it
            returns False if the message must go through the server), or None.
        lane: Call in the server: the socket its workers receive lane requests from (requests
            the thinker sent them directly, see :mod:`steersman.queue.lane`), or None.
        fail_unseen: Report that a lane request (the message) failed with the exception
            before its worker sent a result (the worker died): the server sends the failure.
    """

    methods: Mapping[str, TaskMethod]
    key: bytes | None = None
    emit: Callable[[str, Parts], None] | None = None
    in_forked_child: Callable[[], None] = field(default=lambda: None)
    direct_results: Callable[[], Callable[[Parts], bool] | None] = field(default=lambda: None)
    lane: Callable[[], socket.socket | None] = field(default=lambda: None)
    fail_unseen: Callable[[bytes, Exception], None] = field(default=lambda data, error: None)


class Engine(ABC):
    """Where tasks run: a local pool, Parsl, Globus Compute, any Executor."""

    #: Names a request may give as `executor=` to pick where it runs.
    executors: Sequence[str] = ("default",)
    #: Whether the engine stamps ``input_received`` on the worker's Result from the
    #: ``received`` of the `request` given to :meth:`submit`: then the server forwards the
    #: thinker's message as it came, reading only its routing fields, instead of decoding it
    #: and encoding it again.
    stamps_received: bool = False
    #: Whether the engine's workers also take requests from the thinker's lane, if the queues
    #: have one (:meth:`~steersman.queue.base.BaseQueues.open_lane`).
    takes_lane: bool = False

    @abstractmethod
    def start(self, context: WorkerContext) -> None:
        """Acquire workers; called once in the task server's process."""

    @abstractmethod
    def submit(self, request: Routing, parts: Parts) -> Future[list[Parts]]:
        """Run one encoded request (`parts`), routed by `request`; the future gives the encoded
        result messages."""

    def cancel(self, future: Future[list[Parts]]) -> bool:
        """Stop a task the server gave up on (timed out); False if the engine cannot.

        The server never delivers a late result of a cancelled task, whatever this returns.
        """
        return future.cancel()

    def abort(self) -> None:
        """Stop every running task now, where the engine can: the server is about to stop
        without waiting for them (their results would reach no one). :meth:`shutdown`
        follows. By default nothing: the server cancels the tasks it handed over itself.
        """

    def stranded(self) -> dict[Future[list[Parts]], str]:
        """Tasks that cannot start, with the reason: every worker that could run them holds a
        task the server gave up on (timed out) and the engine cannot stop. The server asks
        once told to stop, and fails them rather than wait for them forever. By default none.
        """
        return {}

    @abstractmethod
    def shutdown(self) -> None:
        """Release every worker and process the engine started."""

    def left_threads_running(self) -> bool:
        """After :meth:`shutdown`: whether threads of this process may still run (or wait
        for) tasks the server gave up on, which the process must not wait for as it exits."""
        return False


class PriorityGate:
    """Lets at most `capacity` tasks run; the others wait, highest priority first.

    Engines whose executor runs tasks in arrival order use it to impose our dispatch order.
    A start function returns False when its task was cancelled while waiting, which frees the
    slot for the next one.

    Args:
        capacity: How many tasks may be started and not yet released (None: no limit).
    """

    def __init__(self, capacity: int | None):
        if capacity is not None and (not isinstance(capacity, int) or capacity < 1):
            raise ValueError(f"capacity must be a positive integer or None, got {capacity!r}")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._waiting: list[tuple[int, int, Callable[[], bool]]] = []
        self._order = itertools.count()
        self._running = 0

    @property
    def waiting(self) -> int:
        """Tasks not yet started."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Tasks started and not yet released."""
        return self._running

    def offer(self, priority: int, start: Callable[[], bool]) -> None:
        """Start the task now if a slot is free, else queue it by priority."""
        with self._lock:
            if self.capacity is not None and self._running >= self.capacity:
                heapq.heappush(self._waiting, (-priority, next(self._order), start))
                return
            self._running += 1
        self._launch(start)

    def release(self) -> None:
        """A started task finished: start the next waiting one, if any."""
        start = self._next_or_free()
        if start is not None:
            self._launch(start)

    def _next_or_free(self) -> Callable[[], bool] | None:
        with self._lock:
            if self._waiting:
                return heapq.heappop(self._waiting)[2]
            self._running -= 1
            return None

    def _launch(self, start: Callable[[], bool] | None) -> None:
        while start is not None:
            if start():
                return
            start = self._next_or_free()

