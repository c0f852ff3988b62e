"""Run tasks on Parsl executors: HighThroughputExecutor on a laptop, a cluster or several sites.

The task server loads the Parsl configuration in its own process. Python tasks go straight to
the chosen executor (HighThroughputExecutor honours our priorities); retries, timeouts and
placement are ours, so the per-task bookkeeping of Parsl's DataFlowKernel is skipped on that hot
path. Executable tasks run as three Parsl apps on the same executor — a Python app for
pre-processing, a bash app for the command, a Python app for post-processing — with each step
timed into the Result; the steps share a run directory, so the workers of one executor need a
shared file system when they span nodes.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from functools import lru_cache, partial
from pathlib import Path
from time import perf_counter, time
from typing import TYPE_CHECKING, Any

from steersman.exceptions import ExecutableError
from steersman.models.messages import Kind, Routing, decode, encode, join
from steersman.models.methods import TASK_ERRORS, ExecutableMethod, decode_task_inputs
from steersman.models.result import Result
from steersman.queue.base import BaseQueues
from steersman.task_server.base import TaskServer
from steersman.task_server.engine import Parts, WorkerContext
from steersman.task_server.executor import (
    Backend,
    ExecutorEngine,
    MethodSpec,
    parse_methods,
)
from steersman.task_server.worker import encode_final

if TYPE_CHECKING:
    from parsl.config import Config

logger = logging.getLogger(__name__)

#: Parsl hands the task's resource specification (our priority) to the app functions too.
Spec = dict[str, Any] | None
_SIZE = struct.Struct("<Q")
_TIME_FILE = ".steersman-execute-time"
_STDERR_TAIL = 4000
#: How long to wait for the interchange to answer a command (seconds).
_COMMAND_SECONDS = 10.0


class ParslBackend(Backend):
    """One executor of the loaded Parsl configuration, fed directly (not through apps).

    A HighThroughputExecutor receives our own payload through its public ``submit_payload``:
    the runner is serialized once and cached on the workers, and the request travels as the
    raw message, so neither side pays Parsl's per-task serialization of function and arguments.
    Other Parsl executors get an ordinary ``submit(runner, {}, payload)``.

    Args:
        label: The executor's label in the Parsl configuration.
    """

    def __init__(self, label: str):
        self.label = label
        self._packed: dict[int, bytes] = {}

    def start(self) -> None:
        import parsl
        from parsl.executors import HighThroughputExecutor
        from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

        dfk = parsl.dfk()
        self._executor: Any = dfk.executors[self.label]
        self._submitting = dfk.submitter_lock  # the executor's socket is not thread safe
        self.priorities = isinstance(self._executor, HighThroughputExecutor)
        self.lost_errors = (WorkerLost, ManagerLost)

    def submit(self, runner: Callable[[bytes], list[bytes]], payload: bytes,
               priority: int) -> Future[Any]:
        future: Future[Any]
        if not self.priorities:
            with self._submitting:
                future = self._executor.submit(runner, {}, payload)
            return future
        context = {"resource_spec": self.resource_specification(priority),
                   "task_executor": {"f": f"{__name__}.{run_payload.__name__}"}}
        buffer = b"".join((self._pack(runner), payload))
        with self._submitting:
            future = self._executor.submit_payload(context, buffer)
        return future

    def _pack(self, runner: Callable[[bytes], list[bytes]]) -> bytes:
        packed = self._packed.get(id(runner))
        if packed is None:
            from parsl.serialize import serialize

            code = serialize(runner)
            packed = self._packed[id(runner)] = _SIZE.pack(len(code)) + code
        return packed

    def resource_specification(self, priority: int) -> dict[str, Any]:
        """Parsl's HighThroughputExecutor runs lower values first; ours are higher-first."""
        return {"priority": -priority} if self.priorities else {}

    def cancel(self, future: Future[Any]) -> bool:
        return False  # a cancelled HighThroughputExecutor future breaks its result thread

    def workers(self) -> int | None:
        """A HighThroughputExecutor's connected workers (None for other executors, or when the
        interchange does not answer within seconds, or no worker is connected yet)."""
        client = getattr(self._executor, "command_client", None) if self.priorities else None
        if client is None:
            return None
        try:
            managers = client.run("MANAGERS", timeout_s=_COMMAND_SECONDS)
            count = sum(int(m["worker_count"]) for m in managers if m.get("active", True))
        except Exception as exc:
            logger.warning("could not count the workers of executor %r: %r", self.label, exc)
            return None
        return count or None

    def shutdown(self) -> None:
        """Nothing of its own: the engine cleans up the whole Parsl configuration."""


