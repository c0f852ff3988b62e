"""The local engine: tasks run in threads of the server, or in worker processes it forks.

The process pool is our own rather than the standard library's: a worker that dies fails only
its own task (and is replaced) instead of breaking the whole pool, methods are sent to workers
once (at fork) instead of with every task, and requests travel as raw bytes over a pipe per
worker. Waiting requests are dispatched highest priority first.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from steersman.exceptions import WorkerLost
from steersman.models.messages import Flags, join, peek
from steersman.models.methods import TaskMethod
from steersman.models.result import Result
from steersman.queue.base import BaseQueues
from steersman.queue.pipe import PipeChannel
from steersman.task_server.base import _CONTEXT, TaskServer
from steersman.task_server.engine import Engine, Parts, WorkerContext
from steersman.task_server.worker import execute_request

logger = logging.getLogger(__name__)


class ThreadEngine(Engine):
    """Run tasks in threads of the task server's process, highest priority first.

    A timed-out task cannot be stopped (threads cannot be killed): it keeps its thread until it
    returns, its result is dropped, and shutdown does not wait for it. Use worker processes for
    tasks that may hang.
    """

    def __init__(self, num_workers: int | None = None):
        self.num_workers = num_workers or os.cpu_count() or 1
        self._waiting: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._threads: list[threading.Thread] = []
        self._running: dict[threading.Thread, Future[list[Parts]]] = {}
        self._abandoned: set[Future[list[Parts]]] = set()

    def start(self, context: WorkerContext) -> None:
        self._context = context
        self._threads = [threading.Thread(target=self._serve, name=f"steersman-task-{i}",
                                          daemon=True) for i in range(self.num_workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, request: Result, parts: Parts) -> Future[list[Parts]]:
        future: Future[list[Parts]] = Future()
        self._waiting.put((-request.priority, next(self._order), (parts, future)))
        return future

    def _serve(self) -> None:
        context, me = self._context, threading.current_thread()
        while True:
            task = self._waiting.get()[2]
            if task is None:
                return
            parts, future = task
            if not future.set_running_or_notify_cancel():
                continue
            self._running[me] = future
            try:
                future.set_result(execute_request(context.methods, join(parts), context.key,
                                                  context.emit, "local-threads"))
            except Exception as exc:
                future.set_exception(exc)
            finally:
                del self._running[me]

    def cancel(self, future: Future[list[Parts]]) -> bool:
        if future.cancel():
            return True
        self._abandoned.add(future)
        return False

    def shutdown(self) -> None:
        for _ in self._threads:
            self._waiting.put((2**62, next(self._order), None))
        for thread in self._threads:
            if self._running.get(thread) not in self._abandoned:
                thread.join()


class ProcessEngine(Engine):
    """Run tasks in worker processes forked from the task server, one task per worker."""

    def __init__(self, num_workers: int | None = None):
        self.num_workers = num_workers or os.cpu_count() or 1
        self._waiting: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._slots: list[_WorkerSlot] = []
        self.lifeline: tuple[int, int] = (-1, -1)

    def start(self, context: WorkerContext) -> None:
        self._context = context
        self.lifeline = os.pipe()  # only the server holds the write end: EOF means it died
        self._slots = [_WorkerSlot(i, self) for i in range(self.num_workers)]
        for slot in self._slots:  # fork every worker before any thread of ours exists
            slot.spawn()
        for slot in self._slots:
            slot.thread.start()

    def submit(self, request: Result, parts: Parts) -> Future[list[Parts]]:
        future: Future[list[Parts]] = Future()
        self._waiting.put((-request.priority, next(self._order), (parts, future, request.topic)))
        return future

    def cancel(self, future: Future[list[Parts]]) -> bool:
        """Drop a waiting task, or kill the worker running it (a fresh worker replaces it)."""
        if future.cancel():
            return True
        return any(slot.kill_if_running(future) for slot in self._slots)

    def shutdown(self) -> None:
        for _ in self._slots:
            self._waiting.put((2**62, next(self._order), None))
        for slot in self._slots:
            slot.thread.join()
            slot.stop()
        for fd in self.lifeline:
            with contextlib.suppress(OSError):
                os.close(fd)

    def channels(self) -> Iterable[PipeChannel]:
        for slot in self._slots:
            if hasattr(slot, "requests"):
                yield from (slot.requests, slot.replies)

    def next_task(self) -> Any:
        return self._waiting.get()[2]


class _WorkerSlot:
    """One worker process and the server thread that feeds it and reads its replies."""

    def __init__(self, index: int, engine: ProcessEngine):
        self.index = index
        self.engine = engine
        self.thread = threading.Thread(target=self._serve, daemon=True,
                                       name=f"steersman-worker-{index}")
        self.process: Any = None
        self._lock = threading.Lock()
        self._current: Future[list[Parts]] | None = None
        self._killed = False

    def kill_if_running(self, future: Future[list[Parts]]) -> bool:
        """Kill the worker if it runs `future`'s task; it is replaced before the next task."""
        with self._lock:
            if self._current is not future or self.process is None:
                return False
            self._killed = True
            self.process.kill()
            return True

    def spawn(self) -> None:
        self.requests, self.replies = PipeChannel(), PipeChannel()
        context = self.engine._context
        others = [c for c in self.engine.channels() if c not in (self.requests, self.replies)]
        self.process = _CONTEXT.Process(
            target=_worker_main, name=f"steersman-worker-{self.index}", daemon=False,
            args=(self.requests, self.replies, context, others, self.engine.lifeline),
        )
        self.process.start()
        self.requests.close_reader()
        self.replies.close_writer()

    def _serve(self) -> None:
        while True:
            task = self.engine.next_task()
            if task is None:
                return
            parts, future, topic = task
            if not future.set_running_or_notify_cancel():
                continue
            with self._lock:
                self._current = future
            lost = False
            try:
                future.set_result(self._run(parts, topic))
            except WorkerLost as exc:
                future.set_exception(exc)
                lost = True
            except Exception as exc:
                future.set_exception(exc)
            with self._lock:
                self._current = None
                lost, self._killed = lost or self._killed, False
            if lost:
                self._replace()

    def _run(self, parts: Parts, topic: str) -> list[Parts]:
        try:
            self.requests.write(parts)
            while True:
                reply = self.replies.read(None)
                assert reply is not None
                _, flags = peek(reply)
                if not flags & Flags.INTERMEDIATE:
                    return [[reply]]
                emit = self.engine._context.emit
                if emit is not None:
                    emit(topic, [reply])
        except (EOFError, BrokenPipeError, OSError):
            self.process.join(timeout=5)
            raise WorkerLost(f"worker process {self.process.pid} died while running a task "
                             f"(exit code {self.process.exitcode})") from None

    def _replace(self) -> None:
        logger.warning("replacing dead worker %d", self.index)
        self.stop()
        self.spawn()

    def stop(self) -> None:
        for close in (self.requests.close_writer, self.replies.close_reader):
            with contextlib.suppress(OSError):
                close()
        if self.process is not None:
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()


