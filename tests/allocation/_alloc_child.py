"""Code run in child processes by the allocation tests (importable under spawn)."""

from __future__ import annotations

from multiprocessing.connection import Connection

from steersman.allocation import AllocationClient


def hold_cores(address: str, name: str, n: int, heartbeat: float, pipe: Connection) -> None:
    """Invade `n` cores, report them through `pipe`, then hold them until killed."""
    client = AllocationClient(address, name, heartbeat=heartbeat)
    pipe.send(client.invade(n, n, timeout=30))
    pipe.recv()  # never answered: the test kills this process


def invade_and_leave(address: str, name: str, rounds: int, pipe: Connection) -> None:
    """Invade and retreat `rounds` times, reporting every core list held."""
    held = []
    with AllocationClient(address, name) as client:
        for i in range(rounds):
            held.append(client.invade(1, 2 + i % 3, curve={"amdahl": 0.1}, timeout=30))
            client.reinvade()
            client.retreat()
    pipe.send(held)
