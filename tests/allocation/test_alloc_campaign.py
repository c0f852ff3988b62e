from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from steersman.allocation import AmdahlCurve, CampaignAllocator, PoolLimits
from steersman.thinker.resources import ResourceCounter

pytestmark = pytest.mark.timeout(30)


def _allocation(counter: ResourceCounter) -> dict[str, int]:
    return {p: counter.allocated_slots(p) for p in counter.task_types}


def _wait_for(counter: ResourceCounter, check: object, timeout: float = 10.0) -> None:
    """Block until `check()` holds, re-checking on each change of the counter (no sleeping)."""
    changed = threading.Event()
    expired = threading.Event()
    counter.add_listener(changed.set)

    def expire() -> None:
        expired.set()
        changed.set()

    timer = threading.Timer(timeout, expire)
    timer.start()
    try:
        while not check():  # type: ignore[operator]
            assert not expired.is_set(), f"timed out; allocation is {_allocation(counter)}"
            changed.wait()
            changed.clear()
    finally:
        timer.cancel()


def test_workload_drives_the_split() -> None:
    counter = ResourceCounter(8, ["simulate", "train"])
    alloc = CampaignAllocator(counter)
    alloc.set_workload("simulate", 100)
    alloc.set_workload("train", 0)
    alloc.rebalance()
    assert _allocation(counter) == {"simulate": 8, "train": 0}
    for _ in range(10):
        alloc.observe("simulate", 1.0)
        alloc.observe("train", 10.0)
    alloc.set_workload("train", 4)  # 40 slot-seconds of training against 100 of simulation
    goal = alloc.rebalance()
    assert goal == {"simulate": 6, "train": 2} or goal == {"simulate": 5, "train": 3}
    assert _allocation(counter) == goal


def test_only_idle_slots_move_and_the_rest_follow() -> None:
    counter = ResourceCounter(8, ["simulate", "train"])
    counter.reallocate(None, "simulate", 8)
    alloc = CampaignAllocator(counter, {"simulate": (1, None), "train": PoolLimits(0, 4)})
    assert counter.acquire("simulate", 7)  # seven simulations running
    alloc.set_workload("simulate", 0)
    alloc.set_workload("train", 4)
    alloc.rebalance()
    assert _allocation(counter) == {"simulate": 7, "train": 1}  # only the idle slot moved
    stop = threading.Event()
    worker = threading.Thread(target=alloc.run, args=(stop,))
    worker.start()
    try:
        counter.release("simulate", 7)  # the simulations finish; the spare slots stay put
        _wait_for(counter, lambda: _allocation(counter) == {"simulate": 4, "train": 4})
    finally:
        stop.set()
        worker.join(5)
    assert not worker.is_alive()


def test_run_reacts_to_observations_and_stops_promptly() -> None:
    counter = ResourceCounter(4, ["a", "b"])
    alloc = CampaignAllocator(counter, target="share")
    stop = threading.Event()
    worker = threading.Thread(target=alloc.run, args=(stop,))
    worker.start()
    try:
        alloc.set_workload("a", 3)
        alloc.set_workload("b", 1)
        _wait_for(counter, lambda: _allocation(counter) == {"a": 3, "b": 1})
    finally:
        stop.set()
        worker.join(5)
    assert not worker.is_alive()
    assert alloc.history


def test_observe_result_uses_topic_and_running_time() -> None:
    counter = ResourceCounter(4, ["simulate"])
    alloc = CampaignAllocator(counter, curves={"simulate": AmdahlCurve(0.0, 1.0)})
    result = SimpleNamespace(topic="simulate", success=True, time=SimpleNamespace(running=0.5),
                             task_info={})
    alloc.observe_result(result)
    alloc.observe_result(SimpleNamespace(topic="other", success=True,
                                         time=SimpleNamespace(running=9.0), task_info={}))
    assert alloc.curve("simulate")(2) == pytest.approx(4.0)  # two slots, 0.5 s tasks


def test_errors_name_the_pool() -> None:
    counter = ResourceCounter(4, ["a"])
    with pytest.raises(ValueError, match="pool 'x' is not a task type"):
        CampaignAllocator(counter, ["x"])
    with pytest.raises(ValueError, match="minimums add up to 5"):
        CampaignAllocator(counter, {"a": (5, None)})
    alloc = CampaignAllocator(counter)
    with pytest.raises(ValueError, match="unknown pool 'b'"):
        alloc.observe("b", 1.0)
    with pytest.raises(ValueError, match="seconds=-1"):
        alloc.observe("a", -1.0)
    with pytest.raises(ValueError, match="unknown target"):
        CampaignAllocator(counter, target="fast")
