"""Socket channel (``unix:///path`` or ``tcp://host:port``): no service to run.

Frames are a 4-byte big-endian length followed by UTF-8 JSON. The server multiplexes every client
on one selector, so a burst of clients costs no threads, and a dropped connection is reported as a
``disconnect`` message the moment the kernel closes it (a killed client is noticed at once).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import stat
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from time import monotonic

from steersman.allocation.channels import DISCONNECT, Message, decode
from steersman.exceptions import QueueConnectionError

__all__ = ["SocketClient", "SocketServer", "parse_address"]

logger = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")
_MAX_FRAME = 16 * 1024 * 1024
_SEND_TIMEOUT = 10.0


def parse_address(address: str) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    """Socket family and target of a ``unix://`` or ``tcp://`` address."""
    if address.startswith("unix://"):
        path = address[len("unix://"):]
        if not path:
            raise ValueError(f"address {address!r} needs a socket path, e.g. unix:///tmp/m.sock")
        return socket.AF_UNIX, path
    if address.startswith("tcp://"):
        host, _, port = address[len("tcp://"):].rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"address {address!r} must look like tcp://host:port")
        return socket.AF_INET, (host, int(port))
    raise ValueError(f"address {address!r} must start with unix:// or tcp://")


def _frame(message: Message) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(len(body)) + body


def _unframe(buffer: bytearray) -> list[bytes]:
    """Pop every complete frame's body off the front of `buffer`."""
    out = []
    while len(buffer) >= _HEADER.size:
        (size,) = _HEADER.unpack_from(buffer)
        if size > _MAX_FRAME:
            raise ValueError(f"frame of {size} bytes exceeds the {_MAX_FRAME}-byte limit")
        if len(buffer) < _HEADER.size + size:
            break
        out.append(bytes(buffer[_HEADER.size:_HEADER.size + size]))
        del buffer[:_HEADER.size + size]
    return out


def _selector() -> selectors.BaseSelector:
    """A selector that uses no file descriptor of its own where possible (poll)."""
    kind = getattr(selectors, "PollSelector", selectors.DefaultSelector)
    return kind()


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)
    client: str | None = None


class SocketServer:
    """The manager's end: one listening socket, every client on one selector."""

    def __init__(self, address: str):
        family, target = parse_address(address)
        self._family = family
        self._path: str | None = None
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._address = self._bind(sock, address, target)
            sock.listen(1024)
        except BaseException:  # an address that cannot be served must not leak the socket
            sock.close()
            raise
        sock.setblocking(False)
        self._listener = sock
        self._sel = selectors.DefaultSelector()
        self._sel.register(sock, selectors.EVENT_READ, None)
        self._inbox: deque[tuple[str, Message]] = deque()
        self._clients: dict[str, _Conn] = {}

    def _bind(self, sock: socket.socket, address: str, target: str | tuple[str, int]) -> str:
        """Bind `sock` to `target`; returns the address clients use (the real TCP port)."""
        if isinstance(target, str):
            _remove_stale_socket(target)
            sock.bind(target)
            os.chmod(target, 0o600)
            self._path = target
            return address
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(target)
        return f"tcp://{target[0]}:{sock.getsockname()[1]}"

    @property
    def address(self) -> str:
        return self._address

    def recv(self, timeout: float | None) -> tuple[str, Message] | None:
        deadline = None if timeout is None else monotonic() + timeout
        while not self._inbox:
            remaining = None if deadline is None else max(0.0, deadline - monotonic())
            for key, _ in self._sel.select(remaining):
                if key.data is None:
                    self._accept()
                else:
                    self._read(key.data)
            if deadline is not None and monotonic() >= deadline:
                break
        return self._inbox.popleft() if self._inbox else None

    def send(self, client: str, message: Message) -> None:
        conn = self._clients.get(client)
        if conn is None:
            logger.debug("dropping a message for %r, which is not connected", client)
            return
        try:
            conn.sock.sendall(_frame(message))
        except OSError as exc:
            logger.info("lost client %r while sending: %s", client, exc)
            self._drop(conn)

    def close(self) -> None:
        for key in list(self._sel.get_map().values()):
            with contextlib.suppress(OSError):
                key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()
        if self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        sock.settimeout(_SEND_TIMEOUT)
        self._sel.register(sock, selectors.EVENT_READ, _Conn(sock))

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(1 << 16)
        except (TimeoutError, BlockingIOError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.buffer += data
        try:
            bodies = _unframe(conn.buffer)
        except ValueError as exc:
            logger.warning("closing a connection that sent a bad frame: %s", exc)
            self._drop(conn)
            return
        for body in bodies:
            self._receive(conn, body)

    def _receive(self, conn: _Conn, body: bytes) -> None:
        """Queue one message; a malformed one is refused and the connection kept."""
        try:
            message = decode(body)
            client = message.pop("client", conn.client)
            if not isinstance(client, str) or not client:
                raise ValueError(f"a message must name its client as a string, not {client!r}")
        except ValueError as exc:
            self._refuse(conn, str(exc))
            return
        if conn.client is None:
            conn.client = client
            self._clients[client] = conn
        self._inbox.append((conn.client, message))

    def _refuse(self, conn: _Conn, error: str) -> None:
        """Answer a malformed message with an error if its sender is known, else drop it."""
        logger.warning("refusing a message from %s: %s", conn.client or "an unnamed client", error)
        if conn.client is not None:
            self.send(conn.client, {"op": "error", "error": error})

    def _drop(self, conn: _Conn) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()
        if conn.client is not None and self._clients.get(conn.client) is conn:
            del self._clients[conn.client]
            self._inbox.append((conn.client, {"op": DISCONNECT}))


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead manager; refuse to touch any other file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"{path!r} exists and is not a socket; choose another address")
    os.unlink(path)


