"""The queues between a thinker and a task server, independent of the transport.

A backend fills four methods that move whole messages (lists of buffers) in each direction;
everything else — encoding, topics, outstanding-task accounting, waking waiters without
polling — lives here once.

Results are read by the threads that wait for them: one waiting thread at a time reads the
transport for everyone (it leads), keeps results of its own topic and hands the others to their
waiting threads; when it leaves, another waiter takes over. A result for a lone waiter thus
wakes only that thread, not a receiver thread and then the waiter.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.process import BaseProcess
from time import monotonic, time
from typing import TYPE_CHECKING, Any, Protocol

from steersman.exceptions import MessageError, QueueConnectionError
from steersman.models.messages import Kind, Message, decode, encode
from steersman.models.result import ResourceRequirements, Result
from steersman.models.serialization import Frame, SerializationMethod
from steersman.proxy import parse_proxy_options, settle_result

if TYPE_CHECKING:
    from steersman.proxy import NameOption, ThresholdOption

logger = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview
#: Environment variable holding the message-signing key when none is given in code.
KEY_VARIABLE = "STEERSMAN_KEY"


class QueueObserver(Protocol):
    """Told of every request sent and every result received (journals, progress displays).

    An observer may also define ``before_acknowledging()``: backends that acknowledge results
    to a service (Redis) call it first, so a journal can make the results it holds durable
    before the service forgets them.
    """

    def request_sent(self, result: Result) -> None: ...

    def result_received(self, result: Result) -> None: ...


class BaseQueues(ABC):
    """Send task requests, receive results by topic; the server side gets tasks and sends results.

    Args:
        topics: Names used to separate kinds of results; ``'default'`` is always present.
        serialization_method: ``'pickle'`` (default) or ``'json'``.
        keep_inputs: Whether results come back with their inputs unless a request says otherwise.
        methods: Method names the server offers, to reject unknown names at ``send_inputs``.
            Task servers register their methods here when built in the same process.
        key: Secret for signing messages (HMAC-SHA256); when set, unsigned or badly signed
            messages are rejected before decoding. Defaults to the ``STEERSMAN_KEY``
            environment variable, so the thinker, servers and workers share it without code.
        proxystore_name: ProxyStore store (registered name or ``Store``) that carries large
            values by reference: one for every topic, or a dict per topic (topics missing from
            the dict never proxy). See :mod:`steersman.proxy`.
        proxystore_threshold: Size in bytes above which inputs and values are proxied: one for
            every topic, or a dict per topic.
    """

    #: Whether a request sent may outlive this process: held by a service (Redis), it can
    #: still run, and its result reach the next thinker. A journal writes such a request
    #: before it leaves; a request that dies with the process can wait for the next batch.
    requests_outlive_client = True

    def __init__(
        self,
        topics: Iterable[str] = (),
        serialization_method: str | SerializationMethod = SerializationMethod.PICKLE,
        keep_inputs: bool = True,
        methods: Iterable[str] | None = None,
        key: bytes | str | None = None,
        proxystore_name: NameOption = None,
        proxystore_threshold: ThresholdOption = None,
    ):
        topics = list(topics) if not isinstance(topics, str) else [topics]
        for topic in topics:
            if not isinstance(topic, str) or not topic:
                raise ValueError(f"topics must be non-empty strings, got {topic!r}")
        self.topics: list[str] = list(dict.fromkeys(["default", *topics]))
        self.serialization_method = SerializationMethod.parse(serialization_method)
        self.keep_inputs = keep_inputs
        self._methods: frozenset[str] | None = frozenset(methods) if methods is not None else None
        if key is None:
            key = os.environ.get(KEY_VARIABLE) or None
        self._key: bytes | None = key.encode() if isinstance(key, str) else key
        self._observers: list[QueueObserver] = []
        self._executors: frozenset[str] | None = None
        self._kill_sent = False
        self._proxies = parse_proxy_options(proxystore_name, proxystore_threshold, self.topics,
                                            self.serialization_method)
        self._init_local()

    # --- per-process state --------------------------------------------------------------------

    def _init_local(self) -> None:
        """Create what cannot cross a process boundary: locks, waiters, reading state."""
        self._lock = threading.Lock()
        self._arrived = {topic: threading.Condition(self._lock) for topic in self.topics}
        self._idle = threading.Condition(self._lock)
        self._turn = threading.Condition(self._lock)  # the drainer waits here to read
        self._results: dict[str, deque[Result]] = {topic: deque() for topic in self.topics}
        self._active: dict[str, int] = dict.fromkeys(self.topics, 0)
        self._active_total = 0
        self._outstanding: dict[str, str] = {}  # task id -> topic, sent and not yet delivered
        self._broken: BaseException | None = None
        self._reader: threading.Thread | None = None  # the waiter reading the transport now
        self._followers: dict[str, int] = dict.fromkeys(self.topics, 0)  # waiting, not reading
        self._drainer: threading.Thread | None = None
        self._closing = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_observers", "_lock", "_arrived", "_idle", "_turn", "_results", "_active",
                     "_active_total", "_outstanding", "_broken", "_reader", "_followers",
                     "_drainer", "_closing"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._observers = []
        self._init_local()

    def after_fork(self) -> None:
        """Reset per-process state in a child created by fork (locks may have been held)."""
        self._init_local()

    def on_server_started(self, server: BaseProcess | None = None) -> None:
        """In the thinker's process, right after the task server process `server` started
        (backends that can watch it report its death by it)."""

    def on_server_process(self) -> None:
        """In the task server's process, before it serves."""
        self.after_fork()

    def on_worker_process(self) -> None:
        """In a worker process forked from the task server: release inherited handles."""

    # --- transport contract -------------------------------------------------------------------

    @abstractmethod
    def _send_request(self, parts: Sequence[Frame]) -> None:
        """Deliver one request message to the task server."""

    @abstractmethod
    def _recv_request(self, timeout: float | None) -> Buffer | None:
        """Next request message for the server, or None after `timeout` seconds."""

    @abstractmethod
    def _send_result(self, topic: str, parts: Sequence[Frame]) -> None:
        """Deliver one result message to the thinker, on `topic`."""

    @abstractmethod
    def _recv_result(self, timeout: float | None) -> Buffer | None:
        """Next result message of any topic for the thinker, or None after `timeout` or on wake."""

    def _send_task(self, request: Result, parts: Sequence[Frame]) -> None:
        """Deliver a new task's request; backends with a faster path for some requests (see
        :meth:`open_lane`) choose it here."""
        self._send_request(parts)

    def _wake_receiver(self) -> None:
        """Interrupt a blocked :meth:`_recv_result`, so that its thread re-checks why it waits."""

    def _published_names(self, kind: str) -> frozenset[str] | None:
        """Names (``'methods'`` or ``'executors'``) a task server published through the
        backend, for clients in other processes; None where the backend cannot publish."""
        return None

    def _publish_names(self, kind: str, names: frozenset[str]) -> None:
        """Make the server's method or executor names visible to clients in other processes."""

    # --- client side --------------------------------------------------------------------------

    def send_inputs(
        self,
        *input_args: Any,
        method: str,
        input_kwargs: dict[str, Any] | None = None,
        keep_inputs: bool | None = None,
        resources: ResourceRequirements | dict[str, int] | None = None,
        topic: str = "default",
        task_info: dict[str, Any] | None = None,
        max_retries: int = 0,
        timeout: float | None = None,
        priority: int = 0,
        executor: str | None = None,
    ) -> str:
        """Ask the task server to run `method` on the inputs; returns the task id.

        Args:
            input_args: Positional arguments of the method.
            method: Name of the method to run.
            input_kwargs: Keyword arguments of the method.
            keep_inputs: Whether the result carries the inputs back (default: the queue's).
            resources: Resources the task needs (nodes, ranks, threads).
            topic: Topic the result is delivered on.
            task_info: Free-form data copied into the result, for the thinker's bookkeeping.
            max_retries: How many times a failed task is run again.
            timeout: Seconds after which the task fails as timed out.
            priority: Higher runs first among waiting requests.
            executor: Name of the executor to run this task on (engines with several).
        """
        self._check_topic(topic)
        self._check_method(method)
        self._check_executor(executor)
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(resources, dict):
            resources = ResourceRequirements(**resources)
        result = Result(
            method=method,
            topic=topic,
            inputs=(input_args, dict(input_kwargs or {})),
            keep_inputs=self.keep_inputs if keep_inputs is None else keep_inputs,
            serialization_method=self.serialization_method,
            task_info=dict(task_info or {}),
            resources=resources or ResourceRequirements(),
            max_retries=max_retries,
            timeout=timeout,
            priority=priority,
            executor=executor,
        )
        self.prepare_request(result)
        parts = encode(Kind.REQUEST, result, key=self._key)
        with self._lock:
            self._raise_if_broken()
        self.track(result.task_id, topic)
        try:
            for observer in self._observers:  # recorded before it leaves: at-least-once
                observer.request_sent(result)
            self._send_task(result, parts)
        except BaseException:
            self._finish_task(topic, result.task_id)
            if self._proxies is not None:
                self._proxies.forget(result.task_id)
            raise
        logger.debug("sent task %s (%s) on topic %s", result.task_id, method, topic)
        return result.task_id

    def prepare_request(self, result: Result) -> None:
        """Put inputs above the topic's threshold in its store, then serialize the inputs."""
        if self._proxies is not None:
            self._proxies.prepare(result)
        result.encode_inputs()

    def get_result(self, topic: str = "default", timeout: float | None = None) -> Result | None:
        """Next result on `topic`, or None if none arrives within `timeout` seconds."""
        return self.wait_result(topic, timeout)

    def wait_result(
        self, topic: str = "default", timeout: float | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Result | None:
        """Like :meth:`get_result`, and also return None as soon as `stop()` turns true.

        `stop` is checked whenever :meth:`wake` is called, so callers set their own flags and
        call `wake()` instead of polling.
        """
        self._check_topic(topic)
        deadline = None if timeout is None else monotonic() + timeout
        waiting = self._results[topic]
        me = threading.current_thread()
        with self._lock:
            try:
                while not waiting:
                    if self._closing:
                        raise QueueConnectionError("the queues were closed")
                    self._raise_if_broken()
                    if stop is not None and stop():
                        return None
                    remaining = None if deadline is None else deadline - monotonic()
                    if remaining is not None and remaining <= 0:
                        return None
                    if self._reader is None:
                        self._reader = me  # read for everyone until this call returns
                    if self._reader is me:
                        self._read_one(remaining)
                    else:
                        self._follow(topic, remaining)
            finally:
                if self._reader is me:
                    self._reader = None
                    self._hand_over()
            result = waiting.popleft()
        try:
            self._complete_or_fail(result)
            for observer in self._observers:
                observer.result_received(result)
        finally:  # even if an observer failed: the task is not waited for forever
            if result.complete is not False:
                self._finish_task(topic)
        return result

    def _complete_or_fail(self, result: Result) -> None:
        """:meth:`complete_result`; a result this process cannot decode becomes a failure."""
        try:
            self.complete_result(result)
        except Exception as exc:
            logger.error("could not decode the result of task %s (topic %s): %r",
                         result.task_id, result.topic, exc)
            result.set_failure(exc, final=result.complete is not False)
            result.timestamp.result_received = time()

    def complete_result(self, result: Result) -> None:
        """Decode the value (and inputs) of a received result; a hook for proxy resolution."""
        result.decode_value()
        if result.input_frames:
            result.decode_inputs()
        if self._proxies is not None:
            self._proxies.settle(result)
        elif result.proxystore_name is not None:
            settle_result(result)
        result.timestamp.result_received = time()

    def add_observer(self, observer: QueueObserver) -> None:
        """Tell `observer` of every request sent and result received (in the caller's thread)."""
        self._observers.append(observer)

    def _before_acknowledging(self) -> None:
        """Backends call this before they acknowledge received results to their service."""
        for observer in self._observers:
            hook = getattr(observer, "before_acknowledging", None)
            if hook is not None:
                hook()

    def remove_observer(self, observer: QueueObserver) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def wake(self) -> None:
        """Wake every waiter so it re-checks its `stop` condition."""
        with self._lock:
            for condition in self._arrived.values():
                condition.notify_all()
            self._idle.notify_all()
            self._wake_reader()

    def send_kill_signal(self) -> None:
        """Tell the task server to finish running tasks and stop."""
        self._kill_sent = True
        self._send_request(encode(Kind.KILL, key=self._key))

    def wait_until_done(self, timeout: float | None = None) -> bool:
        """Wait until the final result of every task sent has been taken (by `get_result` or
        a result processor); False if `timeout` passed first."""
        deadline = None if timeout is None else monotonic() + timeout
        with self._lock:
            while self._active_total > 0:
                self._raise_if_broken()
                remaining = None if deadline is None else deadline - monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    @property
    def active_count(self) -> int:
        """Tasks sent whose final result has not yet been taken by `get_result`."""
        return self._active_total

    def active_in(self, topic: str) -> int:
        """Outstanding tasks on one topic."""
        return self._active[topic]

    def resend(self, request: Result) -> None:
        """Send a request again with its own task id (a resumed campaign's lost requests)."""
        self._check_topic(request.topic)
        parts = encode(Kind.REQUEST, request, key=self._key)
        self.track(request.task_id, request.topic)
        if self._proxies is not None:
            self._proxies.adopt(request)
        try:
            self._send_request(parts)
        except BaseException:
            self._finish_task(request.topic, request.task_id)
            raise

    def track(self, task_id: str, topic: str) -> None:
        """Count a task as outstanding; `send_inputs` does it, and so does a resumed campaign
        for requests sent before a restart whose results may still arrive. Only results of
        outstanding tasks are delivered: a result delivered twice, or one for a task this
        process never sent, is dropped."""
        self._check_topic(topic)
        with self._lock:
            if task_id in self._outstanding:
                return
            self._outstanding[task_id] = topic
            self._active[topic] += 1
            self._active_total += 1

    def _finish_task(self, topic: str, task_id: str | None = None) -> None:
        """Count down a task whose final result was taken (or whose sending failed)."""
        with self._lock:
            if task_id is not None:
                self._outstanding.pop(task_id, None)
            self._active[topic] -= 1
            self._active_total -= 1
            if self._active[topic] == 0:  # processors of this topic may now be drained
                self._arrived[topic].notify_all()
                self._wake_reader()
            if self._active_total == 0:
                self._idle.notify_all()

    # --- receiving results: waiters take turns reading ---------------------------------------

    def _follow(self, topic: str, timeout: float | None) -> None:
        """With the lock held: wait until a result of `topic` arrives or the reader leaves."""
        self._followers[topic] += 1
        try:
            self._arrived[topic].wait(timeout)
        finally:
            self._followers[topic] -= 1

    def _hand_over(self) -> None:
        """With the lock held: the reader left; let one waiting thread (or the drainer) read."""
        if self._drainer is not None:
            self._turn.notify()
        for topic, count in self._followers.items():
            if count:
                self._arrived[topic].notify()
                return

    def _read_one(self, timeout: float | None) -> None:
        """With the lock held (released meanwhile): read, decode and route one message."""
        self._lock.release()
        failure: QueueConnectionError | None = None
        message: Message | None = None
        try:
            data = self._recv_result(timeout)
            if data is not None:
                message = self._decode_result(data)
        except QueueConnectionError as exc:
            failure = exc
        except Exception as exc:  # a backend bug must not leave waiters hanging
            logger.exception("reading results failed")
            failure = QueueConnectionError(f"reading results failed: {exc!r}")
        finally:
            self._lock.acquire()
        if failure is not None:
            self._mark_broken(failure)
        elif message is not None:
            self._route(message)

    def _decode_result(self, data: Buffer) -> Message | None:
        try:
            message = decode(data, key=self._key)
        except MessageError as exc:
            logger.error("dropped an undecodable result message: %s", exc)
            return None
        if message.kind is not Kind.RESULT or message.result is None:
            logger.error("dropped a %s message on the result channel", message.kind.name)
            return None
        return message

    def _route(self, message: Message) -> None:
        """With the lock held: queue a result for its topic's waiters."""
        result = message.result
        assert result is not None
        topic = self._outstanding.get(result.task_id)
        if topic is None:
            logger.warning("dropped a result for task %s: not outstanding (delivered twice, "
                           "or never sent by this client)", result.task_id)
            return
        if result.complete is not False:
            del self._outstanding[result.task_id]  # a second final result will be dropped
        self._results[topic].append(result)
        self._arrived[topic].notify()

    def _wake_reader(self) -> None:
        """With the lock held: interrupt another thread's read so it re-checks its condition."""
        if self._reader is not None and self._reader is not threading.current_thread():
            self._wake_receiver()

    def _mark_broken(self, exc: BaseException) -> None:
        """With the lock held: the transport failed; every waiter raises `exc`."""
        if self._broken is None and not self._closing:
            self._broken = exc
            expected = self._kill_sent and self._active_total == 0
            logger.log(logging.DEBUG if expected else logging.ERROR, "queues closed: %s", exc)
        for condition in self._arrived.values():
            condition.notify_all()
        self._idle.notify_all()
        self._turn.notify_all()

    def _raise_if_broken(self) -> None:
        if self._broken is not None:
            raise self._broken

    def _drain_in_background(self) -> None:
        """Read results in a thread of their own from now on (a send found the transport full:
        the server may be waiting for room to send results nobody is waiting for)."""
        with self._lock:
            if self._drainer is not None or self._closing:
                return
            self._drainer = threading.Thread(target=self._drain, daemon=True,
                                             name="steersman-result-drainer")
            self._drainer.start()

    def _drain(self) -> None:
        with self._lock:
            while not self._closing and self._broken is None:
                if self._reader is not None:
                    self._turn.wait()
                    continue
                self._reader = threading.current_thread()
                try:
                    while not self._closing and self._broken is None:
                        self._read_one(None)
                finally:
                    self._reader = None
                    self._hand_over()

    # --- server side --------------------------------------------------------------------------

    def get_task(self, timeout: float | None = None,
                 routing_only: bool = False) -> Message | None:
        """Next request (or kill signal) for the task server; None after `timeout`.

        With `routing_only`, a request comes as its :class:`~steersman.models.messages.Routing`
        and the message as received, without its Result (see :meth:`Routing.whole`).
        Messages that cannot be decoded are logged and skipped, never raised into the server.
        """
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - monotonic())
            data = self._recv_request(remaining)
            if data is None:
                return None
            try:
                message = decode(data, key=self._key, routing_only=routing_only)
            except MessageError as exc:
                logger.error("rejected a request message: %s", exc)
                continue
            if message.kind not in (Kind.REQUEST, Kind.KILL) or (
                    message.kind is Kind.REQUEST and message.task_id is None):
                logger.error("rejected a %s message on the request channel", message.kind.name)
                continue
            if message.result is not None:
                message.result.timestamp.input_received = time()
            elif message.routing is not None:
                message.routing.received = time()
            return message

    def send_result(self, result: Result) -> None:
        """Send a finished (or intermediate) result back to the thinker."""
        self._send_result(result.topic, self.encode_result(result))

    def encode_result(self, result: Result) -> list[Frame]:
        """Encode a result message, stamping when it was sent."""
        result.timestamp.result_sent = time()
        return encode(Kind.RESULT, result, key=self._key, with_inputs=result.keep_inputs)

    def send_encoded_result(self, topic: str, parts: Sequence[Frame]) -> None:
        """Forward a result message that a worker already encoded."""
        self._send_result(topic, parts)

    def direct_results(self) -> Callable[[Sequence[Frame]], bool] | None:
        """In the task server's process, before it forks workers: a function those workers
        call to hand a small final result message straight to the thinker (True), or that
        declines (False) so the result goes through the server. None where the transport has
        no such path. It saves the server a hop on every task."""
        return None

    def open_lane(self) -> None:
        """In the client's process, before a local task server starts: let requests that need
        nothing of the server go straight to its workers (see :mod:`steersman.queue.lane`).
        Backends without such a path ignore it."""

    def lane_receiver(self) -> socket.socket | None:
        """In the task server's process: the end of the lane its workers receive from, or None."""
        return None

    def request_done(self, task_id: str) -> None:
        """Called by the server once a task's final result is sent; backends that redeliver
        unfinished requests (after a server crash) forget this one here."""

    def set_methods(self, names: Iterable[str]) -> None:
        """Record the methods a server offers, so unknown names fail at ``send_inputs``."""
        self._methods = frozenset(names)
        self._publish_names("methods", self._methods)

    def set_executors(self, names: Iterable[str]) -> None:
        """Record the executors a server offers, so unknown names fail at ``send_inputs``."""
        self._executors = frozenset(names)
        self._publish_names("executors", self._executors)

    @property
    def signing_key(self) -> bytes | None:
        """The key messages are signed with, for workers that encode results themselves."""
        return self._key

    # --- validation and life cycle ------------------------------------------------------------

    def _check_topic(self, topic: str) -> None:
        if topic not in self._arrived:
            raise ValueError(f"unknown topic {topic!r}; valid topics: {sorted(self.topics)}")

    def _check_method(self, method: str) -> None:
        if not isinstance(method, str) or not method:
            raise ValueError(f"method must be a method name, got {method!r}")
        known = self._methods if self._methods is not None else self._published_names("methods")
        if known is not None and method not in known:
            raise ValueError(f"unknown method {method!r}; valid methods: {sorted(known)}")

    def _check_executor(self, executor: str | None) -> None:
        known = self._executors if self._executors is not None else self._published_names(
            "executors")
        if executor is not None and known is not None and executor not in known:
            raise ValueError(f"unknown executor {executor!r}; valid executors: {sorted(known)}")

    def keep_pending_inputs(self) -> None:
        """Keep the stored (proxied) inputs of tasks that have not come back, rather than
        evict them at :meth:`close`: a campaign that stopped unfinished resends those tasks
        when it resumes. Called by a thinker with a run directory that ends unfinished."""
        if self._proxies is not None:
            self._proxies.keep_pending()

    def close(self) -> None:
        """End every wait (with QueueConnectionError); the queues cannot be used afterwards.

        Inputs stored for tasks that never came back are evicted from their store (unless
        :meth:`keep_pending_inputs` was called).
        """
        with self._lock:
            self._closing = True
            self._mark_broken(QueueConnectionError("the queues were closed"))
            reader, drainer = self._reader, self._drainer
        if self._proxies is not None:
            self._proxies.close()
        if reader is not None:
            self._wake_receiver()
        if drainer is not None and drainer is not threading.current_thread():
            drainer.join(timeout=5)
