from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steersman.allocation import (
    AmdahlCurve,
    Constraint,
    PointsCurve,
    PowerModel,
    energy_of,
    makespan_of,
    maximize_throughput,
    minimize_energy,
    minimize_makespan,
    optimize,
    proportional_share,
    score,
    static_split,
    total_throughput,
)
from steersman.allocation import throughput as throughput_module

pytestmark = pytest.mark.timeout(60)


def _all_splits(cons: list[Constraint], total: int) -> list[dict[str, int]]:
    ranges = [range(c.min, min(total, c.max if c.max is not None else total) + 1) for c in cons]
    return [
        {c.name: n for c, n in zip(cons, combo)}
        for combo in itertools.product(*ranges)
        if sum(combo) <= total
    ]


def _valid(cons: list[Constraint], dist: dict[str, int], total: int) -> None:
    assert sum(dist.values()) <= total
    for c in cons:
        assert c.min <= dist[c.name] <= (c.max if c.max is not None else total)


amdahl = st.builds(AmdahlCurve, st.floats(0, 0.9), st.floats(0.1, 5))
points = st.lists(st.floats(0, 10), min_size=1, max_size=6).map(
    lambda ys: PointsCurve([[i + 1, y] for i, y in enumerate(ys)])
)


@st.composite
def problems(draw: st.DrawFn, curve: st.SearchStrategy) -> tuple[list[Constraint], int]:
    total = draw(st.integers(0, 9))
    n = draw(st.integers(1, 3))
    cons = []
    for i in range(n):
        lo = draw(st.integers(0, 2))
        hi = draw(st.one_of(st.none(), st.integers(lo, lo + 6)))
        cons.append(Constraint(f"a{i}", lo, hi, draw(curve), draw(st.floats(0, 50)),
                               draw(st.floats(0.1, 3))))
    if sum(c.min for c in cons) > total:
        total = sum(c.min for c in cons)
    return cons, total


@given(problems(amdahl))
@settings(max_examples=80, deadline=None)
def test_throughput_greedy_is_exact_for_concave(problem: tuple[list[Constraint], int]) -> None:
    cons, total = problem
    best = maximize_throughput(cons, total)
    _valid(cons, best, total)
    optimum = max(total_throughput(cons, d) for d in _all_splits(cons, total))
    assert total_throughput(cons, best) == pytest.approx(optimum, rel=1e-9, abs=1e-9)


@given(problems(points))
@settings(max_examples=80, deadline=None)
def test_throughput_dp_is_exact_for_any_curve(problem: tuple[list[Constraint], int]) -> None:
    cons, total = problem
    best = maximize_throughput(cons, total)
    _valid(cons, best, total)
    optimum = max(total_throughput(cons, d) for d in _all_splits(cons, total))
    assert total_throughput(cons, best) == pytest.approx(optimum, rel=1e-9, abs=1e-9)


@given(problems(points))
@settings(max_examples=60, deadline=None)
def test_hull_repair_never_below_static(problem: tuple[list[Constraint], int]) -> None:
    cons, total = problem
    saved = throughput_module.DP_BUDGET
    throughput_module.DP_BUDGET = 0  # force the hull path
    try:
        best = maximize_throughput(cons, total)
    finally:
        throughput_module.DP_BUDGET = saved
    _valid(cons, best, total)
    static = static_split(cons, total)
    assert total_throughput(cons, best) >= total_throughput(cons, static) - 1e-9


