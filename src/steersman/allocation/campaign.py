"""Inside a campaign: re-split a thinker's worker slots among its pools as the campaign runs.

The allocator fits each pool's throughput from the task durations it observes, combines it with
the pending workload of each pool, and moves *idle* slots toward the best split (release to the
unallocated pool, then assign), so no running task is disturbed.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from time import time
from typing import Any

from steersman.allocation.constraints import Constraint, Distribution
from steersman.allocation.curves import Curve, MeasuredCurve
from steersman.allocation.hysteresis import Planner, is_feasible
from steersman.allocation.workload import PowerModel
from steersman.thinker.resources import ResourceCounter

__all__ = ["CampaignAllocator", "PoolLimits"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolLimits:
    """Range of slots a pool may hold, and its weight in the throughput target."""

    min: int = 0
    max: int | None = None
    weight: float = 1.0


LimitsLike = PoolLimits | tuple[int, int | None] | Mapping[str, Any] | None


def _limits(value: LimitsLike) -> PoolLimits:
    if value is None:
        return PoolLimits()
    if isinstance(value, PoolLimits):
        return value
    if isinstance(value, tuple):
        return PoolLimits(value[0], value[1])
    return PoolLimits(**value)


@dataclass
class _Pool:
    limits: PoolLimits
    curve: MeasuredCurve
    workload: float | None = None
    task_slots: float = 1.0


class CampaignAllocator:
    """Keeps a `ResourceCounter`'s pools near the best split for a target.

    Args:
        counter: the thinker's resource counter; the allocator moves its slots.
        pools: the pools to manage, as names or as {name: PoolLimits | (min, max) | dict};
            default every task type of the counter.
        target: ``makespan`` (default: finish pending work soonest), ``throughput``, ``energy``
            or ``share`` (slots proportional to pending work).
        threshold: relative gain below which slots are not moved.
        move_cost: cost of moving one slot, in the target's units.
        curves: known curves per pool (tasks per second on c slots) used until measured.
        power: power model for the energy target.

    Feed it with `observe` (a task finished) and `set_workload` (tasks pending); run `run` in a
    thread or call `rebalance` directly. Pools without a workload count as having none under
    the makespan and energy targets, so they shrink to their minimum.
    """

    def __init__(
        self,
        counter: ResourceCounter,
        pools: Sequence[str] | Mapping[str, LimitsLike] | None = None,
        target: str = "makespan",
        threshold: float = 0.01,
        move_cost: float = 0.0,
        curves: Mapping[str, Curve] | None = None,
        power: PowerModel | None = None,
    ):
        if pools is None:
            pools = list(counter.task_types)
        spec = dict(pools) if isinstance(pools, Mapping) else dict.fromkeys(pools)
        if not spec:
            raise ValueError("pools is empty; name at least one pool of the counter")
        for name in spec:
            if name not in counter.task_types:
                raise ValueError(f"pool {name!r} is not a task type of the counter; "
                                 f"valid pools: {counter.task_types}")
        curves = dict(curves or {})
        unknown = set(curves) - set(spec)
        if unknown:
            raise ValueError(f"curves for unknown pools {sorted(unknown)}; pools: {list(spec)}")
        self.counter = counter
        self.planner = Planner(target, threshold, move_cost, power)
        self._pools = {name: _Pool(_limits(lim), MeasuredCurve(prior=curves.get(name)))
                       for name, lim in spec.items()}
        need = sum(p.limits.min for p in self._pools.values())
        if need > counter.total_slots:
            raise ValueError(f"pool minimums add up to {need} slots; the counter has "
                             f"{counter.total_slots}")
        self._target: Distribution | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._unfinished = False
        self.history: deque[tuple[float, dict[str, int]]] = deque(maxlen=10_000)
        counter.add_listener(self._on_counter_change)

    # --- observations -------------------------------------------------------------------------

    def observe(self, pool: str, seconds: float, slots: int = 1) -> None:
        """One task of `pool` finished after `seconds` seconds of running on `slots` slots."""
        state = self._pool(pool)
        if not seconds >= 0 or math.isinf(seconds):
            raise ValueError(f"seconds={seconds!r} must be a finite duration >= 0")
        if slots < 1:
            raise ValueError(f"slots={slots!r} must be >= 1")
        if seconds == 0:
            return  # too fast to time; carries no information
        concurrent = max(self.counter.allocated_slots(pool), slots)
        state.curve.record(concurrent, concurrent / (slots * seconds))
        state.task_slots = 0.8 * state.task_slots + 0.2 * slots
        self._wake.set()

    def observe_result(self, result: Any, pool: str | None = None) -> None:
        """`observe` from a Result: pool from its topic, running time from ``result.time``.

        Results of other topics, failures and results without a running time are skipped.
        """
        pool = pool or getattr(result, "topic", None)
        seconds = getattr(getattr(result, "time", None), "running", None)
        if pool not in self._pools or seconds is None or getattr(result, "success", True) is False:
            return
        slots = int(getattr(result, "task_info", {}).get("slots", 1))
        self.observe(str(pool), float(seconds), slots)

    # The queue-observer contract, so a thinker can feed the allocator every result it receives.

    def request_sent(self, result: Any) -> None:
        """Nothing to learn from a request."""

    def result_received(self, result: Any) -> None:
        """Learn from every result the thinker receives."""
        self.observe_result(result)

    def set_workload(self, pool: str, pending: float | None) -> None:
        """Tasks still to run in `pool` (None: unknown)."""
        if pending is not None and not (pending >= 0 and math.isfinite(pending)):
            raise ValueError(f"pending={pending!r} for pool {pool!r} must be finite and >= 0")
        self._pool(pool).workload = pending
        self._wake.set()

    def curve(self, pool: str) -> Curve:
        """The current throughput curve of `pool` (tasks per second on c slots)."""
        return self._pool(pool).curve.snapshot()

    def _pool(self, name: str) -> _Pool:
        try:
            return self._pools[name]
        except KeyError:
            raise ValueError(f"unknown pool {name!r}; valid pools: {list(self._pools)}") from None

    # --- decisions ----------------------------------------------------------------------------

    def constraints(self) -> list[Constraint]:
        """What the policy sees now: limits, fitted curve and workload of each pool.

        A pool's max is capped at the slots its pending tasks can use.
        """
        out = []
        for name, p in self._pools.items():
            high = p.limits.max
            if p.workload is not None:
                usable = max(p.limits.min, math.ceil(p.workload) * max(1, round(p.task_slots)))
                high = usable if high is None else min(high, usable)
            work = p.workload
            if work is None and self.planner.target.name in ("makespan", "energy"):
                work = 0.0
            out.append(Constraint(name, p.limits.min, high, p.curve.snapshot(), work,
                                  p.limits.weight))
        return out

    def rebalance(self) -> Distribution:
        """Move idle slots toward the best split; returns the split aimed at."""
        with self._lock:
            constraints = self.constraints()
            total = self.counter.total_slots
            current = self._current()
            reference = self._target if self._target is not None and \
                is_feasible(constraints, self._target, total) else current
            goal = self.planner.plan(constraints, total, reference)
            goal = self._keep_surplus(goal, current, total)
            self._target = goal
            self._unfinished = not self._move(goal)
            self.history.append((time(), self._current()))
            return dict(goal)

    def _current(self) -> dict[str, int]:
        return {name: self.counter.allocated_slots(name) for name in self._pools}

    def _keep_surplus(
        self, goal: Distribution, current: Mapping[str, int], total: int
    ) -> Distribution:
        """Slots nobody needs stay where they are instead of parking in the free pool."""
        spare = total - sum(goal.values())
        out = dict(goal)
        for name in self._pools:
            keep = min(spare, max(0, current[name] - out[name]))
            out[name] += keep
            spare -= keep
        return out

    def _move(self, goal: Distribution) -> bool:
        """Release idle slots above the goal, then assign free ones below; True if all done."""
        done = True
        for name, want in goal.items():
            extra = self.counter.allocated_slots(name) - want
            if extra > 0:
                n = min(extra, self.counter.available_slots(name))
                moved = n > 0 and self.counter.reallocate(name, None, n, timeout=0)
                if moved:
                    logger.info("allocator: released %d idle slot(s) of %r", n, name)
                done &= moved and n == extra
        for name, want in goal.items():
            short = want - self.counter.allocated_slots(name)
            if short > 0:
                n = min(short, self.counter.available_slots(None))
                moved = n > 0 and self.counter.reallocate(None, name, n, timeout=0)
                if moved:
                    logger.info("allocator: assigned %d slot(s) to %r", n, name)
                done &= moved and n == short
        return done

    # --- running ------------------------------------------------------------------------------

    def _on_counter_change(self) -> None:
        if self._unfinished:  # slots went idle: maybe the pending moves can go ahead now
            self._wake.set()

    def wake(self) -> None:
        """Ask the `run` loop to rebalance now."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Rebalance whenever observations change or idle slots appear, until `stop` is set."""

        def watch() -> None:
            stop.wait()
            self._wake.set()

        threading.Thread(target=watch, name="allocator-stop", daemon=True).start()
        self._wake.set()
        while True:
            self._wake.wait()
            if stop.is_set():
                return
            self._wake.clear()
            try:
                self.rebalance()
            except ValueError:
                logger.exception("allocator could not rebalance; keeping the current split")
