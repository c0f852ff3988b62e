"""Run tasks on named executors: any ``concurrent.futures.Executor``, Parsl, Globus Compute.

The engine here is shared by every executor-like system. Each system fills the small
:class:`Backend` contract (submit a call, cancel it if it can, shut down); the engine picks the
executor of each task (the request's ``executor=``, else the least busy of its method's), keeps
our priority order where the executor has none, and turns lost workers into :class:`WorkerLost`.
What runs on the worker is a :class:`TaskRunner`: one picklable object per method and executor,
so executors that cache serialized functions (Parsl, Globus Compute) send it once.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import BrokenExecutor, Executor, Future
from functools import partial
from typing import Any, Literal

from steersman.exceptions import WorkerLost
from steersman.models.messages import Routing, join
from steersman.models.methods import TaskMethod, as_method
from steersman.queue.base import BaseQueues
from steersman.task_server.base import TaskServer
from steersman.task_server.engine import Engine, Parts, PriorityGate, WorkerContext
from steersman.task_server.worker import execute_joined

logger = logging.getLogger(__name__)

#: A method as given to a server: a function, a TaskMethod, or either with options.
Method = TaskMethod | Callable[..., Any]
MethodSpec = Method | tuple[Method, dict[str, Any]]
#: An executor, or a zero-argument factory that builds one in the task server's process.
ExecutorSpec = Executor | Callable[[], Executor]
InFlight = int | None | Literal["auto"]

_METHOD_OPTIONS = ("executors",)


class TaskRunner:
    """What a worker runs for one method: decode the request, run it, encode the results.

    Args:
        method: The method to run.
        key: Signing key of the queues, if any.
        executor: Name recorded in the Result's worker information.
    """

    def __init__(self, method: TaskMethod, key: bytes | None, executor: str):
        self.methods = {method.name: method}
        self.key = key
        self.executor = executor

    def __call__(self, request: bytes) -> list[bytes]:
        return execute_joined(self.methods, request, self.key, self.executor)

    def __repr__(self) -> str:
        return f"TaskRunner({next(iter(self.methods))!r} on {self.executor!r})"


class Backend(ABC):
    """One named place where tasks run: the contract each engine module fills.

    Attributes:
        capacity: Tasks handed to the backend at once; the rest wait in our priority order.
            None hands every task over at once (the backend queues them itself).
        lost_errors: Exceptions that mean the worker died; they become :class:`WorkerLost`.
    """

    capacity: int | None = None
    lost_errors: tuple[type[BaseException], ...] = ()
    #: Set by :meth:`shutdown` if threads of this process may still run (or wait for) tasks
    #: given up on: the process must not wait for them as it exits.
    left_threads_running: bool = False

    def start(self) -> None:
        """Acquire the executor, in the task server's process."""

    def workers(self) -> int | None:
        """How many tasks the executor runs at once, if it can tell: once that many tasks the
        server gave up on (and the executor could not cancel) still run, no other can start.
        None if unknown."""
        return None

    @abstractmethod
    def submit(self, runner: Callable[[bytes], list[bytes]], payload: bytes,
               priority: int) -> Future[Any]:
        """Start ``runner(payload)``; the future gives its list of encoded messages."""

    def cancel(self, future: Future[Any]) -> bool:
        """Cancel a submitted task if the executor allows it."""
        return future.cancel()

    @abstractmethod
    def shutdown(self) -> None:
        """Release the executor and every process it started."""


