"""What an application (or a pool) tells the manager: its range, its curve, its workload.

Also the two reference splits that need no curve: the static equal split every policy must beat,
and the share proportional to workload hints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from steersman.allocation.curves import Curve, curve_from_spec

__all__ = ["Constraint", "Distribution", "bounds", "check", "proportional_share", "static_split"]

Distribution = dict[str, int]
"""Cores per application name."""


@dataclass(frozen=True)
class Constraint:
    """One application's wishes.

    Args:
        name: unique name of the application or pool.
        min: fewest cores it can run on (it waits until it has them).
        max: most cores it can use; None means no limit beyond the machine.
        curve: its scalability curve S(c); None when unknown.
        workload: work still to do, in the curve's units times seconds (e.g. tasks when the curve
            is in tasks per second); also a plain share hint when there is no curve.
        weight: importance of its throughput in the throughput target.
    """

    name: str
    min: int = 0
    max: int | None = None
    curve: Curve | None = field(default=None, compare=False)
    workload: float | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.min < 0:
            raise ValueError(f"min={self.min!r} for {self.name!r} must be >= 0")
        if self.max is not None and self.max < self.min:
            raise ValueError(f"min={self.min!r} > max={self.max!r} for {self.name!r}")
        if self.workload is not None and not (
            self.workload >= 0 and math.isfinite(self.workload)
        ):
            raise ValueError(f"workload={self.workload!r} for {self.name!r} must be finite, >= 0")
        if not (self.weight >= 0 and math.isfinite(self.weight)):
            raise ValueError(f"weight={self.weight!r} for {self.name!r} must be finite, >= 0")

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> Constraint:
        """Build from the JSON/YAML form used by the CLI and the manager's messages."""
        known = {"min", "max", "curve", "workload", "weight"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown keys {sorted(unknown)} for {name!r}; valid keys: {sorted(known)}"
            )
        return cls(
            name=name,
            min=_whole(name, "min", data.get("min", 0)),
            max=None if data.get("max") is None else _whole(name, "max", data["max"]),
            curve=curve_from_spec(data.get("curve")),
            workload=None if data.get("workload") is None else float(data["workload"]),
            weight=float(data.get("weight", 1.0)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form read by `from_dict` (without the name)."""
        return {
            "min": self.min,
            "max": self.max,
            "curve": None if self.curve is None else self.curve.spec(),
            "workload": self.workload,
            "weight": self.weight,
        }


def _whole(name: str, key: str, value: Any) -> int:
    try:
        return int(value)
    except (OverflowError, TypeError, ValueError):
        raise ValueError(f"{key}={value!r} for {name!r} must be a whole number") from None


def check(constraints: Sequence[Constraint], total: int) -> None:
    """Raise ValueError unless the constraints can all be met on `total` cores."""
    if total < 0:
        raise ValueError(f"total={total!r} cores must be >= 0")
    names = [c.name for c in constraints]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"application names {dupes} appear more than once")
    for c in constraints:
        if c.min > total:
            raise ValueError(f"min={c.min} for {c.name!r} exceeds the {total} cores available")
    need = sum(c.min for c in constraints)
    if need > total:
        raise ValueError(f"the minimums add up to {need} cores, more than the {total} available")


def bounds(constraints: Sequence[Constraint], total: int) -> tuple[list[int], list[int]]:
    """Per-application [lo, hi] after capping max at the machine size."""
    lo = [c.min for c in constraints]
    hi = [total if c.max is None else min(c.max, total) for c in constraints]
    return lo, hi


def _fill(lo: list[int], hi: list[int], shares: list[float], total: int) -> list[int]:
    """Integer split D_i = clamp(level * share_i, lo_i, hi_i) that uses up to `total` cores.

    The level is found by bisection; rounding gives the leftover cores to the largest remainders.
    """
    low_b, high_b = np.array(lo, dtype=float), np.array(hi, dtype=float)
    share = np.array(shares, dtype=float)
    active = share > 0

    def amounts(level: float) -> np.ndarray:
        return np.where(active, np.clip(level * share, low_b, high_b), low_b)

    top = float(np.max(high_b[active] / share[active])) if active.any() else 0.0
    if amounts(top).sum() <= total:
        return [int(x) for x in amounts(top)]
    low, high = 0.0, top
    for _ in range(100):
        mid = (low + high) / 2
        if amounts(mid).sum() <= total:
            low = mid
        else:
            high = mid
    exact = amounts(low)
    alloc = np.maximum(low_b, np.floor(exact + 1e-9))
    left = total - int(alloc.sum())
    can_grow = (alloc < high_b) & active
    order = np.lexsort((np.arange(len(lo)), alloc - exact))  # largest remainder first
    for i in order:
        if left <= 0:
            break
        if can_grow[i]:
            alloc[i] += 1
            left -= 1
    return [int(x) for x in alloc]


def static_split(constraints: Sequence[Constraint], total: int) -> Distribution:
    """Equal shares within each [min, max]: the baseline any policy must not fall below."""
    check(constraints, total)
    lo, hi = bounds(constraints, total)
    alloc = _fill(lo, hi, [1.0] * len(constraints), total)
    return {c.name: a for c, a in zip(constraints, alloc)}


def proportional_share(constraints: Sequence[Constraint], total: int) -> Distribution:
    """Shares proportional to the workload hints, within each [min, max].

    An application without a hint counts as the mean of the given hints; with no hints at all
    this is the static split.
    """
    check(constraints, total)
    hints = [c.workload for c in constraints]
    given = [h for h in hints if h is not None]
    if not given:
        return static_split(constraints, total)
    mean = sum(given) / len(given)
    shares = [mean if h is None else h for h in hints]
    lo, hi = bounds(constraints, total)
    alloc = _fill(lo, hi, shares, total)
    return {c.name: a for c, a in zip(constraints, alloc)}
