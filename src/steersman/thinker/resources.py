"""Count the worker slots of each task type, and move them between types while a campaign runs.

Slots live in pools: one per task type plus the unallocated pool ``None``. Agents *acquire*
slots of a pool before submitting tasks, *release* them when results return, and *reallocate*
idle slots from one pool to another. Waiters are served first come, first served.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from time import monotonic
from typing import Literal

from steersman.thinker.events import Flag

logger = logging.getLogger(__name__)

Pool = str | None
#: How often a waiter re-checks a `cancel_if` that is a plain threading.Event (a Flag is instant).
PLAIN_EVENT_CHECK = 0.005


class ResourceCounter:
    """Thread-safe counts of allocated and idle slots per task type.

    Args:
        total_slots: Number of worker slots in the campaign; all start unallocated.
        task_types: Names of the pools.
    """

    def __init__(self, total_slots: int, task_types: Iterable[str] = ()):
        _check_count(total_slots, "total_slots")
        task_types = [task_types] if isinstance(task_types, str) else list(task_types)
        if None in task_types:
            raise ValueError("None is the unallocated pool and cannot be a task type")
        self.total_slots = total_slots
        self.task_types: list[str] = list(dict.fromkeys(task_types))
        pools: list[Pool] = [None, *self.task_types]
        self._allocated: dict[Pool, int] = dict.fromkeys(pools, 0)
        self._available: dict[Pool, int] = dict.fromkeys(pools, 0)
        self._allocated[None] = self._available[None] = total_slots
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiting: dict[Pool, deque[object]] = {pool: deque() for pool in pools}
        self._listeners: list[Callable[[], None]] = []
        self._move_listeners: list[Callable[[], None]] = []

    # --- observation --------------------------------------------------------------------------

    @property
    def unallocated_slots(self) -> int:
        """Slots not assigned to any task type."""
        return self._allocated[None]

    def allocated_slots(self, task: Pool) -> int:
        """Slots assigned to a pool, busy or idle."""
        self._check_pool(task)
        return self._allocated[task]

    def available_slots(self, task: Pool) -> int:
        """Idle slots of a pool."""
        self._check_pool(task)
        return self._available[task]

    def snapshot(self) -> dict[Pool, tuple[int, int]]:
        """(allocated, idle) per pool, read atomically."""
        with self._lock:
            return {pool: (count, self._available[pool]) for pool, count in self._allocated.items()}

    def add_listener(self, listener: Callable[[], None], moves_only: bool = False) -> None:
        """Call `listener()` after every change of any pool (from the thread that changed it);
        with `moves_only`, only after slots moved between pools (not on acquire and release,
        which are far more frequent)."""
        (self._move_listeners if moves_only else self._listeners).append(listener)

    # --- acquire and release ------------------------------------------------------------------

    def acquire(self, task: Pool, n_slots: int, timeout: float | None = None,
                cancel_if: threading.Event | None = None) -> bool:
        """Take `n_slots` idle slots of a pool, waiting for them in arrival order.

        Returns:
            True once acquired; False if `timeout` passed or `cancel_if` was set first.
        """
        self._check_pool(task)
        _check_count(n_slots, "n_slots")
        if n_slots > self.total_slots:
            raise ValueError(f"cannot acquire {n_slots} slots: the counter has {self.total_slots}")
        with self._watching(cancel_if), self._lock:
            if not self._wait_turn(task, n_slots, timeout, cancel_if):
                return False
            self._available[task] -= n_slots
        self._notify()
        return True

    def release(self, task: Pool, n_slots: int) -> None:
        """Return `n_slots` acquired slots to a pool's idle slots."""
        self._check_pool(task)
        _check_count(n_slots, "n_slots")
        with self._lock:
            busy = self._allocated[task] - self._available[task]
            if n_slots > busy:
                raise ValueError(
                    f"cannot release {n_slots} slots of pool {task!r}: only {busy} are acquired"
                )
            self._available[task] += n_slots
            self._changed.notify_all()
        self._notify()

    def reclaim(self, task: Pool) -> int:
        """Mark every acquired slot of a pool idle again, because whoever held them failed.

        Returns:
            How many slots were reclaimed.
        """
        self._check_pool(task)
        with self._lock:
            busy = self._allocated[task] - self._available[task]
            self._available[task] = self._allocated[task]
            self._changed.notify_all()
        if busy:
            logger.warning("reclaimed %d slot(s) of pool %r from a failed agent", busy, task)
            self._notify()
        return busy

    def remove_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling a listener added with :meth:`add_listener`."""
        for listeners in (self._listeners, self._move_listeners):
            if listener in listeners:
                listeners.remove(listener)

    def reallocate(self, task_from: Pool, task_to: Pool, n_slots: int | Literal["all"],
                   block: bool = True, callback: Callable[[], None] | None = None,
                   timeout: float | None = None,
                   cancel_if: threading.Event | None = None) -> bool:
        """Move slots from one pool to another once they are idle.

        Args:
            task_from: Pool giving the slots.
            task_to: Pool receiving them.
            n_slots: How many, or ``'all'`` for every slot allocated to `task_from` now.
            block: Wait for the move; otherwise do it in a background thread and return True.
            callback: Called after the move completes.
            timeout: Give up after this many seconds (returns False). With a timeout, asking
                for more slots than `task_from` holds is a ValueError at once: only another
                reallocation could fill the pool, and that is not what a timeout waits for.
            cancel_if: Give up when this event is set (returns False).
        """
        self._check_pool(task_from)
        self._check_pool(task_to)
        if n_slots == "all":
            n_slots = self.allocated_slots(task_from)
        _check_count(n_slots, "n_slots")
        if n_slots > self.total_slots:
            raise ValueError(f"cannot move {n_slots} slots: the counter has {self.total_slots}")
        held = self._allocated[task_from]
        if timeout is not None and n_slots > held:
            raise ValueError(f"cannot move {n_slots} slots from pool {task_from!r}: it holds "
                             f"{held}; waiting with a timeout cannot fill it (move slots into "
                             "it first, or wait without a timeout)")
        if not block:
            threading.Thread(
                target=self.reallocate, daemon=True, name=f"reallocate-{task_from}-{task_to}",
                args=(task_from, task_to, n_slots, True, callback, timeout, cancel_if),
            ).start()
            return True
        if not self.acquire(task_from, n_slots, timeout, cancel_if):
            return False
        with self._lock:
            self._allocated[task_from] -= n_slots
            self._allocated[task_to] += n_slots
            self._available[task_to] += n_slots
            self._changed.notify_all()
        logger.info("moved %d slot(s) from %r to %r", n_slots, task_from, task_to)
        self._notify(moved=True)
        if callback is not None:
            callback()
        return True

    # --- internals ----------------------------------------------------------------------------

    def _wait_turn(self, task: Pool, n_slots: int, timeout: float | None,
                   cancel_if: threading.Event | None) -> bool:
        """With the lock held: wait until this caller is first in line and enough slots idle."""
        ticket = object()
        line = self._waiting[task]
        line.append(ticket)
        deadline = None if timeout is None else monotonic() + timeout
        step = None if cancel_if is None or isinstance(cancel_if, Flag) else PLAIN_EVENT_CHECK
        try:
            while not (line[0] is ticket and self._available[task] >= n_slots):
                if cancel_if is not None and cancel_if.is_set():
                    return False
                remaining = None if deadline is None else deadline - monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if step is not None:
                    remaining = step if remaining is None else min(step, remaining)
                self._changed.wait(remaining)
            return True
        finally:
            line.remove(ticket)
            self._changed.notify_all()

    def _watching(self, cancel_if: threading.Event | None) -> _Watch:
        return _Watch(self, cancel_if if isinstance(cancel_if, Flag) else None)

    def wake(self) -> None:
        """Wake all waiters so they re-check their `cancel_if` events."""
        with self._lock:
            self._changed.notify_all()

    def _notify(self, moved: bool = False) -> None:
        for listener in [*self._listeners, *self._move_listeners] if moved else self._listeners:
            try:
                listener()
            except Exception:
                logger.exception("resource listener %r failed", listener)

    def _check_pool(self, task: Pool) -> None:
        if task not in self._allocated:
            raise ValueError(f"unknown task type {task!r}; pools are {[*self.task_types, None]}")


class _Watch:
    """Registers a wake-up on a Flag for the duration of one wait."""

    def __init__(self, counter: ResourceCounter, flag: Flag | None):
        self._counter, self._flag = counter, flag

    def __enter__(self) -> None:
        if self._flag is not None:
            self._flag.add_listener(self._counter.wake)

    def __exit__(self, *exc: object) -> None:
        if self._flag is not None:
            self._flag.remove_listener(self._counter.wake)


def _check_count(n: object, name: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
