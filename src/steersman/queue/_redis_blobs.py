"""Large messages over Redis: cut into string keys, written and read on a raw connection.

A message of :data:`BLOB_MIN_BYTES` or more does not travel inside its stream entry: redis-py
would copy it whole into one command buffer (hiredis packs every argument into one ``bytes``)
and read it back 64 KiB at a time into a growing buffer, and Redis would copy it into the
stream's listpack. Instead its bytes, unchanged (same layout, same signature), are cut into
chunks of :data:`CHUNK_BYTES`, each a string key ``{prefix}:blob:{id}:{n}`` that starts with the
message's stamp, and the stream entry carries only a :class:`BlobRef` (key id, stamp, size,
chunk size).

The message is *streamed*: its reader starts while the writer is still sending it, so a large
message costs about the longer of the two sides, not their sum. The writer adds the entry
together with the first chunk (one MULTI/EXEC), then each further chunk followed by a token
(its number) on the list ``{prefix}:blob:{id}:ready:{stamp}``; all of it in one go, straight
from the message's own buffers. The reader of a new entry pairs each further chunk's GET with a
BLPOP of the next token, so Redis hands it each chunk as soon as it is there, without polling.
A reader of an older entry (taken over from a server that died, or read again after a
reconnection) expects the chunks to be there and waits for tokens only where one is missing (or
holds an earlier message's stamp). A writer that stops halfway (it died, or Redis refused a
chunk) leaves its reader waiting at most :data:`STALL_SECONDS` without progress; the message is
then dropped.

The reader takes memory for the message as the chunks arrive, in a few doubling steps (a
reference claiming more than Redis holds costs little), mapping each step's pages in one call
rather than faulting them in one at a time. A reader that keeps its message in private memory
(a thinker reading results) reuses the memory of its previous message once nothing refers to
it any more (see :class:`_Spares`): fresh pages cost the kernel as much as the copies.

Both sides use a connection borrowed from the client's pool, so TLS, ACL user, password and
database number apply as for every other command. Chunks also keep each argument below Redis's
``proto-max-bulk-len`` (512 MB by default), so no message size limit comes from Redis.

Whoever acknowledges the entry releases its keys, and the next large message of the campaign
reuses them (see the recycling section below); see :mod:`steersman.queue.redis`.
"""

from __future__ import annotations

import functools
import heapq
import mmap
import os
import re
import threading
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

import redis

from steersman.models.serialization import Frame
from steersman.queue.pipe import SpilledMap, kept_buffer, remove_orphans

BLOB_MIN_BYTES = 1024 * 1024
"""Messages this large or larger travel as chunk keys rather than inside their stream entry."""
CHUNK_BYTES = 1024 * 1024
"""Size of one chunk key's value: its message's stamp, then the message's next bytes (the last
chunk of a message may be shorter)."""
STAMP_BYTES = 16
"""The stamp of a message, at the head of each of its chunks (see :class:`BlobRef`)."""
PIECE_BYTES = CHUNK_BYTES - STAMP_BYTES
"""Bytes of the message in one chunk."""
READ_AHEAD = 2
"""Chunks requested ahead while reading a message. All at once, Redis would build every reply
in memory it must first map (a page fault per 4 KiB, as costly as the copies); a few at a
time, it reuses the same memory for every reply."""
STALL_SECONDS = 5.0
"""How long a reader waits for the next chunk of a message before it gives the message up (its
writer died, or Redis refused a chunk). Shortened to half the connection's socket timeout."""

FIRST_STEP = 16 * 1024 * 1024
"""Memory a reader takes for a message at first; then as much again each time it is full."""
SPARE_SECONDS = 5.0
"""How long the private memory of a message read, once free, is kept for the next one."""

_MIN_CHUNK, _MAX_CHUNK = 64 * 1024, 512 * 1024 * 1024
_MAX_CHUNKS = 1 << 16
_READ_SIZE = 64 * 1024  # bytes read at a time while looking for the end of a reply line
_SMALL = 64 * 1024  # buffers smaller than this are merged before sending
_CRLF = b"\r\n"
_MAP_ANONYMOUS = getattr(mmap, "MAP_ANONYMOUS", 0x20)
_MADV_POPULATE_WRITE = 23  # Linux 5.14: map (and allocate) a range's pages in one call
_ABORT = b"-1"  # the token a writer pushes when it cannot finish a message
_BLOB_ID = re.compile(r"[0-9a-f]{32}")


