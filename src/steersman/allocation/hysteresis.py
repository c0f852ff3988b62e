"""Hysteresis: move cores only when the gain is worth it, so noisy curves do not cause churn."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from steersman.allocation.constraints import Constraint, Distribution
from steersman.allocation.policies import get_target
from steersman.allocation.workload import PowerModel

__all__ = ["Hysteresis", "Planner", "is_feasible", "moved_cores"]

logger = logging.getLogger(__name__)


def moved_cores(current: Mapping[str, int], proposed: Mapping[str, int]) -> int:
    """Cores that would change hands: the sum of the increases."""
    return sum(max(0, n - current.get(name, 0)) for name, n in proposed.items())


def is_feasible(constraints: Sequence[Constraint], dist: Mapping[str, int], total: int) -> bool:
    """Whether `dist` meets every [min, max] and fits on `total` cores."""
    if sum(dist.get(c.name, 0) for c in constraints) > total:
        return False
    for c in constraints:
        n = dist.get(c.name, 0)
        if n < c.min or (c.max is not None and n > c.max):
            return False
    return True


@dataclass(frozen=True)
class Hysteresis:
    """Accept a new split only if it gains more than `threshold` (relative) plus the move costs.

    Args:
        threshold: relative gain required, e.g. 0.01 for 1% of the current score.
        move_cost: cost of moving one core, in the target's units (throughput, seconds, joules).
    """

    threshold: float = 0.01
    move_cost: float = 0.0

    def __post_init__(self) -> None:
        if not self.threshold >= 0 or math.isinf(self.threshold):
            raise ValueError(f"threshold={self.threshold!r} must be a finite number >= 0")
        if not self.move_cost >= 0 or math.isinf(self.move_cost):
            raise ValueError(f"move_cost={self.move_cost!r} must be a finite number >= 0")

    def worth_moving(self, old: float, new: float, moved: int) -> bool:
        """Whether going from score `old` to score `new` by moving `moved` cores pays off."""
        if moved == 0:
            return False
        if not math.isfinite(old):
            return new > old
        gain = new - old - self.move_cost * moved
        return gain > self.threshold * abs(old) and gain > 0


class Planner:
    """Optimise for a target and keep the current split unless moving is worth it.

    Args:
        target: one of `steersman.allocation.TARGETS` (throughput, makespan, energy, share).
        threshold: relative gain below which the current split is kept.
        move_cost: cost of moving one core, in the target's units.
        power: power model for the energy target.
    """

    def __init__(
        self,
        target: str = "throughput",
        threshold: float = 0.01,
        move_cost: float = 0.0,
        power: PowerModel | None = None,
    ):
        self.target = get_target(target)
        self.hysteresis = Hysteresis(threshold, move_cost)
        self.power = power or PowerModel()

    def plan(
        self, constraints: Sequence[Constraint], total: int, current: Mapping[str, int]
    ) -> Distribution:
        """The split to move toward: the optimum, or `current` when moving does not pay."""
        proposed = self.target.distribute(constraints, total, self.power)
        now = {c.name: int(current.get(c.name, 0)) for c in constraints}
        if not is_feasible(constraints, now, total):
            return proposed
        old = self.target.score(constraints, now, total, self.power)
        new = self.target.score(constraints, proposed, total, self.power)
        if self.hysteresis.worth_moving(old, new, moved_cores(now, proposed)):
            logger.debug("moving to %s (score %.6g -> %.6g)", proposed, old, new)
            return proposed
        return now