class ParslEngine(ExecutorEngine):
    """The executors of a Parsl configuration, loaded in the task server's process.

    Args:
        config: The Parsl configuration.
        placement: For each method name, the executor labels it may run on.
    """

    def __init__(self, config: Config, placement: Mapping[str, Sequence[str]] | None = None):
        labels = [executor.label for executor in config.executors]
        if not labels:
            raise ValueError("the Parsl configuration has no executors")
        super().__init__({label: ParslBackend(label) for label in labels}, placement)
        self.config = config
        self._apps: dict[str, _ExecutableApps] = {}

    def start(self, context: WorkerContext) -> None:
        import parsl

        parsl.load(self.config)
        super().start(context)
        self._apps = {label: _ExecutableApps(label) for label in self.executors}

    def submit(self, request: Routing, parts: Parts) -> Future[list[Parts]]:
        assert request.method is not None
        method = self._context.methods[request.method]
        if not isinstance(method, ExecutableMethod):
            return super().submit(request, parts)
        label = self._choose(request)
        backend = self.backends[label]
        assert isinstance(backend, ParslBackend)
        chain = _ExecutableChain(method, self._apps[label], self._context.key, label,
                                 backend.resource_specification(request.priority),
                                 partial(self._translate, backend))
        self._count(label, chain.future)
        chain.start(join(parts))
        return chain.future

    def shutdown(self) -> None:
        import parsl

        super().shutdown()
        try:
            parsl.dfk().cleanup()
        finally:
            parsl.clear()


class ParslTaskServer(TaskServer):
    """A task server running methods on Parsl executors.

    Args:
        methods: Functions or TaskMethods, each optionally as
            ``(method, {'executors': ['cpu']})`` to run it only on those executors.
        queues: Server side of the queues.
        config: The Parsl configuration; it is loaded in the task server's process.
        default_executors: Executors of methods given without options: ``'all'`` or labels.
    """

    def __init__(self, methods: Iterable[MethodSpec], queues: BaseQueues, config: Config,
                 default_executors: str | Sequence[str] = "all"):
        labels = [executor.label for executor in config.executors]
        tasks, placement = parse_methods(methods, labels, default_executors)
        super().__init__(queues, tasks, ParslEngine(config, placement))


class _ExecutableApps:
    """The three Parsl apps an executable task runs as, bound to one executor."""

    def __init__(self, label: str):
        from parsl.app.app import bash_app, python_app

        self.prepare = python_app(_prepare_executable, executors=[label])
        self.execute = bash_app(_command_line, executors=[label])
        self.finish = python_app(_finish_executable, executors=[label])


class _ExecutableChain:
    """Drives one executable task through its three apps; `future` gives its messages."""

    def __init__(self, method: ExecutableMethod, apps: _ExecutableApps, key: bytes | None,
                 label: str, spec: dict[str, Any],
                 translate: Callable[[BaseException], BaseException]):
        self.method, self.apps, self.key, self.label = method, apps, key, label
        self.translate = translate
        self.options = {"parsl_resource_specification": spec} if spec else {}
        self.future: Future[list[Parts]] = Future()
        self.future.set_running_or_notify_cancel()

    def start(self, request: bytes) -> None:
        step = self.apps.prepare(self.method, request, self.key, self.label, **self.options)
        step.add_done_callback(self._prepared)

    def _prepared(self, step: Future[Any]) -> None:
        try:
            outcome = step.result()
        except BaseException as exc:
            self.future.set_exception(self.translate(exc))
            return
        if isinstance(outcome, list):  # pre-processing failed: the final result is ready
            self.future.set_result([[m] for m in outcome])
            return
        request, run_dir, command = outcome
        step = self.apps.execute(run_dir, command, **self.options)
        step.add_done_callback(partial(self._executed, request, run_dir, command))

    def _executed(self, request: bytes, run_dir: str, command: str, step: Future[Any]) -> None:
        error = step.exception()
        failure = None if error is None else _describe_failure(command, error)
        try:
            final = self.apps.finish(self.method, request, run_dir, failure, self.key,
                                     **self.options)
        except BaseException as exc:
            self.future.set_exception(exc)
            return
        final.add_done_callback(self._finished)

    def _finished(self, step: Future[Any]) -> None:
        try:
            self.future.set_result([[m] for m in step.result()])
        except BaseException as exc:
            self.future.set_exception(self.translate(exc))


