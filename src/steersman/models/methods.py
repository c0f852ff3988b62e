"""Task methods: what a worker runs for a request, and how its outcome lands in the Result.

Every engine calls a method the same way, ``method(result, emit)``: the inputs are decoded, the
function runs, the value or the failure is recorded with timings. Generator methods stream each
yield through `emit` as an intermediate Result (``complete=False``).
"""

from __future__ import annotations

import inspect
import os
import re
import shlex
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from time import perf_counter, time
from typing import Any

from steersman.exceptions import ExecutableError
from steersman.models.result import ResourceRequirements, Result

Emit = Callable[[Result], None]
#: What a failing task may raise: anything. A task calling ``sys.exit()``, raising
#: KeyboardInterrupt, ``asyncio.CancelledError`` or a BaseException of its own fails like any
#: other rather than ending the worker, or the server thread, running it. Catch it only in plain
#: functions, never inside a generator: a generator being closed must let GeneratorExit through.
TASK_ERRORS: tuple[type[BaseException], ...] = (BaseException,)
#: At most this much of a method's name goes into the names of its run directories.
_PREFIX_CHARS = 64


class TaskMethod(ABC):
    """A function the task server can run; subclasses say how it is invoked."""

    name: str

    def __call__(self, result: Result, emit: Emit | None = None) -> Result:
        """Run the task held in `result` and record its outcome in place."""
        result.complete = True
        result.timestamp.compute_started = time()
        start = perf_counter()
        try:
            args, kwargs = decode_task_inputs(result)
            if self._wants_resources():
                kwargs = {**kwargs, "_resources": result.resources}
            value = self.run(result, args, kwargs, emit)
        except TASK_ERRORS as exc:
            result.set_failure(exc)
        else:
            result.set_result(value)
        result.time.running = perf_counter() - start
        result.timestamp.compute_ended = time()
        return result

    @abstractmethod
    def run(self, result: Result, args: tuple[Any, ...], kwargs: dict[str, Any],
            emit: Emit | None) -> Any:
        """Produce the task's value."""

    def _wants_resources(self) -> bool:
        return False


class PythonMethod(TaskMethod):
    """A plain Python function; it may take a ``_resources`` keyword to see its allocation."""

    def __init__(self, function: Callable[..., Any], name: str | None = None):
        if not callable(function):
            raise TypeError(f"a task method must be callable, got {function!r}")
        self.function = function
        self.name = name or function.__name__
        self._takes_resources = _accepts_keyword(function, "_resources")

    def _wants_resources(self) -> bool:
        return self._takes_resources

    def run(self, result: Result, args: tuple[Any, ...], kwargs: dict[str, Any],
            emit: Emit | None) -> Any:
        return self.function(*args, **kwargs)


class PythonGeneratorMethod(PythonMethod):
    """A generator function: each yield reaches the thinker as an intermediate Result.

    The final Result (``complete=True``) holds the generator's return value. Engines that cannot
    stream deliver the intermediate Results just before the final one.
    """

    def __init__(self, function: Callable[..., Iterator[Any]], name: str | None = None):
        if not inspect.isgeneratorfunction(function):
            raise TypeError(f"{function!r} is not a generator function")
        super().__init__(function, name)

    def run(self, result: Result, args: tuple[Any, ...], kwargs: dict[str, Any],
            emit: Emit | None) -> Any:
        generator = self.function(*args, **kwargs)
        while True:
            try:
                item = next(generator)
            except StopIteration as stop:
                return stop.value
            if emit is not None:
                emit(_intermediate(result, item))


