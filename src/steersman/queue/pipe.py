"""The embedded backend: OS pipes between the thinker's process and the task server's.

No service to start. Each direction is one pipe carrying length-prefixed messages written with
vectored writes (payload frames are never joined); messages of 4 MB or more go through a file in
shared memory and the pipe carries its name. The server always reads requests; the thinker
reads results while it waits for them, and whenever a send finds the request pipe full, so
neither side can block the other for good. Worker processes of a local task server write
small results into the result pipe themselves (see :class:`DirectWriter`).

The thinker waits on the server process too (see :mod:`steersman.queue._lifelines`): the pipes
show its death by an end of file only once every process holding them is gone, and processes
it started may outlive it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import mmap
import multiprocessing
import os
import select
import socket
import struct
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.process import BaseProcess
from multiprocessing.util import Finalize
from typing import TYPE_CHECKING, Any

from steersman.exceptions import QueueConnectionError, TaskServerDied
from steersman.models.result import Result
from steersman.models.serialization import Frame, SerializationMethod
from steersman.queue._lifelines import ENDED, READY, Lifelines, wait_ready
from steersman.queue.base import BaseQueues, Buffer
from steersman.queue.lane import LANE_BYTES, Lane

if TYPE_CHECKING:
    from steersman.proxy import NameOption, ThresholdOption

_LENGTH = struct.Struct("<Q")
_F_SETPIPE_SZ = 1031
_PIPE_BYTES = 1 << 20
#: Messages at least this large go through a file in shared memory; the pipe carries its name.
#: The reader maps the file instead of copying it out of the pipe, and no pipe round trips
#: are paid per megabyte.
SPILL_BYTES = 4 << 20
#: Where spilled messages live (memory, not disk); without it, every message uses the pipe.
SPILL_DIR = "/dev/shm"
#: High bit of the length prefix: the message is the name of a spilled file.
_SPILLED = 1 << 63
#: Next bit, with :data:`_SPILLED`: its writer keeps the file to reuse it (see :func:`kept_buffer`).
_KEPT = 1 << 62
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


class PipeChannel:
    """One direction of a pipe: whole messages in, whole messages out.

    Args:
        watch_full: Make the writing end non-blocking, so that a write finding the pipe full
            calls :attr:`on_full` (in the writing thread) before it waits for room.
    """

    def __init__(self, watch_full: bool = False) -> None:
        self._reader, self._writer = multiprocessing.Pipe(duplex=False)
        with contextlib.suppress(OSError):  # a larger buffer: fewer system calls for big messages
            fcntl.fcntl(self._writer.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)
        if watch_full:
            os.set_blocking(self._writer.fileno(), False)
        self._init_local()

    def _init_local(self) -> None:
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._inbox = _Inbox()
        self._shared: SharedWriteLock | None = None
        self.on_full: Callable[[], None] | None = None
        #: The processes at the other end (see :meth:`watch_ends`); None: the pipe alone.
        self.lifelines: Lifelines | None = None

    def watch_ends(self, lifelines: Lifelines) -> None:
        """Also end waits once every process `lifelines` watches ended, even while processes
        they started hold the pipe open: reads then raise EOFError, writes BrokenPipeError.
        Bytes already in the pipe are read first; a message cut short raises EOFError."""
        self.lifelines = lifelines
        os.set_blocking(self._reader.fileno(), False)  # a cut message must not block a read

    def __getstate__(self) -> dict[str, Any]:
        return {"_reader": self._reader, "_writer": self._writer}

    def share_writes(self, lock: SharedWriteLock) -> None:
        """Other processes write small messages too: hold `lock` around writes that a small
        write could land in the middle of (those larger than the pipe's atomic size)."""
        self._shared = lock

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_local()

    def write(self, parts: Sequence[Frame]) -> None:
        """Write one message; raises BrokenPipeError if no reader is left."""
        self.write_messages([parts])

    def write_messages(self, messages: Sequence[Sequence[Frame]]) -> None:
        """Write several messages with one system call (when small); read them one by one."""
        views: list[memoryview] = []
        spilled: list[bytes] = []
        for parts in messages:
            views.extend(_framed(parts, spilled))
        try:
            with self._write_lock:
                if self._shared is not None and sum(v.nbytes for v in views) > select.PIPE_BUF:
                    with self._shared:
                        write_all(self._writer.fileno(), views, self.on_full, self.lifelines)
                else:
                    write_all(self._writer.fileno(), views, self.on_full, self.lifelines)
        except BaseException:
            for path in spilled:  # nobody will read them
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise

    def read(self, timeout: float | None, wake_fd: int | None = None,
             forward: bool = False) -> bytearray | memoryview | None:
        """Read one message; None after `timeout` or when `wake_fd` becomes readable.

        Raises EOFError when every writer has closed its end, or every process watched (see
        :meth:`watch_ends`) ended and no message is left. With `forward` (relays), a
        spilled message keeps its file until it is written on whole or dropped; otherwise the
        file is removed at once (the mapping stays).
        """
        with self._read_lock:
            fd, inbox, lifelines = self._reader.fileno(), self._inbox, self.lifelines
            if (timeout is not None or wake_fd is not None or lifelines is not None) \
                    and not inbox.held and not _wait_readable(fd, timeout, wake_fd, lifelines):
                return None
            more = None if lifelines is None else functools.partial(_wait_more, fd, lifelines)
            (size,) = _LENGTH.unpack(inbox.take(fd, _LENGTH.size, more))
            if size & _SPILLED:
                path = bytes(inbox.take(fd, size & ~(_SPILLED | _KEPT), more))
                return _map_kept(path) if size & _KEPT else _unspill(path, forward)
            return inbox.take(fd, size, more)

    @property
    def reader_fd(self) -> int:
        return self._reader.fileno()

    @property
    def reader_closed(self) -> bool:
        """Whether this process closed its reading end (see :meth:`close_reader`)."""
        return bool(self._reader.closed)

    @property
    def buffered(self) -> bool:
        """Whether bytes of the next message were read ahead already."""
        return self._inbox.held > 0

    def at_end(self) -> bool:
        """Whether every writer closed the pipe and no message is left: reads ahead what
        waits, so call it only when the pipe is readable (or it waits for a message)."""
        with self._read_lock:
            return not self._inbox.held and not self._inbox.fill(self._reader.fileno())

    def close_reader(self) -> None:
        self._reader.close()

    def close_writer(self) -> None:
        self._writer.close()

    def direct_writer(self) -> DirectWriter:
        """A writer for processes forked from this one, that shares the pipe with this process."""
        lock = SharedWriteLock()
        self.share_writes(lock)
        return DirectWriter(os.dup(self._writer.fileno()), lock)


class SharedWriteLock:
    """A lock between processes that dies with its holder: a POSIX record lock on an unlinked
    file. Processes forked afterwards share it; a holder killed mid-write frees it."""

    def __init__(self) -> None:
        fd, path = tempfile.mkstemp(prefix="steersman-lock-",
                                    dir=SPILL_DIR if os.path.isdir(SPILL_DIR) else None)
        os.unlink(path)
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)


