from __future__ import annotations

import numpy as np
import pytest

from steersman.allocation import AmdahlCurve, Constraint, Hysteresis, Planner
from steersman.allocation.hysteresis import is_feasible, moved_cores

pytestmark = pytest.mark.timeout(30)


def test_worth_moving_rules() -> None:
    rule = Hysteresis(threshold=0.01)
    assert not rule.worth_moving(100.0, 100.5, moved=3)  # 0.5% gain
    assert rule.worth_moving(100.0, 102.0, moved=3)
    assert not rule.worth_moving(100.0, 200.0, moved=0)
    assert rule.worth_moving(-100.0, -98.0, moved=1)  # makespan: 100 s -> 98 s
    assert rule.worth_moving(float("-inf"), -5.0, moved=1)
    costly = Hysteresis(threshold=0.0, move_cost=1.0)
    assert not costly.worth_moving(100.0, 102.0, moved=3)
    assert costly.worth_moving(100.0, 104.0, moved=3)


@pytest.mark.parametrize("kwargs", [{"threshold": -0.1}, {"move_cost": -1.0}])
def test_hysteresis_rejects_negative(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Hysteresis(**kwargs)


def test_moved_and_feasible() -> None:
    cons = [Constraint("a", min=1, max=4), Constraint("b")]
    assert moved_cores({"a": 2, "b": 2}, {"a": 1, "b": 3}) == 1
    assert is_feasible(cons, {"a": 1, "b": 3}, 4)
    assert not is_feasible(cons, {"a": 0, "b": 3}, 4)
    assert not is_feasible(cons, {"a": 2, "b": 3}, 4)


def test_planner_moves_when_current_is_infeasible() -> None:
    cons = [Constraint("a", min=2, curve=AmdahlCurve(0.1)), Constraint("b", curve=AmdahlCurve(0.1))]
    plan = Planner().plan(cons, 8, {"b": 8})
    assert plan["a"] >= 2 and sum(plan.values()) <= 8


def test_hysteresis_suppresses_churn_under_noise() -> None:
    rng = np.random.default_rng(0)
    fractions = [0.01, 0.05, 0.10, 0.30]

    def moves(threshold: float) -> int:
        planner = Planner("throughput", threshold=threshold)
        current: dict[str, int] = {}
        count = 0
        for _ in range(100):
            cons = [Constraint(f"a{i}", curve=AmdahlCurve(f, 1 + 0.05 * rng.standard_normal()))
                    for i, f in enumerate(fractions)]
            plan = planner.plan(cons, 64, current)
            count += moved_cores(current, plan) > 0
            current = plan
        return count

    assert moves(0.01) < moves(0.0) / 3
