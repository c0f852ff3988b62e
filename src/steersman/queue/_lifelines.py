"""Lifelines: descriptors that become readable when a process ends, watched beside a pipe.

A pipe shows that the process at its other end died by an end of file only once every process
holding that end is gone, and processes the peer started inherit it: a process pool's workers,
a helper process a task forked. They may outlive the peer for good. A lifeline watches the peer
process itself: a pidfd where the system has them (Linux 5.3 and later), which nothing else
holds; else the process's ``sentinel``, which processes forked from it inherit too (so
on such systems only the pipe's end of file is certain). Waits on the pipe also wait on the
lifelines, in the same ``poll``: no thread, no polling loop.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import threading
from collections.abc import Collection
from multiprocessing.process import BaseProcess
from time import monotonic

#: What :func:`wait_ready` returns: the descriptor is ready; the wait timed out or was woken;
#: every watched process ended and the descriptor is not ready.
READY, IDLE, ENDED = 1, 0, -1


class Lifelines:
    """The processes at the other end of a pipe (task servers), each watched by a descriptor."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: tuple[int, ...] = ()
        # Kept open until close(): another thread may still be polling them.
        self._ended: list[int] = []

    def watch(self, process: BaseProcess) -> None:
        """Watch a started process (a child of this one, not yet joined)."""
        fd = _open_lifeline(process)
        with self._lock:
            self._live = (*self._live, fd)

    @property
    def live(self) -> tuple[int, ...]:
        """Descriptors of the watched processes not known to have ended."""
        return self._live

    @property
    def all_ended(self) -> bool:
        """Whether processes were watched and every one of them ended."""
        return not self._live and bool(self._ended)

    def record(self, ready: Collection[int]) -> None:
        """Record the lifelines among `ready` descriptors as ended."""
        with self._lock:
            ended = [fd for fd in self._live if fd in ready]
            if ended:
                self._live = tuple(fd for fd in self._live if fd not in ready)
                self._ended.extend(ended)

    def close(self, inherited: bool = False) -> None:
        """Close every descriptor; `inherited`: in a child forked since they were opened
        (where the lock may have been copied held), this process's copies."""
        with contextlib.nullcontext() if inherited else self._lock:
            fds, self._live, self._ended = [*self._live, *self._ended], (), []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _open_lifeline(process: BaseProcess) -> int:
    """A descriptor of our own that becomes readable once `process` ends."""
    pid = process.pid
    if pid is None:
        raise ValueError(f"{process!r} was not started")
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        with contextlib.suppress(OSError):  # no pidfds in this kernel, or already reaped
            return int(pidfd_open(pid))
    return os.dup(process.sentinel)  # readable once it ended (and, after a fork, its children)


def wait_ready(fd: int, events: int, timeout: float | None = None, wake_fd: int | None = None,
               lifelines: Lifelines | None = None) -> int:
    """Wait until `fd` is ready for `events` (:data:`READY`), `timeout` passes or `wake_fd`
    becomes readable (:data:`IDLE`, the wake bytes read), or every process `lifelines`
    watches ended while `fd` is not ready (:data:`ENDED`). `fd` comes first: what a process
    wrote before it ended is read before its end is reported."""
    deadline = None if timeout is None else monotonic() + timeout
    wait_ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
    while True:
        live = lifelines.live if lifelines is not None else ()
        ended = lifelines is not None and lifelines.all_ended
        poller = select.poll()
        poller.register(fd, events)
        if wake_fd is not None:
            poller.register(wake_fd, select.POLLIN)
        for line in live:
            poller.register(line, select.POLLIN)
        ready = [ready_fd for ready_fd, _ in poller.poll(0 if ended else wait_ms)]
        if fd in ready:
            return READY
        if wake_fd is not None and wake_fd in ready:
            os.read(wake_fd, 4096)
            return IDLE
        if ended:  # nothing left to wait for: only what was there
            return ENDED
        if lifelines is None or not any(line in ready for line in live):
            return IDLE  # timed out
        lifelines.record(ready)  # (or another thread did)
        if lifelines.all_ended:  # `fd` was not ready in the same poll
            return ENDED
        # one process of several ended: wait on for the others
        if deadline is not None:
            wait_ms = max(0, math.ceil((deadline - monotonic()) * 1000))