class BadReference(ValueError):
    """A stream entry names chunks in a way no writer of ours would: the entry is dropped."""


@dataclass(frozen=True)
class BlobRef:
    """Where a large message waits: the id of its chunk keys, the message's own stamp, its size
    and the chunk size.

    Chunk keys outlive their message (see :func:`take_spare`), so every chunk starts with the
    :data:`STAMP_BYTES` bytes of its message's stamp: a reader tells its own chunks from those
    of an earlier message under the same keys.
    """

    blob_id: str
    stamp: str
    size: int
    chunk_bytes: int = PIECE_BYTES  # of the message, in each chunk after the stamp
    #: Read as it is written (a new entry): wait for each chunk's token. Not part of the entry.
    streamed: bool = field(default=False, compare=False)

    @classmethod
    def new(cls, size: int, blob_id: str | None = None) -> BlobRef:
        """A reference for a message of `size` bytes, in the keys of `blob_id` (the keys of a
        released message) or in keys of its own."""
        stamp = uuid.uuid4().hex
        return cls(blob_id or stamp, stamp, size)

    def to_field(self) -> bytes:
        """The value stored in the stream entry."""
        return f"{self.blob_id}:{self.stamp}:{self.size}:{self.chunk_bytes}".encode()

    @classmethod
    def from_field(cls, raw: bytes, streamed: bool = False) -> BlobRef:
        """Parse and check a stream entry's value; :class:`BadReference` if it is not ours.

        `streamed`: the entry is new, so its message may still be arriving.
        """
        try:
            blob_id, stamp, size, chunk = raw.decode("ascii").split(":")
            ref = cls(blob_id, stamp, int(size), int(chunk), streamed)
        except ValueError:
            raise BadReference(f"malformed large-message reference {raw[:80]!r}") from None
        if (not _BLOB_ID.fullmatch(ref.blob_id) or not _BLOB_ID.fullmatch(ref.stamp)
                or ref.size <= 0 or not _MIN_CHUNK <= ref.chunk_bytes <= _MAX_CHUNK
                or ref.count > _MAX_CHUNKS):
            raise BadReference(f"invalid large-message reference {raw[:80]!r}")
        return ref

    @property
    def count(self) -> int:
        """Number of chunk keys."""
        return -(-self.size // self.chunk_bytes)

    @property
    def head(self) -> bytes:
        """The first bytes of each of its chunks: its stamp."""
        return bytes.fromhex(self.stamp)

    def keys(self, prefix: str) -> list[bytes]:
        """Names of the chunk keys, in order."""
        return [f"{prefix}:blob:{self.blob_id}:{n}".encode() for n in range(self.count)]

    def ready_key(self, prefix: str) -> bytes:
        """Name of the list of tokens, one per chunk written after the entry; its own to this
        message, so a late reader of an earlier message never takes its tokens."""
        return f"{prefix}:blob:{self.blob_id}:ready:{self.stamp}".encode()

    def all_keys(self, prefix: str) -> list[bytes]:
        """Every key of the message: chunks and tokens."""
        return [*self.keys(prefix), self.ready_key(prefix)]


# --- writing ----------------------------------------------------------------------------------


def write_blob(client: redis.Redis, prefix: str, ref: BlobRef, parts: Sequence[Frame],
               stream: str, fields: dict[bytes, bytes]) -> None:
    """Add `fields` to `stream` with the first chunk of the message `parts`, then stream the
    other chunks of `ref`, each announced by its token (see the module)."""
    keys, ready, head = ref.keys(prefix), ref.ready_key(prefix), memoryview(ref.head)
    chunks = _cut(parts, ref.chunk_bytes)
    entry = [item for pair in fields.items() for item in pair]
    commands: list[Frame] = [*_command(b"MULTI"),
                             *_command(b"SET", keys[0], [head, *next(chunks)]),
                             *_command(b"XADD", stream.encode(), b"*", *entry),
                             *_command(b"EXEC")]
    for n, pieces in enumerate(chunks, start=1):
        commands += _command(b"SET", keys[n], [head, *pieces])
        commands += _command(b"RPUSH", ready, b"%d" % n)
    with _borrowed(client) as (connection, replies):
        connection.send_packed_command(_merge_small(commands), check_health=False)
        replies.expect_simple(b"OK")
        replies.expect_simple(b"QUEUED")
        replies.expect_simple(b"QUEUED")
        outcome = replies.reply()
        if not isinstance(outcome, list) or len(outcome) != 2:
            raise redis.exceptions.ResponseError(f"adding a large message failed: {outcome!r}")
        errors = [reply for reply in outcome if isinstance(reply, Exception)]
        for _ in range(2 * (ref.count - 1)):
            reply = replies.reply()
            if isinstance(reply, Exception):
                errors.append(reply)
    if errors:
        if not isinstance(outcome[1], Exception):  # the entry is out: tell its reader to stop
            with suppress(redis.exceptions.RedisError):
                client.rpush(ready, _ABORT)
        raise errors[0]


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


# --- recycling --------------------------------------------------------------------------------
#
# Deleting a message's chunks frees them all at once, and Redis's allocator hands such runs of
# freed memory straight back to the kernel (seen as madvise calls of 9-10 MB right after the
# deletion); the next message's chunks then cost Redis a page fault per 4 KiB, more than the
# copies (about 25,000 faults per 100 MB). Overwriting existing string keys reuses their memory
# instead. So a released message's chunk keys are kept for :data:`RECYCLE_SECONDS`, and
# their id listed in the sorted set ``{prefix}:spare`` (scored by chunk count); the next large
# message from any writer of the campaign takes the best fit. Both steps are Lua scripts, so a
# release happens only for the consumer whose acknowledgement took the entry off the pending
# list (a late duplicate acknowledgement recycles nothing), and a spare goes to one writer.

RECYCLE_SECONDS = 10.0
"""How long the chunk keys of a released message wait for the next message to reuse them."""

_TAKE = """
local fit = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'LIMIT', 0, 1)[1]
    or redis.call('ZRANGE', KEYS[1], -1, -1)[1]
if fit then redis.call('ZREM', KEYS[1], fit) end
return fit
"""

_RELEASE = """
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('DEL', ARGV[3])
if acked == 1 then
    for n = 0, tonumber(ARGV[6]) - 1 do redis.call('PEXPIRE', ARGV[5] .. n, ARGV[4]) end
    redis.call('ZADD', KEYS[2], ARGV[6], ARGV[7])
    redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return acked
"""


def spare_key(prefix: str) -> str:
    """The sorted set of chunk-key ids free for the next large message."""
    return f"{prefix}:spare"


def take_spare(client: redis.Redis, prefix: str, size: int) -> str | None:
    """The id of released chunk keys for a message of `size` bytes (the fewest chunks that are
    enough, else the most there are), now this writer's; None if there are none."""
    found = client.eval(_TAKE, 1, spare_key(prefix), -(-size // PIECE_BYTES))
    if isinstance(found, bytes) and _BLOB_ID.fullmatch(found.decode("ascii", "replace")):
        return found.decode()
    return None


def release(pipe: Any, prefix: str, stream: str, group: str, entry: bytes,
            ref: BlobRef) -> None:
    """Queue on `pipe` the acknowledgement and deletion of `entry`, whose message is `ref`:
    its chunk keys become a spare for :data:`RECYCLE_SECONDS` (see above)."""
    pipe.eval(_RELEASE, 2, stream, spare_key(prefix), group, entry, ref.ready_key(prefix),
              int(RECYCLE_SECONDS * 1000), f"{prefix}:blob:{ref.blob_id}:", ref.count,
              ref.blob_id)


# --- reading ----------------------------------------------------------------------------------


class BlobUnavailable(Exception):
    """A large message cannot be read: its keys are gone or do not match, or its writer
    stopped sending it. The entry is dropped."""


_GONE = "its chunks are gone or do not match (handled already, or not written by steersman)"


def read_blob(client: redis.Redis, prefix: str, ref: BlobRef,
              shared: bool = False) -> mmap.mmap | memoryview:
    """The message of `ref`, read chunk by chunk into new memory as the chunks arrive.

    With `shared`, the memory is a file in shared memory where possible (see
    :func:`~steersman.queue.pipe.shared_buffer`): a task server hands such a message to its
    worker process by name instead of copying it.

    Raises :class:`BlobUnavailable` if the message cannot be read (nothing of it is kept), and
    :class:`BadReference` if this machine cannot hold it.
    """
    keys, ready = ref.keys(prefix), ref.ready_key(prefix)
    landing = _Landing(ref.size, shared)
    try:
        with _borrowed(client) as (connection, replies):
            wait = _stall_wait(connection)
            # Chunks known written: the first comes with a new entry; an older entry's are
            # assumed written, and checked. Past `assumed`, a chunk's GET waits for a token.
            sure = 0 if ref.streamed else -1
            assumed = sure if ref.streamed else ref.count - 1
            todo = list(range(ref.count))
            sent: deque[tuple[int, bool]] = deque()
            while todo or sent:
                while todo and len(sent) < READ_AHEAD:
                    n = heapq.heappop(todo)
                    paired = n > assumed
                    connection.send_packed_command(
                        [_read_command(keys[n], ready if paired else None, wait)],
                        check_health=False)
                    sent.append((n, paired))
                n, paired = sent.popleft()
                token = replies.token() if paired else None
                if token is not None:
                    if token < 0:
                        raise BlobUnavailable("its writer could not finish it")
                    sure, assumed = max(sure, token), max(assumed, token)
                start = n * ref.chunk_bytes
                length = min(ref.chunk_bytes, ref.size - start)
                if not replies.chunk_of(ref.head, length):  # missing, or another message's
                    if n <= sure:
                        raise BlobUnavailable(_GONE)
                    if paired and token is None:
                        raise BlobUnavailable(f"no chunk of it came for {wait:g} s (its "
                                              "writer stopped)")
                    assumed = min(assumed, n - 1)
                    heapq.heappush(todo, n)  # not written yet: wait for its token
                    continue
                if paired and token is None:  # there without a token: written long ago
                    assumed = ref.count - 1
                with landing.take(start, length) as view:
                    replies.read_into(view)
                replies.expect_crlf()
    except BaseException:
        landing.drop()
        raise
    return landing.message()


def _read_command(key: bytes, ready: bytes | None, wait: float) -> bytes:
    """GET a chunk; with `ready`, first wait for the next token."""
    get = b"".join(_command(b"GET", key))
    if ready is None:
        return get
    return b"".join(_command(b"BLPOP", ready, b"%.3f" % wait)) + get


def _stall_wait(connection: Any) -> float:
    timeout = getattr(connection, "socket_timeout", None)
    return STALL_SECONDS if not timeout else max(0.05, min(STALL_SECONDS, timeout / 2))


class _Landing:
    """The memory a large message is read into, taken as its bytes come, in doubling steps.

    Memory is taken ahead of the bytes (at most as much again as has arrived), in a few large
    steps: each step maps its pages in one call, which costs a fraction of faulting them in one
    at a time, and a reference claiming more than Redis holds costs little. Shared memory is
    reserved per step (``posix_fallocate``), so a full /dev/shm shows as an error, never as
    SIGBUS; if it fills up midway, reading goes on in private memory. Memory a previous message
    left free (see :class:`_Spares`) is taken first: it is mapped already.
    """

    def __init__(self, size: int, shared: bool):
        self.size = size
        self._fd = -1
        self._taken = 0  # bytes backed by memory, from the start
        buffer = _SPARES.take(size, shared)
        if isinstance(buffer, SpilledMap):
            self._taken = min(len(buffer), size)  # backed already; the rest as it comes
            if not _resized(buffer, size):  # exactly: a reader maps the whole file
                _give_back(buffer)
                buffer = None
            elif self._taken < size:
                self._fd = os.open(buffer.path, os.O_RDWR | os.O_CLOEXEC)
        elif buffer is not None:
            self._taken = len(buffer)
        if buffer is None and shared:
            with suppress(OSError, OverflowError, ValueError):
                _remove_orphans_once()
                kept = kept_buffer(size)
                self._fd = os.open(kept.path, os.O_RDWR | os.O_CLOEXEC)
                buffer = kept
        self.buffer = buffer if buffer is not None else _private(size)

    def message(self) -> mmap.mmap | memoryview:
        """The message read. Private memory is offered for reuse at once (it is reused once
        the message is freed); shared memory once its reader is done (:func:`offer_landing`)."""
        if isinstance(self.buffer, SpilledMap):
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            return self.buffer
        _SPARES.keep(self.buffer)
        return memoryview(self.buffer)[: self.size]

    def take(self, start: int, length: int) -> memoryview:
        """Where bytes ``[start, start + length)`` go, backed by memory now."""
        end = start + length
        if end > self._taken:
            step = min(self.size, max(end, 2 * self._taken, FIRST_STEP))
            self._back(self._taken, step - self._taken)
            self._taken = step
        return memoryview(self.buffer)[start:end]

    def _back(self, start: int, length: int) -> None:
        if self._fd >= 0:
            try:
                os.posix_fallocate(self._fd, start, length)
            except OSError:
                self._go_private(start)
        _populate(self.buffer, start, length)

    def _go_private(self, filled: int) -> None:
        private = _private(self.size)
        private[:filled] = self.buffer[:filled]
        self.drop()
        self.buffer = private

    def drop(self) -> None:
        """Give the memory back (a shared file goes with it)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if isinstance(self.buffer, SpilledMap):
            self.buffer.remove()
        else:
            with suppress(BufferError):
                self.buffer.close()


def offer_landing(buffer: object) -> None:
    """A task server is done with a large request it read into shared memory (its result was
    sent): the memory may carry a later request once no process maps it any more."""
    if isinstance(buffer, SpilledMap) and buffer.kept:
        _SPARES.keep(buffer)


def give_back_spares() -> None:
    """Give back now the memory this process keeps for later messages (see :class:`_Spares`);
    a closing task server's shared files go at once rather than after SPARE_SECONDS."""
    _SPARES.give_back_all()


@functools.cache
def _remove_orphans_once() -> None:
    remove_orphans()


def _rounded(size: int) -> int:
    """Private memory for a message is taken in whole chunks: the next message of about the
    same size (a header a few bytes longer) fits in it."""
    return -(-size // CHUNK_BYTES) * CHUNK_BYTES


class _Spares:
    """Memory of messages read in this process, for the next ones: the private memory of the
    last messages a thinker read, the shared memory of requests a task server finished.

    Memory is reused only once nothing refers to its message any more (no value decoded from
    it is alive: the map then has no exported buffer; and for shared memory, no other process
    maps it: each reader holds a shared lock on the file while it does), and only for a message
    that fills most of it. At most :data:`SPARES` are kept, each for :data:`SPARE_SECONDS`;
    then the memory is given back. A forked child starts without any.
    """

    _buffers: list[tuple[float, mmap.mmap]]  # (until, memory), oldest first
    _timer: threading.Thread | None

    def __init__(self) -> None:
        self.forget()

    def take(self, size: int, shared: bool) -> mmap.mmap | None:
        """Free memory for a message of `size` bytes: private memory that holds it, or shared
        memory at most a chunk short of it (its file then grows)."""
        least = size - CHUNK_BYTES if shared else size
        with self._lock:
            for index in reversed(range(len(self._buffers))):  # the latest first: warmest
                buffer = self._buffers[index][1]
                if isinstance(buffer, SpilledMap) == shared \
                        and least <= len(buffer) <= _rounded(size + size // 8) \
                        and _free(buffer):
                    del self._buffers[index]
                    return buffer
        return None

    def keep(self, buffer: mmap.mmap) -> None:
        """Offer `buffer` (perhaps still in use) for a later message."""
        with self._lock:
            self._buffers.append((monotonic() + SPARE_SECONDS, buffer))
            old = self._buffers[:-SPARES]
            del self._buffers[:-SPARES]
            if self._timer is None:
                self._timer = threading.Thread(target=self._expire, daemon=True,
                                               name="steersman-spare-memory")
                self._timer.start()
            self._changed.notify()
        for _, buffer in old:
            _give_back(buffer)

    def give_back_all(self) -> None:
        """Give every piece of memory back now."""
        with self._lock:
            buffers, self._buffers = self._buffers, []
        for _, buffer in buffers:
            _give_back(buffer)

    def _expire(self) -> None:
        while True:
            with self._lock:
                while not self._buffers or self._buffers[0][0] > monotonic():
                    self._changed.wait(self._buffers[0][0] - monotonic() if self._buffers
                                       else None)
                _, buffer = self._buffers.pop(0)
            _give_back(buffer)
            del buffer

    def forget(self) -> None:
        """Start empty (in a forked child: no memory, no timer; threads do not survive)."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._buffers = []
        self._timer = None


SPARES = 4
"""How many pieces of free memory a process keeps for later messages."""


def _free(buffer: mmap.mmap) -> bool:
    if not _unused(buffer):
        return False
    try:
        return not (isinstance(buffer, SpilledMap) and buffer.mapped_elsewhere())
    except OSError:  # its file is gone
        return False


def _resized(buffer: mmap.mmap, size: int) -> bool:
    """Fit a shared buffer (free) to `size` bytes, its file with it."""
    try:
        buffer.resize(size)
        return True
    except (BufferError, OSError, SystemError, ValueError):
        return False


def _give_back(buffer: mmap.mmap) -> None:
    """Unmap `buffer` now if nothing refers to it (else when the last reference goes); a
    shared file is removed (mappings of it elsewhere stay valid)."""
    if isinstance(buffer, SpilledMap):
        buffer.remove()
    elif _unused(buffer):
        buffer.close()


def _unused(buffer: mmap.mmap) -> bool:
    """Whether nothing refers to the memory of `buffer`: a map can only be resized (here to
    its own size, which changes nothing) while it has no exported buffer."""
    try:
        buffer.resize(len(buffer))
        return True
    except (BufferError, OSError, SystemError, TypeError, ValueError):
        return False


_SPARES = _Spares()
os.register_at_fork(after_in_child=_SPARES.forget)


def _private(size: int) -> mmap.mmap:
    """Private memory for a message of `size` bytes (in whole chunks, see :func:`_rounded`)."""
    try:
        return mmap.mmap(-1, _rounded(size), flags=mmap.MAP_PRIVATE | _MAP_ANONYMOUS)
    except (OSError, OverflowError, ValueError) as exc:
        raise BadReference(f"cannot hold a message of {size} bytes: {exc}") from None


def _populate(buffer: mmap.mmap, start: int, length: int) -> None:
    """Map a range's pages in one call; faulting them in one at a time while a socket fills
    them costs twice as much. Raises :class:`BadReference` if memory runs out."""
    if not _can_populate():
        return
    aligned = start - start % mmap.PAGESIZE
    try:
        buffer.madvise(_MADV_POPULATE_WRITE, aligned, length + start - aligned)
    except OSError as exc:
        raise BadReference(f"cannot hold a message of {len(buffer)} bytes: {exc}") from None


@functools.cache
def _can_populate() -> bool:
    """Whether this kernel maps ranges on request (Linux 5.14 or later)."""
    try:
        with mmap.mmap(-1, mmap.PAGESIZE) as probe:
            probe.madvise(_MADV_POPULATE_WRITE, 0, mmap.PAGESIZE)
        return True
    except (OSError, ValueError, AttributeError):
        return False


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

    def chunk_of(self, head: bytes, length: int) -> bool:
        """Whether the next reply is a chunk of `length` bytes after `head`; if so, only the
        head is consumed, else the whole reply (a missing key, or another message's chunk)."""
        size = self.bulk_length()
        if size is None:
            return False
        if size == len(head) + length:
            found = bytearray(len(head))
            self.read_into(memoryview(found))
            if found == head:
                return True
            size -= len(head)
        self.skip(size)
        self.expect_crlf()
        return False

    def skip(self, size: int) -> None:
        """Consume the next `size` bytes of the connection."""
        scratch = memoryview(bytearray(min(size, _READ_SIZE)))
        while size:
            piece = min(size, scratch.nbytes)
            self.read_into(scratch[:piece])
            size -= piece

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

    def token(self) -> int | None:
        """The value of a BLPOP's reply; None if it timed out."""
        reply = self.reply()
        if reply is None:
            return None
        if isinstance(reply, Exception):
            raise reply
        try:
            return int(reply[1])
        except (TypeError, ValueError, IndexError):
            raise _unexpected(repr(reply).encode()) from None

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


def _unexpected(line: bytes) -> redis.exceptions.RedisError:
    if line[:1] == b"-":
        return redis.exceptions.ResponseError(line[1:].decode(errors="replace"))
    return redis.exceptions.ResponseError(f"unexpected reply from Redis: {line[:80]!r}")