def _worker_main(requests: PipeChannel, replies: PipeChannel, context: WorkerContext,
                 others: list[PipeChannel], lifeline: tuple[int, int]) -> None:
    """A worker process: run requests one at a time until the server closes the pipe."""
    _die_with_server(lifeline)
    context.in_forked_child()
    for channel in others:
        for close in (channel.close_reader, channel.close_writer):
            with contextlib.suppress(OSError):
                close()
    requests.close_writer()
    replies.close_reader()

    def stream(topic: str, parts: Parts) -> None:
        replies.write(parts)

    while True:
        try:
            request = requests.read(None)
        except EOFError:
            return
        assert request is not None
        for parts in execute_request(context.methods, request, context.key, stream, "local"):
            replies.write(parts)


def _die_with_server(lifeline: tuple[int, int]) -> None:
    """End this worker, even mid-task, as soon as the server process is gone (even SIGKILLed).

    A blocked read of a pipe whose only writer is the server returns at its death: no polling.
    """
    read_end, write_end = lifeline
    os.close(write_end)

    def watch() -> None:
        while True:
            try:
                if not os.read(read_end, 1):
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        os._exit(1)

    threading.Thread(target=watch, name="steersman-lifeline", daemon=True).start()


class LocalTaskServer(TaskServer):
    """A task server running methods on this machine.

    Args:
        queues: Server side of the queues.
        methods: Functions or :class:`TaskMethod` objects.
        threads: Run tasks in threads of the server (True) or in worker processes (False).
        num_workers: How many tasks run at once (default: the number of CPUs).
    """

    def __init__(self, queues: BaseQueues, methods: Iterable[TaskMethod | Callable[..., Any]],
                 threads: bool = True, num_workers: int | None = None):
        if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
            raise ValueError(f"num_workers must be a positive integer, got {num_workers!r}")
        engine: Engine = ThreadEngine(num_workers) if threads else ProcessEngine(num_workers)
        super().__init__(queues, methods, engine)