class ExecutorBackend(Backend):
    """Any ``concurrent.futures.Executor``: a process pool, a Dask client's, Globus Compute's.

    Given a factory, the executor is built in the task server's process (executors holding
    threads or connections do not survive the fork that starts the server) and rebuilt if it
    breaks, e.g. when a worker of a process pool is killed.

    Args:
        executor: The executor, or a zero-argument callable that builds it.
        max_in_flight: Tasks submitted at once; ``'auto'`` uses the executor's worker count when
            it has one (standard pools) and no limit otherwise; None means no limit.
    """

    lost_errors = (BrokenExecutor,)

    def __init__(self, executor: ExecutorSpec, max_in_flight: InFlight = "auto"):
        if not isinstance(executor, Executor) and not callable(executor):
            raise TypeError(f"expected a concurrent.futures.Executor or a factory of one, "
                            f"got {executor!r}")
        _check_in_flight(max_in_flight)
        self._factory = None if isinstance(executor, Executor) else executor
        self._executor = executor if isinstance(executor, Executor) else None
        self._max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._abandoned: list[Future[Any]] = []

    def start(self) -> None:
        if self._executor is None:
            assert self._factory is not None
            self._executor = self._build()
        self.capacity = self._capacity(self._executor)

    def _build(self) -> Executor:
        assert self._factory is not None
        executor = self._factory()
        if not isinstance(executor, Executor):
            raise TypeError(f"the executor factory {self._factory!r} returned {executor!r}, "
                            "not a concurrent.futures.Executor")
        return executor

    def _capacity(self, executor: Executor) -> int | None:
        if self._max_in_flight != "auto":
            return self._max_in_flight
        workers = getattr(executor, "_max_workers", None)
        return workers if isinstance(workers, int) and workers > 0 else None

    def submit(self, runner: Callable[[bytes], list[bytes]], payload: bytes,
               priority: int) -> Future[Any]:
        executor = self._executor
        assert executor is not None, "start() the backend first"
        try:
            return executor.submit(runner, payload)
        except BrokenExecutor:
            if self._factory is None:
                raise
            return self._replace(executor).submit(runner, payload)

    def _replace(self, broken: Executor) -> Executor:
        with self._lock:
            if self._executor is broken:
                logger.warning("executor %r is broken (a worker died); building a new one",
                               broken)
                broken.shutdown(wait=False, cancel_futures=True)
                self._executor = self._build()
            assert self._executor is not None
            return self._executor

    def workers(self) -> int | None:
        workers = getattr(self._executor, "_max_workers", None)  # standard pools
        return workers if isinstance(workers, int) and workers > 0 else None

    def cancel(self, future: Future[Any]) -> bool:
        if future.cancel():
            return True
        self._abandoned.append(future)
        return False

    def shutdown(self) -> None:
        """Shut the executor down, without waiting for tasks the server gave up on: a process
        pool's workers still running one are killed; other executors (a thread pool, whose
        threads cannot be killed; a remote service) are left to finish them, and the server's
        process does not wait for them (see :attr:`left_threads_running`)."""
        executor = self._executor
        if executor is None:
            return
        running = any(not f.done() for f in self._abandoned)  # timed-out tasks still running
        if running and _kill_pool_processes(executor):
            running = False
        executor.shutdown(wait=not running, cancel_futures=True)
        self.left_threads_running = running


