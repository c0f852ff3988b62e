"""Redis channel (``redis://host:port/db?prefix=name``): the manager serves several nodes.

Clients push JSON onto ``<prefix>:manager``; the manager pushes onto ``<prefix>:client:<id>``.
Both ends wait with BLPOP and a timeout, never by polling. Redis cannot tell that a client died,
so the manager relies on heartbeats; each client list expires if nobody reads it for a while.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from steersman.allocation.channels import Message, decode
from steersman.exceptions import QueueConnectionError

__all__ = ["RedisClient", "RedisServer", "parse_redis_address"]

logger = logging.getLogger(__name__)

CLIENT_KEY_TTL = 600
"""Seconds after the last message that an unread client list is deleted."""
_DRAIN = 256


def parse_redis_address(address: str) -> tuple[str, str]:
    """(redis URL for redis-py, key prefix) of a ``redis://...?prefix=name`` address."""
    parts = urlsplit(address)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError(f"address {address!r} must look like redis://host:port/db?prefix=name")
    prefix = parse_qs(parts.query).get("prefix", ["steersman-allocation"])[0]
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return url, prefix


def _open(address: str) -> tuple[Any, str]:
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the redis:// channel needs redis-py: pip install 'steersman[redis]'") \
            from exc
    url, prefix = parse_redis_address(address)
    conn = redis.Redis.from_url(url, socket_connect_timeout=10)
    try:
        conn.ping()
    except redis.RedisError as exc:
        raise QueueConnectionError(f"cannot reach Redis at {url}: {exc}") from exc
    return conn, prefix


def _timeout(timeout: float | None) -> float:
    """BLPOP's timeout: 0 waits forever, so None maps to 0 and tiny values to one millisecond."""
    return 0 if timeout is None else max(timeout, 0.001)


class RedisServer:
    """The manager's end: one inbound list, one outbound list per client."""

    def __init__(self, address: str):
        self._redis, self._prefix = _open(address)
        self._address = address
        self._inbox_key = f"{self._prefix}:manager"
        self._pending: list[bytes] = []

    @property
    def address(self) -> str:
        return self._address

    def recv(self, timeout: float | None) -> tuple[str, Message] | None:
        """Next message; malformed ones are logged and dropped (None if only those came)."""
        if not self._pending:
            self._fill(timeout)
        while self._pending:
            item = _addressed(self._pending.pop(0))
            if item is not None:
                return item
        return None

    def _fill(self, timeout: float | None) -> None:
        self._pending = list(self._redis.lpop(self._inbox_key, _DRAIN) or [])
        if not self._pending and not (timeout is not None and timeout <= 0):
            item = self._redis.blpop([self._inbox_key], timeout=_timeout(timeout))
            if item is not None:
                self._pending = [item[1]]

    def send(self, client: str, message: Message) -> None:
        key = f"{self._prefix}:client:{client}"
        pipe = self._redis.pipeline(transaction=False)
        pipe.rpush(key, json.dumps(message, separators=(",", ":")))
        pipe.expire(key, CLIENT_KEY_TTL)
        pipe.execute()

    def forget(self, client: str) -> None:
        """Delete a departed client's list."""
        self._redis.delete(f"{self._prefix}:client:{client}")

    def close(self) -> None:
        self._redis.delete(self._inbox_key)
        self._redis.close()


def _addressed(raw: bytes) -> tuple[str, Message] | None:
    """(client, message) of a raw item, or None (logged) when it cannot be read or answered."""
    try:
        message = decode(raw)
        client = message.pop("client", None)
        if not isinstance(client, str) or not client:
            raise ValueError(f"a message must name its client as a string, not {client!r}")
    except ValueError as exc:
        logger.warning("dropping a malformed message with no one to answer: %s (%r)", exc,
                       raw[:200])
        return None
    return client, message


class RedisClient:
    """An application's end: push to the manager's list, BLPOP its own."""

    def __init__(self, address: str, client: str):
        self._redis, prefix = _open(address)
        self._client = client
        self._inbox_key = f"{prefix}:manager"
        self._own_key = f"{prefix}:client:{client}"

    def send(self, message: Message) -> None:
        body = json.dumps({**message, "client": self._client}, separators=(",", ":"))
        self._redis.rpush(self._inbox_key, body)

    def recv(self, timeout: float | None) -> Message | None:
        if timeout is not None and timeout <= 0:
            raw = self._redis.lpop(self._own_key)
        else:
            item = self._redis.blpop([self._own_key], timeout=_timeout(timeout))
            raw = None if item is None else item[1]
        return None if raw is None else decode(raw)

    def close(self) -> None:
        self._redis.delete(self._own_key)
        self._redis.close()
