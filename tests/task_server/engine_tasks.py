"""Task functions for the engine tests, importable by workers that are not forked from pytest.

Parsl's workers start from a fresh interpreter: the test modules put this directory on their
PYTHONPATH, so these functions are found there by name.
"""

from __future__ import annotations

import os
import select
import signal
from pathlib import Path

from steersman import ExecutableMethod


class Gate:
    """An event shared with forked processes that, unlike multiprocessing.Event, cannot hang
    when a waiter is killed: a pipe that is readable once set."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)

    def set(self) -> None:
        os.write(self._write, b"x")

    def clear(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass

    def wait(self, timeout: float) -> bool:
        return bool(select.select([self._read], [], [], timeout)[0])


#: Inherited by workers forked from the test process (local and process-pool engines).
GATE = Gate()


def add(a: int, b: int) -> int:
    return a + b


def where(tag: str = "") -> str:
    """Report nothing of interest: the Result's worker information says where it ran."""
    return tag


def fail(message: str) -> None:
    raise ValueError(message)


def wait_gate(seconds: float = 30.0) -> bool:
    """Block until the test sets GATE (forked workers only)."""
    return GATE.wait(seconds)


def wait_fifo(path: str) -> str:
    """Block until the test opens the named pipe for writing; works on any local worker."""
    with open(path) as stream:
        return stream.read()


def die_once(marker: str) -> str:
    """Kill this worker process the first time; survive when retried."""
    if not Path(marker).exists():
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def die() -> None:
    """Kill this worker process."""
    os.kill(os.getpid(), signal.SIGKILL)


def count_up(n: int):  # type: ignore[no-untyped-def]
    """A generator method: each yield is an intermediate Result."""
    yield from range(n)
    return n


class Shout(ExecutableMethod):
    """An executable method: `tr` upper-cases its standard input."""

    def __init__(self) -> None:
        super().__init__(["tr", "a-z", "A-Z"], name="shout")

    def preprocess(self, run_dir: Path, args: tuple, kwargs: dict) -> tuple[list[str], str]:
        return [], args[0]

    def postprocess(self, run_dir: Path) -> str:
        return (run_dir / "stdout.txt").read_text()
