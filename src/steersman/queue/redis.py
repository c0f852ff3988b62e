"""The Redis backend: queues between a thinker and task servers on different machines.

Requests travel on one Redis stream read by the consumer group ``servers``; results travel on one
stream per topic read by the group ``thinker``. A server acknowledges and deletes a request only
once its final result is sent (:meth:`RedisQueues.request_done`), so requests held by a server that
died are claimed by another server after ``claim_idle`` seconds. Every entry is deleted once
handled, so the streams do not grow over a campaign.

Servers announce that they are alive every few seconds, in the sorted set ``{prefix}:servers``
(each server's last announcement, in Redis's own clock). A thinker waiting for results with
tasks outstanding looks there every few seconds, and only once its read of results came back
empty: once it saw a server alive, it raises :class:`~steersman.exceptions.TaskServerDied` when
none has announced itself for ``server_timeout`` seconds. Servers may start after the thinker,
or run before it; a thinker that finds only announcements older than ``server_timeout`` waits
for a server to start.

A message of 1 MiB or more travels beside its entry, as string keys ``{prefix}:blob:{id}:{n}``
written and read without redis-py's copies, and read while it is still being written (see
:mod:`steersman.queue._redis_blobs`); the entry names them. Whoever acknowledges the entry
releases them: the next large message reuses the keys (and Redis their memory), and unused they
expire after a few seconds. A consumer that dies leaves them for the consumer that takes the
entry over, and :meth:`RedisQueues.purge` removes any a campaign left behind.

Nothing connects until first use, and a pickled copy connects again in its own process. If the
connection drops (Redis restarted), every call retries with a short backoff for up to
``reconnect_timeout`` seconds before raising :class:`~steersman.exceptions.QueueConnectionError`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from time import monotonic
from typing import TYPE_CHECKING, Any, TypeVar, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from steersman.exceptions import MessageError, QueueConnectionError, TaskServerDied
from steersman.models.messages import Kind, Message, header_of, join, peek
from steersman.models.serialization import Frame, SerializationMethod
from steersman.queue._redis_blobs import (
    BLOB_MIN_BYTES,
    BadReference,
    BlobRef,
    BlobUnavailable,
    give_back_spares,
    offer_landing,
    read_blob,
    release,
    take_spare,
    write_blob,
)
from steersman.queue.base import BaseQueues, Buffer

if TYPE_CHECKING:
    from steersman.proxy import NameOption, ThresholdOption

logger = logging.getLogger(__name__)

T = TypeVar("T")

SERVER_GROUP = "servers"
"""Consumer group of the task servers on the requests stream."""
THINKER_GROUP = "thinker"
"""Consumer group of the thinker on each results stream."""
PAYLOAD_FIELD = b"m"
"""The field of a stream entry holding the whole message as raw bytes."""
BLOB_FIELD = b"b"
"""The field of a stream entry whose message is too large to hold: where its chunks are."""

Payload = bytes | BlobRef
"""What a stream entry carries: a message, or a reference to a large one."""

_RESULT_BLOCK = 0.5  # longest blocking read of results, so close() is never held up for long
_REQUEST_BLOCK = 1.0  # longest blocking read of requests, so stale claims are checked regularly
#: Longest time between two announcements that a task server is alive (see `server_timeout`).
_ANNOUNCE_EVERY = 2.0
#: Longest time between two looks of a waiting thinker at those announcements.
_CHECK_EVERY = 5.0
_RESULT_BATCH = 64
_CLAIM_BATCH = 16
_BACKOFF_FIRST, _BACKOFF_MAX = 0.05, 1.0

# Names of attributes that belong to one process and are rebuilt after pickling or fork.
_LOCAL_NAMES = (
    "_client", "_consumer", "_stop", "_state_lock", "_resync_lock", "_connected",
    "_request_group_ready", "_result_groups_ready", "_resync_requests", "_resync_results",
    "_held", "_inflight", "_claimed", "_thread_state", "_next_claim", "_heartbeat",
    "_result_buffer", "_unacked_results", "_published", "_blobs", "_unacked_blobs", "_landings",
    "_alive_at", "_next_check", "_announce_failing",
)


class _MissingGroup(Exception):
    """A consumer group vanished (Redis restarted without persistence): create it again."""


class RedisQueues(BaseQueues):
    """Queues through a Redis server, for a thinker and task servers on different machines.

    Args:
        hostname: Host of the Redis server.
        port: Port of the Redis server.
        topics: Names used to separate kinds of results; ``'default'`` is always present.
        serialization_method: ``'pickle'`` (default) or ``'json'``.
        keep_inputs: Whether results come back with their inputs by default.
        methods: Method names the server offers (task servers fill this in themselves).
        key: Optional secret to sign every message; unsigned messages are then rejected.
        prefix: Prefix of every Redis key; a new unique one per campaign unless given. The
            thinker's and the server's queues must share it (see :func:`make_queue_pairs`).
        password: Password of the Redis server (or of `username`).
        username: Redis ACL user name.
        db: Redis database number.
        ssl: Connect with TLS.
        ssl_ca_certs: File of the certificate authorities that signed the server's certificate.
        ssl_certfile: Client certificate, for servers that require one.
        ssl_keyfile: Key of the client certificate.
        socket_connect_timeout: Seconds to wait for a connection before giving up.
        socket_timeout: Seconds to wait for a reply from a server that went silent.
        reconnect_timeout: Seconds to keep retrying after a working connection dropped.
        claim_idle: Seconds a request may stay unacknowledged by a silent server before another
            server takes it over. Live servers refresh their requests well within this time.
        server_timeout: Seconds without any live task server after which a thinker waiting for
            results with tasks outstanding raises
            :class:`~steersman.exceptions.TaskServerDied`, once it saw a server alive; None
            waits for servers forever. Servers announce themselves every 2 s (a quarter of
            their own `server_timeout` if that is less); a thinker looks every 5 s (a third of
            its `server_timeout` if less).
        redis_options: Further keyword arguments for :class:`redis.Redis`.
        proxystore_name: ProxyStore store for large values, for every topic or per topic.
        proxystore_threshold: Size in bytes above which values are proxied, likewise.
    """

    def __init__(
        self,
        hostname: str = "localhost",
        port: int = 6379,
        topics: Iterable[str] = (),
        serialization_method: str | SerializationMethod = SerializationMethod.PICKLE,
        keep_inputs: bool = True,
        methods: Iterable[str] | None = None,
        key: bytes | str | None = None,
        prefix: str | None = None,
        password: str | None = None,
        username: str | None = None,
        db: int = 0,
        ssl: bool = False,
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        socket_connect_timeout: float = 5.0,
        socket_timeout: float = 10.0,
        reconnect_timeout: float = 30.0,
        claim_idle: float = 30.0,
        server_timeout: float | None = 30.0,
        redis_options: Mapping[str, Any] | None = None,
        proxystore_name: NameOption = None,
        proxystore_threshold: ThresholdOption = None,
    ):
        if not isinstance(hostname, str) or not hostname:
            raise ValueError(f"hostname must be a non-empty string, got {hostname!r}")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be an integer from 1 to 65535, got {port!r}")
        if not isinstance(db, int) or db < 0:
            raise ValueError(f"db must be a non-negative integer, got {db!r}")
        if prefix is not None and (not isinstance(prefix, str) or not prefix):
            raise ValueError(f"prefix must be a non-empty string or None, got {prefix!r}")
        for name, value in (("socket_connect_timeout", socket_connect_timeout),
                            ("socket_timeout", socket_timeout),
                            ("reconnect_timeout", reconnect_timeout)):
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if not isinstance(claim_idle, (int, float)) or claim_idle < 0:
            raise ValueError(f"claim_idle must be a non-negative number of seconds, "
                             f"got {claim_idle!r}")
        if server_timeout is not None and (
                isinstance(server_timeout, bool) or not isinstance(server_timeout, (int, float))
                or not server_timeout > 0):
            raise ValueError(f"server_timeout must be a positive number of seconds or None, "
                             f"got {server_timeout!r}")
        self.hostname = hostname
        self.port = port
        self.db = db
        self.prefix = prefix if prefix is not None else new_prefix()
        self.reconnect_timeout = float(reconnect_timeout)
        self.claim_idle = float(claim_idle)
        self.server_timeout = None if server_timeout is None else float(server_timeout)
        self._redis_options: dict[str, Any] = {
            "host": hostname, "port": port, "db": db, "password": password, "username": username,
            "socket_connect_timeout": socket_connect_timeout,
            # A blocking read must outlast its BLOCK time before the socket gives up on it.
            "socket_timeout": max(socket_timeout, _REQUEST_BLOCK + 1.0),
            # Our own loop retries (bounded, logged); redis-py must fail fast underneath it.
            "retry": Retry(NoBackoff(), 0),
        }
        if ssl:
            self._redis_options.update(ssl=True, ssl_ca_certs=ssl_ca_certs,
                                       ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
        self._redis_options.update(redis_options or {})
        super().__init__(topics, serialization_method, keep_inputs, methods, key,
                         proxystore_name, proxystore_threshold)

    # --- names of the keys --------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` of the Redis server, for messages."""
        return f"{self.hostname}:{self.port}"

    @property
    def requests_key(self) -> str:
        """The stream of task requests (and kill signals)."""
        return f"{self.prefix}:requests"

    def results_key(self, topic: str) -> str:
        """The stream of results of one topic."""
        return f"{self.prefix}:results:{topic}"

    @property
    def methods_key(self) -> str:
        """Where the task server publishes its method names."""
        return f"{self.prefix}:methods"

    @property
    def servers_key(self) -> str:
        """The sorted set of task servers and when each last announced it was alive (ms)."""
        return f"{self.prefix}:servers"

    def _wake_key(self) -> str:
        return f"{self.prefix}:wake:{self._consumer}"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(hostname={self.hostname!r}, port={self.port}, "
                f"db={self.db}, prefix={self.prefix!r}, topics={self.topics!r})")

    # --- per-process state --------------------------------------------------------------------

    def _init_local(self) -> None:
        super()._init_local()
        self._client: redis.Redis | None = None
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._state_lock = threading.Lock()
        self._resync_lock = threading.Lock()
        self._connected = False  # whether a command ever succeeded in this process
        self._request_group_ready = False
        self._result_groups_ready = False
        self._resync_requests = False
        self._resync_results = False
        # Server side: requests handed out and not acknowledged yet.
        self._held: set[bytes] = set()
        self._inflight: dict[str, bytes] = {}  # task id -> stream entry id
        self._claimed: deque[tuple[bytes, Payload]] = deque()
        self._blobs: dict[bytes, BlobRef] = {}  # stream entry id -> its large message
        self._landings: dict[bytes, object] = {}  # stream entry id -> the memory it was read into
        self._thread_state = threading.local()
        self._next_claim = 0.0
        self._heartbeat: threading.Thread | None = None
        self._announce_failing = False
        # Client side: when a task server was last known alive (monotonic), and next looked for.
        self._alive_at: float | None = None
        self._next_check = 0.0
        # Client side: results read but not handed to the base class yet, and unacknowledged ids.
        self._result_buffer: deque[Payload] = deque()
        self._unacked_results: dict[str, list[bytes]] = {}
        self._unacked_blobs: dict[str, dict[bytes, BlobRef]] = {}  # stream -> entry -> message
        self._published: dict[str, frozenset[str]] = {}  # published names, once found

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for name in _LOCAL_NAMES:
            state.pop(name, None)
        return state

    def on_worker_process(self) -> None:
        """In a worker forked from the server: forget the server's connection and requests.

        The inherited sockets are dropped, not shut down, so the server's connection survives.
        """
        self._init_local()

    def _redis(self) -> redis.Redis:
        if self._client is None:
            with self._state_lock:
                if self._client is None:
                    self._client = redis.Redis(**self._redis_options)
        return self._client

    def _call(self, what: str, operation: Callable[[redis.Redis], T]) -> T:
        """Run one Redis operation, retrying with backoff while a dropped connection recovers.

        A server never reached from this process fails at once: that is a configuration error,
        not an outage.
        """
        deadline: float | None = None
        delay = _BACKOFF_FIRST
        attempt = 0
        while True:
            try:
                outcome = operation(self._redis())
            except redis.exceptions.AuthenticationError as exc:
                raise QueueConnectionError(
                    f"Redis at {self.address} refused the credentials: {exc}") from None
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                    OSError) as exc:
                if not self._connected:
                    raise QueueConnectionError(
                        f"cannot reach Redis at {self.address}: {exc}") from None
                if self._closing or self._stop.is_set():
                    raise QueueConnectionError(
                        f"lost Redis at {self.address} while closing: {exc}") from None
                now = monotonic()
                if deadline is None:
                    deadline = now + self.reconnect_timeout
                if now >= deadline:
                    raise QueueConnectionError(
                        f"lost Redis at {self.address} and could not reconnect within "
                        f"{self.reconnect_timeout:g} s: {exc}") from None
                attempt += 1
                self._resync_requests = self._resync_results = True
                logger.warning("Redis at %s unavailable during %s (%s); reconnect attempt %d "
                               "in %.2f s", self.address, what, exc, attempt, delay)
                self._stop.wait(min(delay, deadline - now))
                delay = min(2 * delay, _BACKOFF_MAX)
                continue
            except redis.exceptions.ResponseError as exc:
                # The stream and its group were deleted (e.g. Redis restarted without
                # persistence), before or while we waited on it; in a pipeline the message
                # carries a preamble.
                if "NOGROUP" in str(exc) or "no longer exists" in str(exc):
                    self._request_group_ready = self._result_groups_ready = False
                    raise _MissingGroup(str(exc)) from None
                raise QueueConnectionError(
                    f"Redis at {self.address} refused {what}: {exc}") from None
            except redis.exceptions.RedisError as exc:
                raise QueueConnectionError(
                    f"Redis at {self.address} failed during {what}: {exc}") from None
            if attempt:
                logger.info("reconnected to Redis at %s after %d attempt(s)", self.address,
                            attempt)
                if self._alive_at is not None:  # servers too were cut off: a new grace
                    self._alive_at = max(self._alive_at, monotonic())
            self._connected = True
            return outcome

    def _create_group(self, client: redis.Redis, stream: str, group: str) -> None:
        try:
            client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    def _ack(self, stream: str, ids: Sequence[bytes],
             blobs: Mapping[bytes, BlobRef] | None = None) -> None:
        """Acknowledge and delete entries; `blobs`: the large messages of some of them."""
        if not ids:
            return

        def ack(client: redis.Redis) -> None:
            pipe = client.pipeline(transaction=False)
            self._acknowledge(pipe, stream, ids, blobs or {})
            pipe.execute()

        with contextlib.suppress(_MissingGroup):  # the group and its pending entries are gone
            self._call("acknowledge", ack)

    def _acknowledge(self, pipe: Any, stream: str, ids: Sequence[bytes],
                     blobs: Mapping[bytes, BlobRef]) -> None:
        """Queue on `pipe` the acknowledgement and deletion of entries; the chunk keys of
        their large messages are left for the next large message to reuse."""
        group = SERVER_GROUP if stream == self.requests_key else THINKER_GROUP
        plain = [entry for entry in ids if entry not in blobs]
        if plain:
            pipe.xack(stream, group, *plain)
            pipe.xdel(stream, *plain)
        for entry in ids:
            if entry in blobs:
                release(pipe, self.prefix, stream, group, entry, blobs[entry])

    # --- messages in stream entries ---------------------------------------------------------

    def _send(self, stream: str, parts: Sequence[Frame], what: str) -> None:
        """Add a message to a stream: inside its entry, or beside it if it is large."""
        size = sum(memoryview(part).nbytes for part in parts)
        if size < BLOB_MIN_BYTES:
            data = join(parts)
            self._call(what, lambda client: client.xadd(stream, {PAYLOAD_FIELD: data}))
            return
        spare = self._call("reuse a large message's keys",
                           lambda client: take_spare(client, self.prefix, size))
        blob = BlobRef.new(size, spare)  # one for every attempt: a retry overwrites, no doubles
        fields = {BLOB_FIELD: blob.to_field()}
        self._call(what, lambda client: write_blob(client, self.prefix, blob, parts, stream,
                                                   fields))

    def _payload(self, fields: Mapping[bytes, bytes] | None,
                 new: bool = False) -> Payload | None:
        """What an entry carries; None for an entry without a message (deleted unread).

        `new`: the entry was just added, so a large message may still be arriving.
        """
        fields = fields or {}
        data = fields.get(PAYLOAD_FIELD)
        if data is not None:
            return data
        raw = fields.get(BLOB_FIELD)
        if raw is None:
            return None
        try:
            return BlobRef.from_field(raw, streamed=new)
        except BadReference as exc:
            logger.error("dropped a stream entry: %s", exc)
            return None

    def _fetch(self, payload: Payload, shared: bool = False) -> Buffer | None:
        """The bytes of a message; None if it cannot be read (see :class:`BlobUnavailable`).

        A large request lands in shared memory (`shared`): a task server forwards it to its
        worker process by name, not by copying it into a pipe.
        """
        if not isinstance(payload, BlobRef):
            return payload
        try:
            buffer = self._call("read a large message", lambda client: read_blob(
                client, self.prefix, payload, shared))
        except BlobUnavailable as exc:
            logger.warning("dropped large message %s: %s", payload.blob_id, exc)
            return None
        except BadReference as exc:
            logger.error("dropped a large message: %s", exc)
            return None
        return memoryview(buffer)

    # --- client side: sending requests, receiving results -------------------------------------

    def _send_request(self, parts: Sequence[Frame]) -> None:
        self._send(self.requests_key, parts, "send a request")

    def _recv_result(self, timeout: float | None) -> Buffer | None:
        payload = self._next_result(timeout)
        while payload is not None:
            data = self._fetch(payload)
            if data is not None:
                return data
            payload = self._result_buffer.popleft() if self._result_buffer else None
        return None

    def _next_result(self, timeout: float | None) -> Payload | None:
        if self._result_buffer:
            return self._result_buffer.popleft()
        block = _RESULT_BLOCK if timeout is None else min(timeout, _RESULT_BLOCK)
        try:
            self._ensure_result_groups()
            if self._resync_results:
                self._resync_results = False
                self._read_results("0", None)
            if not self._result_buffer:
                self._read_results(">", block)
        except _MissingGroup:
            return None
        if not self._result_buffer:  # every result sent is read: are servers left to send?
            self._check_servers()
        return self._result_buffer.popleft() if self._result_buffer else None

    def _check_servers(self) -> None:
        """With tasks outstanding, every few seconds: raise TaskServerDied if a server was
        seen alive but none announced itself for `server_timeout` seconds."""
        grace = self.server_timeout
        if grace is None or self.active_count == 0:
            return
        now = monotonic()
        if now < self._next_check:
            return
        self._next_check = now + min(_CHECK_EVERY, grace / 3)
        age = self._call("look for live task servers", self._announcement_age)
        if age is not None and (self._alive_at is not None or age < grace):
            # seen alive (an old announcement is no sign of life to a thinker that saw none)
            seen = now - age
            self._alive_at = seen if self._alive_at is None else max(self._alive_at, seen)
        if self._alive_at is not None and now - self._alive_at > grace:
            raise TaskServerDied(
                f"no task server has been alive for {now - self._alive_at:.1f} s "
                f"(server_timeout={grace:g}) on Redis at {self.address}, prefix "
                f"{self.prefix!r}, with {self.active_count} task(s) outstanding; "
                f"start a server with these queues' prefix and read the results again "
                f"with new queues")

    def _announcement_age(self, client: redis.Redis) -> float | None:
        """Seconds since the last announcement of any server, in Redis's clock; None if none."""
        pipe = client.pipeline(transaction=False)
        pipe.time()
        pipe.zrange(self.servers_key, -1, -1, withscores=True)
        (seconds, micros), newest = pipe.execute()
        if not newest:
            return None
        return max(0.0, seconds + micros / 1e6 - newest[0][1] / 1000)

    def _ensure_result_groups(self) -> None:
        if self._result_groups_ready:
            return

        def create(client: redis.Redis) -> None:
            for stream in [*map(self.results_key, self.topics), self._wake_key()]:
                self._create_group(client, stream, THINKER_GROUP)

        self._call("create the result groups", create)
        self._result_groups_ready = True

    def _read_results(self, start: str, block: float | None) -> None:
        """Read results into the buffer, acknowledging and deleting the previous batch.

        The acknowledgement rides in the same round trip as the next read: the previous batch
        was handed over already, so nothing is lost if this process dies in between. `start`
        is ``'>'`` for new entries, or ``'0'`` for entries this consumer read but may never have
        seen (the reply was lost when the connection dropped).
        """
        streams = {self.results_key(topic): start for topic in self.topics}
        streams[self._wake_key()] = start
        done = {stream: ids for stream, ids in self._unacked_results.items() if ids}
        done_blobs = self._unacked_blobs
        if done:  # a journal records them durably before Redis forgets them
            self._before_acknowledging()

        def read(client: redis.Redis) -> Any:
            pipe = client.pipeline(transaction=False)
            for stream, ids in done.items():
                self._acknowledge(pipe, stream, ids, done_blobs.get(stream, {}))
            pipe.xreadgroup(THINKER_GROUP, self._consumer, streams,  # type: ignore[arg-type]
                            count=_RESULT_BATCH, block=_block_ms(block))
            return pipe.execute()[-1]

        reply = self._call("read results", read)
        self._unacked_results, self._unacked_blobs = {}, {}
        for raw_stream, entries in cast(list[Any], reply or []):
            stream = raw_stream.decode()
            ids = self._unacked_results.setdefault(stream, [])
            for entry_id, fields in entries:
                ids.append(entry_id)
                payload = self._payload(fields, new=start == ">")
                if isinstance(payload, BlobRef):
                    # released with the entry
                    self._unacked_blobs.setdefault(stream, {})[entry_id] = payload
                if payload is not None and stream != self._wake_key():
                    self._result_buffer.append(payload)

    def _wake_receiver(self) -> None:
        if not self._result_groups_ready:
            return
        try:  # no retry: this is called while closing
            self._redis().xadd(self._wake_key(), {PAYLOAD_FIELD: b""})
        except redis.exceptions.RedisError as exc:
            logger.debug("could not wake the result receiver: %s", exc)

    def _published_names(self, kind: str) -> frozenset[str] | None:
        if kind not in self._published:
            raw = self._call(f"read the {kind} names",
                             lambda client: client.get(f"{self.prefix}:{kind}"))
            if raw is None:
                return None
            self._published[kind] = frozenset(json.loads(cast(bytes, raw)))
        return self._published[kind]

    def _publish_names(self, kind: str, names: frozenset[str]) -> None:
        payload = json.dumps(sorted(names))
        self._call(f"publish the {kind} names",
                   lambda client: client.set(f"{self.prefix}:{kind}", payload))

    # --- server side: receiving requests, sending results -------------------------------------

    def get_task(self, timeout: float | None = None,
                 routing_only: bool = False) -> Message | None:
        """Next request (or kill signal); remembers its stream entry for :meth:`request_done`.

        Kill signals, and messages the base class rejected, are deleted from the stream at once.
        """
        message = super().get_task(timeout, routing_only)
        entry = self._take_pending_verdict()
        if message is not None and entry is not None:
            task_id = message.task_id
            if message.kind is Kind.KILL or task_id is None:
                self._release([entry])
            else:
                with self._state_lock:
                    self._inflight[task_id] = entry
        return message

    def request_done(self, task_id: str) -> None:
        """Acknowledge and delete the request of a finished task, so no one runs it again."""
        with self._state_lock:
            entry = self._inflight.pop(task_id, None)
        if entry is None:
            logger.debug("request_done for task %s, which this server did not receive", task_id)
            return
        self._release([entry])

    def _release(self, entries: list[bytes]) -> None:
        with self._state_lock:
            blobs = {entry: blob for entry in entries if (blob := self._blobs.pop(entry, None))}
            landings = [self._landings.pop(entry, None) for entry in entries]
        self._ack(self.requests_key, entries, blobs)
        with self._state_lock:
            self._held.difference_update(entries)
        for landing in landings:  # the worker is done with it: it may carry a later request
            offer_landing(landing)

    def _take_pending_verdict(self) -> bytes | None:
        entry: bytes | None = getattr(self._thread_state, "entry", None)
        self._thread_state.entry = None
        return entry

    def _recv_request(self, timeout: float | None) -> Buffer | None:
        rejected = self._take_pending_verdict()
        if rejected is not None:  # get_task did not accept the last message: drop it for good
            logger.debug("deleting rejected request entry %s", rejected.decode())
            self._release([rejected])
        deadline = None if timeout is None else monotonic() + timeout
        while not self._stop.is_set():
            try:
                self._ensure_request_group()
                self._start_heartbeat()
                if not self._claimed:
                    self._claim_stale()
                if not self._claimed and self._resync_requests:
                    self._resync_own_requests()
                if self._claimed:
                    data = self._hand_out(*self._claimed.popleft())
                    if data is not None:
                        return data
                    continue
                remaining = None if deadline is None else max(0.0, deadline - monotonic())
                block = _REQUEST_BLOCK if remaining is None else min(remaining, _REQUEST_BLOCK)
                if self.claim_idle > 0:
                    block = min(block, max(self.claim_idle / 2, 0.05))
                block_ms = _block_ms(block)
                reply = self._call("read requests", lambda client: client.xreadgroup(
                    SERVER_GROUP, self._consumer, {self.requests_key: ">"},
                    count=1, block=block_ms))  # noqa: B023 (called at once, inside the loop)
            except _MissingGroup:
                continue
            for _, entries in cast(list[Any], reply or []):
                for entry, fields in entries:
                    payload = self._payload(fields, new=True)
                    if payload is None:
                        self._ack(self.requests_key, [entry])
                        continue
                    data = self._hand_out(entry, payload)
                    if data is not None:
                        return data
            if deadline is not None and monotonic() >= deadline:
                return None
        return None  # closed

    def _hand_out(self, entry: bytes, payload: Payload) -> Buffer | None:
        """The message of a request entry now held by this server; None (and the entry
        deleted) if a large message's chunks are gone."""
        with self._state_lock:  # held first: the heartbeat keeps it during a long read
            self._held.add(entry)
            if isinstance(payload, BlobRef):
                self._blobs[entry] = payload
        data = self._fetch(payload, shared=True)
        if data is None:
            self._release([entry])
            return None
        if isinstance(data, memoryview):
            with self._state_lock:
                self._landings[entry] = data.obj
        self._thread_state.entry = entry
        return data

    def _ensure_request_group(self) -> None:
        if not self._request_group_ready:
            self._call("create the server group", lambda client: self._create_group(
                client, self.requests_key, SERVER_GROUP))
            self._request_group_ready = True

    def _claim_stale(self) -> None:
        """Take over requests that a silent server held longer than `claim_idle` seconds."""
        now = monotonic()
        if now < self._next_claim:
            return
        self._next_claim = now + max(self.claim_idle / 2, 0.05)
        start: bytes | str = "0-0"
        for _ in range(64):  # bounded: a huge backlog is taken over a batch at a time
            reply = self._call("claim stale requests", functools.partial(self._autoclaim, start))
            start, entries = cast(list[Any], reply)[:2]
            with self._state_lock:
                mine = set(self._held)
            for entry, fields in entries:
                if entry in mine:
                    continue  # ours and still running: the claim only refreshed it
                payload = self._payload(fields)
                if payload is None:
                    self._ack(self.requests_key, [entry])
                    continue
                logger.warning("took over request entry %s from a server silent for %g s or "
                               "more", entry.decode(), self.claim_idle)
                self._claimed.append((entry, payload))
            if start in (b"0-0", "0-0"):
                break

    def _autoclaim(self, start: bytes | str, client: redis.Redis) -> Any:
        return client.xautoclaim(
            self.requests_key, SERVER_GROUP, self._consumer,
            min_idle_time=int(self.claim_idle * 1000), start_id=start, count=_CLAIM_BATCH)

    def _resync_own_requests(self) -> None:
        """After a reconnection, pick up requests read whose reply was lost on the way."""
        with self._resync_lock:
            if not self._resync_requests:
                return
            reply = self._call("re-read pending requests", lambda client: client.xreadgroup(
                SERVER_GROUP, self._consumer, {self.requests_key: "0"}))
            with self._state_lock:
                mine = set(self._held)
            for _, entries in cast(list[Any], reply or []):
                for entry, fields in entries:
                    if entry in mine:
                        continue
                    payload = self._payload(fields)
                    if payload is None:
                        self._ack(self.requests_key, [entry])
                    else:
                        logger.info("recovered request entry %s after reconnecting",
                                    entry.decode())
                        self._claimed.append((entry, payload))
            self._resync_requests = False

    def _start_heartbeat(self) -> None:
        if self._heartbeat is None:
            with self._state_lock:
                if self._heartbeat is None:
                    self._heartbeat = threading.Thread(
                        target=self._refresh_held, name="steersman-redis-heartbeat", daemon=True)
                    self._heartbeat.start()

    def _refresh_held(self) -> None:
        """Announce that this server is alive (see `server_timeout`), and keep the idle time
        of the requests it runs short, so none is taken over."""
        refresh_every = max(self.claim_idle / 3, 0.05)
        announce_every = _ANNOUNCE_EVERY if self.server_timeout is None \
            else min(_ANNOUNCE_EVERY, self.server_timeout / 4)
        next_announce = monotonic()
        next_refresh = next_announce + refresh_every
        while True:
            now = monotonic()
            if now >= next_announce:
                next_announce = now + announce_every
                self._announce()
            if now >= next_refresh:
                next_refresh = now + refresh_every
                try:
                    self._refresh_once()
                except redis.exceptions.RedisError as exc:
                    logger.warning("could not refresh running requests on Redis at %s: %s",
                                   self.address, exc)
            if self._stop.wait(max(0.0, min(next_announce, next_refresh) - monotonic())):
                return

    def _announce(self) -> None:
        """Record in Redis, in its own clock, that this server is alive now."""
        try:
            client = self._redis()
            seconds, micros = client.time()
            client.zadd(self.servers_key, {self._consumer: seconds * 1000 + micros // 1000})
        except redis.exceptions.RedisError as exc:
            if not self._announce_failing:  # once per outage: the refresh warns too
                logger.warning("could not announce this task server alive on Redis at %s: %s",
                               self.address, exc)
            self._announce_failing = True
        else:
            self._announce_failing = False

    def _refresh_once(self) -> None:
        with self._state_lock:
            held = list(self._held)
        if not held:
            return
        client = self._redis()
        owned = {row["message_id"] for row in client.xpending_range(
            self.requests_key, SERVER_GROUP, min="-", max="+", count=len(held) + 1000,
            consumername=self._consumer)}
        # A request another server took over stays with it: do not steal it back.
        mine = [entry for entry in held if entry in owned]
        if mine:
            client.xclaim(self.requests_key, SERVER_GROUP, self._consumer, min_idle_time=0,
                          message_ids=list[Any](mine), justid=True)

    def _send_result(self, topic: str, parts: Sequence[Frame]) -> None:
        self._send(self.results_key(topic), parts, "send a result")

    def direct_results(self) -> Callable[[Sequence[Frame]], bool]:
        """Workers forked from the server send large final results to Redis themselves, each
        on its own connection: the result does not cross the worker's pipe into the server
        only to leave it again. Small results still go through the server."""
        return self._send_directly

    def _send_directly(self, parts: Sequence[Frame]) -> bool:
        """In a worker: send a large final result; False to leave it to the server."""
        if sum(memoryview(part).nbytes for part in parts) < BLOB_MIN_BYTES:
            return False
        topic = _topic_of(parts)
        if topic is None or topic not in self.topics:
            return False
        try:
            self._send(self.results_key(topic), parts, "send a result")
        except QueueConnectionError as exc:
            logger.warning("a worker could not send its result itself (%s); the server will",
                           exc)
            return False
        return True

    # --- life cycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the background threads and drop the connection; Redis keeps the streams.

        Requests this server received but did not finish stay pending, for another server.
        """
        self._stop.set()  # first: a reconnecting receiver gives up at once
        super().close()
        if self._heartbeat is not None:  # a server's: its shared memory goes now
            self._heartbeat.join(timeout=5)
            give_back_spares()
            if self._client is not None:  # no longer alive: thinkers need not wait for it
                with contextlib.suppress(redis.exceptions.RedisError):
                    self._client.zrem(self.servers_key, self._consumer)
        if self._client is not None:
            pipe = self._client.pipeline(transaction=False)
            for stream, ids in self._unacked_results.items():  # the receiver has stopped
                if ids:
                    self._acknowledge(pipe, stream, ids, self._unacked_blobs.get(stream, {}))
            with contextlib.suppress(redis.exceptions.RedisError):
                pipe.execute()
            self._unacked_results, self._unacked_blobs = {}, {}
            if self._result_groups_ready:
                with contextlib.suppress(redis.exceptions.RedisError):
                    self._client.delete(self._wake_key())
            self._client.close()

    def purge(self) -> int:
        """Delete every key of this campaign (streams, method names, chunks of large messages
        left by a consumer that died); returns how many."""
        pattern = f"{self.prefix}:*"

        def delete(client: redis.Redis) -> int:
            keys = list(client.scan_iter(match=pattern, count=1000))
            return int(cast(int, client.delete(*keys))) if keys else 0

        return self._call("delete the campaign's keys", delete)


def new_prefix() -> str:
    """A key prefix of its own for a new campaign."""
    return f"steersman:{uuid.uuid4().hex}"


def make_queue_pairs(
    hostname: str,
    port: int = 6379,
    topics: Iterable[str] = (),
    serialization_method: str | SerializationMethod = SerializationMethod.PICKLE,
    keep_inputs: bool = True,
    methods: Iterable[str] | None = None,
    key: bytes | str | None = None,
    prefix: str | None = None,
    **options: Any,
) -> tuple[RedisQueues, RedisQueues]:
    """Queues for the thinker and for the task server that talk to each other through Redis.

    Both share one key prefix (a new unique one unless given). `options` are the connection
    options of :class:`RedisQueues` (password, username, db, ssl, ...).
    """
    prefix = prefix if prefix is not None else new_prefix()
    topics = [topics] if isinstance(topics, str) else list(topics)
    methods = list(methods) if methods is not None else None
    client, server = (
        RedisQueues(hostname, port, topics, serialization_method, keep_inputs, methods, key,
                    prefix, **options)
        for _ in range(2)
    )
    return client, server


def _block_ms(seconds: float | None) -> int | None:
    """BLOCK argument of a read: None does not block; 0 would block forever, so never use it."""
    if seconds is None or seconds <= 0:
        return None
    return max(1, math.ceil(seconds * 1000))


def _topic_of(parts: Sequence[Frame]) -> str | None:
    """The topic in the header of an encoded result, read from its first part (where
    :func:`~steersman.models.messages.encode` puts the header); None if it is not there."""
    try:
        kind, _ = peek(parts[0])
        header = header_of(parts[0]) if kind is Kind.RESULT else None
        topic = json.loads(bytes(header)).get("topic") if header is not None else None
    except (MessageError, ValueError):
        return None
    return topic if isinstance(topic, str) else None