class SocketClient:
    """An application's end: one connection to the manager."""

    def __init__(self, address: str, client: str):
        family, target = parse_address(address)
        self._client = client
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.connect(target)
        except OSError as exc:
            self._sock.close()
            raise QueueConnectionError(
                f"cannot reach the allocation manager at {address}: {exc}"
            ) from exc
        self._sock.setblocking(False)
        self._sel = _selector()
        self._sel.register(self._sock, selectors.EVENT_READ)
        self._buffer = bytearray()
        self._messages: deque[Message] = deque()
        self._send_lock = threading.Lock()

    def send(self, message: Message) -> None:
        frame = _frame({**message, "client": self._client})
        with self._send_lock:
            view = memoryview(frame)
            deadline = monotonic() + _SEND_TIMEOUT
            while view:
                try:
                    sent = self._sock.send(view)
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    raise QueueConnectionError(f"allocation manager unreachable: {exc}") from exc
                view = view[sent:]
                if view and monotonic() > deadline:
                    raise QueueConnectionError("allocation manager stopped reading")
                if view and sent == 0:
                    with _selector() as sel:
                        sel.register(self._sock, selectors.EVENT_WRITE)
                        sel.select(max(0.0, deadline - monotonic()))

    def recv(self, timeout: float | None) -> Message | None:
        deadline = None if timeout is None else monotonic() + timeout
        while not self._messages:
            remaining = None if deadline is None else max(0.0, deadline - monotonic())
            if self._sel.select(remaining):
                self._read()
            if deadline is not None and monotonic() >= deadline:
                break
        return self._messages.popleft() if self._messages else None

    def _read(self) -> None:
        try:
            data = self._sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            raise QueueConnectionError(f"allocation manager connection failed: {exc}") from exc
        if not data:
            raise QueueConnectionError("the allocation manager closed the connection")
        self._buffer += data
        self._messages.extend(decode(body) for body in _unframe(self._buffer))

    def close(self) -> None:
        with contextlib.suppress(OSError, KeyError, ValueError):
            self._sel.unregister(self._sock)
        self._sel.close()
        with contextlib.suppress(OSError):
            self._sock.close()
