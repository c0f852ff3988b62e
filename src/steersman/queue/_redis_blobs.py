"""Large messages over Redis: cut into string keys, written and read on a raw connection.

A message of :data:`BLOB_MIN_BYTES` or more does not travel inside its stream entry: redis-py
would copy it whole into one command buffer (hiredis packs every argument into one ``bytes``)
and read it back 64 KiB at a time into a growing buffer, and Redis would copy it into the
stream's listpack. Instead its bytes, unchanged (same layout, same signature), are cut into
chunks of :data:`CHUNK_BYTES`, each a string key ``{prefix}:blob:{id}:{n}``, and the stream entry
carries only a :class:`BlobRef` (id, size, chunk size).

The writer sends the chunks and the stream entry in one MULTI/EXEC, straight from the message's
own buffers: a writer that dies halfway leaves nothing behind. The reader keeps a few GETs in
flight and reads each reply straight into its place in one buffer with ``recv_into``. Both use a
connection borrowed from the client's pool, so TLS, ACL user, password and database number
apply as for every other command. Chunks also keep each argument below Redis's
``proto-max-bulk-len`` (512 MB by default), so no message size limit comes from Redis.

Whoever acknowledges the entry deletes its chunks; see :mod:`steersman.queue.redis`.
"""

from __future__ import annotations

import mmap
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import redis

from steersman.models.serialization import Frame
from steersman.queue.pipe import shared_buffer

BLOB_MIN_BYTES = 1024 * 1024
"""Messages this large or larger travel as chunk keys rather than inside their stream entry."""
CHUNK_BYTES = 1024 * 1024
"""Size of one chunk key (the last chunk of a message may be shorter)."""
READ_AHEAD = 2
"""GETs in flight while reading a message. All at once, Redis would build every reply in memory
it must first map (a page fault per 4 KiB, as costly as the copies); a few at a time, it reuses
the same memory for every reply."""

_MIN_CHUNK, _MAX_CHUNK = 64 * 1024, 512 * 1024 * 1024
_MAX_CHUNKS = 1 << 16
_READ_SIZE = 64 * 1024  # bytes read at a time while looking for the end of a reply line
_SMALL = 64 * 1024  # buffers smaller than this are merged before sending
_CRLF = b"\r\n"
_MAP_ANONYMOUS = getattr(mmap, "MAP_ANONYMOUS", 0x20)
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_BLOB_ID = re.compile(r"[0-9a-f]{32}")


class BadReference(ValueError):
    """A stream entry names chunks in a way no writer of ours would: the entry is dropped."""


