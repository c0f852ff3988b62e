"""Throughput target: maximise the weighted sum of w_i * S_i(D_i) within every [min_i, max_i].

Concave curves: greedy by marginal gain with a heap, exact. Non-concave curves: a dynamic
programme over the non-concave applications (the concave ones enter as one item, their greedy
trace), exact while it fits a budget, else restricted to each curve's breakpoints plus a grid and
polished by local search. The answer is never worse than the static split.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Sequence

import numpy as np

from steersman.allocation.constraints import (
    Constraint,
    Distribution,
    bounds,
    check,
    proportional_share,
    static_split,
)
from steersman.allocation.curves import AmdahlCurve, Curve

__all__ = ["maximize_throughput", "throughput_of", "total_throughput"]

logger = logging.getLogger(__name__)

DP_BUDGET = 30_000_000
"""Largest R * (sum of table lengths) solved by the exact programme (about 0.3 s)."""
_CHUNK = 1_000_000

_LINEAR = AmdahlCurve(0.0, 1.0)


def _curves(constraints: Sequence[Constraint]) -> list[Curve]:
    return [_LINEAR if c.curve is None else c.curve for c in constraints]


def throughput_of(constraints: Sequence[Constraint], dist: Distribution) -> dict[str, float]:
    """Throughput S_i(D_i) of each application (a missing curve counts as one unit per core)."""
    return {c.name: cu(dist.get(c.name, 0)) for c, cu in zip(constraints, _curves(constraints))}


def total_throughput(constraints: Sequence[Constraint], dist: Distribution) -> float:
    """The throughput target's value: sum of w_i * S_i(D_i)."""
    per = throughput_of(constraints, dist)
    return sum(c.weight * per[c.name] for c in constraints)


def maximize_throughput(constraints: Sequence[Constraint], total: int) -> Distribution:
    """Best distribution of `total` cores for the weighted total throughput.

    Applications without a curve count as linear, one unit per core; when no application has a
    curve the split is proportional to the workload hints. Cores that add no throughput stay free.
    """
    check(constraints, total)
    if not constraints:
        return {}
    if all(c.curve is None for c in constraints):
        return proportional_share(constraints, total)
    curves = _curves(constraints)
    lo, hi = bounds(constraints, total)
    weights = [c.weight for c in constraints]
    if all(cu.concave for cu in curves):  # greedy is exact: no need to check the static split
        alloc, _ = _greedy(curves, weights, lo, hi, total)
        return {c.name: a for c, a in zip(constraints, alloc)}
    alloc = _mixed_programme(curves, weights, lo, hi, total)
    best = {c.name: a for c, a in zip(constraints, alloc)}
    static = static_split(constraints, total)
    if total_throughput(constraints, static) > total_throughput(constraints, best) + 1e-12:
        logger.debug("static split beats the policy's answer; keeping the static split")
        return static
    return best


def _greedy(
    curves: Sequence[Curve], weights: Sequence[float], lo: list[int], hi: list[int], total: int
) -> tuple[list[int], list[float]]:
    """Exact for concave curves: hand out one core at a time to the largest marginal gain.

    Returns the allocation and the total value after each core handed out (the first entry is
    the value at the minimums), which is the group's best value for every smaller budget.
    """
    alloc = list(lo)
    now = [w * cu(a) for cu, w, a in zip(curves, weights, alloc)]
    trace = [sum(now)]
    heap: list[tuple[float, int]] = []
    for i, cu in enumerate(curves):
        if alloc[i] < hi[i]:
            heap.append((now[i] - weights[i] * cu(alloc[i] + 1), i))
    heapq.heapify(heap)
    left = total - sum(alloc)
    while left > 0 and heap:
        neg_gain, i = heap[0]
        if neg_gain >= -1e-15:
            break
        alloc[i] += 1
        now[i] -= neg_gain
        trace.append(trace[-1] - neg_gain)
        left -= 1
        if alloc[i] < hi[i]:
            heapq.heapreplace(heap, (now[i] - weights[i] * curves[i](alloc[i] + 1), i))
        else:
            heapq.heappop(heap)
    return alloc, trace


def _mixed_programme(
    curves: Sequence[Curve], weights: Sequence[float], lo: list[int], hi: list[int], total: int
) -> list[int]:
    """A dynamic programme over the non-concave applications; the concave ones act as a single
    item whose value for each budget is their greedy trace, combined last in O(R).

    Exact while R times the non-concave table lengths fits `DP_BUDGET`; beyond, each
    non-concave application is limited to its breakpoints plus a regular grid, and a local
    search polishes the answer.
    """
    group = [i for i, cu in enumerate(curves) if cu.concave]
    others = [i for i, cu in enumerate(curves) if not cu.concave]
    tables = {i: weights[i] * curves[i].values(hi[i])[lo[i]:] for i in others}
    exact = (total + 1) * sum(len(t) for t in tables.values()) <= DP_BUDGET
    items = [_candidates(lo[i], tables[i], total, len(others), exact) for i in others]
    group_value = np.zeros(total + 1)
    if group:
        g_lo = sum(lo[i] for i in group)
        _, trace = _greedy([curves[i] for i in group], [weights[i] for i in group],
                           [lo[i] for i in group], [hi[i] for i in group], total)
        group_value = np.full(total + 1, -np.inf)
        span = np.array(trace)
        group_value[g_lo:g_lo + len(span)] = span[:total + 1 - g_lo]
        group_value[g_lo + len(span):] = span[-1]
    chosen = _dynamic_programme(items, total, group_value)
    alloc = list(lo)
    for i, n in zip(others, chosen):
        alloc[i] = n
    alloc = _fill_group(alloc, curves, weights, lo, hi, total, group)
    if exact:
        return alloc
    return _polish(alloc, curves, weights, lo, hi, total, others, group)


