"""Malformed messages at the channel boundary: refused, and every other client still served."""

from __future__ import annotations

import json
import socket
import struct

import pytest

from steersman.allocation import AllocationClient, ManagerProcess

pytestmark = pytest.mark.timeout(30)


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _read_frame(sock: socket.socket) -> dict:
    header = sock.recv(4, socket.MSG_WAITALL)
    (size,) = struct.unpack(">I", header)
    return json.loads(sock.recv(size, socket.MSG_WAITALL))


@pytest.mark.parametrize("raw", [
    pytest.param(b"[1, 2]", id="list"),
    pytest.param(b"3", id="number"),
    pytest.param(b"not json", id="not-json"),
    pytest.param(b"\xff", id="not-utf8"),
    pytest.param(b"[" * 100_000, id="too-deep"),
    pytest.param(b'{"op": "heartbeat", "client": 7}', id="client-not-a-string"),
])
def test_malformed_frames_leave_the_manager_serving(raw: bytes) -> None:
    with ManagerProcess(4, thread=True) as manager, \
            AllocationClient(manager.address, "good") as good:
        assert good.invade(1, 4, timeout=10) == [0, 1, 2, 3]
        with socket.socket(socket.AF_UNIX) as rogue:
            rogue.connect(manager.address[len("unix://"):])
            rogue.sendall(_frame(raw))
            assert good.invade(1, 2, timeout=10) == [0, 1]  # answered after the rogue frame
            assert good.reinvade(timeout=0.0) is None


def test_malformed_frame_from_a_known_client_gets_an_error_reply() -> None:
    with ManagerProcess(4, thread=True) as manager, socket.socket(socket.AF_UNIX) as rogue:
        rogue.settimeout(10)
        rogue.connect(manager.address[len("unix://"):])
        rogue.sendall(_frame(b'{"op": "heartbeat", "client": "rogue"}') + _frame(b"[1, 2]"))
        reply = _read_frame(rogue)
        assert reply["op"] == "error" and "must be a JSON object, not list" in reply["error"]
        rogue.sendall(_frame(b'{"op": "invade", "min": 1, "max": 1}'))
        assert _read_frame(rogue)["grow"] == [0]  # the same connection is still served


def test_malformed_redis_items_are_dropped(redis_address: str) -> None:
    import redis

    from steersman.allocation.channels.redis import parse_redis_address

    url, prefix = parse_redis_address(redis_address)
    with ManagerProcess(4, address=redis_address, thread=True) as manager, \
            AllocationClient(manager.address, "good") as good:
        assert good.invade(1, 4, timeout=10) == [0, 1, 2, 3]
        conn = redis.Redis.from_url(url)
        conn.rpush(f"{prefix}:manager", b"[1, 2]", b"not json", b'{"op": "heartbeat"}')
        conn.close()
        assert good.invade(1, 2, timeout=10) == [0, 1]


def test_decode_names_what_came_instead_of_an_object() -> None:
    from steersman.allocation.channels import decode

    assert decode(b'{"op": "heartbeat"}') == {"op": "heartbeat"}
    with pytest.raises(ValueError, match="JSON object, not list"):
        decode("[1]")
    with pytest.raises(ValueError, match="must be JSON"):
        decode(b"{")