def test_powers_of_two_hull_close_to_optimum(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = PointsCurve([[c, 1.0 * 2 ** k] for k, c in enumerate([1, 2, 4, 8, 16, 32])])
    cons = [Constraint("p1", curve=steps), Constraint("p2", curve=steps, weight=0.7),
            Constraint("a", curve=AmdahlCurve(0.1))]
    exact = total_throughput(cons, maximize_throughput(cons, 40))
    monkeypatch.setattr(throughput_module, "DP_BUDGET", 0)
    approx = total_throughput(cons, maximize_throughput(cons, 40))
    assert approx >= 0.99 * exact


def test_four_amdahl_apps_beat_static_split() -> None:
    cons = [Constraint(f"f{f}", curve=AmdahlCurve(f)) for f in (0.01, 0.05, 0.10, 0.30)]
    best = maximize_throughput(cons, 64)
    ratio = total_throughput(cons, static_split(cons, 64)) / total_throughput(cons, best)
    assert 0.70 < ratio < 0.76
    assert best["f0.01"] > best["f0.3"]


def test_flat_curves_leave_cores_free() -> None:
    cons = [Constraint("a", curve=PointsCurve([[2, 1.0]])),
            Constraint("b", curve=PointsCurve([[3, 1.0]]))]
    best = maximize_throughput(cons, 10)
    assert best == {"a": 2, "b": 3}


def test_hints_alone_give_proportional_shares() -> None:
    cons = [Constraint("a", workload=1), Constraint("b", workload=3)]
    assert maximize_throughput(cons, 8) == {"a": 2, "b": 6}
    assert proportional_share([Constraint("a"), Constraint("b")], 5) in (
        {"a": 3, "b": 2}, {"a": 2, "b": 3})
    capped = [Constraint("a", max=1, workload=1), Constraint("b", workload=1)]
    assert proportional_share(capped, 8) == {"a": 1, "b": 7}


def test_static_split_respects_ranges() -> None:
    cons = [Constraint("a", max=2), Constraint("b", min=5), Constraint("c")]
    assert static_split(cons, 12) == {"a": 2, "b": 5, "c": 5}


@given(problems(amdahl))
@settings(max_examples=60, deadline=None)
def test_makespan_is_min_max(problem: tuple[list[Constraint], int]) -> None:
    cons, total = problem
    best = minimize_makespan(cons, total)
    _valid(cons, best, total)
    optimum = min(makespan_of(cons, d) for d in _all_splits(cons, total))
    got = makespan_of(cons, best)
    assert got == optimum or got == pytest.approx(optimum, rel=1e-9)


def test_makespan_balances_equal_jobs() -> None:
    cons = [Constraint(f"j{i}", curve=AmdahlCurve(f), workload=100.0)
            for i, f in enumerate((0.0, 0.0, 0.2, 0.2))]
    best = minimize_makespan(cons, 32)
    assert makespan_of(cons, best) < makespan_of(cons, static_split(cons, 32))
    assert best["j2"] > best["j0"]


@given(problems(amdahl), st.floats(0, 5), st.floats(0, 10))
@settings(max_examples=60, deadline=None)
def test_energy_is_minimal(
    problem: tuple[list[Constraint], int], idle: float, extra: float
) -> None:
    cons, total = problem
    power = PowerModel(idle, idle + extra)
    best = minimize_energy(cons, total, power)
    _valid(cons, best, total)
    optimum = min(energy_of(cons, d, total, power) for d in _all_splits(cons, total))
    got = energy_of(cons, best, total, power)
    assert got == optimum or got == pytest.approx(optimum, rel=1e-9, abs=1e-9)


def test_energy_trades_speed_for_core_seconds() -> None:
    cons = [Constraint("a", curve=AmdahlCurve(0.2), workload=10.0)]
    assert minimize_energy(cons, 16, PowerModel(0.0, 1.0)) == {"a": 1}
    assert minimize_energy(cons, 16, PowerModel(1.0, 1.0)) == {"a": 16}


def test_targets_need_workloads() -> None:
    with pytest.raises(ValueError, match="workload for 'a'"):
        minimize_makespan([Constraint("a", curve=AmdahlCurve(0.1))], 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min": 3, "max": 2}, "min=3 > max=2"),
        ({"min": -1}, "min=-1"),
        ({"workload": -1.0}, "workload=-1.0"),
        ({"weight": math.inf}, "weight=inf"),
    ],
)
def test_constraint_errors_name_the_value(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Constraint("a", **kwargs)  # type: ignore[arg-type]


def test_errors_for_impossible_problems() -> None:
    with pytest.raises(ValueError, match="min=5 for 'a' exceeds the 4 cores"):
        maximize_throughput([Constraint("a", min=5)], 4)
    with pytest.raises(ValueError, match="minimums add up to 6"):
        maximize_throughput([Constraint("a", min=3), Constraint("b", min=3)], 5)
    with pytest.raises(ValueError, match="unknown target 'speed'; valid targets"):
        optimize([Constraint("a")], 4, "speed")
    with pytest.raises(ValueError, match="total=-1"):
        static_split([Constraint("a")], -1)
    with pytest.raises(ValueError, match="more than once"):
        static_split([Constraint("a"), Constraint("a")], 2)


def test_scores_are_higher_is_better() -> None:
    cons = [Constraint("a", curve=AmdahlCurve(0.0), workload=8.0)]
    assert score(cons, {"a": 4}, 4, "makespan") > score(cons, {"a": 2}, 4, "makespan")
    assert score(cons, {"a": 4}, 4, "throughput") > score(cons, {"a": 2}, 4, "throughput")
