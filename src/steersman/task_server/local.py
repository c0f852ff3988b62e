"""The local engine: tasks run in threads of the server, or in worker processes it forks.

The process pool is our own rather than the standard library's: a worker that dies fails only
its own task (and is replaced) instead of breaking the whole pool, methods are sent to workers
once (at fork) instead of with every task, and requests travel as raw bytes over a pipe per
worker. Waiting requests are dispatched highest priority first.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
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
    """Run tasks in a thread pool inside the task server's process."""

    def __init__(self, num_workers: int | None = None):
        self.num_workers = num_workers or os.cpu_count() or 1
        self._pool: ThreadPoolExecutor | None = None

    def start(self, context: WorkerContext) -> None:
        self._context = context
        self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="steersman-task")

    def submit(self, request: Result, parts: Parts) -> Future[list[Parts]]:
        assert self._pool is not None, "start() the engine first"
        context = self._context
        return self._pool.submit(execute_request, context.methods, join(parts), context.key,
                                 context.emit, "local-threads")

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class ProcessEngine(Engine):
    """Run tasks in worker processes forked from the task server, one task per worker."""

    def __init__(self, num_workers: int | None = None):
        self.num_workers = num_workers or os.cpu_count() or 1
        self._waiting: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._slots: list[_WorkerSlot] = []

    def start(self, context: WorkerContext) -> None:
        self._context = context
        self._slots = [_WorkerSlot(i, self) for i in range(self.num_workers)]
        for slot in self._slots:  # fork every worker before any thread of ours exists
            slot.spawn()
        for slot in self._slots:
            slot.thread.start()

    def submit(self, request: Result, parts: Parts) -> Future[list[Parts]]:
        future: Future[list[Parts]] = Future()
        self._waiting.put((-request.priority, next(self._order), (parts, future, request.topic)))
        return future

    def shutdown(self) -> None:
        for _ in self._slots:
            self._waiting.put((2**62, next(self._order), None))
        for slot in self._slots:
            slot.thread.join()
            slot.stop()

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

    def spawn(self) -> None:
        self.requests, self.replies = PipeChannel(), PipeChannel()
        context = self.engine._context
        others = [c for c in self.engine.channels() if c not in (self.requests, self.replies)]
        self.process = _CONTEXT.Process(
            target=_worker_main, name=f"steersman-worker-{self.index}", daemon=False,
            args=(self.requests, self.replies, context, others),
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
            try:
                future.set_result(self._run(parts, topic))
            except WorkerLost as exc:
                future.set_exception(exc)
                self._replace()
            except Exception as exc:
                future.set_exception(exc)

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
            try:
                close()
            except OSError:
                pass
        if self.process is not None:
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()


def _worker_main(requests: PipeChannel, replies: PipeChannel, context: WorkerContext,
                 others: list[PipeChannel]) -> None:
    """A worker process: run requests one at a time until the server closes the pipe."""
    context.in_forked_child()
    for channel in others:
        for close in (channel.close_reader, channel.close_writer):
            try:
                close()
            except OSError:
                pass
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
