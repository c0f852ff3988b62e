from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
import time

import pytest
from _alloc_child import hold_cores, invade_and_leave

from steersman.allocation import AllocationClient, AllocationTimeout, ManagerProcess
from steersman.exceptions import QueueConnectionError

pytestmark = pytest.mark.timeout(60)


class Ledger:
    """Who uses which core, checked at every step: a core must never have two users."""

    def __init__(self) -> None:
        self.owner: dict[int, str] = {}
        self.lock = threading.Lock()
        self.violations: list[str] = []
        self.moves = 0

    def take(self, name: str, cores: list[int]) -> None:
        with self.lock:
            for core in cores:
                other = self.owner.get(core)
                if other is not None and other != name:
                    self.violations.append(f"core {core}: {name} while {other} holds it")
                self.owner[core] = name

    def give(self, name: str, cores: list[int]) -> None:
        with self.lock:
            self.moves += 1
            for core in cores:
                if self.owner.get(core) == name:
                    del self.owner[core]


def _app(address: str, name: str, ledger: Ledger, seed: int, done: threading.Barrier) -> None:
    rng = random.Random(seed)
    client = AllocationClient(address, name, on_release=lambda c: ledger.give(name, c))
    try:
        cores = client.invade(1, rng.randint(2, 12), curve={"amdahl": rng.random() * 0.3},
                              timeout=30)
        ledger.take(name, cores)
        for step in range(30):
            if step == 10:  # change its mind: the manager re-splits and asks others back
                client.invade(1, 16, workload=rng.random(), curve={"amdahl": 0.01},
                              blocking=False)
            new = client.reinvade(timeout=0.01)
            if new is not None:
                ledger.take(name, new)
        deadline = time.monotonic() + 10  # on a slow machine the re-split may come later
        while ledger.moves == 0 and time.monotonic() < deadline:
            new = client.reinvade(timeout=0.05)
            if new is not None:
                ledger.take(name, new)
        done.wait(30)
        ledger.give(name, client.cores)
    finally:
        client.close()


@pytest.fixture(scope="module")
def manager() -> ManagerProcess:
    with ManagerProcess(16, liveness_timeout=5.0) as proc:
        yield proc


def test_concurrent_invades_never_share_a_core(manager: ManagerProcess) -> None:
    ledger = Ledger()
    done = threading.Barrier(8)
    threads = [threading.Thread(target=_app, args=(manager.address, f"t{i}", ledger, i, done))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(45)
    assert not any(t.is_alive() for t in threads)
    assert ledger.violations == []
    assert ledger.moves > 8  # cores were asked back and handed on, not only retreated


def test_invades_from_several_processes(manager: ManagerProcess) -> None:
    ctx = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    for i in range(3):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=invade_and_leave, args=(manager.address, f"p{i}", 5, child))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    for pipe, proc in zip(pipes, procs):
        assert pipe.poll(45)
        held = pipe.recv()
        assert len(held) == 5 and all(1 <= len(h) <= 4 for h in held)
        proc.join(10)
        assert proc.exitcode == 0


def test_blocking_invade_waits_and_times_out(manager: ManagerProcess) -> None:
    with AllocationClient(manager.address, "big") as big, \
            AllocationClient(manager.address, "late") as late:
        assert len(big.invade(16, 16, timeout=10)) == 16
        with pytest.raises(AllocationTimeout, match="min=4"):
            late.invade(4, 8, timeout=0.2)
        assert late.invade(4, 8, blocking=False) == []
        big.retreat()
        assert len(late.reinvade(timeout=5) or []) >= 4


def test_bad_invade_is_refused(manager: ManagerProcess) -> None:
    with AllocationClient(manager.address, "greedy") as client:
        with pytest.raises(ValueError, match="min=17 exceeds the 16 cores"):
            client.invade(17, 20, timeout=10)
        with pytest.raises(ValueError, match="min=3 > max=2"):
            client.invade(3, 2)


def _sigkill_is_reclaimed(address: str, heartbeat: float) -> float:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=hold_cores, args=(address, "doomed", 4, heartbeat, child))
    proc.start()
    try:
        assert parent.poll(30), "child did not get its cores"
        assert len(parent.recv()) == 4
        with AllocationClient(address, "survivor") as survivor:
            assert survivor.invade(2, 4, blocking=False) == []
            start = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
            cores = survivor.reinvade(timeout=20)
            while cores is None or len(cores) < 2:
                cores = survivor.reinvade(timeout=20)
            return time.monotonic() - start
    finally:
        proc.kill()
        proc.join(10)