class ExecutableMethod(TaskMethod):
    """An executable (optionally under MPI) run in a fresh directory per task.

    Override :meth:`preprocess` to turn the inputs into command-line arguments and standard input,
    and :meth:`postprocess` to read the value from the run directory. A non-zero exit code fails the
    task with the tail of standard error.

    Args:
        executable: The command line, as a list.
        name: The method name the thinker uses (default: the program's name).
        mpi: Whether to prefix the command with the rendered MPI launcher.
        mpi_command_string: The launcher, formatted with the task's resources, e.g.
            ``"mpiexec -n {total_ranks} --cpus-per-rank {cpu_threads}"``.
    """

    STDERR_TAIL = 4000

    def __init__(self, executable: list[str], name: str | None = None, mpi: bool = False,
                 mpi_command_string: str | None = None):
        if not executable:
            raise ValueError("executable must be a non-empty list of command-line words")
        if mpi and not mpi_command_string:
            raise ValueError("mpi=True needs mpi_command_string, e.g. 'mpiexec -n {total_ranks}'")
        self.executable = list(executable)
        self.name = name or Path(self.executable[0]).name
        self.mpi = mpi
        self.mpi_command_string = mpi_command_string

    @property
    def run_dir_prefix(self) -> str:
        """The start of a task's run directory name: the method name, as a safe file name
        (other characters replaced, shortened)."""
        safe = re.sub(r"[^A-Za-z0-9._+-]", "_", self.name)[:_PREFIX_CHARS]
        return f"steersman-{safe}-"

    def render_mpi_launch(self, resources: ResourceRequirements) -> str:
        """The MPI launch prefix for these resources."""
        assert self.mpi_command_string is not None
        fields = {**resources.model_dump(), "total_ranks": resources.total_ranks}
        return self.mpi_command_string.format(**fields)

    def command_line(self, resources: ResourceRequirements, arguments: list[str]) -> list[str]:
        """The full command to run for one task."""
        prefix = shlex.split(self.render_mpi_launch(resources)) if self.mpi else []
        return [*prefix, *self.executable, *arguments]

    def preprocess(self, run_dir: Path, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> tuple[list[str], str | None]:
        """Turn the inputs into extra arguments and standard input (default: none)."""
        return [str(a) for a in args], None

    def postprocess(self, run_dir: Path) -> Any:
        """Read the value from the run directory (default: standard output as text)."""
        return (run_dir / "stdout.txt").read_text()

    def run(self, result: Result, args: tuple[Any, ...], kwargs: dict[str, Any],
            emit: Emit | None) -> Any:
        with tempfile.TemporaryDirectory(prefix=self.run_dir_prefix) as tmp:
            run_dir = Path(tmp)
            start = perf_counter()
            arguments, stdin = self.preprocess(run_dir, args, kwargs)
            result.time.additional["preprocess"] = perf_counter() - start
            start = perf_counter()
            self.execute(run_dir, self.command_line(result.resources, arguments), stdin)
            result.time.additional["execute"] = perf_counter() - start
            start = perf_counter()
            value = self.postprocess(run_dir)
            result.time.additional["postprocess"] = perf_counter() - start
            return value

    def execute(self, run_dir: Path, command: list[str], stdin: str | None) -> None:
        """Run `command` in `run_dir`, raising :class:`ExecutableError` on a non-zero exit."""
        with open(run_dir / "stdout.txt", "wb") as out, open(run_dir / "stderr.txt", "wb") as err:
            process = subprocess.run(command, cwd=run_dir, input=stdin.encode() if stdin else None,
                                     stdout=out, stderr=err, env=os.environ.copy())
        if process.returncode != 0:
            stderr = (run_dir / "stderr.txt").read_bytes()
            tail = stderr[-self.STDERR_TAIL:].decode(errors="replace")
            raise ExecutableError(
                f"{shlex.join(command)} exited with code {process.returncode}; stderr ends:\n{tail}"
            )


def as_method(method: TaskMethod | Callable[..., Any]) -> TaskMethod:
    """Wrap a plain function (or generator function) in the matching method class."""
    if isinstance(method, TaskMethod):
        return method
    if inspect.isgeneratorfunction(method):
        return PythonGeneratorMethod(method)
    return PythonMethod(method)


def decode_task_inputs(result: Result) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The inputs as a task sees them: proxies from the request's store resolved into plain
    objects."""
    if result.proxystore_name is None:
        return result.decode_inputs()
    from steersman.proxy import resolve_inputs

    return resolve_inputs(result)


def _accepts_keyword(function: Callable[..., Any], keyword: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return keyword in parameters


def _intermediate(result: Result, item: Any) -> Result:
    partial = result.model_copy()
    partial.attach_frames(None, None)
    partial.set_result(item)
    partial.complete = False
    if not result.keep_inputs:
        partial.drop_inputs()
    return partial
