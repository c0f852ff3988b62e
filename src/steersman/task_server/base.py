"""The task server: one loop that receives requests, hands them to an engine, returns results.

It runs in its own process (`start()` / `join()` / `exitcode`), or in the calling thread with
`serve()`. Unknown methods and failed engines come back as failed Results; failed tasks are
retried up to their `max_retries`; a task that outlives its `timeout` fails as timed out (one
timer thread serves every deadline) and its late result is dropped; the kill signal stops the
loop once running tasks finished and their results were sent. Engines only run tasks, so all of
this behaves the same on every engine.

A server stops at once, without waiting for running tasks, when their results could reach no
one: the thinker's end of pipe queues is gone, the body of ``with server:`` raised, or the
process that started the server exits without stopping it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any

from steersman.exceptions import (
    MessageError,
    QueueConnectionError,
    TimeoutException,
    WorkerLost,
)
from steersman.models.messages import Flags, Kind, Routing, decode, encode, peek
from steersman.models.methods import TaskMethod, as_method
from steersman.models.result import Result
from steersman.models.serialization import Frame
from steersman.queue.base import BaseQueues
from steersman.task_server.deadlines import Deadlines
from steersman.task_server.engine import DELIVERED, Engine, Parts, WorkerContext

logger = logging.getLogger(__name__)

# Fork keeps functions defined in notebooks and scripts usable as methods; spawn elsewhere.
_CONTEXT: Any = multiprocessing.get_context(
    "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
)

#: How long a server told to stop at once may take before its process is terminated (seconds).
STOP_GRACE = 30.0
#: After the queues refused a result, how long to wait before each new try of the small
#: failure sent instead (seconds): memory the refused message held may be freed meanwhile.
_REFUSAL_BACKOFF = (0.05, 0.25, 1.0)
#: Servers started by this process, stopped at its exit if still running (see `start`).
_STARTED: weakref.WeakSet[TaskServer] = weakref.WeakSet()


class TaskServer(_CONTEXT.Process):
    """Serve the methods over the queues, running tasks on `engine`.

    Args:
        queues: Server side of the queues.
        methods: Functions or :class:`TaskMethod` objects; names must be unique.
        engine: Where tasks run.
    """

    def __init__(self, queues: BaseQueues,
                 methods: Iterable[TaskMethod | Callable[..., Any]], engine: Engine):
        super().__init__(name=type(self).__name__, daemon=False)
        # The starting process writes a byte here to stop the server at once (see _stop_now).
        self._stop_reader, self._stop_writer = _CONTEXT.Pipe(duplex=False)
        self._watcher: threading.Thread | None = None
        self._starter_pid: int | None = None
        self.queues = queues
        self.methods = _by_name(methods)
        self.engine = engine
        queues.set_methods(self.methods)
        queues.set_executors(engine.executors)
        if engine.takes_lane and _CONTEXT.get_start_method() == "fork":  # workers inherit it
            queues.open_lane()

    # --- process life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start serving in a new process.

        If this process exits with the server still running (a script that failed before it
        sent the kill signal), the server is stopped at once rather than waited for.
        """
        super().start()
        self._starter_pid = os.getpid()
        self._stop_reader.close()
        self.queues.on_server_started(self)
        _STARTED.add(self)
        atexit.unregister(_stop_servers_at_exit)  # registered last, it runs before
        atexit.register(_stop_servers_at_exit)    # multiprocessing joins its children

    def __enter__(self) -> TaskServer:
        """``with server:`` starts it, and on leaving sends the kill signal and waits.

        If the body raised, the server stops at once instead: running tasks are stopped
        where the engine can (their results would reach no one) and the error propagates
        without waiting for them.
        """
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None:
            self._stop_now()
            return
        self.queues.send_kill_signal()
        self.join()

    def _stop_now(self) -> None:
        """Stop the server without waiting for its running tasks; kill its process if it has
        not ended after :data:`STOP_GRACE` seconds."""
        with contextlib.suppress(OSError):
            self._stop_writer.send_bytes(b"x")
        try:  # wakes the loop if it waits for a request
            self.queues.send_kill_signal()
        except Exception as exc:  # the server may be gone already
            logger.debug("could not send the kill signal: %r", exc)
        self.join(STOP_GRACE)
        if self.exitcode is None:
            logger.warning("task server %s did not stop within %s s; killing it",
                           self.pid, STOP_GRACE)
            self.kill()
            self.join()

    def _stop_at_exit(self) -> None:
        if self._starter_pid != os.getpid() or self.exitcode is not None:
            return
        logger.warning("task server %s still running as its starting process exits: "
                       "stopping it without waiting for running tasks", self.pid)
        self._stop_now()

    def run(self) -> None:
        """Entry point of the server process."""
        self.queues.on_server_process()
        self._stop_writer.close()  # only the starting process may tell the server to stop
        self._watcher = threading.Thread(target=self._watch_stop_pipe, daemon=True,
                                         name="steersman-stop-watch")
        self.serve()
        if self.engine.left_threads_running():
            _exit_without_waiting()

    # --- the loop -----------------------------------------------------------------------------

    def serve(self) -> None:
        """Serve until the kill signal (or the thinker's disappearance), then clean up."""
        self._outstanding: dict[str, _Attempt] = {}
        self._idle = threading.Condition()
        self._stopping_now = False
        self._draining = False  # the kill signal came: the loop waits for outstanding tasks
        self._stopped_running = threading.Event()  # set once _stop_running has done its work
        self._deadlines: Deadlines[_Attempt] = Deadlines(self._on_timeout)
        self.engine.start(WorkerContext(
            methods=self.methods, key=self.queues.signing_key,
            emit=self._forward_intermediate, in_forked_child=self.queues.on_worker_process,
            direct_results=self.queues.direct_results, lane=self.queues.lane_receiver,
            fail_unseen=self._fail_unseen,
        ))
        logger.info("task server ready with methods %s on executors %s", sorted(self.methods),
                    list(self.engine.executors))
        if self._watcher is not None:
            self._watcher.start()
        try:
            self._receive_until_killed()
            self._draining = True
            self._fail_stranded()
            with self._idle:
                self._idle.wait_for(lambda: not self._outstanding or self._stopping_now)
        finally:
            if self._stopping_now:  # shut down only once running tasks are given up on
                self._stopped_running.wait()
            self._deadlines.stop()
            self.engine.shutdown()
        logger.info("task server stopped")

    def _receive_until_killed(self) -> None:
        while self._receive_one() and not self._stopping_now:
            pass

    def _watch_stop_pipe(self) -> None:
        """Stop at once when the starting process says so (an end of file only means that
        it, or another holder of the pipe, ended: over Redis a later thinker may want the
        results, and over pipes the queues report the thinker's end)."""
        try:
            self._stop_reader.recv_bytes()
        except (EOFError, OSError):
            return
        self._stop_running("the process that started it is failing or exiting")

    def _stop_requested(self) -> bool:
        """At the kill signal: whether it came to stop at once (the starting process writes to
        the stop pipe before it sends the signal)."""
        if self._watcher is not None and self._stop_reader.poll():
            self._watcher.join()  # it reads what is there at once
        return self._stopping_now

    def _stop_running(self, reason: str) -> None:
        """Give up every running task (no result of theirs is sent) and stop the engine's
        workers, so that the server stops without waiting for them."""
        with self._idle:
            if self._stopping_now:
                return
            self._stopping_now = True
            attempts = list(self._outstanding.values())
            self._outstanding.clear()
            for attempt in attempts:
                attempt.settled = True
            self._idle.notify_all()
        logger.warning("stopping without waiting for running tasks: %s", reason)
        try:
            self.engine.abort()
        except Exception:
            logger.exception("stopping the engine's running tasks failed")
        for attempt in attempts:
            future, attempt.future = attempt.future, None
            if future is not None:
                with contextlib.suppress(Exception):
                    self.engine.cancel(future)
        self._stopped_running.set()

    def _receive_one(self) -> bool:
        """Dispatch the next request; False at the kill signal or when the queues are lost.
        Nothing of the request is held here while the next one is awaited: its memory may
        carry the next one once its task is done."""
        try:
            message = self.queues.get_task(routing_only=self.engine.stamps_received)
        except QueueConnectionError as exc:
            if self.queues.requests_outlive_client:  # a later client may take the results
                logger.warning("stopping: %s", exc)
            else:
                self._stop_running(str(exc))
            return False
        if message is None:
            return True
        if message.kind is Kind.KILL:
            if not self._stop_requested():
                logger.info("kill signal received; finishing %d running task(s)",
                            len(self._outstanding))
            return False
        if message.routing is not None and message.data is not None:  # forwarded as it came
            self._dispatch(_Attempt(message.routing, [message.data], message.data))
        elif message.result is not None:
            self._dispatch_whole(message.result)
        return True

    def _dispatch_whole(self, request: Result) -> None:
        """Dispatch a request held as a whole Result (a retry, or for an engine that is given
        requests encoded again with their ``input_received``)."""
        parts = encode(Kind.REQUEST, request, key=self.queues.signing_key)
        self._dispatch(_Attempt(Routing.of(request), parts, whole=request))

    def _dispatch(self, attempt: _Attempt) -> None:
        """Hand one attempt of a request to the engine (or fail it at once if it is invalid)."""
        routing = attempt.routing
        if self._stopping_now:
            return
        problem = self._check_request(routing)
        if problem is not None:
            request = self._request_of(attempt)
            request.set_failure(problem)
            self._send_final(request, self.queues.encode_result(request))
            return
        with self._idle:  # replaces the previous attempt of a retried task
            self._outstanding[routing.task_id] = attempt
        try:
            future = self.engine.submit(routing, attempt.parts)
        except Exception as exc:
            logger.warning("the engine refused task %s: %r", routing.task_id, exc)
            if self._claim(attempt):
                self._finish_failed(self._request_of(attempt), exc,
                                    worker_lost=isinstance(exc, WorkerLost))
            return
        attempt.parts = ()  # the engine has them; `data` stays for a failure's Result
        attempt.future = future
        if routing.timeout is not None:
            self._deadlines.add(routing.timeout, attempt)
        future.add_done_callback(partial(self._on_done, attempt))

    def _check_request(self, routing: Routing) -> Exception | None:
        if routing.method not in self.methods:
            return ValueError(f"unknown method {routing.method!r}; "
                              f"this server offers {sorted(self.methods)}")
        if routing.executor is not None and routing.executor not in self.engine.executors:
            return ValueError(f"unknown executor {routing.executor!r}; "
                              f"this server has {sorted(self.engine.executors)}")
        return None

    def _request_of(self, attempt: _Attempt) -> Result:
        """The attempt's whole request, decoded from the message on first need."""
        if attempt.whole is None:
            assert attempt.data is not None
            attempt.whole = attempt.routing.whole(attempt.data, self.queues.signing_key)
        return attempt.whole

    def _claim(self, attempt: _Attempt) -> bool:
        """Take ownership of an attempt's outcome; False if the timer or the engine was first."""
        with self._idle:
            if attempt.settled or self._outstanding.get(attempt.routing.task_id) is not attempt:
                return False
            attempt.settled = True
            return True

    def _on_done(self, attempt: _Attempt, future: Future[list[Parts]]) -> None:
        routing = attempt.routing
        if not self._claim(attempt):
            logger.debug("dropped the late result of task %s", routing.task_id)
            return
        attempt.future = None  # settled: no cycle (future, callback, attempt) keeps the request
        try:
            messages = self._messages_of(attempt, future)
            if messages is DELIVERED:  # the worker handed the final result to the thinker
                self.queues.request_done(routing.task_id)
                self._untrack(routing)
                return
            *intermediate, final = messages
            try:
                for parts in intermediate:
                    self._forward_intermediate(routing.topic, parts)
            except Exception as exc:  # the queues refused one: the task fails, saying why
                if self._stopping_now:
                    raise
                final = self._unsent_failure(self._request_of(attempt), exc,
                                             "an intermediate result")
            else:
                _, flags = peek(final[0])
                if flags & Flags.FAILED and self._retry(self._request_of(attempt)):
                    return
            self._send_final(routing, final, attempt)
        except Exception as exc:
            self._lost_result(routing.task_id, "result", exc)
            self._untrack(routing)

    def _on_timeout(self, attempt: _Attempt) -> None:
        if not self._claim(attempt):
            return
        future, attempt.future = attempt.future, None
        assert future is not None
        request = self._request_of(attempt)
        try:
            cancelled = self.engine.cancel(future)
        except Exception:
            logger.exception("cancelling timed-out task %s failed", request.task_id)
            cancelled = False
        logger.info("task %s (%s) timed out after %s s on attempt %d; %s", request.task_id,
                    request.method, request.timeout, request.retries + 1,
                    "cancelled" if cancelled else "left to finish, its result will be dropped")
        error = TimeoutException(f"task {request.task_id} ({request.method}) exceeded its "
                                 f"timeout of {request.timeout} s")
        self._finish_failed(request, error, timed_out=True)
        if not cancelled and self._draining:  # it may hold the last worker the others wait for
            self._fail_stranded()

    def _fail_stranded(self) -> None:
        """Once told to stop: fail the tasks that cannot start because every worker that could
        run them holds a task given up on (timed out) that the engine cannot stop (a thread,
        a Parsl worker). Waiting for them would never end."""
        if self._stopping_now:  # given up on already
            return
        try:
            stranded = self.engine.stranded()
        except Exception:
            logger.exception("could not tell which tasks are stranded")
            return
        if not stranded:
            return
        with self._idle:
            attempts = [a for a in self._outstanding.values() if a.future in stranded]
        for attempt in attempts:
            if not self._claim(attempt):
                continue
            future, attempt.future = attempt.future, None
            assert future is not None
            with contextlib.suppress(Exception):
                self.engine.cancel(future)
            request = self._request_of(attempt)
            logger.warning("task %s (%s) cannot start: %s", request.task_id, request.method,
                           stranded[future])
            try:
                request.set_failure(RuntimeError(
                    f"task {request.task_id} ({request.method}) could not start before the "
                    f"server stopped: {stranded[future]}"))
                self._send_final(request, self.queues.encode_result(request))
            except Exception as exc:
                self._lost_result(request.task_id, "failure", exc)
                self._untrack(request)

    def _finish_failed(self, request: Result, error: Exception, **flags: bool) -> None:
        """Fail an attempt the server settled itself: retry it or send the failure."""
        try:
            request.set_failure(error, **flags)
            if not self._retry(request):
                self._send_final(request, self.queues.encode_result(request))
        except Exception as exc:
            self._lost_result(request.task_id, "failure", exc)
            self._untrack(request)

    def _lost_result(self, task_id: str, what: str, error: Exception) -> None:
        """A result could not be sent; if the thinker is gone for good, stop at once."""
        if isinstance(error, QueueConnectionError) and not self.queues.requests_outlive_client:
            self._stop_running(str(error))
        if self._stopping_now:  # said once already: no one would receive it
            logger.debug("dropped the %s of task %s: stopping", what, task_id)
        else:
            logger.error("could not return the %s of task %s", what, task_id, exc_info=error)

    def _fail_unseen(self, data: bytes, error: Exception) -> None:
        """A request that reached a worker without passing through this loop (by the lane)
        failed before the worker sent its result: send the failure in the worker's stead."""
        if self._stopping_now:
            return
        try:
            routing = decode(data, key=self.queues.signing_key, routing_only=True).routing
        except MessageError as exc:
            routing, problem = None, str(exc)
        else:
            problem = "not a request"
        if routing is None:
            logger.error("a worker lost a lane request that cannot be read: %s", problem)
            return
        self._finish_failed(routing.whole(data, self.queues.signing_key), error,
                            worker_lost=isinstance(error, WorkerLost))

    def _retry(self, request: Result) -> bool:
        """Send a failed request again if it has retries left."""
        if request.retries >= request.max_retries:
            return False
        request.retries += 1
        logger.info("retrying task %s (attempt %d of %d)", request.task_id,
                    request.retries + 1, request.max_retries + 1)
        request.success = request.complete = request.failure_info = None
        self._dispatch_whole(request)
        return True

    def _messages_of(self, attempt: _Attempt, future: Future[list[Parts]]) -> list[Parts]:
        try:
            messages = future.result()
            if not messages and messages is not DELIVERED:
                raise RuntimeError("the engine returned no result message")
            return messages
        except BaseException as exc:  # the task's own, re-raised by its future (see TASK_ERRORS)
            request = self._request_of(attempt)
            request.set_failure(exc, worker_lost=isinstance(exc, WorkerLost))
            return [self.queues.encode_result(request)]

    def _send_final(self, request: Result | Routing, parts: Parts,
                    attempt: _Attempt | None = None) -> None:
        """Send a task's final result message; if the queues refuse it, a small failure saying
        so. `request` is the whole request unless `attempt` (whose it is) is given."""
        try:
            if self._stopping_now:
                logger.debug("dropped the result of task %s: stopping", request.task_id)
                return
            try:
                self.queues.send_encoded_result(request.topic, parts)
            except Exception as exc:
                if isinstance(exc, QueueConnectionError) \
                        and not self.queues.requests_outlive_client:
                    raise  # the thinker is gone: no failure could reach it either
                whole = self._request_of(attempt) if attempt is not None else request
                assert isinstance(whole, Result)
                self._send_refusal(whole, exc)
            self.queues.request_done(request.task_id)
        finally:
            self._untrack(request)

    def _send_refusal(self, request: Result, error: Exception) -> None:
        """The queues refused a task's result (e.g. Redis out of memory): send a small failed
        Result instead, so that the thinker does not wait for it forever. Raises `error` if
        the queues refuse that too."""
        parts = self._unsent_failure(request, error, "result")
        for delay in (*_REFUSAL_BACKOFF, None):
            try:
                self.queues.send_encoded_result(request.topic, parts)
                break
            except Exception as again:
                logger.debug("could not send the failure of task %s either: %r",
                             request.task_id, again)
                # Some refusals pass (memory held by the refused message is freed): try again.
                if delay is None or self._stopped_running.wait(delay):
                    raise error from None
        logger.error("could not send the result of task %s (%s); sent a failure instead: %s",
                     request.task_id, request.method, error)

    def _unsent_failure(self, request: Result, error: Exception, what: str) -> Parts:
        """The message of a failed Result for `request`, without its inputs, saying that its
        `what` could not be sent and why."""
        request.drop_inputs()
        request.set_failure(RuntimeError(
            f"the {what} of task {request.task_id} ({request.method}) could not be sent: "
            f"{error}"))
        return self.queues.encode_result(request)

    def _untrack(self, request: Result | Routing) -> None:
        with self._idle:
            self._outstanding.pop(request.task_id, None)
            if not self._outstanding:
                self._idle.notify_all()

    def _forward_intermediate(self, topic: str, parts: Parts) -> None:
        try:
            self.queues.send_encoded_result(topic, parts)
        except QueueConnectionError as exc:
            if self.queues.requests_outlive_client:
                raise
            self._stop_running(str(exc))  # the thinker is gone: none of its results can go


@dataclass(eq=False)
class _Attempt:
    """One try of a request on the engine; settled once, by its result or by its timeout.

    A request forwarded as it came is held as that message (`data`) and read only by its
    routing fields; its whole Result is decoded if a failure or a retry needs it.
    """

    routing: Routing
    parts: Parts
    data: Frame | None = None
    whole: Result | None = None
    future: Future[list[Parts]] | None = None
    settled: bool = False


def _exit_without_waiting() -> None:
    """End the server's process now: threads running tasks it gave up on (a thread pool's,
    which are not daemon threads) would keep it from exiting until those tasks return."""
    logger.warning("task server exits without waiting for the threads still running tasks "
                   "it gave up on")
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def _stop_servers_at_exit() -> None:
    for server in list(_STARTED):
        server._stop_at_exit()


def _by_name(methods: Iterable[TaskMethod | Callable[..., Any]]) -> dict[str, TaskMethod]:
    table: dict[str, TaskMethod] = {}
    for method in map(as_method, methods):
        if method.name in table:
            raise ValueError(f"two methods are named {method.name!r}; give one a name= to tell "
                             "them apart")
        table[method.name] = method
    if not table:
        raise ValueError("a task server needs at least one method")
    return table