class DirectWriter:
    """Writes whole small messages into a pipe that another process also writes to.

    A write of at most the pipe's atomic size (``PIPE_BUF``) never mixes with other writes, so
    messages stay whole; the shared lock keeps it out of a larger message being written.
    """

    #: The largest message (with its length prefix) that goes directly.
    limit = select.PIPE_BUF

    def __init__(self, fd: int, lock: SharedWriteLock):
        self.fd = fd
        self.lock = lock

    def __call__(self, parts: Sequence[Frame]) -> bool:
        """Write one message; False (nothing written) if it is too large to go directly."""
        views = [memoryview(p).cast("B") for p in parts]
        size = sum(v.nbytes for v in views)
        if size + _LENGTH.size > self.limit:
            return False
        with self.lock:
            write_all(self.fd, [memoryview(_LENGTH.pack(size)), *views])
        return True

    def close(self) -> None:
        for fd in (self.fd, self.lock.fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class PipeQueues(BaseQueues):
    """Queues over OS pipes between the thinker and one task server process (the default).

    Args:
        topics: Names used to separate kinds of results; ``'default'`` is always present.
        serialization_method: ``'pickle'`` (default) or ``'json'``.
        keep_inputs: Whether results come back with their inputs by default.
        methods: Method names the server offers (task servers fill this in themselves).
        key: Optional secret to sign every message.
        proxystore_name: ProxyStore store for large values, for every topic or per topic.
        proxystore_threshold: Size in bytes above which values are proxied, likewise.
    """

    requests_outlive_client = False  # no later thinker can reach these pipes or their server

    def __init__(
        self,
        topics: Iterable[str] = (),
        serialization_method: str | SerializationMethod = SerializationMethod.PICKLE,
        keep_inputs: bool = True,
        methods: Iterable[str] | None = None,
        key: bytes | str | None = None,
        proxystore_name: NameOption = None,
        proxystore_threshold: ThresholdOption = None,
    ):
        self._requests = PipeChannel(watch_full=True)
        self._outcomes = PipeChannel()
        self._lane: Lane | None = None
        self._server_needed = False  # see _takes_lane
        super().__init__(topics, serialization_method, keep_inputs, methods, key,
                         proxystore_name, proxystore_threshold)

    def _init_local(self) -> None:
        super()._init_local()
        # A thinker blocked sending requests reads results meanwhile: the server may be
        # blocked sending results, and a thinker may send many tasks before it waits for any.
        self._requests.on_full = self._drain_in_background
        inherited = getattr(self, "_wake_closer", None)
        if inherited is not None:  # inherited through fork: this process gets its own
            inherited()
        self._wake: tuple[int, int] = os.pipe()  # made eagerly: close() and a reader race
        # closed with the object, not by close(): a reader woken by close() may still look
        self._wake_closer = weakref.finalize(self, _close_fds, self._wake)
        inherited_lifelines: Lifelines | None = getattr(self, "_lifelines", None)
        if inherited_lifelines is not None:  # this process watches no server of its own
            self._lifelines_closer.detach()
            inherited_lifelines.close(inherited=True)
        # The task server processes, watched while waiting for results or for room to send.
        self._lifelines = Lifelines()
        self._lifelines_closer: weakref.finalize[[], PipeQueues] = weakref.finalize(
            self, self._lifelines.close)
        self._requests.lifelines = self._outcomes.lifelines = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_wake", None)
        state.pop("_wake_closer", None)
        state.pop("_lifelines", None)
        state.pop("_lifelines_closer", None)
        state["_lane"] = None  # a server or worker forked from this process has it already
        return state

    # --- transport ----------------------------------------------------------------------------

    def _send_request(self, parts: Sequence[Frame]) -> None:
        try:
            self._requests.write(parts)
        except (BrokenPipeError, OSError) as exc:
            raise TaskServerDied(f"the task server is gone: cannot send requests ({exc})") from None

    def _send_task(self, request: Result, parts: Sequence[Frame]) -> None:
        if self._lane is not None and self._takes_lane(request, parts):
            try:
                self._lane.send(parts, self._drain_in_background, self._requests.lifelines)
            except OSError as exc:
                raise TaskServerDied(f"the task server is gone: cannot send requests ({exc})") \
                    from None
            return
        self._send_request(parts)

    def _takes_lane(self, request: Result, parts: Sequence[Frame]) -> bool:
        """Whether a request may skip the server: small, and no request so far needed the
        server (a priority to order by, a timeout to watch, retries, an executor).

        After the first request that needs the server, every request goes through it: the
        server knows then which worker is busy, so it orders waiting requests exactly and no
        request waits behind a lane task while another worker is free.
        """
        if request.priority or request.timeout is not None or request.max_retries \
                or request.executor is not None:
            self._server_needed = True
        return not (self._server_needed or self._kill_sent) \
            and sum(memoryview(part).nbytes for part in parts) <= LANE_BYTES

    def _recv_request(self, timeout: float | None) -> Buffer | None:
        try:
            return self._requests.read(timeout, forward=True)
        except (EOFError, OSError) as exc:
            raise QueueConnectionError(f"the thinker closed the request pipe ({exc!r})") from None

    def _send_result(self, topic: str, parts: Sequence[Frame]) -> None:
        try:
            self._outcomes.write(parts)
        except (BrokenPipeError, OSError) as exc:
            raise QueueConnectionError(f"the thinker is gone ({exc})") from None

    def _recv_result(self, timeout: float | None) -> Buffer | None:
        try:
            return self._outcomes.read(timeout, self._wake[0])
        except (EOFError, OSError):  # every writer closed the pipe, or every server ended
            raise TaskServerDied(
                f"the task server exited with {self.active_count} task(s) outstanding"
            ) from None

    def _wake_receiver(self) -> None:
        os.write(self._wake[1], b"x")

    def direct_results(self) -> DirectWriter:
        return self._outcomes.direct_writer()

    def open_lane(self) -> None:
        if self._lane is None:
            self._lane = Lane()

    def lane_receiver(self) -> socket.socket | None:
        return self._lane.receiver if self._lane is not None else None

    # --- which process holds which end --------------------------------------------------------

    def on_server_started(self, server: BaseProcess | None = None) -> None:
        """Drop the server's ends of the pipes; with `server`, also watch that process."""
        self.detach_server_ends()
        if server is not None:
            self.watch_server(server)

    def watch_server(self, server: BaseProcess) -> None:
        """In the thinker's process: report the death of the started task server process
        `server` (as :class:`TaskServerDied`, once the results it sent are read) even while
        processes it started still hold its pipes open, which hides the pipes' end of file:
        a process pool's workers, a helper process a task forked.

        Several servers may be watched: their death is reported once all of them ended,
        as the pipes' end of file would be.
        """
        self._lifelines.watch(server)
        self._outcomes.watch_ends(self._lifelines)
        self._requests.lifelines = self._lifelines  # a full request pipe waits no longer

    def on_server_process(self) -> None:
        if self._requests.reader_closed:
            raise QueueConnectionError(
                "these PipeQueues already connect their thinker to another task server "
                "process, which holds the pipes' server ends: pipe queues serve one task "
                "server; use RedisQueues for several")
        super().on_server_process()
        self.detach_client_ends()

    def on_worker_process(self) -> None:
        self.close_inherited()

    def detach_server_ends(self) -> None:
        """In the thinker's process, once the server process started: drop the server's ends.

        Afterwards the thinker sees end-of-file, not a hang, if the server process dies.
        """
        self._requests.close_reader()
        self._outcomes.close_writer()
        if self._lane is not None:
            self._lane.close_receiver()

    def detach_client_ends(self) -> None:
        """In the server's process: drop the thinker's ends, so its death is seen too."""
        self._requests.close_writer()
        self._outcomes.close_reader()
        if self._lane is not None:
            self._lane.close_sender()

    def close_inherited(self) -> None:
        """In a worker forked from the server: hold no end but the lane's receiving one."""
        if self._lane is not None:
            self._lane.close_sender()
        for channel in (self._requests, self._outcomes):
            for close in (channel.close_reader, channel.close_writer):
                with contextlib.suppress(OSError):
                    close()


def _close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def write_all(fd: int, parts: Sequence[Frame], on_full: Callable[[], None] | None = None,
              lifelines: Lifelines | None = None) -> None:
    """Write every byte of `parts` to `fd` with vectored writes, resuming after short writes.

    On a non-blocking `fd` that is full, `on_full` is called and the write waits for room
    (BrokenPipeError if every process `lifelines` watches ended meanwhile).
    """
    views = [memoryview(p).cast("B") for p in parts]
    first, count = 0, len(views)  # the first view not written whole: no list shifts
    while first < count:
        try:
            written = os.writev(fd, views[first : first + 512])
        except BlockingIOError:
            if on_full is not None:
                on_full()
            _wait_writable(fd, lifelines)
            continue
        while written:
            size = views[first].nbytes
            if written >= size:
                written -= size
                first += 1
            else:
                views[first] = views[first][written:]
                written = 0
        while first < count and views[first].nbytes == 0:
            first += 1


def _framed(parts: Sequence[Frame], spilled: list[bytes]) -> list[memoryview]:
    """One message as views to write: its length and frames, or the name of its spilled file.

    A message read from a spilled file and forwarded whole keeps its file: only the name moves.
    """
    views = [memoryview(p).cast("B") for p in parts]
    whole = _whole_file(views)
    if whole is not None and whole.kept:
        return [memoryview(_LENGTH.pack(len(whole.path) | _SPILLED | _KEPT)),
                memoryview(whole.path)]
    path = whole.hand_over() if whole is not None else None
    if path is None:
        size = sum(v.nbytes for v in views)
        path = _spill(views) if size >= SPILL_BYTES else None
        if path is None:
            return [memoryview(_LENGTH.pack(size)), *views]
    spilled.append(path)  # removed if the write fails
    return [memoryview(_LENGTH.pack(len(path) | _SPILLED)), memoryview(path)]


def _whole_file(views: list[memoryview]) -> SpilledMap | None:
    """The file of a message that is exactly one whole spilled file."""
    if len(views) != 1 or not isinstance(views[0].obj, SpilledMap):
        return None
    spilled = views[0].obj
    return spilled if views[0].nbytes == len(spilled) else None


class SpilledMap(mmap.mmap):
    """A spilled message mapped in memory; its file goes when the map does, or when this
    process exits (even a forked child), unless it was handed on.

    A *kept* file (see :func:`kept_buffer`) is never handed on: readers map it by name and
    leave it, and its writer fills it again once no reader maps it any more.
    """

    path: bytes
    kept = False
    _remove: Finalize

    def hand_over(self) -> bytes | None:
        """Give up the file (another process will map and remove it); None if already given."""
        if not self._remove.still_active():
            return None
        self._remove.cancel()
        return self.path

    def remove(self) -> None:
        """Remove the file now (mappings of it stay valid) and unmap it here if unused."""
        self._remove()
        with contextlib.suppress(BufferError):
            self.close()

    def mapped_elsewhere(self) -> bool:
        """Whether a reader still maps this kept file (it holds a shared lock meanwhile)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # and the lock, if taken, with it
        return False


def _spill(views: list[memoryview]) -> bytes | None:
    """Write a message to a new file in :data:`SPILL_DIR`; its path, or None if it cannot."""
    path = _new_spill_path()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        write_all(fd, list(views))
    except OSError:  # e.g. shared memory is full: the pipe carries it
        os.unlink(path)
        return None
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return path


def shared_buffer(size: int, reserve: bool = True, kind: str = "") -> SpilledMap:
    """Writable memory of `size` bytes in a file of :data:`SPILL_DIR`, mapped in one go.

    A message received into it (from Redis, say) and then written to a pipe whole crosses the
    pipe by name, without a copy. The file goes with the mapping unless it was handed on.
    Raises OSError where shared memory cannot hold it; the caller then uses private memory.
    Without `reserve` the file is sparse: whoever fills it must first reserve each range
    (``posix_fallocate`` on :attr:`SpilledMap.path`), or a full /dev/shm kills it (SIGBUS).
    """
    path = _new_spill_path(kind)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if reserve:  # all of it now: a full /dev/shm fails here, not later
            os.posix_fallocate(fd, 0, size)
        else:
            os.ftruncate(fd, size)
        return _map_removable(fd, path, size, populate=reserve)
    except BaseException:
        _unlink_quietly(path)
        raise
    finally:
        os.close(fd)


def kept_buffer(size: int) -> SpilledMap:
    """Like :func:`shared_buffer` (unreserved), for a writer that reuses the file: readers map
    it by name under a shared lock and leave it (see :meth:`SpilledMap.mapped_elsewhere`).

    Its name carries this process's id, so :func:`remove_orphans` removes it should this
    process die without removing it.
    """
    buffer = shared_buffer(size, reserve=False, kind="kept")
    buffer.kept = True
    return buffer


def remove_orphans() -> int:
    """Remove kept files (see :func:`kept_buffer`) whose process is gone; how many."""
    removed = 0
    with contextlib.suppress(OSError):
        for name in os.listdir(SPILL_DIR):
            parts = name.split("-")
            if len(parts) != 4 or parts[:2] != ["steersman", "kept"] or not parts[2].isdigit():
                continue
            try:
                os.kill(int(parts[2]), 0)
            except ProcessLookupError:
                _unlink_quietly(os.path.join(SPILL_DIR, name).encode())
                removed += 1
            except OSError:
                pass  # alive (another user's): not ours to judge
    return removed


def _map_kept(path: bytes) -> memoryview:
    """Map a kept file (writable) and hold a shared lock on it while the map lives (the map's
    own descriptor holds it); the file stays, for its writer to reuse."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        size = os.fstat(fd).st_size
        return memoryview(mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _MAP_POPULATE))
    finally:
        os.close(fd)


