"""Targets that need workloads: makespan (finish everything soonest) and energy.

Application i finishes its workload W_i after t_i = W_i / S_i(D_i). A curve is assumed not to
decrease (idle cores do no harm); a missing curve counts as one unit of work per core-second.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from steersman.allocation.constraints import Constraint, Distribution, bounds, check
from steersman.allocation.curves import AmdahlCurve, Curve

__all__ = [
    "PowerModel",
    "energy_of",
    "finish_times",
    "makespan_of",
    "minimize_energy",
    "minimize_makespan",
]

logger = logging.getLogger(__name__)

_LINEAR = AmdahlCurve(0.0, 1.0)


@dataclass(frozen=True)
class PowerModel:
    """Power drawn per core, in watts.

    Every core of the machine draws `idle_watts` from the start until the last workload ends;
    a core assigned to application i draws `busy_watts` instead while i still works. Energy to
    finish is therefore ``idle * R * T + (busy - idle) * sum_i D_i * t_i`` with T = max_i t_i:
    more cores finish sooner (less idle energy for the whole machine) but, on a sublinear curve,
    spend more core-seconds (more busy energy). Cores left free simply idle.
    """

    idle_watts: float = 3.0
    busy_watts: float = 10.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.idle_watts <= self.busy_watts or math.isinf(self.busy_watts):
            raise ValueError(
                f"idle_watts={self.idle_watts!r} and busy_watts={self.busy_watts!r} "
                "must satisfy 0 <= idle_watts <= busy_watts < inf"
            )


def _prepare(
    constraints: Sequence[Constraint], total: int, target: str
) -> tuple[list[Curve], list[float], list[int], list[int]]:
    check(constraints, total)
    for c in constraints:
        if c.workload is None:
            raise ValueError(f"the {target} target needs a workload for {c.name!r}; got None")
    curves = [_LINEAR if c.curve is None else c.curve for c in constraints]
    work = [float(c.workload or 0.0) for c in constraints]
    lo, hi = bounds(constraints, total)
    return curves, work, lo, hi


def _time(curve: Curve, work: float, cores: int) -> float:
    if work <= 0:
        return 0.0
    speed = curve(cores)
    return work / speed if speed > 0 else math.inf


def finish_times(constraints: Sequence[Constraint], dist: Distribution) -> dict[str, float]:
    """Seconds until each application finishes its workload (inf when it cannot progress)."""
    return {
        c.name: _time(_LINEAR if c.curve is None else c.curve, c.workload or 0.0,
                      dist.get(c.name, 0))
        for c in constraints
    }


def makespan_of(constraints: Sequence[Constraint], dist: Distribution) -> float:
    """Seconds until the last application finishes."""
    return max(finish_times(constraints, dist).values(), default=0.0)


def energy_of(
    constraints: Sequence[Constraint], dist: Distribution, total: int, power: PowerModel
) -> float:
    """Joules to finish every workload on a machine of `total` cores (see `PowerModel`)."""
    times = finish_times(constraints, dist)
    end = max(times.values(), default=0.0)
    if math.isinf(end):
        return math.inf
    busy = sum(dist.get(n, 0) * t for n, t in times.items())
    return power.idle_watts * total * end + (power.busy_watts - power.idle_watts) * busy


def _cores_needed(
    curves: Sequence[Curve], work: Sequence[float], lo: Sequence[int], hi: Sequence[int],
    deadline: float,
) -> list[int] | None:
    """Fewest cores per application to finish by `deadline`, or None if one cannot."""
    out = []
    for cu, w, a, b in zip(curves, work, lo, hi):
        # any positive workload needs some throughput, even when w / deadline underflows
        c = a if w <= 0 else cu.min_cores(max(w / deadline, math.ulp(0.0)), a, b)
        if c is None:
            return None
        out.append(c)
    return out


def _largest_work_first(work: Sequence[float], lo: list[int], hi: list[int],
                        total: int) -> list[int]:
    """When not every application can run: the spare cores go to the largest workloads first."""
    alloc, spare = list(lo), total - sum(lo)
    for i in sorted(range(len(work)), key=lambda i: -work[i]):
        if spare <= 0:
            break
        if work[i] > 0 and alloc[i] == 0 and hi[i] > 0:
            alloc[i], spare = 1, spare - 1
    return alloc


def _deadline_split(
    curves: Sequence[Curve], work: Sequence[float], lo: list[int], hi: list[int], total: int
) -> list[int]:
    """Fewest cores that reach the smallest feasible makespan (bisection on the deadline)."""
    spare = total - sum(lo)  # the most any application can get beyond its own minimum
    reach = [min(b, a + spare) for a, b in zip(lo, hi)]
    stuck = [w > 0 and math.isinf(_time(cu, w, r)) for cu, w, r in zip(curves, work, reach)]
    if any(stuck):  # cannot finish whatever it gets: keep its minimum, split the rest
        logger.warning("%d application(s) cannot progress even on their max cores", sum(stuck))
        work = [0.0 if s else w for s, w in zip(stuck, work)]
    if all(w <= 0 for w in work):
        return list(lo)
    least = _cores_needed(curves, work, lo, hi, math.inf)
    if least is None or sum(least) > total:  # some application must wait whatever we do
        logger.warning("%d cores cannot let every application progress at once", total)
        return _largest_work_first(work, lo, hi, total)
    fastest = max(_time(cu, w, b) for cu, w, b in zip(curves, work, hi))
    if fastest <= 0.0:  # workloads so small the times underflow: the fewest cores that run them
        return least

    def fits(deadline: float) -> list[int] | None:
        need = _cores_needed(curves, work, lo, hi, deadline)
        return need if need is not None and sum(need) <= total else None

    good = fits(fastest)
    if good is not None:
        return good
    low, high = fastest, fastest * 2.0
    for _ in range(2000):
        good = fits(high)
        if good is not None:
            break
        low, high = high, high * 2.0
    if good is None:
        raise ValueError(f"no split of {total} cores lets every application progress")
    while high - low > 1e-12 * high:
        mid = math.sqrt(low * high) if low > 0 else high / 2
        if mid <= low or mid >= high:
            break
        found = fits(mid)
        if found is None:
            low = mid
        else:
            high, good = mid, found
    return good


def minimize_makespan(constraints: Sequence[Constraint], total: int) -> Distribution:
    """Split that minimises max_i W_i / S_i(D_i); spare cores then shorten the next-slowest."""
    curves, work, lo, hi = _prepare(constraints, total, "makespan")
    alloc = _deadline_split(curves, work, lo, hi, total)
    left = total - sum(alloc)
    heap = [(-_time(cu, w, a), i) for i, (cu, w, a) in enumerate(zip(curves, work, alloc))
            if w > 0 and a < hi[i]]
    heapq.heapify(heap)
    while left > 0 and heap:
        _, i = heapq.heappop(heap)
        cu, here = curves[i], alloc[i]
        nxt = cu.min_cores(cu(here) * (1 + 1e-9) + 1e-300, here + 1, hi[i])
        if nxt is None or nxt - here > left:
            continue
        left -= nxt - here
        alloc[i] = nxt
        if nxt < hi[i]:
            heapq.heappush(heap, (-_time(cu, work[i], nxt), i))
    return {c.name: a for c, a in zip(constraints, alloc)}


def minimize_energy(
    constraints: Sequence[Constraint], total: int, power: PowerModel | None = None
) -> Distribution:
    """Split that finishes every workload with the least energy under `power`.

    Starts from the fastest split and sweeps the deadline upward, taking one core at a time from
    the application whose finish time grows least, and keeps the cheapest state seen. Exact for
    concave curves (where c / S(c) never decreases).
    """
    power = power or PowerModel()
    curves, work, lo, hi = _prepare(constraints, total, "energy")
    alloc = _deadline_split(curves, work, lo, hi, total)
    times = [_time(cu, w, a) for cu, w, a in zip(curves, work, alloc)]
    end = max(times, default=0.0)
    busy = sum(a * t for a, t in zip(alloc, times))
    extra = power.busy_watts - power.idle_watts

    def energy() -> float:
        return power.idle_watts * total * end + extra * busy

    best, best_steps, steps = energy(), 0, []
    heap: list[tuple[float, int]] = []

    def push(i: int) -> None:
        if work[i] > 0 and alloc[i] > lo[i]:
            t = _time(curves[i], work[i], alloc[i] - 1)
            if not math.isinf(t):
                heapq.heappush(heap, (t, i))

    for i in range(len(alloc)):
        push(i)
    while heap:
        t, i = heapq.heappop(heap)
        end = max(end, t)
        busy += (alloc[i] - 1) * t - alloc[i] * times[i]
        alloc[i] -= 1
        times[i] = t
        steps.append(i)
        if energy() < best * (1 - 1e-12):
            best, best_steps = energy(), len(steps)
        push(i)
    for i in steps[best_steps:]:  # undo the drops made after the best state
        alloc[i] += 1
    return {c.name: a for c, a in zip(constraints, alloc)}
