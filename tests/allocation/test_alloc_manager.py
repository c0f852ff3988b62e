from __future__ import annotations

import random

import pytest

from steersman.allocation import Planner, ResourceManager

pytestmark = pytest.mark.timeout(30)


def _updates(out: list[tuple[str, dict]], client: str) -> list[dict]:
    return [m for c, m in out if c == client]


def _invade(lo: int, hi: int | None = None, f: float = 0.0, **extra: object) -> dict:
    return {"op": "invade", "min": lo, "max": hi, "curve": {"amdahl": f}, **extra}


def test_first_app_gets_everything_useful() -> None:
    rm = ResourceManager(8)
    out = rm.handle([("a", _invade(1, 6))], now=0.0)
    [msg] = _updates(out, "a")
    assert msg["op"] == "update" and msg["invaded"] and sorted(msg["grow"]) == list(range(6))
    rm.check_invariants()


def test_shrink_is_two_phase() -> None:
    rm = ResourceManager(8)
    rm.handle([("a", _invade(1, 8))], now=0.0)
    out = rm.handle([("b", _invade(4, 8))], now=0.1)
    [ask] = _updates(out, "a")
    asked = ask["shrink"]
    assert len(asked) >= 4
    assert not any(m["grow"] for m in _updates(out, "b"))  # nothing free until a acknowledges
    assert all(rm.owner[c] == "a" for c in asked)
    rm.check_invariants()
    out = rm.handle([("a", {"op": "release", "cores": asked})], now=0.2)
    [grant] = _updates(out, "b")
    assert len(grant["grow"]) >= 4 and set(grant["grow"]) <= set(asked)
    rm.check_invariants()


def test_waiting_app_is_admitted_after_retreat() -> None:
    rm = ResourceManager(4)
    rm.handle([("a", _invade(3, 4))], now=0.0)
    out = rm.handle([("b", _invade(2, 4))], now=0.0)
    assert rm.admitted() == ["a"]
    assert _updates(out, "b") == [{"op": "update", "grow": [], "shrink": [], "invaded": True}]
    out = rm.handle([("a", {"op": "retreat"})], now=0.0)
    assert len(_updates(out, "b")[0]["grow"]) >= 2
    rm.check_invariants()


def test_silent_app_is_reclaimed() -> None:
    rm = ResourceManager(4, liveness_timeout=1.0)
    rm.handle([("a", _invade(1, 4))], now=0.0)
    rm.handle([("b", _invade(1, 4))], now=0.5)
    assert rm.next_deadline() == pytest.approx(1.0)
    rm.handle([("b", {"op": "heartbeat"})], now=1.2)
    assert "a" not in rm.apps
    rm.check_invariants()
    assert all(o in (None, "b") for o in rm.owner.values())


def test_bad_messages_get_errors() -> None:
    rm = ResourceManager(4)
    out = rm.handle([("a", _invade(5, 6))], now=0.0)
    assert out == [("a", {"op": "error", "error": "min=5 exceeds the 4 cores managed"})]
    out = rm.handle([("a", {"op": "dance"})], now=0.0)
    assert "unknown op 'dance'" in out[0][1]["error"]
    out = rm.handle([("a", _invade(3, 2))], now=0.0)
    assert "min=3 > max=2" in out[0][1]["error"]


def test_report_fits_a_curve_and_moves_cores() -> None:
    rm = ResourceManager(16, Planner(threshold=0.0))
    rm.handle([("a", _invade(1, 16)), ("b", _invade(1, 16))], now=0.0)
    before = rm.apps["a"].target
    for _ in range(5):
        rm.handle([("a", {"op": "report", "throughput": 0.1 * rm.apps["a"].keeping})], now=0.1)
    assert rm.apps["a"].target < before


def test_random_operations_keep_invariants() -> None:
    rng = random.Random(4)
    rm = ResourceManager(32, Planner(threshold=0.0))
    held: dict[str, set[int]] = {}
    now = 0.0
    for _ in range(400):
        now += 0.01
        name = f"app{rng.randrange(6)}"
        roll = rng.random()
        if roll < 0.3:
            lo = rng.randrange(0, 6)
            msg = _invade(lo, lo + rng.randrange(0, 12), rng.random() * 0.5,
                          workload=rng.random() * 10)
        elif roll < 0.4:
            msg = {"op": "retreat"}
        elif roll < 0.5:
            msg = {"op": "report", "throughput": rng.random() * 10}
        else:  # the application reaches its next step and applies what it was asked
            msg = {"op": "release", "cores": sorted(rm.apps[name].releasing)} \
                if name in rm.apps else {"op": "heartbeat"}
        if msg["op"] == "retreat":  # the application stops using its cores before it says so
            held.pop(name, None)
        if msg["op"] == "release":
            held.get(name, set()).difference_update(msg["cores"])
        for client, reply in rm.handle([(name, msg)], now):
            if reply["op"] == "update":
                assert not (set(reply["grow"]) & set().union(*held.values()))
                held.setdefault(client, set()).update(reply["grow"])
        rm.check_invariants()


@pytest.mark.parametrize(("message", "error"), [
    ({"op": "invade", "curve": {"points": [[1]]}}, "point [1] must be a (cores, throughput) pair"),
    ({"op": "invade", "min": float("inf")}, "min=inf for 'bad' must be a whole number"),
    ({"op": "invade", "curve": {"points": 5}}, "TypeError: 'int' object is not iterable"),
    ({"op": "release", "cores": 5}, "TypeError: 'int' object is not iterable"),
    ({"op": "release", "cores": [float("inf")]},
     "OverflowError: cannot convert float infinity to integer"),
])
def test_malformed_messages_are_refused_and_others_served(message: dict, error: str) -> None:
    rm = ResourceManager(4)
    rm.handle([("good", _invade(1, 4))], now=0.0)
    rm.handle([("bad", _invade(0, 0))], now=0.0)
    out = rm.handle([("bad", message), ("late", _invade(1, 4))], now=0.1)
    assert ("bad", {"op": "error", "error": error}) in out
    assert any(c == "late" and m["op"] == "update" and m["invaded"] for c, m in out)
    assert rm.apps["good"].cores
    rm.check_invariants()
