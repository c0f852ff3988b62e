"""The local engine: tasks run in threads of the server, or in worker processes it forks.

The process pool is our own rather than the standard library's: a worker that dies fails only
its own task (and is replaced) instead of breaking the whole pool, methods are sent to workers
once (at fork) instead of with every task, and requests travel as raw bytes over a pipe per
worker. Waiting requests are dispatched highest priority first.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import itertools
import logging
import math
import mmap
import os
import queue
import select
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from time import perf_counter, time
from typing import Any

from steersman.exceptions import WorkerLost
from steersman.models.messages import Flags, Routing, decode, join, peek
from steersman.models.methods import TaskMethod
from steersman.models.serialization import Frame
from steersman.queue.base import BaseQueues
from steersman.queue.lane import LaneSlot
from steersman.queue.pipe import PipeChannel
from steersman.task_server.base import _CONTEXT, TaskServer
from steersman.task_server.engine import DELIVERED, Engine, Parts, WorkerContext
from steersman.task_server.worker import execute_request

logger = logging.getLogger(__name__)

#: The one executor of the local engines: what ``executor=`` may name, and what a Result's
#: ``worker_info.executor`` says, as on the other engines.
EXECUTOR = "default"
#: A message before each request written to a worker: when the server received the request
#: (NaN if unknown), and the request's ticket at the worker's :class:`StartGate` (0 for a
#: request without a timeout, which the server never gives up on). Apart, so that a large
#: request is forwarded as it came.
_STAMP = struct.Struct("<dQ")
#: A worker's reply telling the server that it sent the final result to the thinker itself.
_DELIVERED_NOTE = b""
#: A worker's reply telling the server to send the next message on to the thinker: a result
#: of a lane task too large to go straight to the thinker.
_RELAY_NOTE = b"r"
#: A worker's reply telling the server that it skipped the request the server gave up on
#: (timed out) before the worker started it, e.g. while it waited behind a lane task.
_SKIPPED_NOTE = b"s"


class ThreadEngine(Engine):
    """Run tasks in threads of the task server's process, highest priority first.

    A timed-out task cannot be stopped (threads cannot be killed): it keeps its thread until it
    returns, and its result is dropped. A fresh thread takes its place at once, so that
    `num_workers` threads keep serving; the thread given up on ends with its task, and shutdown
    does not wait for it. Use worker processes for tasks that may hang: they are killed.
    """

    executors = (EXECUTOR,)

    def __init__(self, num_workers: int | None = None):
        self.num_workers = num_workers or os.cpu_count() or 1
        self._waiting: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._names = itertools.count()
        self._lock = threading.Lock()  # orders a thread's end of task with its replacement
        self._threads: set[threading.Thread] = set()  # the serving ones
        self._running: dict[threading.Thread, Future[list[Parts]]] = {}
        self._abandoned: set[threading.Thread] = set()  # replaced: each ends after its task
        self._stopping = False

    def start(self, context: WorkerContext) -> None:
        self._context = context
        with self._lock:
            for _ in range(self.num_workers):
                self._add_thread()

    def _add_thread(self) -> None:
        """With the lock held: one more serving thread."""
        thread = threading.Thread(target=self._serve, name=f"steersman-task-{next(self._names)}",
                                  daemon=True)
        self._threads.add(thread)
        thread.start()

    stamps_received = True

    def submit(self, request: Routing, parts: Parts) -> Future[list[Parts]]:
        future: Future[list[Parts]] = Future()
        received = request.received
        self._waiting.put((-request.priority, next(self._order), (parts, future, received)))
        return future

    def _serve(self) -> None:
        context, me, running = self._context, threading.current_thread(), self._running
        while True:
            task = self._waiting.get()[2]
            if task is None:
                return
            parts, future, received = task
            running[me] = future  # first: whoever finds the future running finds its thread
            if not future.set_running_or_notify_cancel():
                del running[me]
                continue
            try:
                future.set_result(execute_request(context.methods, join(parts), context.key,
                                                  context.emit, EXECUTOR, received))
            except Exception as exc:
                future.set_exception(exc)
            except BaseException as exc:  # SystemExit and the like: the thread serves on
                future.set_exception(RuntimeError(f"the task raised {exc!r}"))
            finally:
                with self._lock:
                    del running[me]
                    replaced = me in self._abandoned
                    self._abandoned.discard(me)
            if replaced:
                return

    def cancel(self, future: Future[list[Parts]]) -> bool:
        """Drop a waiting task; a running one cannot be stopped: its thread is replaced, so
        that the tasks behind it still run, and ends once the task returns."""
        if future.cancel():
            return True
        with self._lock:
            running = list(self._running.items())  # threads add themselves without the lock
            thread = next((t for t, f in running if f is future), None)
            if thread is not None and thread in self._threads:
                self._threads.discard(thread)
                self._abandoned.add(thread)
                if not self._stopping:
                    self._add_thread()
        return False

    def abort(self) -> None:
        """Give up on every running task: no thread replaces theirs (the server is stopping)."""
        with self._lock:
            self._stopping = True
            for thread in list(self._running):
                if thread in self._threads:
                    self._threads.discard(thread)
                    self._abandoned.add(thread)

    def shutdown(self) -> None:
        with self._lock:
            self._stopping = True
            threads = list(self._threads)
        for _ in threads:
            self._waiting.put((2**62, next(self._order), None))
        for thread in threads:
            thread.join()


class ProcessEngine(Engine):
    """Run tasks in worker processes forked from the task server, one task per worker.

    A request goes straight to an idle worker's pipe from the thread that submits it; when all
    workers are busy it waits, highest priority first, and the thread that reads a worker's
    replies hands it the next one as soon as its task finished. Where the queues allow it, a
    worker writes a small successful result straight to the thinker and only a note to the
    server: the result skips a hop through the server. Where the queues have a lane (see
    :mod:`steersman.queue.lane`), workers also take requests the thinker sent them directly,
    after any request of the server's.
    """

    executors = (EXECUTOR,)
    stamps_received = True
    takes_lane = True

    def __init__(self, num_workers: int | None = None):
        self.num_workers = num_workers or os.cpu_count() or 1
        self._lock = threading.Lock()
        self._waiting: list[tuple[int, int, _Task]] = []
        self._idle: list[_WorkerSlot] = []
        self._order = itertools.count()
        self._slots: list[_WorkerSlot] = []
        self._stopping = False
        self.lifeline: tuple[int, int] = (-1, -1)
        self.direct: Callable[[Parts], bool] | None = None
        self.lane: socket.socket | None = None
        self.lingering: LingerTurn | None = None
        self._tickets = itertools.count(1)

    def start(self, context: WorkerContext) -> None:
        self._context = context
        self.lifeline = os.pipe()  # only the server holds the write end: EOF means it died
        self.direct = context.direct_results()
        self.lane = context.lane() if self.direct is not None else None
        self.lingering = LingerTurn() if self.lane is not None else None
        self.gates = StartGates(self.num_workers)
        self._slots = [_WorkerSlot(i, self) for i in range(self.num_workers)]
        for slot in self._slots:  # fork every worker before any thread of ours exists
            slot.spawn()
        self._idle = list(reversed(self._slots))
        for slot in self._slots:
            slot.thread.start()

    def submit(self, request: Routing, parts: Parts) -> Future[list[Parts]]:
        future: Future[list[Parts]] = Future()
        ticket = 0 if request.timeout is None else next(self._tickets)
        stamp = _STAMP.pack(request.received or math.nan, ticket)
        task = _Task([[stamp], parts], future, request.topic, ticket)
        with self._lock:
            if not self._idle:
                heapq.heappush(self._waiting, (-request.priority, next(self._order), task))
                return future
            slot = self._idle.pop(self._least_busy())
        slot.begin(task)
        return future

    def _least_busy(self) -> int:
        """With the lock held: which idle slot to use, one whose worker runs no lane task if
        there is one (its task would wait behind the lane task)."""
        for index in range(len(self._idle) - 1, -1, -1):
            if not self._idle[index].lane_busy:
                return index
        return -1

    def next_task(self, slot: _WorkerSlot) -> _Task | None:
        """The waiting task `slot` runs next; None (and `slot` becomes idle) if none waits."""
        with self._lock:
            if self._waiting:
                return heapq.heappop(self._waiting)[2]
            self._idle.append(slot)
            return None

    def cancel(self, future: Future[list[Parts]]) -> bool:
        """Drop a waiting task; have its worker skip it if it has not started it yet (it waits
        behind the worker's lane task); else kill the worker running it (a fresh worker
        replaces it)."""
        if future.cancel():
            return True
        return any(slot.give_up(future) for slot in self._slots)

    def abort(self) -> None:
        """Kill every worker, even mid-task (lane tasks too); none is replaced."""
        self._stopping = True
        for slot in self._slots:
            slot.kill()

    def shutdown(self) -> None:
        self._stopping = True
        for slot in self._slots:  # each worker finishes its task, then sees end-of-file
            slot.close_requests()
        for slot in self._slots:
            slot.thread.join()
            slot.stop()
            if slot.lane_slot is not None:
                slot.lane_slot.close()
        if self.lingering is not None:
            self.lingering.close()
        self.gates.close()
        for fd in self.lifeline:
            with contextlib.suppress(OSError):
                os.close(fd)
        close = getattr(self.direct, "close", None)
        if close is not None:
            close()

    def channels(self) -> Iterable[PipeChannel]:
        for slot in self._slots:
            if hasattr(slot, "requests"):
                yield from (slot.requests, slot.replies)


@dataclass(eq=False)
class _Task:
    """A request on its way to a worker: the stamp and request messages, future and topic."""

    messages: list[Parts]
    future: Future[list[Parts]]
    topic: str
    ticket: int = 0  # at the worker's StartGate; 0 when the server never gives up on the task


class _WorkerSlot:
    """One worker process and the server thread that reads its replies.

    Whoever takes the slot idle (a submitting thread) or finishes its task (the reader) writes
    the next request: the slot lock orders those writes with a replacement of the worker.
    """

    def __init__(self, index: int, engine: ProcessEngine):
        self.index = index
        self.engine = engine
        self.thread = threading.Thread(target=self._serve, daemon=True,
                                       name=f"steersman-worker-{index}")
        self.process: Any = None
        self._lock = threading.Lock()
        self._current: _Task | None = None
        self._killed = False
        self.lane_slot = LaneSlot() if engine.lane is not None else None
        self.gate = engine.gates.gate(index)

    @property
    def lane_busy(self) -> bool:
        return self.lane_slot is not None and self.lane_slot.busy

    def give_up(self, future: Future[list[Parts]]) -> bool:
        """Stop `future`'s task if it is this worker's: if the worker has not started it (it
        runs a lane task first), it skips it and says so; if it has, it is killed, and
        replaced before the next task."""
        with self._lock:
            task = self._current
            if task is None or task.future is not future or self.process is None:
                return False
            if task.ticket and self.gate.skip(task.ticket):
                return True
            self._killed = True
            self.process.kill()
            return True

    def kill(self) -> None:
        """Kill the worker, whatever it runs (the engine is stopping: it is not replaced)."""
        with self._lock:
            if self.process is not None:
                self.process.kill()

    def spawn(self) -> None:
        self.requests, self.replies = PipeChannel(), PipeChannel()
        context = self.engine._context
        others = [c for c in self.engine.channels() if c not in (self.requests, self.replies)]
        self.process = _CONTEXT.Process(
            target=_worker_main, name=f"steersman-worker-{self.index}", daemon=False,
            args=(self.requests, self.replies, context, others, self.engine.lifeline,
                  self.engine.direct, self.engine.lane, self.lane_slot, self.engine.lingering,
                  self.gate),
        )
        self.process.start()
        self.requests.close_reader()
        self.replies.close_writer()

    def begin(self, task: _Task | None) -> None:
        """Send `task` (or, if it was cancelled while waiting, the next one) to the worker."""
        while task is not None and not task.future.set_running_or_notify_cancel():
            task = self.engine.next_task(self)
        if task is None:
            return
        with self._lock:
            self._current = task
            with contextlib.suppress(OSError):  # a dead worker: the reader fails the task
                self.requests.write_messages(task.messages)

    def _serve(self) -> None:
        emit = self.engine._context.emit
        while True:
            try:
                reply = self.replies.read(None, forward=True)
                relayed = self.replies.read(None, forward=True) if reply == _RELAY_NOTE else None
            except (EOFError, OSError):
                if self.engine._stopping:
                    self._fail_lane_task(WorkerLost(
                        f"worker process {self.process.pid} died while running a task"))
                    return
                self._lost()
                continue
            assert reply is not None
            if relayed is not None:
                self._relay(relayed)
                continue
            if reply == _DELIVERED_NOTE:
                self._finished(DELIVERED)
                continue
            if reply == _SKIPPED_NOTE:
                self._finished(None)
                continue
            _, flags = peek(reply)
            if flags & Flags.INTERMEDIATE:
                if emit is not None and self._current is not None:
                    self._forward(emit, self._current.topic, reply)
                continue
            self._finished([[reply]])

    def _forward(self, emit: Callable[[str, Parts], None], topic: str, reply: Frame) -> None:
        """Send an intermediate result on; this thread must survive a failure to, or the
        task's final result would never be read."""
        try:
            emit(topic, [reply])
        except Exception:
            logger.exception("could not forward an intermediate result")

    def _finished(self, messages: list[Parts] | None) -> None:
        """The final reply came: start the next task, then hand the result to the server
        (DELIVERED: the worker sent it to the thinker; None: the worker skipped the task, which
        the server had given up on)."""
        with self._lock:
            task, self._current = self._current, None
            killed, self._killed = self._killed, False
        if killed:  # the reply came before the kill landed: the worker is still replaced
            self._replace()
        if not self.engine._stopping:
            self.begin(self.engine.next_task(self))
        if task is None:
            return
        if messages is None:
            task.future.set_exception(CancelledError("the worker skipped the task: the server "
                                                     "had given up on it"))
        else:
            task.future.set_result(messages)

    def _relay(self, message: Frame) -> None:
        """Send a lane task's result on to the thinker (the worker could not: too large)."""
        context = self.engine._context
        try:
            result = decode(message, key=context.key).result
            if result is not None and context.emit is not None:
                context.emit(result.topic, [message])
                return
            logger.error("dropped a relayed message of a lane task that is not a result")
        except Exception:
            logger.exception("could not relay the result of a lane task")

    def _lost(self) -> None:
        """The worker died: fail its task, replace it, go on with the next task.

        If it died running a lane task, that task fails, and the server's task it was given
        meanwhile (not started: lane tasks come second) goes to the replacement, unless the
        worker was stopped to cancel that very task.
        """
        with self._lock:  # a request written before the replacement fails with the old worker
            task, self._current = self._current, None
            killed, self._killed = self._killed, False
            self.process.join(timeout=5)
            pid = self.process.pid
            error = WorkerLost(f"worker process {pid} died while running a task "
                               f"(exit code {self.process.exitcode})")
            unfinished = self.lane_slot.take_unfinished() if self.lane_slot else None
            self._respawn()
            if unfinished is not None and task is not None and not killed:
                self._current, task = task, None
                with contextlib.suppress(OSError):
                    self.requests.write_messages(self._current.messages)
        if unfinished is not None:
            self.engine._context.fail_unseen(unfinished, error if not killed else WorkerLost(
                f"worker process {pid} was stopped while running this task, to cancel a "
                "timed-out task that waited behind it"))
        if task is not None:
            self.begin(self.engine.next_task(self))
            task.future.set_exception(error)

    def _fail_lane_task(self, error: WorkerLost) -> None:
        """At shutdown: if the worker died in a lane task, fail it."""
        unfinished = self.lane_slot.take_unfinished() if self.lane_slot else None
        if unfinished is not None:
            self.engine._context.fail_unseen(unfinished, error)

    def _replace(self) -> None:
        with self._lock:
            self._respawn()

    def _respawn(self) -> None:
        """With the slot lock held: a fresh worker instead of the dead (or killed) one."""
        self.stop()
        if self.engine._stopping:  # shutting down: a new worker would never be told to stop
            return
        logger.warning("replacing dead worker %d", self.index)
        self.spawn()

    def close_requests(self) -> None:
        """Tell the worker to exit once its task is done (waits for a replacement in progress)."""
        with self._lock, contextlib.suppress(OSError):
            self.requests.close_writer()

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
                 others: list[PipeChannel], lifeline: tuple[int, int],
                 direct: Callable[[Parts], bool] | None, lane: socket.socket | None,
                 lane_slot: LaneSlot | None, lingering: LingerTurn | None,
                 gate: StartGate) -> None:
    """A worker process: run requests one at a time until the server closes the pipe (and,
    with a lane, until no lane request waits either)."""
    _die_with_server(lifeline)
    context.in_forked_child()
    for channel in others:
        for close in (channel.close_reader, channel.close_writer):
            with contextlib.suppress(OSError):
                close()
    requests.close_writer()
    replies.close_reader()
    if lane is None or lane_slot is None or direct is None or lingering is None:
        while _serve_one(requests, replies, context, direct, gate):
            pass
        return
    inbound = _Inbound(requests, lane, lane_slot, lingering)
    while (source := inbound.next()) is not None:
        if isinstance(source, bytes):
            _serve_lane(source, lane_slot, replies, context, direct)
        else:
            _serve_one(requests, replies, context, direct, gate)