def test_killed_client_cores_are_reclaimed_socket() -> None:
    with ManagerProcess(4, liveness_timeout=30.0) as proc:
        took = _sigkill_is_reclaimed(proc.address, heartbeat=5.0)
    assert took < 5.0  # the dropped connection, not the 30 s liveness timeout


def test_killed_client_cores_are_reclaimed_redis(redis_address: str) -> None:
    with ManagerProcess(4, address=redis_address, liveness_timeout=0.5) as proc:
        took = _sigkill_is_reclaimed(proc.address, heartbeat=0.1)
    assert took < 10.0


def test_manager_in_a_thread_over_tcp() -> None:
    with ManagerProcess(4, address="tcp://127.0.0.1:0", thread=True) as proc:
        assert proc.address.startswith("tcp://127.0.0.1:") and not proc.address.endswith(":0")
        with AllocationClient(proc.address) as client:
            assert client.invade(1, 4, timeout=10) == [0, 1, 2, 3]


def test_unreachable_manager_and_bad_addresses(tmp_path: object) -> None:
    with pytest.raises(QueueConnectionError, match="cannot reach"):
        AllocationClient(f"unix://{tmp_path}/nobody.sock")
    with pytest.raises(ValueError, match="valid schemes"):
        AllocationClient("carrier-pigeon://x")


class _ScriptedChannel:
    """A manager that answers an invade at once with no core and grants cores a moment later."""

    def __init__(self, script: list[tuple[float, dict]]) -> None:
        start = time.monotonic()
        self._script = [(start + delay, message) for delay, message in script]

    def send(self, message: dict) -> None:
        pass  # the client's requests need no answer beyond the script

    def recv(self, timeout: float | None) -> dict | None:
        if not self._script:
            time.sleep(timeout or 0.0)
            return None
        due, message = self._script[0]
        wait = due - time.monotonic()
        if wait > (timeout or 0.0):
            time.sleep(timeout or 0.0)
            return None
        time.sleep(max(wait, 0.0))
        return self._script.pop(0)[1]

    def close(self) -> None:
        pass


def test_reinvade_waits_for_a_change_not_for_any_message(monkeypatch) -> None:
    channel = _ScriptedChannel([(0.0, {"invaded": True}), (0.2, {"grow": [0, 1, 2, 3]})])
    monkeypatch.setattr("steersman.allocation.client.connect", lambda address, name: channel)
    client = AllocationClient("unix:///unused", "late")
    assert client.reinvade(timeout=5) == [0, 1, 2, 3]
    assert client.reinvade(timeout=0.05) is None


class _QueuedChannel:
    """A manager whose replies are all waiting already; records what the client sends."""

    def __init__(self, replies: list[dict]) -> None:
        self.replies = list(replies)
        self.sent: list[dict] = []

    def send(self, message: dict) -> None:
        self.sent.append(message)

    def recv(self, timeout: float | None) -> dict | None:
        return self.replies.pop(0) if self.replies else None

    def close(self) -> None:
        pass


def test_reinvade_applies_the_updates_queued_behind_an_error(monkeypatch) -> None:
    channel = _QueuedChannel([{"op": "update", "grow": [0, 1, 2, 3], "invaded": True}])
    monkeypatch.setattr("steersman.allocation.client.connect", lambda address, name: channel)
    released: list[list[int]] = []
    client = AllocationClient("unix:///unused", "a", on_release=released.append)
    assert client.reinvade() == [0, 1, 2, 3]
    channel.replies = [{"op": "error", "error": "throughput=nan must be finite and >= 0"},
                       {"op": "update", "grow": [], "shrink": [2, 3], "invaded": False}]
    with pytest.raises(ValueError, match="throughput=nan"):
        client.reinvade()
    assert client.cores == [0, 1]
    assert released == [[2, 3]] and channel.sent[-1] == {"op": "release", "cores": [2, 3]}
    assert client.reinvade() is None


def test_manager_thread_start_up_error_is_raised_at_once(tmp_path) -> None:
    fds = os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else None
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="failed to start: ValueError: .*valid schemes"):
        ManagerProcess(4, address="carrier-pigeon://x", thread=True).start(timeout=20)
    assert time.monotonic() - start < 10  # not the whole start timeout
    not_a_socket = tmp_path / "file"
    not_a_socket.write_text("")
    with pytest.raises(RuntimeError, match="is not a socket"):
        ManagerProcess(4, address=f"unix://{not_a_socket}", thread=True).start(timeout=20)
    if fds is not None:  # the start-up pipe's two ends are closed
        assert len(os.listdir("/proc/self/fd")) <= len(fds)
