"""The optimisation targets by name, each a policy (what split) and a score (how good a split is).

Scores are "higher is better" so one hysteresis rule serves every target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from steersman.allocation.constraints import (
    Constraint,
    Distribution,
    proportional_share,
    static_split,
)
from steersman.allocation.throughput import maximize_throughput, total_throughput
from steersman.allocation.workload import (
    PowerModel,
    energy_of,
    makespan_of,
    minimize_energy,
    minimize_makespan,
)

__all__ = ["TARGETS", "Target", "optimize", "score", "static_split"]


@dataclass(frozen=True)
class Target:
    """A named optimisation target: how to split, and how to score any split (higher is better)."""

    name: str
    distribute: Callable[[Sequence[Constraint], int, PowerModel], Distribution]
    score: Callable[[Sequence[Constraint], Distribution, int, PowerModel], float]


def _hint_score(constraints: Sequence[Constraint], dist: Distribution) -> float:
    """Weighted geometric mean of the shares: the split proportional to the hints maximises it."""
    hints = [c.workload for c in constraints]
    given = [h for h in hints if h is not None]
    mean = sum(given) / len(given) if given else 1.0
    weights = [mean if h is None else h for h in hints]
    total_weight = sum(weights)
    if total_weight <= 0:
        return 0.0
    log_sum = 0.0
    for c, w in zip(constraints, weights):
        share = dist.get(c.name, 0)
        if w > 0 and share <= 0:
            return 0.0
        if w > 0:
            log_sum += w * math.log(share)
    return math.exp(log_sum / total_weight)


def _throughput_score(
    constraints: Sequence[Constraint], dist: Distribution, total: int, power: PowerModel
) -> float:
    if constraints and all(c.curve is None for c in constraints):
        return _hint_score(constraints, dist)
    return total_throughput(constraints, dist)


TARGETS: dict[str, Target] = {
    "throughput": Target(
        "throughput",
        lambda cons, total, power: maximize_throughput(cons, total),
        _throughput_score,
    ),
    "makespan": Target(
        "makespan",
        lambda cons, total, power: minimize_makespan(cons, total),
        lambda cons, dist, total, power: -makespan_of(cons, dist),
    ),
    "energy": Target(
        "energy",
        lambda cons, total, power: minimize_energy(cons, total, power),
        lambda cons, dist, total, power: -energy_of(cons, dist, total, power),
    ),
    "share": Target(
        "share",
        lambda cons, total, power: proportional_share(cons, total),
        lambda cons, dist, total, power: _hint_score(cons, dist),
    ),
}
"""Every target by name: throughput, makespan, energy, and share (proportional to the hints)."""


def get_target(name: str) -> Target:
    """The target called `name`, or a ValueError listing the valid names."""
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; valid targets: {sorted(TARGETS)}") from None


def optimize(
    constraints: Sequence[Constraint],
    total: int,
    target: str = "throughput",
    power: PowerModel | None = None,
) -> Distribution:
    """Best split of `total` cores among `constraints` for `target`."""
    return get_target(target).distribute(constraints, total, power or PowerModel())


def score(
    constraints: Sequence[Constraint],
    dist: Distribution,
    total: int,
    target: str = "throughput",
    power: PowerModel | None = None,
) -> float:
    """How good `dist` is for `target`; higher is better (makespan and energy are negated)."""
    return get_target(target).score(constraints, dist, total, power or PowerModel())
