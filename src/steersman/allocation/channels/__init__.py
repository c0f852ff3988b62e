"""How the manager process and its clients exchange messages.

A message is a small JSON object. The contract is two tiny protocols, a `ServerChannel` the
manager listens on and a `ClientChannel` each application holds; a backend is one module that
fills them and registers its address scheme in `SCHEMES`:

- ``unix:///path/to/socket`` and ``tcp://host:port``: a socket, nothing to install; the manager
  sees a client's connection drop at once.
- ``redis://host:port/db?prefix=name``: lists in Redis (BLPOP), for campaigns on several nodes;
  liveness comes from heartbeats.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["SCHEMES", "ClientChannel", "Message", "ServerChannel", "connect", "decode", "listen"]

Message = dict[str, Any]

DISCONNECT = "disconnect"
"""Op of the message a server channel yields when it sees a client's connection drop."""


def decode(raw: str | bytes) -> Message:
    """The message in one frame or list item; ValueError unless it is a JSON object.

    Channels call it at their boundary so that a malformed message is refused there, never
    passed on to the manager or its clients.
    """
    try:
        value = json.loads(raw)
    except ValueError as exc:  # not JSON, or not UTF-8
        raise ValueError(f"a message must be JSON: {exc}") from None
    except RecursionError:
        raise ValueError("a message must be a JSON object, not one nested this deep") from None
    if not isinstance(value, dict):
        raise ValueError(f"a message must be a JSON object, not {type(value).__name__} "
                         f"{str(value)[:80]}")
    return value


class ServerChannel(Protocol):
    """The manager's end: messages from every client, replies to one."""

    @property
    def address(self) -> str:
        """Where clients connect (with the real port when a TCP port 0 was asked)."""
        ...

    def recv(self, timeout: float | None) -> tuple[str, Message] | None:
        """Next (client id, message), waiting up to `timeout` seconds; None if none came."""
        ...

    def send(self, client: str, message: Message) -> None:
        """Send to one client; a client that is gone is skipped."""
        ...

    def close(self) -> None:
        """Stop listening and free the resources."""
        ...


class ClientChannel(Protocol):
    """An application's end: send to the manager, read what it sent back."""

    def send(self, message: Message) -> None:
        """Send to the manager (the channel adds the client id)."""
        ...

    def recv(self, timeout: float | None) -> Message | None:
        """Next message from the manager within `timeout` seconds, or None."""
        ...

    def close(self) -> None:
        """Disconnect."""
        ...


@dataclass(frozen=True)
class Scheme:
    """One backend: how to listen on and connect to its addresses."""

    listen: Callable[[str], ServerChannel]
    connect: Callable[[str, str], ClientChannel]


def _socket_listen(address: str) -> ServerChannel:
    from steersman.allocation.channels.sockets import SocketServer

    return SocketServer(address)


def _socket_connect(address: str, client: str) -> ClientChannel:
    from steersman.allocation.channels.sockets import SocketClient

    return SocketClient(address, client)


def _redis_listen(address: str) -> ServerChannel:
    from steersman.allocation.channels.redis import RedisServer

    return RedisServer(address)


def _redis_connect(address: str, client: str) -> ClientChannel:
    from steersman.allocation.channels.redis import RedisClient

    return RedisClient(address, client)


SCHEMES: dict[str, Scheme] = {
    "unix": Scheme(_socket_listen, _socket_connect),
    "tcp": Scheme(_socket_listen, _socket_connect),
    "redis": Scheme(_redis_listen, _redis_connect),
}


def _scheme(address: str) -> Scheme:
    name = address.split("://", 1)[0] if "://" in address else ""
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(
            f"address {address!r} has no known scheme; valid schemes: "
            f"{', '.join(s + '://' for s in sorted(SCHEMES))}"
        ) from None


def listen(address: str) -> ServerChannel:
    """Open the manager's end of the channel at `address`."""
    return _scheme(address).listen(address)


def connect(address: str, client: str) -> ClientChannel:
    """Open a client's end of the channel to the manager at `address`."""
    return _scheme(address).connect(address, client)
