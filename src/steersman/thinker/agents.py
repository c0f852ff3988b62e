"""Decorators that turn thinker methods into agents, and the loops that run each kind.

``@agent`` runs once; ``@result_processor`` runs for every result of a topic;
``@task_submitter`` runs whenever slots of a pool are free; ``@event_responder`` runs when an
event is set, optionally moving slots to its pool while it works. Each works bare or with
arguments.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

from steersman.thinker.events import Flag, wait_for_any

if TYPE_CHECKING:
    from steersman.thinker.base import BaseThinker

F = TypeVar("F", bound=Callable[..., Any])
MARK = "_steersman_agent"


@dataclass(frozen=True)
class AgentSpec:
    """How an agent runs: its kind, and the options of that kind."""

    kind: str
    startup: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def _mark(func: F, spec: AgentSpec) -> F:
    if not callable(func):
        raise TypeError(f"agent decorators apply to methods, got {func!r}")
    setattr(func, MARK, spec)
    return func


def _decorate(func: Any, spec: AgentSpec) -> Any:
    if func is None:
        return lambda f: _mark(f, spec)
    return _mark(func, spec)


@overload
def agent(func: F) -> F: ...
@overload
def agent(func: None = None, *, startup: bool = False) -> Callable[[F], F]: ...
def agent(func: Any = None, *, startup: bool = False) -> Any:
    """Run a method once, in its own thread, when the thinker starts.

    Args:
        startup: If False (default) the thinker's ``done`` flag is set when the agent returns;
            startup agents may finish without ending the campaign.
    """
    return _decorate(func, AgentSpec("agent", startup))


def result_processor(func: Any = None, *, topic: str = "default") -> Any:
    """Call a method with each Result of `topic`, until the campaign is done and drained."""
    if isinstance(func, str):  # @result_processor('simulate')
        func, topic = None, func
    return _decorate(func, AgentSpec("result_processor", options={"topic": topic}))


def task_submitter(func: Any = None, *, task_type: str | None = None,
                   n_slots: int | str = 1) -> Any:
    """Call a method each time `n_slots` slots of pool `task_type` are acquired.

    The method submits a task; a result processor releases the slots when it returns.
    `n_slots` may name an attribute of the thinker holding the count; the count must be at
    least 1 (a task that takes no slot would be submitted in an endless loop).
    """
    if isinstance(n_slots, bool) or not (isinstance(n_slots, str)
                                         or isinstance(n_slots, int) and n_slots >= 1):
        raise ValueError(f"n_slots must be a positive integer or an attribute's name, "
                         f"got {n_slots!r}")
    return _decorate(func, AgentSpec("task_submitter",
                                     options={"task_type": task_type, "n_slots": n_slots}))


def event_responder(func: Any = None, *, event_name: str, reallocate_resources: bool = False,
                    gather_from: str | None = None, gather_to: str | None = None,
                    disperse_to: str | None = None, max_slots: int | str | None = None,
                    slot_step: int = 1) -> Any:
    """Call a method whenever the event named `event_name` is set.

    With `reallocate_resources`, slots move from `gather_from` to `gather_to`, `slot_step` at a
    time, until `gather_to` holds `max_slots` (an int or an attribute name; None for no limit),
    while the method runs; afterwards every slot of `gather_to` moves to `disperse_to` (``None``
    is the unallocated pool; pass ``disperse_to=gather_to`` to keep them). The event is cleared
    once every responder to it has finished.
    """
    if reallocate_resources and gather_to is None:
        raise ValueError("reallocate_resources=True needs gather_to (the pool to fill)")
    if not isinstance(slot_step, int) or slot_step < 1:
        raise ValueError(f"slot_step must be a positive integer, got {slot_step!r}")
    options = {"event_name": event_name, "reallocate_resources": reallocate_resources,
               "gather_from": gather_from, "gather_to": gather_to, "disperse_to": disperse_to,
               "max_slots": max_slots, "slot_step": slot_step}
    return _decorate(func, AgentSpec("event_responder", options=options))


# --- the loops ------------------------------------------------------------------------------


def run_agent(thinker: BaseThinker, method: Callable[[], Any], spec: AgentSpec) -> None:
    """Run one agent to completion according to its kind."""
    LOOPS[spec.kind](thinker, method, spec.options)


def _run_once(thinker: BaseThinker, method: Callable[[], Any], options: dict[str, Any]) -> None:
    method()


def _process_results(thinker: BaseThinker, method: Callable[[Any], Any],
                     options: dict[str, Any]) -> None:
    topic = options["topic"]
    queues = thinker.queues

    def finished() -> bool:
        return thinker.failed or (thinker.done.is_set() and queues.active_in(topic) == 0)

    while True:
        result = queues.wait_result(topic, None, finished)
        if result is None:
            return
        method(result)


def _submit_tasks(thinker: BaseThinker, method: Callable[[], Any], options: dict[str, Any]) -> None:
    rec = thinker.rec
    assert rec is not None
    while not thinker.done.is_set():
        n_slots = thinker.resolve_count(options["n_slots"])
        if n_slots == 0:
            raise ValueError(f"a task submitter needs at least one slot a task; "
                             f"n_slots={options['n_slots']!r} is 0")
        if rec.acquire(options["task_type"], n_slots, cancel_if=thinker.done):
            method()


def _respond_to_event(thinker: BaseThinker, method: Callable[[], Any],
                      options: dict[str, Any]) -> None:
    event: Flag = getattr(thinker, options["event_name"])
    barrier = thinker.barrier_for(options["event_name"])
    while wait_for_any([event, thinker.done]) and not thinker.done.is_set():
        if options["reallocate_resources"]:
            _respond_with_slots(thinker, method, options)
        else:
            method()
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return


def _respond_with_slots(thinker: BaseThinker, method: Callable[[], Any],
                        options: dict[str, Any]) -> None:
    rec = thinker.rec
    assert rec is not None
    stop = Flag()
    thinker.done.add_listener(stop.set)
    gatherer = threading.Thread(target=_gather, daemon=True,
                                name=f"{threading.current_thread().name}-gather",
                                args=(thinker, options, stop))
    gatherer.start()
    failed = False
    try:
        method()
    except BaseException:
        failed = True
        raise
    finally:
        stop.set()
        gatherer.join()
        thinker.done.remove_listener(stop.set)
        if failed:  # slots the responder acquired would otherwise never be idle again
            rec.reclaim(options["gather_to"])
        if options["gather_to"] != options["disperse_to"]:  # None disperses to unallocated
            rec.reallocate(options["gather_to"], options["disperse_to"], "all",
                           cancel_if=thinker.done)


def _gather(thinker: BaseThinker, options: dict[str, Any], stop: Flag) -> None:
    """Fill `gather_to` until it holds `max_slots` slots (no limit if None) or `stop` is set."""
    rec = thinker.rec
    assert rec is not None
    limit = options["max_slots"]
    maximum = rec.total_slots if limit is None else thinker.resolve_count(limit)
    while not stop.is_set() and rec.allocated_slots(options["gather_to"]) < maximum:
        step = min(options["slot_step"], maximum - rec.allocated_slots(options["gather_to"]))
        rec.reallocate(options["gather_from"], options["gather_to"], step, cancel_if=stop)


LOOPS: dict[str, Callable[..., None]] = {
    "agent": _run_once,
    "result_processor": _process_results,
    "task_submitter": _submit_tasks,
    "event_responder": _respond_to_event,
}