class _Inbound:
    """Where a worker's next request comes from: the server's pipe first, then the lane."""

    def __init__(self, requests: PipeChannel, lane: socket.socket, slot: LaneSlot,
                 lingering: LingerTurn):
        self.requests, self.lane, self.slot, self.lingering = requests, lane, slot, lingering
        # Every idle worker waits on the lane. With plain poll each lane request would wake
        # them all (one receives it, the others sleep again; on a virtual machine each wake-up
        # of an idle CPU costs tens of microseconds). EPOLLEXCLUSIVE wakes one per request;
        # since Linux 5.7 a woken waiter no longer counts as waiting, so a burst wakes as many.
        self._poller: select.epoll | select.poll
        if _EXCLUSIVE_WAKE_UPS:
            self._poller, readable, alone = select.epoll(), select.EPOLLIN, select.EPOLLEXCLUSIVE
        else:
            self._poller, readable, alone = select.poll(), select.POLLIN, 0
        self._poller.register(requests.reader_fd, readable)
        self._poller.register(lane, readable | alone)
        self._lane_open = self._server_open = True

    def next(self) -> PipeChannel | bytes | None:
        """`requests` if the server's pipe has a request, else a lane request (received into
        the slot), None once the server closed its pipe and no lane request waits."""
        ready, lingered = self._ready(0), False
        while True:
            if self._server_open and (self.requests.buffered or self.requests.reader_fd in ready):
                if self.requests.at_end():
                    self._server_open = False
                    self._poller.unregister(self.requests.reader_fd)
                else:
                    return self.requests
            if self._lane_open:
                try:
                    request = self.slot.receive(self.lane)
                    if request is not None:
                        return request
                except EOFError:
                    self._lane_open = False
                    self._poller.unregister(self.lane)
            if not self._server_open:
                return None
            if not lingered:  # right after a task, not after a wake-up that found nothing
                lingered = True
                if ready := self._linger():
                    continue
            ready = self._ready(None)

    def _linger(self) -> set[int]:
        """Look for a request, awake, for up to LINGER seconds before sleeping: the readable
        inputs, or none. A thinker that answers a result with a new request mostly does so
        within that time, and a sleeping worker's CPU halts: waking it costs 50-150 us a task
        on virtual machines. One worker lingers at a time, so idle workers never keep more
        than one CPU busy, and for at most LINGER after each task. Between looks it yields
        its CPU to any other process ready to run there (the thinker, another worker, the
        results.jsonl writer, which runs at a lower priority): lingering only uses time no
        one else wants."""
        if not self.lingering.take():
            return set()
        try:
            deadline = perf_counter() + LINGER
            while perf_counter() < deadline:
                if ready := self._ready(0):
                    return ready
                os.sched_yield()
            return set()
        finally:
            self.lingering.give_back()

    def _ready(self, timeout: int | None) -> set[int]:
        """The readable inputs; `timeout` is 0 (do not wait) or None (wait), which mean the
        same to epoll (seconds) and poll (milliseconds)."""
        return {fd for fd, _ in self._poller.poll(timeout)}


