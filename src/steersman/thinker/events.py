"""An Event that tells listeners when it is set, so waiters can react without polling."""

from __future__ import annotations

import threading
from collections.abc import Callable

Listener = Callable[[], None]


class Flag(threading.Event):
    """A :class:`threading.Event` whose `set()` also calls registered listeners.

    steersman uses it for ``thinker.done`` and for events that wake event responders, so a
    waiter blocked elsewhere (a queue, the resource counter) is woken at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self._listeners: list[Listener] = []
        self._listeners_lock = threading.Lock()

    def add_listener(self, listener: Listener) -> None:
        with self._listeners_lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._listeners_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def set(self) -> None:
        super().set()
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener()


def as_flag(event: threading.Event) -> Flag:
    """A Flag with the same state as `event` (the event itself if it already is one)."""
    if isinstance(event, Flag):
        return event
    flag = Flag()
    if event.is_set():
        flag.set()
    return flag


def wait_for_any(flags: list[Flag], timeout: float | None = None) -> bool:
    """Block until one of `flags` is set (True) or `timeout` passes (False), without polling."""
    trigger = threading.Event()
    for flag in flags:
        flag.add_listener(trigger.set)
    try:
        if any(flag.is_set() for flag in flags):
            return True
        return trigger.wait(timeout)
    finally:
        for flag in flags:
            flag.remove_listener(trigger.set)
