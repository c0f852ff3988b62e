"""Shared fixtures."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from steersman.models.messages import Kind
from steersman.queue import PipeQueues
from steersman.queue.base import BaseQueues


def echo_server(queues: BaseQueues, handler=None) -> threading.Thread:
    """A minimal in-thread server: applies `handler(*args, **kwargs)` (default: echo args)."""

    def serve() -> None:
        while True:
            message = queues.get_task()
            if message is None:
                continue
            if message.kind is Kind.KILL:
                return
            result = message.result
            args, kwargs = result.decode_inputs()
            try:
                value = handler(*args, **kwargs) if handler else args
            except Exception as exc:  # noqa: BLE001
                result.set_failure(exc)
            else:
                result.set_result(value)
            queues.send_result(result)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def pipe_queues() -> Iterator[PipeQueues]:
    queues = PipeQueues(topics=["sim", "ml"])
    yield queues
    queues.close()


# --- redis fixtures ---
# Tests that need Redis start their own redis-server on a free port, so they neither depend on
# nor pollute a server that happens to run on the machine. In CI (CI=true) they must run: a
# missing redis-server is an error there, and only skips the tests elsewhere.
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_redis_server() -> str:
    """Path of redis-server; skips the test without it, except in CI where it fails."""
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("redis-server is not on PATH, and Redis tests must run in CI")
        pytest.skip("redis-server is not on PATH")
    return path


class RedisServer:
    """A redis-server process of the tests' own, which can be stopped and started again."""

    def __init__(self, *options: str, port: int | None = None, tls: bool = False):
        self.executable = require_redis_server()
        self.port = port or _free_port()
        self.host = "127.0.0.1"
        self.tls = tls
        self.options = list(options)
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Start the server and return once it accepts connections (read from its log)."""
        port_options = (["--port", "0", "--tls-port", str(self.port)] if self.tls
                        else ["--port", str(self.port)])
        self.process = subprocess.Popen(
            [self.executable, *port_options, "--bind", self.host, "--save", "",
             "--logfile", "", "--loglevel", "notice", *self.options],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert self.process.stdout is not None
        log = []
        for line in self.process.stdout:  # blocks on the log: no polling
            log.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError(f"redis-server did not start:\n{''.join(log)}")
        # Keep draining the log so the server never blocks on a full pipe.
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    def stop(self) -> None:
        """Shut the server down cleanly (it writes its append-only file if it has one)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
        self.process = None

    def client(self, **options: object) -> object:
        """A plain redis-py client, to look at what the tests wrote."""
        import redis

        return redis.Redis(host=self.host, port=self.port, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One throwaway redis-server for the session, without persistence."""
    server = RedisServer("--appendonly", "no")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def persistent_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of one test's own that keeps every write on disk, to be restarted."""
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always",
                         "--dir", str(tmp_path))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_redis_server() -> Iterator[Callable[..., RedisServer]]:
    """Start redis-servers with given options (``tls=True`` for TLS only); stopped afterwards."""
    servers: list[RedisServer] = []

    def make(*options: str, tls: bool = False) -> RedisServer:
        server = RedisServer(*options, tls=tls)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def unused_port() -> int:
    """A port nothing listens on."""
    return _free_port()
# --- end redis fixtures ---


class UnpickleMarker:
    """Unpickling this creates a file: proof that untrusted bytes were unpickled."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


@pytest.fixture
def file_store(tmp_path: Path) -> Iterator[Any]:
    """A registered ProxyStore file store in a fresh directory, without a cache."""
    import uuid

    from proxystore.connectors.file import FileConnector
    from proxystore.store import Store, register_store, unregister_store

    store: Any = Store(f"test-file-{uuid.uuid4().hex[:8]}", FileConnector(str(tmp_path / "ps")),
                       cache_size=0)
    register_store(store)
    yield store
    unregister_store(store)
    store.close()
