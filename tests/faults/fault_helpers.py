"""A small campaign used by the fault tests: send given requests, collect every final result."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steersman import BaseThinker, Result, agent, result_processor
from steersman.queue.base import BaseQueues


@dataclass
class Request:
    """One `send_inputs` call."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)  # options of send_inputs


class Collect(BaseThinker):
    """Send every request at once, gather each final result by task id, stop when all are in.

    `on_result(thinker, result)` runs in the result processor for each final result.
    """

    def __init__(self, queues: BaseQueues, requests: Sequence[Request],
                 on_result: Callable[[Collect, Result], None] | None = None, **options: Any):
        super().__init__(queues, **options)
        self.requests = list(requests)
        self.on_result = on_result
        self.sent: dict[str, Request] = {}
        self.results: dict[str, Result] = {}
        self.duplicates: list[Result] = []
        self.intermediate: list[Result] = []
        self.all_sent = threading.Event()
        self._lock = threading.Lock()

    @agent(startup=True)
    def send(self) -> None:
        for request in self.requests:
            task_id = self.queues.send_inputs(*request.args, method=request.method,
                                              **request.kwargs)
            self.sent[task_id] = request
        with self._lock:
            self.all_sent.set()
            self._check_finished()

    @result_processor
    def receive(self, result: Result) -> None:
        if result.complete is False:
            self.intermediate.append(result)
            return
        with self._lock:
            if result.task_id in self.results:
                self.duplicates.append(result)
            self.results[result.task_id] = result
        if self.on_result is not None:
            self.on_result(self, result)
        with self._lock:
            self._check_finished()

    def _check_finished(self) -> None:
        if self.all_sent.is_set() and len(self.results) >= len(self.requests):
            self.done.set()

    def by_method(self, method: str) -> list[Result]:
        return [r for r in self.results.values() if r.method == method]


def run_in_thread(thinker: BaseThinker) -> tuple[threading.Thread, list[BaseException]]:
    """Run `thinker.run()` in a thread; the list receives what it raised."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            thinker.run()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, raised


def read_pid(fifo: Path) -> int:
    """Wait for a task to write its worker's pid into the named pipe."""
    with open(fifo) as stream:
        return int(stream.read())


def make_fifo(directory: Path, name: str = "pid.fifo") -> Path:
    path = directory / name
    os.mkfifo(path)
    return path


def strand_then_stop(queues: BaseQueues, fifo: Path, *, timeout: float, waiting: int,
                     wait: float) -> list[Result]:
    """Hang the only worker in a task that times out (it waits on `fifo`), queue `waiting`
    tasks behind it, send the kill signal: the failed Results of those tasks, checked to be
    theirs and to say they could not start."""
    queues.send_inputs(str(fifo), method="wait_fifo", timeout=timeout)
    timed_out = queues.get_result(timeout=wait)
    assert timed_out is not None and timed_out.timed_out
    sent = {queues.send_inputs(i, method="double") for i in range(waiting)}
    assert queues.get_result(timeout=timeout) is None  # they wait for the hung worker
    queues.send_kill_signal()
    failed = [queues.get_result(timeout=wait) for _ in range(waiting)]
    assert None not in failed, "tasks waiting for the hung worker never came back"
    results = [r for r in failed if r is not None]
    assert {r.task_id for r in results} == sent
    for result in results:
        assert not result.success and "could not start" in result.failure_info.exception
    return results
