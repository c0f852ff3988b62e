"""Run the resource manager behind a channel, in its own process (spawn-safe) or a thread."""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterable
from multiprocessing.connection import Connection
from time import monotonic
from types import TracebackType
from typing import Any

from steersman.allocation.channels import ServerChannel, connect, listen
from steersman.allocation.hysteresis import Planner
from steersman.allocation.manager import ResourceManager
from steersman.allocation.workload import PowerModel

__all__ = ["ManagerProcess", "serve"]

logger = logging.getLogger(__name__)

_BATCH = 4096


def serve(
    address: str,
    cores: int | Iterable[int],
    *,
    target: str = "throughput",
    threshold: float = 0.01,
    move_cost: float = 0.0,
    liveness_timeout: float = 10.0,
    power: PowerModel | None = None,
    shutdown_token: str | None = None,
    ready: Connection | None = None,
) -> None:
    """Serve invade/reinvade/retreat at `address` until a shutdown message carries the token.

    Messages that arrive together are handled as one batch with a single re-optimisation, so a
    burst of invades costs one decision, not one per message.

    Args:
        address: channel address (``unix://``, ``tcp://`` or ``redis://``).
        cores: number of cores managed, or their ids.
        target: optimisation target (throughput, makespan, energy, share).
        threshold: relative gain below which the current split is kept.
        move_cost: cost of moving one core, in the target's units.
        liveness_timeout: seconds of silence after which a client's cores are reclaimed.
        power: power model for the energy target.
        shutdown_token: a ``{"op": "shutdown", "token": ...}`` message with it stops the loop.
        ready: a pipe on which the real address is sent once listening; it is then closed.
    """
    manager = ResourceManager(cores, Planner(target, threshold, move_cost, power),
                              liveness_timeout)
    channel = listen(address)
    try:
        if ready is not None:
            ready.send(channel.address)
            ready.close()
        logger.info("allocation manager serving %d cores at %s", manager.total, channel.address)
        _loop(channel, manager, shutdown_token)
    finally:
        channel.close()


def _loop(channel: ServerChannel, manager: ResourceManager, token: str | None) -> None:
    while True:
        deadline = manager.next_deadline()
        timeout = None if deadline is None else max(0.0, deadline - monotonic())
        item = channel.recv(timeout)
        batch = [] if item is None else [item]
        while item is not None and len(batch) < _BATCH:
            item = channel.recv(0.0)
            if item is not None:
                batch.append(item)
        if token is not None and any(
            m.get("op") == "shutdown" and m.get("token") == token for _, m in batch
        ):
            logger.info("allocation manager shutting down")
            return
        batch = [(c, m) for c, m in batch if m.get("op") != "shutdown"]
        before = set(manager.apps)
        for client, message in manager.handle(batch, monotonic()):
            channel.send(client, message)
        for client in before - set(manager.apps):
            _forget(channel, client)


def _forget(channel: ServerChannel, client: str) -> None:
    forget = getattr(channel, "forget", None)
    if forget is not None:
        forget(client)


class ManagerProcess:
    """The manager in its own process (spawn start method), or in a thread for light use.

    Args:
        cores: number of cores (or worker slots) managed, or their ids.
        address: where to listen; default a private Unix socket in a fresh temporary directory.
        thread: run in a daemon thread of this process instead of a new process.
        **options: passed to `serve` (target, threshold, move_cost, liveness_timeout, power).

    Use as a context manager, or call `start()` and `stop()`.
    """

    def __init__(
        self,
        cores: int | Iterable[int],
        address: str | None = None,
        thread: bool = False,
        **options: Any,
    ):
        self._cores = cores if isinstance(cores, int) else list(cores)
        self._tmpdir: str | None = None
        if address is None:
            self._tmpdir = tempfile.mkdtemp(prefix="steersman-alloc-")
            address = f"unix://{os.path.join(self._tmpdir, 'manager.sock')}"
        self._requested = address
        self._thread = thread
        self._options = options
        self._token = secrets.token_hex(16)
        self._runner: Any = None
        self._failure: Exception | None = None
        self.address = address

    def start(self, timeout: float = 60.0) -> str:
        """Start serving and return the address clients should connect to."""
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=False)
        kwargs = {**self._options, "shutdown_token": self._token, "ready": child}
        args = (self._requested, self._cores)
        self._failure = None
        if self._thread:
            self._runner = threading.Thread(target=self._serve_in_thread, args=(args, kwargs),
                                            name="steersman-allocation", daemon=True)
        else:
            self._runner = ctx.Process(target=serve, args=args, kwargs=kwargs,
                                       name="steersman-allocation", daemon=True)
        try:
            self._runner.start()
            if not self._thread:
                child.close()
            return self._wait_ready(parent, timeout)
        finally:
            parent.close()

    def _wait_ready(self, parent: Connection, timeout: float) -> str:
        if not parent.poll(timeout):
            self._kill()
            raise RuntimeError(f"the allocation manager did not start within {timeout}s")
        try:
            self.address = parent.recv()
        except EOFError:
            failure = self._failure
            if failure is not None:
                raise RuntimeError(f"the allocation manager failed to start: "
                                   f"{type(failure).__name__}: {failure}") from failure
            raise RuntimeError("the allocation manager exited during start-up") from None
        return self.address

    def _serve_in_thread(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Thread body: `serve`, keeping a start-up error for `start` to raise at once."""
        ready: Connection = kwargs["ready"]
        try:
            serve(*args, **kwargs)
        except Exception as exc:
            if ready.closed:  # it was serving: nobody waits for this error but the log
                logger.exception("the allocation manager stopped on an error")
            else:
                self._failure = exc
        finally:
            ready.close()  # wakes `start` (EOF) if serve failed before saying it listens

    @property
    def pid(self) -> int | None:
        """Process id of the manager (this process when it runs in a thread)."""
        if self._runner is None:
            return None
        return os.getpid() if self._thread else int(self._runner.pid)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the manager to stop; kill the process if it does not within `timeout` seconds."""
        if self._runner is None:
            return
        if self._runner.is_alive():
            try:
                channel = connect(self.address, f"shutdown-{self._token[:8]}")
                channel.send({"op": "shutdown", "token": self._token})
                channel.close()
            except Exception:  # the manager may be wedged or its channel gone
                logger.warning("could not send shutdown to the allocation manager")
            self._runner.join(timeout)
            if self._runner.is_alive():
                self._kill()
        self._runner = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def _kill(self) -> None:
        if not self._thread and self._runner is not None:
            self._runner.kill()
            self._runner.join(5.0)

    def __enter__(self) -> ManagerProcess:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