def _unspill(path: bytes, forward: bool) -> memoryview:
    """Map a spilled message (writable); its file is removed now, or with the map if it may be
    forwarded (unless it is handed on)."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        if not forward:
            os.unlink(path)
            size = os.fstat(fd).st_size
            return memoryview(mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _MAP_POPULATE))
        return memoryview(_map_removable(fd, path, os.fstat(fd).st_size))
    except BaseException:
        _unlink_quietly(path)
        raise
    finally:
        os.close(fd)


def _map_removable(fd: int, path: bytes, size: int, populate: bool = True) -> SpilledMap:
    """Map the file `fd` at `path`; the file is removed with the map unless handed on."""
    spilled = SpilledMap(fd, size, flags=mmap.MAP_SHARED | (_MAP_POPULATE if populate else 0))
    spilled.path = path
    spilled._remove = Finalize(spilled, _unlink_quietly, (path,), exitpriority=0)
    return spilled


def _new_spill_path(kind: str = "") -> bytes:
    name = "-".join(["steersman", *([kind] if kind else []), str(os.getpid()),
                     os.urandom(8).hex()])
    return os.path.join(SPILL_DIR, name).encode()


def _unlink_quietly(path: bytes) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class _Inbox:
    """Bytes read from a pipe beyond the message asked for: each read system call also takes
    whatever follows (the next messages, when several wait), so that small messages cost one
    call between them instead of two each."""

    SIZE = 1 << 16

    def __init__(self) -> None:
        self._buffer = bytearray(self.SIZE)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0

    @property
    def held(self) -> int:
        return self._end - self._start

    def fill(self, fd: int) -> int:
        """With nothing held: read what waits in `fd` (at least a byte); 0 at end-of-file."""
        count = os.readv(fd, [self._buffer])
        self._start, self._end = 0, count
        return count

    def take(self, fd: int, size: int, more: Callable[[], None] | None = None) -> bytearray:
        """The next `size` bytes: held ones first, the rest read from `fd` (along with what
        follows them, up to the inbox's size) in as few calls as the pipe allows.

        On a non-blocking `fd`, `more()` waits until more bytes can be read (or raises)."""
        out = bytearray(size)
        view = memoryview(out)
        got = min(self.held, size)
        view[:got] = self._view[self._start:self._start + got]
        self._start += got
        while got < size:  # the inbox is empty here: read into the message and the inbox
            try:
                count = os.readv(fd, [view[got:], self._buffer])
            except BlockingIOError:
                assert more is not None, "a non-blocking pipe needs a way to wait"
                more()
                continue
            if count == 0:
                raise EOFError(f"pipe closed after {got} of {size} bytes")
            into_message = min(count, size - got)
            got += into_message
            self._start, self._end = 0, count - into_message
        return out


def _wait_writable(fd: int, lifelines: Lifelines | None = None) -> None:
    """Wait for room in `fd` (an error or a closed reader shows too: the next write raises it);
    BrokenPipeError once every process `lifelines` watches ended."""
    if wait_ready(fd, select.POLLOUT, lifelines=lifelines) == ENDED:
        raise BrokenPipeError("every process reading this pipe ended")


def _wait_readable(fd: int, timeout: float | None, wake_fd: int | None,
                   lifelines: Lifelines | None = None) -> bool:
    """Whether `fd` is readable, waiting up to `timeout` or until `wake_fd` is readable;
    EOFError once every process `lifelines` watches ended and nothing is left to read."""
    outcome = wait_ready(fd, select.POLLIN | select.POLLHUP, timeout, wake_fd, lifelines)
    if outcome == ENDED:
        raise EOFError("every process writing this pipe ended")
    return outcome == READY


def _wait_more(fd: int, lifelines: Lifelines) -> None:
    """The rest of a message is not there yet: wait for it, unless its writer ended."""
    if wait_ready(fd, select.POLLIN | select.POLLHUP, lifelines=lifelines) == ENDED:
        raise EOFError("the pipe's writer ended in the middle of a message")
