"""ResourceCounter: pools, first come first served, cancellation without polling."""

import threading
import time

import pytest

from steersman.thinker import Flag, ResourceCounter


def test_pools_start_unallocated_and_move():
    rec = ResourceCounter(8, ["sim", "ml"])
    assert rec.unallocated_slots == 8 and rec.allocated_slots("sim") == 0
    assert rec.reallocate(None, "sim", 6)
    assert rec.reallocate(None, "ml", "all")
    counts = (rec.allocated_slots("sim"), rec.allocated_slots("ml"), rec.unallocated_slots)
    assert counts == (6, 2, 0)
    assert rec.acquire("sim", 4)
    assert rec.available_slots("sim") == 2
    rec.release("sim", 4)
    assert rec.available_slots("sim") == 6


def test_bad_input_is_rejected_at_the_call():
    rec = ResourceCounter(2, ["sim"])
    with pytest.raises(ValueError, match="unknown task type 'gpu'"):
        rec.acquire("gpu", 1)
    with pytest.raises(ValueError, match="non-negative integer"):
        rec.acquire("sim", -1)
    with pytest.raises(ValueError, match="non-negative integer"):
        rec.acquire("sim", 1.5)
    with pytest.raises(ValueError, match="only 0 are acquired"):
        rec.release("sim", 1)
    with pytest.raises(ValueError, match="the counter has 2"):
        rec.reallocate(None, "sim", 3)
    with pytest.raises(ValueError):
        ResourceCounter(-1)


def test_acquire_times_out_and_blocks_until_release():
    rec = ResourceCounter(1, ["sim"])
    rec.reallocate(None, "sim", 1)
    assert rec.acquire("sim", 1)
    start = time.perf_counter()
    assert not rec.acquire("sim", 1, timeout=0.05)
    assert time.perf_counter() - start < 1
    got = threading.Event()
    waiter = threading.Thread(target=lambda: rec.acquire("sim", 1) and got.set())
    waiter.start()
    assert not got.wait(0.05)
    rec.release("sim", 1)
    assert got.wait(2)


def test_first_come_first_served():
    rec = ResourceCounter(2, ["sim"])
    rec.reallocate(None, "sim", 2)
    rec.acquire("sim", 2)
    order: list[str] = []
    big_waiting = threading.Event()

    def big() -> None:
        big_waiting.set()
        rec.acquire("sim", 2)
        order.append("big")

    first = threading.Thread(target=big)
    first.start()
    big_waiting.wait()
    while not rec._waiting["sim"]:  # the big request is in line before the small one arrives
        time.sleep(0.001)
    second = threading.Thread(target=lambda: rec.acquire("sim", 1) or order.append("small"))
    second.start()
    rec.release("sim", 1)  # enough for the small request, but the big one came first
    time.sleep(0.02)
    assert order == []
    rec.release("sim", 1)
    first.join(2)
    assert order == ["big"]
    rec.release("sim", 2)
    second.join(2)


@pytest.mark.parametrize("flag_type", [Flag, threading.Event])
def test_cancel_if_is_noticed_within_10ms(flag_type):
    rec = ResourceCounter(1, ["sim"])
    cancel = flag_type()
    outcome: list[float] = []

    def wait() -> None:
        ok = rec.acquire("sim", 1, cancel_if=cancel)
        outcome.append(time.perf_counter())
        assert not ok

    thread = threading.Thread(target=wait)
    thread.start()
    while not rec._waiting["sim"]:
        time.sleep(0.001)
    set_at = time.perf_counter()
    cancel.set()
    thread.join(2)
    assert outcome and outcome[0] - set_at < 0.010 + 0.005  # 5 ms slack for a loaded machine


def test_reallocate_in_background_with_callback():
    rec = ResourceCounter(2, ["sim", "ml"])
    rec.reallocate(None, "sim", 2)
    rec.acquire("sim", 2)
    moved = threading.Event()
    assert rec.reallocate("sim", "ml", 1, block=False, callback=moved.set)
    assert not moved.wait(0.05)
    rec.release("sim", 1)
    assert moved.wait(2)
    assert rec.allocated_slots("ml") == 1 and rec.allocated_slots("sim") == 1


def test_listeners_see_every_change():
    rec = ResourceCounter(3, ["sim"])
    seen: list[dict] = []
    rec.add_listener(lambda: seen.append(rec.snapshot()))
    rec.reallocate(None, "sim", 3)
    rec.acquire("sim", 1)
    rec.release("sim", 1)
    assert len(seen) >= 3 and seen[-1]["sim"] == (3, 3)


def test_move_listeners_see_only_moves():
    rec = ResourceCounter(3, ["sim", "ml"])
    moves: list[dict] = []
    rec.add_listener(lambda: moves.append(rec.snapshot()), moves_only=True)
    rec.reallocate(None, "sim", 3)
    rec.acquire("sim", 1)
    rec.release("sim", 1)
    assert moves == [{None: (0, 0), "sim": (3, 3), "ml": (0, 0)}]
    rec.reallocate("sim", "ml", 2)
    assert len(moves) == 2 and moves[-1]["ml"] == (2, 2)


def test_concurrent_acquire_release_never_oversubscribes():
    rec = ResourceCounter(4, ["sim"])
    rec.reallocate(None, "sim", 4)
    in_use = [0]
    peak = [0]
    lock = threading.Lock()

    def churn() -> None:
        for _ in range(300):
            rec.acquire("sim", 1)
            with lock:
                in_use[0] += 1
                peak[0] = max(peak[0], in_use[0])
            with lock:
                in_use[0] -= 1
            rec.release("sim", 1)

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert peak[0] <= 4 and rec.available_slots("sim") == 4
