"""Fixtures for the allocation tests: a real Redis when one is reachable (required on CI)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Child processes (spawn) import their code from `_alloc_child`; spawn passes sys.path on.
_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


def _redis_up(port: int) -> bool:
    try:
        import redis

        return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_port() -> Iterator[int]:
    """Port of a running Redis: the local one, else one started here; skip only off CI."""
    if _redis_up(6379):
        yield 6379
        return
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no Redis on 6379 and no redis-server to start")
        pytest.skip("no Redis available")
    port = _free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--save", ""],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # blocks until redis-server says it is ready (or exits)
            if "Ready to accept connections" in line:
                break
        else:
            pytest.fail("redis-server exited before accepting connections")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def redis_address(redis_port: int) -> str:
    """A redis:// address with a key prefix of its own."""
    return f"redis://127.0.0.1:{redis_port}/0?prefix=test-alloc-{uuid.uuid4().hex[:12]}"