class StartGates:
    """Where a worker and the server settle, once, whether a request with a timeout starts.

    The server may give up on (time out) a request it wrote to a worker that has not read it
    yet: the worker runs a lane task first. Killing the worker would kill that innocent lane
    task; instead the server marks the request skipped, and the worker skips it when it gets
    to it. Each worker slot has a record in a file mapped by the server and its workers: the
    ticket of the request the worker started, and the ticket of the one to skip. A POSIX
    record lock of the slot's record orders the two decisions (a worker killed holding it
    gives it up as it dies). Only requests with a timeout have a ticket: the others cost
    nothing here.
    """

    _RECORD = struct.Struct("<QQ")  # started, skipped

    def __init__(self, count: int):
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (held for the engine's life; unlinked)
        self._file.truncate(count * self._RECORD.size)
        self._memory = mmap.mmap(self._file.fileno(), count * self._RECORD.size)

    def gate(self, index: int) -> StartGate:
        return StartGate(self._file.fileno(), self._memory, index * self._RECORD.size)

    def close(self) -> None:
        self._memory.close()
        self._file.close()


class StartGate:
    """One worker slot's record of :class:`StartGates`."""

    _RECORD = StartGates._RECORD

    def __init__(self, fd: int, memory: mmap.mmap, offset: int):
        self._fd, self._memory, self._offset = fd, memory, offset

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        size = self._RECORD.size
        fcntl.lockf(self._fd, fcntl.LOCK_EX, size, self._offset, os.SEEK_SET)
        try:
            yield
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, size, self._offset, os.SEEK_SET)

    def start(self, ticket: int) -> bool:
        """In the worker, before it runs the request: False if it must skip it instead."""
        with self._locked():
            _, skipped = self._RECORD.unpack_from(self._memory, self._offset)
            if skipped == ticket:
                return False
            self._RECORD.pack_into(self._memory, self._offset, ticket, skipped)
            return True

    def end(self) -> None:
        """In the worker, once the request ran: no need to kill it to stop the request."""
        with self._locked():
            _, skipped = self._RECORD.unpack_from(self._memory, self._offset)
            self._RECORD.pack_into(self._memory, self._offset, 0, skipped)

    def skip(self, ticket: int) -> bool:
        """In the server, giving up on the request: False if the worker runs it now (only
        killing the worker stops it); True if it will skip it, or already ran it."""
        with self._locked():
            started, _ = self._RECORD.unpack_from(self._memory, self._offset)
            if started == ticket:
                return False
            self._RECORD.pack_into(self._memory, self._offset, started, ticket)
            return True


