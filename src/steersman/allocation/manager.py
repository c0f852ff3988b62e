"""The resource manager's state: who holds which core, and how to move toward the best split.

`ResourceManager` is a pure state machine (messages in, messages out) so it can be tested without
processes; `steersman.allocation.server` runs it behind a channel in its own process.

Invariants: each core is free or owned by exactly one application; a core asked back from an
application stays its own until it acknowledges, and only then can go to another.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from steersman.allocation.channels import DISCONNECT, Message
from steersman.allocation.constraints import Constraint
from steersman.allocation.curves import MeasuredCurve
from steersman.allocation.hysteresis import Planner

__all__ = ["ResourceManager"]

logger = logging.getLogger(__name__)

Outbox = list[tuple[str, Message]]

_BAD_INPUT = (ArithmeticError, AttributeError, LookupError, TypeError, ValueError)
"""What a malformed message raises while it is read (IndexError, OverflowError, ...)."""


@dataclass(eq=False)
class _App:
    constraint: Constraint
    last_seen: float
    timeout: float
    cores: set[int] = field(default_factory=set)
    releasing: set[int] = field(default_factory=set)
    target: int = 0
    measured: MeasuredCurve | None = None

    @property
    def keeping(self) -> int:
        """Cores it holds and has not been asked to give back."""
        return len(self.cores) - len(self.releasing)


@dataclass
class _Pending:
    grow: list[int] = field(default_factory=list)
    shrink: list[int] = field(default_factory=list)
    reply: bool = False
    error: str | None = None


def _refusal(client: str, message: Message, exc: Exception) -> str:
    """Log a refused message and say why, for the error reply to its sender."""
    expected = isinstance(exc, _BAD_INPUT)
    logger.warning("bad message from %r: %s (%r)", client, exc, message, exc_info=not expected)
    return str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"


class ResourceManager:
    """Cores, applications and the moves between them.

    Args:
        cores: number of cores (ids 0..R-1) or the explicit core ids.
        planner: target and hysteresis used to choose the split.
        liveness_timeout: seconds without a message after which an application is presumed dead
            and its cores are reclaimed.
    """

    def __init__(
        self,
        cores: int | Iterable[int],
        planner: Planner | None = None,
        liveness_timeout: float = 10.0,
    ):
        ids = list(range(cores)) if isinstance(cores, int) else [int(c) for c in cores]
        if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
            raise ValueError(f"cores={cores!r} must be a count > 0 or distinct ids >= 0")
        if not liveness_timeout > 0:
            raise ValueError(f"liveness_timeout={liveness_timeout!r} must be > 0")
        self.total = len(ids)
        self.planner = planner or Planner()
        self.liveness_timeout = liveness_timeout
        self.owner: dict[int, str | None] = dict.fromkeys(ids)
        self._free = sorted(ids)
        heapq.heapify(self._free)
        self.apps: dict[str, _App] = {}
        self._dirty = False

    # --- messages -----------------------------------------------------------------------------

    def handle(self, batch: Sequence[tuple[str, Message]], now: float) -> Outbox:
        """Apply a batch of client messages, re-plan once if needed, and return the replies."""
        pending: dict[str, _Pending] = {}
        for client, message in batch:
            try:
                self._handle_one(client, message, now, pending)
            except Exception as exc:  # one client's bad message must not stop the others
                pending.setdefault(client, _Pending()).error = _refusal(client, message, exc)
        self._expire(now, pending)
        if self._dirty:
            self._plan()
        self._place(pending)
        return self._flush(pending)

    def next_deadline(self) -> float | None:
        """Monotonic time at which the next silent application would be presumed dead."""
        return min((a.last_seen + a.timeout for a in self.apps.values()), default=None)

    def _handle_one(
        self, client: str, message: Message, now: float, pending: dict[str, _Pending]
    ) -> None:
        op = message.get("op")
        app = self.apps.get(client)
        if app is not None:
            app.last_seen = now
        if op == "invade":
            self._invade(client, message, now)
            pending.setdefault(client, _Pending()).reply = True
        elif op == "release":
            if app is not None:
                self._release(app, client, [int(c) for c in message.get("cores", [])])
        elif op == "report":
            if app is not None:
                self._report(app, float(message["throughput"]))
        elif op in ("retreat", DISCONNECT):
            self._remove(client, "retreated" if op == "retreat" else "disconnected")
            pending.pop(client, None)
        elif op != "heartbeat":
            raise ValueError(
                f"unknown op {op!r}; valid ops: heartbeat, invade, release, report, retreat"
            )

    def _invade(self, client: str, message: Message, now: float) -> None:
        data = {k: message.get(k) for k in ("min", "max", "curve", "workload", "weight")
                if message.get(k) is not None}
        constraint = Constraint.from_dict(client, data)
        if constraint.min > self.total:
            raise ValueError(f"min={constraint.min} exceeds the {self.total} cores managed")
        heartbeat = float(message.get("heartbeat") or 0.0)
        timeout = max(self.liveness_timeout, 3.0 * heartbeat)
        app = self.apps.get(client)
        if app is None:
            self.apps[client] = _App(constraint, now, timeout)
            logger.info("%s invades: min=%d max=%s", client, constraint.min, constraint.max)
        else:
            app.constraint, app.timeout, app.measured = constraint, timeout, None
        self._dirty = True

    def _report(self, app: _App, throughput: float) -> None:
        """A measured throughput at its current size: fit its curve from now on."""
        if app.keeping <= 0:
            return
        if app.measured is None:
            app.measured = MeasuredCurve(prior=app.constraint.curve)
        app.measured.record(app.keeping, throughput)
        self._dirty = True

    def _release(self, app: _App, client: str, cores: list[int]) -> None:
        for core in cores:
            if core in app.cores:
                app.cores.discard(core)
                app.releasing.discard(core)
                self._free_core(core)
            else:
                logger.warning("%s released core %d it does not hold", client, core)

    def _remove(self, client: str, why: str) -> None:
        app = self.apps.pop(client, None)
        if app is None:
            return
        for core in app.cores:
            self._free_core(core)
        logger.info("%s %s; %d core(s) freed", client, why, len(app.cores))
        self._dirty = True

    def _expire(self, now: float, pending: dict[str, _Pending]) -> None:
        for client, app in list(self.apps.items()):
            if now - app.last_seen > app.timeout:
                logger.warning("%s silent for %.2fs: reclaiming its cores", client, app.timeout)
                self._remove(client, "timed out")
                pending.pop(client, None)

    # --- planning and moves -------------------------------------------------------------------

    def admitted(self) -> list[str]:
        """Applications served, first come first served while their minimums fit."""
        out, need = [], 0
        for name, app in self.apps.items():
            if need + app.constraint.min > self.total:
                break
            need += app.constraint.min
            out.append(name)
        return out

    def _constraint(self, app: _App) -> Constraint:
        c = app.constraint
        if app.measured is None:
            return c
        return Constraint(c.name, c.min, c.max, app.measured.snapshot(), c.workload, c.weight)

    def _plan(self) -> None:
        self._dirty = False
        names = self.admitted()
        constraints = [self._constraint(self.apps[n]) for n in names]
        current = {n: self.apps[n].target for n in names}
        split = self.planner.plan(constraints, self.total, current)
        for name, app in self.apps.items():
            app.target = split.get(name, 0)

    def _place(self, pending: dict[str, _Pending]) -> None:
        """Ask back cores above each target; hand free cores to those below (mins first)."""
        for name, app in self.apps.items():
            extra = app.keeping - app.target
            if extra > 0:
                give_back = sorted(app.cores - app.releasing)[-extra:]
                app.releasing.update(give_back)
                pending.setdefault(name, _Pending()).shrink.extend(give_back)
        for floor in (True, False):
            for name, app in self.apps.items():
                goal = min(app.constraint.min, app.target) if floor else app.target
                while self._free and app.keeping < goal:
                    core = heapq.heappop(self._free)
                    self.owner[core] = name
                    app.cores.add(core)
                    pending.setdefault(name, _Pending()).grow.append(core)

    def _free_core(self, core: int) -> None:
        self.owner[core] = None
        heapq.heappush(self._free, core)

    def _flush(self, pending: dict[str, _Pending]) -> Outbox:
        out: Outbox = []
        for name, p in pending.items():
            if p.error is not None:
                out.append((name, {"op": "error", "error": p.error}))
            if p.grow or p.shrink or p.reply:
                out.append((name, {"op": "update", "grow": p.grow, "shrink": p.shrink,
                                   "invaded": p.reply}))
        return out

    # --- inspection ---------------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Raise AssertionError if a core is owned twice or the books disagree."""
        seen: dict[int, str] = {}
        for name, app in self.apps.items():
            assert app.releasing <= app.cores, f"{name} releases cores it does not hold"
            for core in app.cores:
                assert core not in seen, f"core {core} held by {seen[core]} and {name}"
                assert self.owner[core] == name, f"core {core}: owner {self.owner[core]} != {name}"
                seen[core] = name
        free = {c for c, o in self.owner.items() if o is None}
        assert free == set(self._free), "free list out of step with the owners"
        assert len(free) + len(seen) == self.total, "cores lost"

    def status(self) -> dict[str, Any]:
        """Per application: cores held, being released, target, and its constraint."""
        return {
            name: {"cores": sorted(a.cores), "releasing": sorted(a.releasing),
                   "target": a.target, **a.constraint.to_dict()}
            for name, a in self.apps.items()
        }