def _describe_failure(command: str, error: BaseException) -> str:
    code = getattr(error, "exitcode", None)
    if code is not None:
        return f"{command} exited with code {code}"
    return f"{command} failed: {error!r}"


# --- what runs on the workers -----------------------------------------------------------------


def run_payload(buffer: bytes) -> list[bytes]:
    """Run one task sent by :meth:`ParslBackend.submit` (on a HighThroughputExecutor worker)."""
    view = memoryview(buffer)
    (size,) = _SIZE.unpack_from(view)
    runner = _load_runner(bytes(view[_SIZE.size:_SIZE.size + size]))
    return runner(view[_SIZE.size + size:])


@lru_cache(maxsize=64)
def _load_runner(code: bytes) -> Callable[[Any], list[bytes]]:
    from parsl.serialize import deserialize

    runner: Callable[[Any], list[bytes]] = deserialize(code)
    return runner


def _prepare_executable(method: ExecutableMethod, request: bytes, key: bytes | None,
                        executor: str, parsl_resource_specification: Spec = None
                        ) -> list[bytes] | tuple[bytes, str, str]:
    """Pre-process on the worker: the request (with timings), run directory and command line.

    A failure returns the final failed result message instead.
    """
    result = decode(request, key=key).result
    assert result is not None
    result.mark_worker(executor)
    result.complete = True
    result.timestamp.compute_started = time()
    start = perf_counter()
    run_dir: str | None = None
    try:
        args, kwargs = decode_task_inputs(result)
        run_dir = tempfile.mkdtemp(prefix=method.run_dir_prefix)
        arguments, stdin = method.preprocess(Path(run_dir), args, kwargs)
        (Path(run_dir) / "stdin.txt").write_text(stdin or "")
        command = shlex.join(method.command_line(result.resources, arguments))
    except TASK_ERRORS as exc:
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
        result.set_failure(exc)
        return [join(_finalize(result, key))]
    result.time.additional["preprocess"] = perf_counter() - start
    return join(encode(Kind.REQUEST, result, key=key)), run_dir, command


def _command_line(run_dir: str, command: str, parsl_resource_specification: Spec = None) -> str:
    """The bash app: run the command in its directory, timing it with bash's `time`."""
    return (f"cd {shlex.quote(run_dir)} && TIMEFORMAT=%R && "
            f"{{ time {command} <stdin.txt >stdout.txt 2>stderr.txt ; }} 2>{_TIME_FILE}")


def _finish_executable(method: ExecutableMethod, request: bytes, run_dir: str,
                       failure: str | None, key: bytes | None,
                       parsl_resource_specification: Spec = None) -> list[bytes]:
    """Post-process on the worker and encode the final result; removes the run directory."""
    result = decode(request, key=key).result
    assert result is not None
    directory = Path(run_dir)
    try:
        _read_execute_time(result, directory)
        if failure is not None:
            tail = _tail(directory / "stderr.txt")
            raise ExecutableError(f"{failure}; stderr ends:\n{tail}")
        start = perf_counter()
        value = method.postprocess(directory)
        result.time.additional["postprocess"] = perf_counter() - start
        result.set_result(value)
    except TASK_ERRORS as exc:
        result.set_failure(exc)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return [join(_finalize(result, key))]


def _read_execute_time(result: Result, directory: Path) -> None:
    try:
        text = (directory / _TIME_FILE).read_text().split()
        result.time.additional["execute"] = float(text[-1])
    except (OSError, ValueError, IndexError):
        pass


def _tail(path: Path) -> str:
    try:
        return path.read_bytes()[-_STDERR_TAIL:].decode(errors="replace")
    except OSError:
        return ""


def _finalize(result: Result, key: bytes | None) -> Parts:
    result.timestamp.compute_ended = time()
    if result.timestamp.compute_started is not None:
        result.time.running = result.timestamp.compute_ended - result.timestamp.compute_started
    return encode_final(result, key)