def _candidates(
    first: int, table: np.ndarray, total: int, count: int, exact: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Core counts (and values) the programme may give one non-concave application."""
    idx = np.arange(len(table))
    if not exact and len(table) > 2:
        bends = np.flatnonzero(np.abs(np.diff(table, 2)) > 1e-12 * (1 + np.abs(table[1:-1]))) + 1
        per_item = max(16, DP_BUDGET // max(1, (total + 1) * max(count, 1)) - len(bends) - 2)
        grid = np.linspace(0, len(table) - 1, min(len(table), per_item)).astype(np.int64)
        idx = np.unique(np.concatenate([[0, len(table) - 1], bends, grid]))
    return first + idx, table[idx]


def _fill_group(
    alloc: list[int], curves: Sequence[Curve], weights: Sequence[float], lo: list[int],
    hi: list[int], total: int, group: list[int],
) -> list[int]:
    """Give the concave applications the cores the others left, greedily (exact for them)."""
    if not group:
        return alloc
    out = list(alloc)
    rest = total - sum(out[i] for i in range(len(out)) if i not in set(group))
    sub, _ = _greedy([curves[i] for i in group], [weights[i] for i in group],
                     [lo[i] for i in group], [hi[i] for i in group], rest)
    for i, n in zip(group, sub):
        out[i] = n
    return out


def _dynamic_programme(
    items: Sequence[tuple[np.ndarray, np.ndarray]], total: int,
    last: np.ndarray | None = None,
) -> list[int]:
    """best[r] = best value on at most r cores, one item (candidate cores, values) at a time.

    `last`, if given, is the value of the rest for each number of cores it gets, combined at the
    end in O(R). Returns the cores of each item.
    """
    best = np.zeros(total + 1)
    choices: list[np.ndarray] = []
    for cores, table in items:
        new = np.full(total + 1, -np.inf)
        pick = np.zeros(total + 1, dtype=np.int64)
        rows = max(1, _CHUNK // len(table))
        for start in range(0, total + 1, rows):  # bounded memory: a block of rows at a time
            r = np.arange(start, min(total + 1, start + rows))
            rest = r[:, None] - cores[None, :]
            cand = np.where(rest >= 0, best[np.clip(rest, 0, None)] + table[None, :], -np.inf)
            arg = np.argmax(cand, axis=1)
            new[r] = cand[np.arange(len(r)), arg]
            pick[r] = cores[arg]
        best = new
        choices.append(pick)
    left = total
    if last is not None:  # the rest takes total - r cores, the items at most r
        left = int(np.argmax(best + last[::-1]))
    out = [0] * len(items)
    for j in range(len(items) - 1, -1, -1):
        out[j] = int(choices[j][left])
        left -= out[j]
    return out


def _polish(
    alloc: list[int], curves: Sequence[Curve], weights: Sequence[float], lo: list[int],
    hi: list[int], total: int, others: list[int], group: list[int],
) -> list[int]:
    """Local search: move one or two non-concave applications to nearby core counts and refill
    the concave ones greedily; keep any change that gains, until none does."""

    def value(a: list[int]) -> float:
        return float(sum(w * cu(n) for w, cu, n in zip(weights, curves, a)))

    def near(i: int, a: list[int]) -> list[int]:
        step = max(1, (hi[i] - lo[i]) // 64)
        return [n for n in (a[i] - step, a[i] - 1, a[i] + 1, a[i] + step) if lo[i] <= n <= hi[i]]

    best, best_value = alloc, value(alloc)
    for _ in range(100):
        moves = [{i: n} for i in others for n in near(i, best)]
        moves += [{i: n, m: k} for x, i in enumerate(others) for m in others[x + 1:]
                  for n in near(i, best) for k in near(m, best)]
        improved = False
        for move in moves:
            trial = list(best)
            for i, n in move.items():
                trial[i] = n
            if sum(trial[i] for i in others) + sum(lo[i] for i in group) > total:
                continue
            trial = _fill_group(trial, curves, weights, lo, hi, total, group)
            gained = value(trial)
            if gained > best_value + 1e-12 * (1 + abs(best_value)):
                best, best_value, improved = trial, gained, True
        if not improved:
            break
    return best
