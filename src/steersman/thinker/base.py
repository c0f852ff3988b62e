"""BaseThinker: the steering policy of a campaign, written as cooperating agent threads."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from steersman.exceptions import AgentError
from steersman.queue.base import BaseQueues
from steersman.thinker.agents import MARK, AgentSpec, run_agent
from steersman.thinker.events import Flag, as_flag
from steersman.thinker.resources import ResourceCounter

if TYPE_CHECKING:
    from steersman.allocation.campaign import CampaignAllocator
    from steersman.campaign.session import Campaign

#: After one agent fails, how long the others get to notice before `run()` raises anyway.
FAILURE_GRACE = 0.05


class BaseThinker(threading.Thread):
    """Subclass it, decorate methods as agents, call `run()` (or `start()` and `join()`).

    Shared by all agents: ``self.queues`` to talk to the task server, ``self.rec`` the resource
    counter, ``self.done`` the completion flag, ``self.logger`` a logger named after the running
    agent, and ``self.local_details`` for per-thread state.

    Args:
        queues: Client side of the queues to the task server.
        resource_counter: Slots per task type; needed by task submitters and event responders
            that move slots.
        daemon: Whether the thinker's thread (when started with `start()`) is a daemon.
        logger_name: Prefix of the agents' logger names (default: module and class name).
        run_dir: Directory to record the campaign in (parameters, results, log, journal) and
            to resume it from; see :mod:`steersman.campaign`.
        progress: Live progress display: None for one when stdout is a terminal, True or
            ``'rich'``, ``'tqdm'``, False.
        allocator: Re-splits the resource counter's slots among its pools while the campaign
            runs, learning from every result (see :class:`~steersman.allocation.CampaignAllocator`).
    """

    def __init__(self, queues: BaseQueues, resource_counter: ResourceCounter | None = None,
                 daemon: bool = True, logger_name: str | None = None,
                 run_dir: str | os.PathLike[str] | None = None,
                 progress: bool | str | None = None,
                 allocator: CampaignAllocator | None = None):
        super().__init__(daemon=daemon, name=type(self).__name__)
        self.queues = queues
        self.rec = resource_counter
        self.allocator = allocator
        if allocator is not None and allocator.counter is not resource_counter:
            raise ValueError("the allocator must manage this thinker's resource_counter")
        self.done = Flag()
        self.local_details = threading.local()
        self.error: AgentError | None = None
        self._logger_name = logger_name or f"{type(self).__module__}.{type(self).__name__}"
        self._thinker_logger = logging.getLogger(self._logger_name)
        self._status = threading.Condition()
        self._running: set[str] = set()
        self._failure: tuple[str, BaseException] | None = None
        self._barriers: dict[str, threading.Barrier] = {}
        self.done.add_listener(self._wake_waiters)
        from steersman.campaign.session import attach

        self.campaign: Campaign | None = attach(self, run_dir, progress)

    # --- shared objects -----------------------------------------------------------------------

    @property
    def logger(self) -> logging.Logger:
        """The logger of the agent running in this thread (the thinker's outside agents)."""
        return getattr(self.local_details, "logger", self._thinker_logger)

    @property
    def resumed(self) -> bool:
        """Whether this thinker continues a campaign journaled in its run_dir."""
        return self.campaign is not None and self.campaign.resumed

    def save_params(self, **params: Any) -> None:
        """Record parameters in params.json of the run directory, for the report and resume."""
        if self.campaign is not None:
            self.campaign.save_params(params)

    @property
    def failed(self) -> bool:
        """Whether an agent raised."""
        return self._failure is not None

    def prepare_agent(self) -> None:
        """Override to set up per-agent state (runs in each agent's thread before it starts)."""

    def tear_down_agent(self) -> None:
        """Override to clean up per-agent state (runs in each agent's thread as it ends)."""

    def resolve_count(self, value: int | str) -> int:
        """A slot count given directly or as the name of an attribute holding it."""
        count = getattr(self, value) if isinstance(value, str) else value
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"slot count must be a non-negative integer, got {value!r}={count!r}")
        return count

    def barrier_for(self, event_name: str) -> threading.Barrier:
        return self._barriers[event_name]

    @classmethod
    def list_agents(cls) -> list[tuple[str, AgentSpec]]:
        """The agents of this class: (method name, how it runs)."""
        found = []
        for name in dir(cls):
            spec = getattr(getattr(cls, name, None), MARK, None)
            if isinstance(spec, AgentSpec):
                found.append((name, spec))
        return found

    # --- running ------------------------------------------------------------------------------

    def run(self) -> None:
        """Run every agent until they finish; raise :class:`AgentError` if one fails."""
        agents = self.list_agents()
        if not agents:
            raise ValueError(f"{type(self).__name__} has no agents: decorate methods with @agent")
        self._check_and_prepare(agents)
        self._start_allocator()
        try:
            if self.campaign is not None:
                self.campaign.begin(agents)  # on resume: replay results, resend requests
            self._run_agents(agents)
        finally:
            if self.allocator is not None:
                self.queues.remove_observer(self.allocator)
            if self.campaign is not None:
                self.campaign.end(sys.exc_info()[1])

    def _start_allocator(self) -> None:
        if self.allocator is None:
            return
        self.queues.add_observer(self.allocator)
        threading.Thread(target=self.allocator.run, args=(self.done,), daemon=True,
                         name=f"{self.name}-allocator").start()

    def _run_agents(self, agents: list[tuple[str, AgentSpec]]) -> None:
        threads = [self._launch(name, spec) for name, spec in agents]
        for thread in threads:
            thread.start()
        with self._status:
            self._status.wait_for(lambda: not self._running or self._failure is not None)
            if self._failure is not None:
                self._status.wait_for(lambda: not self._running, timeout=FAILURE_GRACE)
        if self._failure is not None:
            name, exc = self._failure
            if self._running:
                self._thinker_logger.warning("agents still running after failure: %s",
                                             sorted(self._running))
            self.error = AgentError(name, exc)
            raise self.error from exc
        self._thinker_logger.info("all agents finished")

    def _check_and_prepare(self, agents: list[tuple[str, AgentSpec]]) -> None:
        responders: dict[str, int] = {}
        for name, spec in agents:
            needs_counter = spec.kind == "task_submitter" or spec.options.get(
                "reallocate_resources")
            if needs_counter and self.rec is None:
                raise ValueError(f"agent {name!r} needs slots: pass resource_counter= to "
                                 f"{type(self).__name__}.__init__")
            if spec.kind == "result_processor":
                self.queues._check_topic(spec.options["topic"])
            if spec.kind == "event_responder":
                event_name = spec.options["event_name"]
                event = getattr(self, event_name, None)
                if not isinstance(event, threading.Event):
                    raise ValueError(f"agent {name!r} responds to self.{event_name}, which is "
                                     f"{event!r}, not a threading.Event")
                setattr(self, event_name, as_flag(event))
                responders[event_name] = responders.get(event_name, 0) + 1
        for event_name, count in responders.items():
            event = getattr(self, event_name)
            self._barriers[event_name] = threading.Barrier(count, action=event.clear)

    def _launch(self, name: str, spec: AgentSpec) -> threading.Thread:
        method: Callable[..., Any] = getattr(self, name)
        if self.campaign is not None:
            method = self.campaign.wrap_agent(name, spec, method)
        self._running.add(name)
        return threading.Thread(target=self._agent_body, args=(name, spec, method),
                                name=name, daemon=True)

    def _agent_body(self, name: str, spec: AgentSpec, method: Callable[..., Any]) -> None:
        self.local_details.logger = logging.getLogger(f"{self._logger_name}.{name}")
        self.local_details.agent_name = name
        try:
            self.prepare_agent()
            try:
                run_agent(self, method, spec)
            finally:
                self.tear_down_agent()
        except BaseException as exc:
            self._fail(name, exc)
        else:
            if not spec.startup:
                self.done.set()
        finally:
            with self._status:
                self._running.discard(name)
                self._status.notify_all()

    def _fail(self, name: str, exc: BaseException) -> None:
        self.logger.error("agent %s failed: %r", name, exc, exc_info=exc)
        with self._status:
            if self._failure is None:
                self._failure = (name, exc)
            self._status.notify_all()
        for barrier in self._barriers.values():
            barrier.abort()
        self.done.set()

    def _wake_waiters(self) -> None:
        self.queues.wake()
        if self.rec is not None:
            self.rec.wake()