class ExecutorEngine(Engine):
    """Run each task on one of several named backends.

    Args:
        backends: The backends, by executor name.
        placement: For each method name, the executors it may run on (default: all).
    """

    def __init__(self, backends: Mapping[str, Backend],
                 placement: Mapping[str, Sequence[str]] | None = None):
        if not backends:
            raise ValueError("an executor engine needs at least one executor")
        self.backends = dict(backends)
        self.executors = tuple(self.backends)
        self.placement = {m: tuple(names) for m, names in (placement or {}).items()}
        self._runners: dict[tuple[str, str], TaskRunner] = {}
        self._gates: dict[str, PriorityGate | None] = {}
        self._load = dict.fromkeys(self.executors, 0)
        self._lock = threading.Lock()
        # Per executor: its tasks not done, and those given up on that it could not cancel.
        self._live: dict[str, set[Future[list[Parts]]]] = {name: set() for name in self.executors}
        self._held: dict[str, set[Future[Any]]] = {name: set() for name in self.executors}

    def start(self, context: WorkerContext) -> None:
        self._context = context
        for name, backend in self.backends.items():
            backend.start()
            self._gates[name] = PriorityGate(backend.capacity) if backend.capacity else None
        self._runners = {(m, e): TaskRunner(method, context.key, e)
                         for m, method in context.methods.items() for e in self._placed(m)}

    def _placed(self, method: str) -> Sequence[str]:
        return self.placement.get(method, self.executors)

    def submit(self, request: Routing, parts: Parts) -> Future[list[Parts]]:
        assert request.method is not None
        name = self._choose(request)
        runner = self._runner(request.method, name)
        outer: _TaskFuture = _TaskFuture(name)
        self._count(name, outer)
        start = partial(self._start, outer, runner, join(parts), request.priority)
        gate = self._gates[name]
        if gate is None:
            start()
        else:
            gate.offer(request.priority, start)
        return outer

    def _choose(self, request: Routing) -> str:
        """The requested executor, else the one of the method's whose load (its tasks running
        or waiting for a slot) would be the smallest share of its capacity."""
        assert request.method is not None
        if request.executor is not None:
            return request.executor
        names = self._placed(request.method)
        if len(names) == 1:
            return names[0]
        with self._lock:
            return min(names, key=self._share_with_one_more)

    def _share_with_one_more(self, name: str) -> float:
        """With the lock held: the executor's load with one more task, per slot (an executor
        without a capacity counts as one slot)."""
        return (self._load[name] + 1) / (self.backends[name].capacity or 1)

    def _count(self, name: str, future: Future[list[Parts]]) -> None:
        """Count a task in its executor's load until its future is done (or cancelled)."""
        with self._lock:
            self._load[name] += 1
            self._live[name].add(future)
        future.add_done_callback(partial(self._uncount, name))

    def _uncount(self, name: str, future: Future[list[Parts]]) -> None:
        with self._lock:
            self._load[name] -= 1
            self._live[name].discard(future)

    def _runner(self, method: str, executor: str) -> TaskRunner:
        runner = self._runners.get((method, executor))
        if runner is None:  # an executor= outside the method's usual ones
            runner = TaskRunner(self._context.methods[method], self._context.key, executor)
            self._runners[method, executor] = runner
        return runner

    def _start(self, outer: _TaskFuture, runner: TaskRunner, payload: bytes,
               priority: int) -> bool:
        """Hand one task to its backend; False if it was cancelled or refused."""
        if not outer.set_running_or_notify_cancel():
            return False
        backend = self.backends[outer.executor]
        try:
            inner = backend.submit(runner, payload, priority)
        except Exception as exc:
            outer.set_exception(self._translate(backend, exc))
            return False
        outer.inner = inner
        inner.add_done_callback(partial(self._finish, outer))
        return True

    def _finish(self, outer: _TaskFuture, inner: Future[Any]) -> None:
        """Hand the backend's outcome to the server. It runs in the executor's own thread (a
        process pool's manager thread): nothing may escape it, and the slot is freed whatever
        happens."""
        try:
            try:
                messages: list[Parts] = [[m] for m in inner.result()]
            except BaseException as exc:  # the task's or the executor's: the server reports it
                outer.set_exception(self._translate(self.backends[outer.executor], exc))
            else:
                outer.set_result(messages)
        except BaseException:
            logger.exception("handing over the outcome of a task on executor %r failed",
                             outer.executor)
        finally:
            gate = self._gates[outer.executor]
            if gate is not None:
                gate.release()

    def _translate(self, backend: Backend, exc: BaseException) -> BaseException:
        if isinstance(exc, backend.lost_errors):
            lost = WorkerLost(f"the worker running the task on executor {self._name(backend)!r} "
                              f"died: {exc!r}")
            lost.__cause__ = exc
            return lost
        return exc

    def _name(self, backend: Backend) -> str:
        return next(n for n, b in self.backends.items() if b is backend)

    def cancel(self, future: Future[list[Parts]]) -> bool:
        if future.cancel():  # still waiting for a slot
            return True
        inner = getattr(future, "inner", None)
        if inner is None:
            return False
        name: str = future.executor  # type: ignore[attr-defined]
        if self.backends[name].cancel(inner):
            return True
        with self._lock:  # it keeps a worker until it ends
            self._held[name].add(inner)
        inner.add_done_callback(partial(self._unhold, name))
        return False

    def _unhold(self, name: str, inner: Future[Any]) -> None:
        with self._lock:
            self._held[name].discard(inner)

    def stranded(self) -> dict[Future[list[Parts]], str]:
        """The tasks of every executor all of whose workers hold tasks given up on."""
        stranded: dict[Future[list[Parts]], str] = {}
        for name, backend in self.backends.items():
            with self._lock:
                held = set(self._held[name])
                waiting = [f for f in self._live[name] if getattr(f, "inner", None) not in held]
            if not held or not waiting:
                continue
            workers = backend.workers()
            if workers is None or len(held) < workers:
                continue
            reason = (f"every worker of executor {name!r} ({workers}) still runs a task the "
                      "server gave up on (timed out), and it cannot stop them")
            stranded.update(dict.fromkeys(waiting, reason))
        return stranded

    def shutdown(self) -> None:
        for name, backend in self.backends.items():
            try:
                backend.shutdown()
            except Exception:
                logger.exception("shutting down executor %r failed", name)

    def left_threads_running(self) -> bool:
        return any(backend.left_threads_running for backend in self.backends.values())


