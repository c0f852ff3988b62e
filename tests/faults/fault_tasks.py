"""Task functions for the fault tests, importable by workers that are not forked from pytest."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path


def double(x: int) -> int:
    return 2 * x


def flaky(x: int, fail: bool = False) -> int:
    """Double `x`, or raise when told to (the load bench's 1% of failures)."""
    if fail:
        raise RuntimeError(f"task {x} failed on purpose")
    return 2 * x


def report_pid_and_block(fifo: str, seconds: float = 60.0) -> int:
    """Write this worker's pid into the named pipe (blocks until the test reads it), then hang.

    The test kills the worker while it hangs; the FIFO is the handshake, no polling needed.
    """
    with open(fifo, "w") as stream:
        stream.write(f"{os.getpid()}\n")
    threading.Event().wait(seconds)
    return os.getpid()


def survive_second_time(fifo: str, marker: str) -> str:
    """Hang (to be killed) the first time; succeed when retried after the kill."""
    if Path(marker).exists():
        return "survived"
    Path(marker).touch()
    report_pid_and_block(fifo)
    return "not killed"


def hang(seconds: float = 60.0) -> None:
    threading.Event().wait(seconds)


def unpicklable() -> object:
    return threading.Lock()


def shout(megabytes: int) -> int:
    """Print `megabytes` MB to stdout and return how many bytes were written."""
    chunk = "x" * ((1 << 20) - 1) + "\n"
    for _ in range(megabytes):
        sys.stdout.write(chunk)
    sys.stdout.flush()
    return megabytes * len(chunk)


def half_then_raise(n: int):  # type: ignore[no-untyped-def]
    """A generator method that yields n values, then raises half way through its work."""
    yield from range(n)
    raise ValueError(f"generator broke after {n} items")


def wait_fifo(fifo: str) -> str:
    """Block until someone opens the named pipe for writing and closes it.

    A test releases a hung task with :func:`release_fifo`; unlike a multiprocessing.Event, this
    is safe when the waiting process gets killed.
    """
    with open(fifo) as stream:
        return stream.read()


def release_fifo(fifo: str) -> bool:
    """Let a task blocked in :func:`wait_fifo` return; False if none waits on it."""
    try:
        descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: no reader (its worker was killed)
        return False
    os.close(descriptor)
    return True


def exit_with(code: int) -> None:
    """A task that ends the interpreter, as a library calling sys.exit on bad input does."""
    sys.exit(code)


def interrupt() -> None:
    raise KeyboardInterrupt


def wait_fifo_then_yield(fifo: str):  # type: ignore[no-untyped-def]
    """A generator method: yields once released (see :func:`wait_fifo`), then returns."""
    yield wait_fifo(fifo)
    return "done"


class Abort(BaseException):
    """A user's own BaseException, as some libraries define to unwind past `except Exception`."""


def raise_abort(message: str) -> None:
    raise Abort(message)


def raise_cancelled() -> None:
    """What a task driving an event loop raises when a coroutine it awaits is cancelled."""
    import asyncio

    raise asyncio.CancelledError("the coroutine was cancelled")


def other_task_threads(seconds: float = 10.0) -> list[str]:
    """In a thread of a local task server: the server's other task threads still alive after
    waiting up to `seconds` for each to end (idle ones never do)."""
    me = threading.current_thread()
    others = [t for t in threading.enumerate()
              if t.name.startswith("steersman-task") and t is not me]
    for thread in others:
        thread.join(seconds)
    return sorted(t.name for t in others if t.is_alive())