class LingerTurn:
    """The turn to linger, which one worker process holds at a time.

    A POSIX record lock (``lockf``) of a file only the workers use: such a lock belongs to a
    process, so workers forked with the same open file still exclude each other, and a worker
    killed while it lingers (a cancel racing the end of its task) gives the turn up as it dies.
    """

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (held for the engine's life; unlinked)

    def take(self) -> bool:
        """Take the turn if no other process holds it."""
        try:
            fcntl.lockf(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def give_back(self) -> None:
        fcntl.lockf(self._file, fcntl.LOCK_UN)

    def close(self) -> None:
        self._file.close()


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        found = tuple(int(part) for part in os.uname().release.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return found >= (major, minor)


#: How long a worker that finished a task looks, awake, for the next before it sleeps (seconds).
LINGER = 400e-6

_EXCLUSIVE_WAKE_UPS = hasattr(select, "EPOLLEXCLUSIVE") and _kernel_at_least(5, 7)


def _serve_lane(request: bytes, slot: LaneSlot, replies: PipeChannel, context: WorkerContext,
                direct: Callable[[Parts], bool]) -> None:
    """Run a lane request just received into `slot`: its results go to the thinker directly,
    or through the server when too large (and then every later one of the task, which must
    not overtake it); the slot is cleared once they are all sent."""
    received = time()
    relaying = False

    def deliver(topic: str, parts: Parts) -> None:
        nonlocal relaying
        if relaying or not _sent_directly(direct, parts):
            relaying = True
            replies.write_messages([[_RELAY_NOTE], parts])

    for parts in execute_request(context.methods, request, context.key, deliver, EXECUTOR,
                                 received):
        deliver("", parts)
    slot.clear()


def _serve_one(requests: PipeChannel, replies: PipeChannel, context: WorkerContext,
               direct: Callable[[Parts], bool] | None, gate: StartGate) -> bool:
    """Run the next request (or skip it, if the server gave up on it before it started);
    False once the server closed the pipe. Nothing of the request outlives the call, so the
    server may reuse its memory while this worker waits."""
    try:
        stamp = requests.read(None)
        request = requests.read(None)
    except EOFError:
        return False
    assert stamp is not None and request is not None
    received, ticket = _STAMP.unpack_from(stamp)
    if ticket and not gate.start(ticket):
        replies.write([_SKIPPED_NOTE])
        return True
    streamed = False

    def stream(topic: str, parts: Parts) -> None:
        nonlocal streamed
        streamed = True
        replies.write(parts)

    *held, final = execute_request(context.methods, request, context.key, stream, EXECUTOR,
                                   None if math.isnan(received) else received)
    if ticket:
        gate.end()  # from now on the server need not kill this worker to stop the task
    for parts in held:
        replies.write(parts)
    # Failures go through the server, which decides on retries; so does a final result after
    # intermediate ones, which must not overtake them.
    if direct is not None and not streamed and not held \
            and not peek(final[0])[1] & Flags.FAILED and _sent_directly(direct, final):
        replies.write([_DELIVERED_NOTE])
    else:
        replies.write(final)
    return True


def _sent_directly(direct: Callable[[Parts], bool], parts: Parts) -> bool:
    """Whether the worker handed a result to the thinker itself; if not (too large, or the
    thinker is gone) it goes through the server, which sends it or stops for want of a
    thinker."""
    try:
        return direct(parts)
    except OSError:  # a write of one pipe buffer is whole or nothing: nothing was sent
        return False


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
