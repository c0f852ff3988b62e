"""An application's side of the manager: invade, reinvade at each step, retreat.

Typical loop::

    with AllocationClient(address) as rm:
        cores = rm.invade(min=2, max=16, curve={"amdahl": 0.05})
        while work_left():
            cores = rm.reinvade() or cores   # apply any change at the start of each step
            step(cores)
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from time import monotonic
from types import TracebackType
from typing import Any

from steersman.allocation.channels import ClientChannel, Message, connect
from steersman.allocation.constraints import Constraint
from steersman.allocation.curves import Curve, curve_from_spec
from steersman.exceptions import AllocationTimeout

__all__ = ["AllocationClient", "AllocationTimeout"]

logger = logging.getLogger(__name__)

CurveLike = Curve | Mapping[str, Any] | Sequence[Sequence[float]] | None


class AllocationClient:
    """One application's connection to the resource manager.

    Args:
        address: the manager's address (``unix://``, ``tcp://`` or ``redis://``).
        name: unique application name; default host, pid and a random suffix.
        heartbeat: seconds between liveness messages; the manager reclaims the cores of a client
            silent for max(its liveness timeout, three heartbeats).
        on_release: called with the cores being given back, before the manager is told; stop
            using them there (unpin threads, shut workers).
    """

    def __init__(
        self,
        address: str,
        name: str | None = None,
        heartbeat: float = 1.0,
        on_release: Callable[[list[int]], None] | None = None,
    ):
        if not heartbeat > 0:
            raise ValueError(f"heartbeat={heartbeat!r} must be > 0 seconds")
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._channel: ClientChannel = connect(address, self.name)
        self._heartbeat = heartbeat
        self._on_release = on_release
        self._cores: set[int] = set()
        self._active = False
        self._beating = threading.Event()
        self._beat_thread: threading.Thread | None = None

    @property
    def cores(self) -> list[int]:
        """Cores this application may use now."""
        return sorted(self._cores)

    def invade(
        self,
        min: int = 1,  # noqa: A002 - the seed's vocabulary
        max: int | None = None,  # noqa: A002
        curve: CurveLike = None,
        workload: float | None = None,
        weight: float = 1.0,
        blocking: bool = True,
        timeout: float | None = None,
    ) -> list[int]:
        """Ask for between `min` and `max` cores; calling again updates the constraints.

        Blocking waits until at least `min` cores are held (AllocationTimeout after `timeout`
        seconds); non-blocking returns at once with whatever is held, and later cores arrive
        through `reinvade`.
        """
        constraint = Constraint(self.name, min, max, curve_from_spec(curve), workload, weight)
        self._channel.send({"op": "invade", **constraint.to_dict(), "heartbeat": self._heartbeat})
        self._active = True
        self._start_heartbeat()
        if not blocking:
            self.reinvade()
            return self.cores
        deadline = None if timeout is None else monotonic() + timeout
        answered = False
        while not (answered and len(self._cores) >= constraint.min):
            remaining = None if deadline is None else deadline - monotonic()
            message = None if remaining is not None and remaining <= 0 else \
                self._channel.recv(remaining)
            if message is None:
                raise AllocationTimeout(
                    f"{self.name} got {len(self._cores)} of its min={constraint.min} cores "
                    f"within {timeout}s"
                )
            answered |= self._apply([message])
        return self.cores

    def reinvade(self, timeout: float = 0.0) -> list[int] | None:
        """Apply what the manager changed since the last step; call it at each step.

        Cores asked back are released (and acknowledged) here, new ones are added. Waits up to
        `timeout` seconds for the core list to change; messages that change nothing (the answer
        to an invade that granted no core, say) do not end the wait.

        Returns:
            The new core list if it changed, else None.

        Raises:
            ValueError: the manager refused an earlier request (a bad report, say); the updates
                received with the refusal are applied first, so `cores` is up to date.
        """
        before = set(self._cores)
        deadline = monotonic() + timeout
        remaining = timeout
        while True:
            message = self._channel.recv(remaining)
            if message is not None:
                self._apply(self._drain(message))
            remaining = deadline - monotonic()
            if message is None or self._cores != before or remaining <= 0:
                return None if self._cores == before else self.cores

    def _drain(self, first: Message) -> list[Message]:
        """The first message and every one already waiting behind it."""
        messages = [first]
        message = self._channel.recv(0.0)
        while message is not None:
            messages.append(message)
            message = self._channel.recv(0.0)
        return messages

    def report(self, throughput: float) -> None:
        """Tell the manager the throughput measured on the current cores (it fits a curve)."""
        self._channel.send({"op": "report", "throughput": float(throughput)})

    def retreat(self) -> None:
        """Give every core back and leave the manager."""
        if self._active:
            self._channel.send({"op": "retreat"})
        self._active = False
        self._cores.clear()
        self._stop_heartbeat()

    def close(self) -> None:
        """Retreat (if still invading) and disconnect."""
        try:
            self.retreat()
        finally:
            self._stop_heartbeat()
            self._channel.close()

    def _apply(self, messages: list[Message]) -> bool:
        """Apply grow/shrink updates; returns whether one answered an invade.

        Raises:
            ValueError: the manager refused a request; raised only once every update among
                `messages` is applied, so the core list stays the manager's.
        """
        answered, released, errors = False, [], []
        for message in messages:
            if message.get("op") == "error":
                errors.append(str(message.get("error")))
                continue
            self._cores.update(int(c) for c in message.get("grow", ()))
            for core in message.get("shrink", ()):
                if int(core) in self._cores:
                    self._cores.discard(int(core))
                    released.append(int(core))
            answered |= bool(message.get("invaded"))
        if released:
            if self._on_release is not None:
                self._on_release(sorted(released))
            self._channel.send({"op": "release", "cores": released})
        if errors:
            raise ValueError(f"the allocation manager refused: {'; '.join(errors)}")
        return answered

    def _start_heartbeat(self) -> None:
        if self._beat_thread is not None:
            return
        self._beating.clear()
        self._beat_thread = threading.Thread(
            target=self._beat, name=f"heartbeat-{self.name}", daemon=True
        )
        self._beat_thread.start()

    def _beat(self) -> None:
        while not self._beating.wait(self._heartbeat):
            try:
                self._channel.send({"op": "heartbeat"})
            except Exception as exc:  # the manager is gone; the next call will say so
                logger.warning("heartbeat to the allocation manager failed: %s", exc)
                return

    def _stop_heartbeat(self) -> None:
        self._beating.set()
        if self._beat_thread is not None and self._beat_thread is not threading.current_thread():
            self._beat_thread.join()
        self._beat_thread = None

    def __enter__(self) -> AllocationClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
