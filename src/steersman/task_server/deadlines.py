"""One timer thread for every task timeout of a server: a heap of deadlines and a Condition."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from time import monotonic
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Deadlines(Generic[T]):
    """Calls `expire(item)` once each deadline passes, from a single thread.

    Items whose task finished in time are not removed: when their deadline comes, `expire` finds
    them finished and does nothing. The thread starts with the first deadline, so servers whose
    requests never set a timeout run no extra thread.

    Args:
        expire: Called with each item whose deadline passed (in the timer thread).
    """

    def __init__(self, expire: Callable[[T], None]):
        self._expire = expire
        self._heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def add(self, seconds: float, item: T) -> None:
        """Expire `item` after `seconds`."""
        entry = (monotonic() + seconds, next(self._order), item)
        with self._changed:
            if self._stopped:
                return
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:  # earlier than what the thread waits for
                self._changed.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="steersman-timeouts",
                                                daemon=True)
                self._thread.start()

    def __len__(self) -> int:
        return len(self._heap)

    def stop(self) -> None:
        """Stop the thread; pending deadlines are forgotten."""
        with self._changed:
            self._stopped = True
            self._heap.clear()
            self._changed.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            item = self._next_due()
            if item is None:
                return
            try:
                self._expire(item)
            except Exception:
                logger.exception("handling an expired deadline failed")

    def _next_due(self) -> T | None:
        with self._changed:
            while not self._stopped:
                if not self._heap:
                    self._changed.wait()
                    continue
                wait = self._heap[0][0] - monotonic()
                if wait <= 0:
                    return heapq.heappop(self._heap)[2]
                self._changed.wait(wait)
            return None