@dataclass(frozen=True)
class BlobRef:
    """Where a large message waits: the id of its chunk keys, its size and the chunk size."""

    blob_id: str
    size: int
    chunk_bytes: int = CHUNK_BYTES

    @classmethod
    def new(cls, size: int) -> BlobRef:
        """A reference with an id of its own, for a message of `size` bytes."""
        return cls(uuid.uuid4().hex, size)

    def to_field(self) -> bytes:
        """The value stored in the stream entry."""
        return f"{self.blob_id}:{self.size}:{self.chunk_bytes}".encode()

    @classmethod
    def from_field(cls, raw: bytes) -> BlobRef:
        """Parse and check a stream entry's value; :class:`BadReference` if it is not ours."""
        try:
            blob_id, size, chunk = raw.decode("ascii").split(":")
            ref = cls(blob_id, int(size), int(chunk))
        except ValueError:
            raise BadReference(f"malformed large-message reference {raw[:80]!r}") from None
        if (not _BLOB_ID.fullmatch(ref.blob_id) or ref.size <= 0
                or not _MIN_CHUNK <= ref.chunk_bytes <= _MAX_CHUNK
                or ref.count > _MAX_CHUNKS):
            raise BadReference(f"invalid large-message reference {raw[:80]!r}")
        return ref

    @property
    def count(self) -> int:
        """Number of chunk keys."""
        return -(-self.size // self.chunk_bytes)

    def keys(self, prefix: str) -> list[bytes]:
        """Names of the chunk keys, in order."""
        return [f"{prefix}:blob:{self.blob_id}:{n}".encode() for n in range(self.count)]


# --- writing ----------------------------------------------------------------------------------


def write_blob(client: redis.Redis, prefix: str, ref: BlobRef, parts: Sequence[Frame],
               stream: str, fields: dict[bytes, bytes]) -> None:
    """Store the message `parts` as the chunks of `ref` and add `fields` to `stream`, atomically."""
    commands: list[Frame] = [*_command(b"MULTI")]
    for key, pieces in zip(ref.keys(prefix), _cut(parts, ref.chunk_bytes)):
        commands += _command(b"SET", key, pieces)
    entry = [item for pair in fields.items() for item in pair]
    commands += _command(b"XADD", stream.encode(), b"*", *entry)
    commands += _command(b"EXEC")
    with _borrowed(client) as (connection, replies):
        connection.send_packed_command(_merge_small(commands), check_health=False)
        replies.expect_simple(b"OK")
        for _ in range(ref.count + 1):
            replies.expect_simple(b"QUEUED")
        outcome = replies.reply()
    if not isinstance(outcome, list) or len(outcome) != ref.count + 1:
        raise redis.exceptions.ResponseError(f"MULTI/EXEC of a large message failed: {outcome!r}")
    for reply in outcome:
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply


def _cut(parts: Sequence[Frame], size: int) -> Iterator[list[memoryview]]:
    """The bytes of `parts`, end to end, as lists of views of at most `size` bytes each."""
    chunk: list[memoryview] = []
    room = size
    for part in parts:
        view = memoryview(part).cast("B")
        while view.nbytes:
            piece, view = view[:room], view[room:]
            chunk.append(piece)
            room -= piece.nbytes
            if room == 0:
                yield chunk
                chunk, room = [], size
    if chunk:
        yield chunk


def _command(*args: bytes | list[memoryview]) -> list[Frame]:
    """A command in the Redis protocol; an argument given as a list of views is sent as one."""
    out: list[Frame] = [b"*%d\r\n" % len(args)]
    for arg in args:
        pieces = arg if isinstance(arg, list) else [arg]
        out.append(b"$%d\r\n" % sum(memoryview(p).nbytes for p in pieces))
        out += pieces
        out.append(_CRLF)
    return out


def _merge_small(buffers: Sequence[Frame]) -> list[Frame]:
    """Join runs of small buffers, so a message costs a few system calls, not one per piece."""
    merged: list[Frame] = []
    small = bytearray()
    for buffer in buffers:
        if memoryview(buffer).nbytes < _SMALL:
            small += buffer
            continue
        if small:
            merged.append(bytes(small))
            small.clear()
        merged.append(buffer)
    if small:
        merged.append(bytes(small))
    return merged


# --- reading ----------------------------------------------------------------------------------


def new_buffer(ref: BlobRef, shared: bool = False) -> mmap.mmap:
    """Memory for a message, mapped in one go: faulting it in a page at a time while the
    socket fills it costs twice as much. Call it once Redis is known to hold that much
    (:func:`blob_present`), so a forged size cannot make this process take the memory.

    With `shared`, the memory is a file in shared memory where possible (see
    :func:`~steersman.queue.pipe.shared_buffer`): a task server hands such a message to its
    worker process by name instead of copying it.

    Raises :class:`BadReference` if this machine cannot map that much.
    """
    if shared:
        with suppress(OSError, OverflowError, ValueError):
            return shared_buffer(ref.size)
    try:
        return mmap.mmap(-1, ref.size, flags=mmap.MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_POPULATE)
    except (OSError, OverflowError, ValueError) as exc:
        raise BadReference(f"cannot hold a message of {ref.size} bytes: {exc}") from None


def blob_present(client: redis.Redis, ref: BlobRef, prefix: str) -> bool:
    """Whether every chunk of `ref` is in Redis with the length it should have (a key of
    another type is not a chunk; any other error is raised)."""
    lengths = [min(ref.chunk_bytes, ref.size - start)
               for start in range(0, ref.size, ref.chunk_bytes)]
    pipe = client.pipeline(transaction=False)
    for key in ref.keys(prefix):
        pipe.strlen(key)
    found = pipe.execute(raise_on_error=False)
    for reply in found:
        if isinstance(reply, redis.exceptions.ResponseError) and not _wrong_type(reply):
            raise reply
    return bool(found == lengths)


def read_blob(client: redis.Redis, prefix: str, ref: BlobRef, buffer: mmap.mmap) -> bool:
    """Fill `buffer` with the chunks of `ref`; False if a chunk is missing or of the wrong size
    (the entry was handled and its chunks deleted already, or it was not written by us)."""
    gets = [b"".join(_command(b"GET", key)) for key in ref.keys(prefix)]
    try:
        with _borrowed(client) as (connection, replies), memoryview(buffer) as view:
            connection.send_packed_command([b"".join(gets[:READ_AHEAD])], check_health=False)
            for n, start in enumerate(range(0, ref.size, ref.chunk_bytes)):
                if n + READ_AHEAD < len(gets):
                    connection.send_packed_command([gets[n + READ_AHEAD]], check_health=False)
                expected = min(ref.chunk_bytes, ref.size - start)
                if replies.bulk_length() != expected:
                    raise _Missing  # the connection is dropped: simpler than reading the rest
                replies.read_into(view[start:start + expected])
                replies.expect_crlf()
    except _Missing:
        return False
    return True


class _Missing(Exception):
    """A chunk is missing or of the wrong size."""


# --- the connection ---------------------------------------------------------------------------


@contextmanager
def _borrowed(client: redis.Redis) -> Iterator[tuple[Any, _Replies]]:
    """A connection of the client's pool and a reader of its replies; dropped on any error, so
    a connection left halfway through a reply never goes back to the pool."""
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        if connection._sock is None:
            connection.connect()
        replies = _Replies(connection._sock)
        yield connection, replies
        replies.expect_end()
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


class _Replies:
    """Replies of the Redis protocol read from a socket, large values straight into place."""

    def __init__(self, sock: Any):
        self._sock = sock
        self._pending = bytearray()

    def bulk_length(self) -> int | None:
        """Length of the next bulk reply, or None for a missing key (or one of another type)."""
        line = self._line()
        if line == b"_" or line.startswith(b"-WRONGTYPE"):  # "_": RESP3 null
            return None
        if line[:1] != b"$":
            raise _unexpected(line)
        length = int(line[1:])
        return None if length < 0 else length

    def read_into(self, view: memoryview) -> None:
        """Fill `view` with the next bytes of the connection."""
        filled = min(len(self._pending), view.nbytes)
        view[:filled] = self._pending[:filled]
        del self._pending[:filled]
        while filled < view.nbytes:
            received = self._sock.recv_into(view[filled:])
            if not received:
                raise redis.exceptions.ConnectionError("Redis closed the connection mid-reply")
            filled += received

    def expect_crlf(self) -> None:
        if self._line():
            raise redis.exceptions.ResponseError("a bulk reply is longer than announced")

    def expect_simple(self, text: bytes) -> None:
        line = self._line()
        if line != b"+" + text:
            raise _unexpected(line)

    def expect_end(self) -> None:
        if self._pending:
            raise redis.exceptions.ResponseError("Redis sent more replies than expected")

    def reply(self) -> Any:
        """One small reply of any type (an EXEC's array); errors come back as exceptions."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"_":  # RESP3 null
            return None
        if kind == b"+":
            return rest
        if kind == b":":
            return int(rest)
        if kind == b"$":
            if int(rest) < 0:
                return None
            value = bytearray(int(rest))
            self.read_into(memoryview(value))
            self.expect_crlf()
            return bytes(value)
        if kind == b"*":
            return None if int(rest) < 0 else [self.reply() for _ in range(int(rest))]
        if kind == b"-":
            return redis.exceptions.ResponseError(rest.decode(errors="replace"))
        raise _unexpected(line)

    def _line(self) -> bytes:
        while (end := self._pending.find(_CRLF)) < 0:
            data = self._sock.recv(_READ_SIZE)
            if not data:
                raise redis.exceptions.ConnectionError("Redis closed the connection mid-reply")
            self._pending += data
        line = bytes(self._pending[:end])
        del self._pending[:end + 2]
        return line


def _wrong_type(error: redis.exceptions.ResponseError) -> bool:
    return str(error).startswith("WRONGTYPE")


def _unexpected(line: bytes) -> redis.exceptions.RedisError:
    if line[:1] == b"-":
        return redis.exceptions.ResponseError(line[1:].decode(errors="replace"))
    return redis.exceptions.ResponseError(f"unexpected reply from Redis: {line[:80]!r}")