class _TaskFuture(Future[list[Parts]]):
    """The server's future for one task; remembers where the task went."""

    def __init__(self, executor: str):
        super().__init__()
        self.executor = executor
        self.inner: Future[Any] | None = None


class ExecutorTaskServer(TaskServer):
    """A task server running methods on any ``concurrent.futures.Executor``.

    Args:
        methods: Functions or TaskMethods, each optionally as ``(method, {'executors': [...]})``
            to limit where it runs.
        queues: Server side of the queues.
        executors: Executors by name, or zero-argument factories building them in the server's
            process (needed for executors that hold threads or connections, e.g. a Dask client).
        default_executors: Where methods without options run: ``'all'`` or a list of names.
        max_in_flight: Tasks handed to each executor at once (an int, None for no limit, or
            ``'auto'``: the pool's worker count when it has one); the rest wait highest priority
            first. Also accepted as a mapping from executor name to such a value.
    """

    def __init__(self, methods: Iterable[MethodSpec], queues: BaseQueues,
                 executors: Mapping[str, ExecutorSpec],
                 default_executors: str | Sequence[str] = "all",
                 max_in_flight: InFlight | Mapping[str, InFlight] = "auto"):
        if not executors:
            raise ValueError("executors must name at least one executor, e.g. "
                             "{'default': ProcessPoolExecutor}")
        limits = _per_executor(max_in_flight, executors)
        backends = {name: ExecutorBackend(spec, limits[name]) for name, spec in executors.items()}
        tasks, placement = parse_methods(methods, list(executors), default_executors)
        super().__init__(queues, tasks, ExecutorEngine(backends, placement))


def parse_methods(methods: Iterable[MethodSpec], executors: Sequence[str],
                  default_executors: str | Sequence[str] = "all"
                  ) -> tuple[list[TaskMethod], dict[str, tuple[str, ...]]]:
    """Split method specs into methods and, per method name, the executors it runs on."""
    defaults = check_executors(default_executors, executors, "default_executors")
    tasks: list[TaskMethod] = []
    placement: dict[str, tuple[str, ...]] = {}
    for spec in methods:
        function, options = spec if isinstance(spec, tuple) else (spec, {})
        unknown = set(options) - set(_METHOD_OPTIONS)
        if unknown:
            raise ValueError(f"unknown method options {sorted(unknown)} for {function!r}; "
                             f"valid options: {list(_METHOD_OPTIONS)}")
        method = as_method(function)
        chosen = options.get("executors", defaults)
        placement[method.name] = check_executors(chosen, executors, f"executors of {method.name}")
        tasks.append(method)
    return tasks, placement


def check_executors(chosen: str | Sequence[str], executors: Sequence[str],
                    what: str) -> tuple[str, ...]:
    """Validate a choice of executors (``'all'``, one name or a list of names)."""
    if chosen == "all":
        return tuple(executors)
    names = (chosen,) if isinstance(chosen, str) else tuple(chosen)
    bad = [n for n in names if n not in executors]
    if bad or not names:
        raise ValueError(f"{what}: unknown executors {bad or names!r}; "
                         f"valid executors: {sorted(executors)} or 'all'")
    return names


def _check_in_flight(value: object) -> None:
    if value is None or value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_in_flight must be a positive integer, None or 'auto', "
                         f"got {value!r}")


def _per_executor(value: InFlight | Mapping[str, InFlight],
                  executors: Mapping[str, Any]) -> dict[str, InFlight]:
    if not isinstance(value, Mapping):
        return dict.fromkeys(executors, value)
    unknown = set(value) - set(executors)
    if unknown:
        raise ValueError(f"max_in_flight names unknown executors {sorted(unknown)}; "
                         f"valid executors: {sorted(executors)}")
    return {name: value.get(name, "auto") for name in executors}


def _kill_pool_processes(executor: Executor) -> bool:
    """Stop the workers of a standard process pool so a hung task the server gave up on (timed
    out, or running when the server had to stop at once) cannot block exit; False if the
    executor has no processes to kill."""
    processes = getattr(executor, "_processes", None)
    if processes is None:
        return False
    for process in list(processes.values()):
        logger.warning("killing pool worker %s, still running a task given up on", process.pid)
        process.kill()
    return True
