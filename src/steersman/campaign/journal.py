"""The event journal of a run: an append-only log of every request sent and result received.

Why a log and not a database: a record is written with one ``pwritev()`` of its bytes at the
end of the file, so it is in the kernel's page cache, safe from a kill of the thinker's process
(SIGKILL), as soon as the call returns; a background thread writes the records queued by the
agents' threads in large batches and ``fdatasync``-s the file, so that records also survive a
machine crash, at most one batch late. Payloads are stored as the raw bytes of their serialized
frames: never hex or base64.

Records are written in *batches*, each a length, a CRC-32 and a body::

    size u32 | crc32(body) u32 | body = meta_size u32 | meta | out-of-band buffers

``meta`` is a ``marshal`` (version 2) list of the records' items, one after the other:
``kind, time, n_fields, *fields, n_frames, *frames, n_buffers, *buffer_sizes``, text fields as
UTF-8 bytes and payload frames as bytes. When a payload has out-of-band buffers (large
arrays), its record holds the first frame (the serialized stream) and the buffers' sizes, and
the buffers follow ``meta`` as they are. One C call encodes a whole batch: building it field
by field in Python cost the agents' threads more than anything else the journal does.

Why flat items and not a tuple per record: records wait in memory for their batch, queued by
the agents' threads, and bytes, ints and floats are objects the garbage collector does not
track. Tuples it does: thousands of them held at a time made it collect, stopping every
thread of the thinker, where a campaign without a journal never collects at all. (Journals
written before, whose magic is ``SMJRNL02``, hold a tuple per record: they are still read,
and the writer marks them as of this version when it appends to them.)

A batch cut short by a kill (or a bad CRC) ends the readable journal; the writer truncates the
file there before appending, so later batches are never hidden behind a torn one. Readers of a
live journal see whole batches and, at the end, at most a batch still being written, which
they treat as not there yet. (Journals written by earlier versions may end in zeros, space
reserved ahead: a zero size also ends the journal.)
"""

from __future__ import annotations

import gc
import logging
import marshal
import os
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from enum import IntEnum
from pathlib import Path
from time import monotonic, time
from typing import Any, NamedTuple

from steersman.exceptions import JournalError
from steersman.models.serialization import Frame

logger = logging.getLogger(__name__)

MAGIC = b"SMJRNL03"
#: Magics of journals written by earlier versions, still read.
EARLIER_MAGICS = (b"SMJRNL02",)
_PREFIX = struct.Struct("<II")
_META_SIZE = struct.Struct("<I")
_MARSHAL_VERSION = 2  # binary floats, and no back-references: their table costs more than it saves
#: Upper bound of the interval between two fsyncs of a busy journal (seconds).
SYNC_INTERVAL = 0.2
#: Upper bound of the interval between two writes of queued records (seconds): each wakes
#: the followers of the journal (the results.jsonl writer), whose backlog at the end of a run
#: the thinker waits for.
WRITE_INTERVAL = 0.05
#: Records encoded into one batch at most: the allocator reuses the memory of small batches,
#: where the meta of a large one is fresh memory, page faults included, every time.
BATCH_RECORDS = 256
try:  # parts one pwritev() takes
    _IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
except (AttributeError, ValueError, OSError):  # not told: the least POSIX allows
    _IOV_MAX = 16


class RecordKind(IntEnum):
    """What a journal record tells."""

    SESSION = 1  # a thinker started on the run directory; field: JSON of pid, host, class
    REQUEST = 2  # fields: task_id, topic, method, [pool, slots] JSON, header JSON; frames: inputs
    RESULT = 3  # fields: task_id, topic, flags ("F" final, "S" success, "K" keep_inputs,
    # "P" or "J" its serialization: pickle or JSON; older journals have neither), header JSON
    # as received, receipt (see receipt.py), and for a result that carried proxies its
    # results.jsonl line and (if it keeps its inputs) the inputs they resolved to; frames: the
    # value (resolved from its proxy, if it had one)
    PROCESSED = 4  # result processors returned for these final results; field: task ids,
    # one a line
    RESENT = 5  # an unfinished request was sent again on resume; field: task_id
    END = 6  # the thinker's run ended; field: JSON of the outcome


_KINDS = {kind.value: kind for kind in RecordKind}
_CODES = {kind: kind.value for kind in RecordKind}  # marshal takes plain ints only

#: A record to write: kind code, time, fields, frames.
_Entry = tuple[int, float, Sequence[bytes | memoryview], Sequence[Frame]]


class Record:
    """One journal record: kind, time, text fields (decoded when asked for) and frames."""

    __slots__ = ("kind", "time", "frames", "_fields")

    def __init__(self, kind: RecordKind, time: float, fields: Sequence[bytes],
                 frames: Sequence[Frame] = ()):
        self.kind = kind
        self.time = time
        self.frames = frames if frames.__class__ is list else list(frames)
        self._fields = fields

    def field(self, index: int) -> str:
        """One field, decoded."""
        return self._fields[index].decode()

    def field_bytes(self, index: int) -> bytes:
        """One field as UTF-8 bytes (for parsers that take bytes)."""
        return self._fields[index]

    @property
    def raw_fields(self) -> Sequence[bytes]:
        """Every field as written: UTF-8 bytes."""
        return self._fields

    @property
    def field_count(self) -> int:
        return len(self._fields)

    @property
    def fields(self) -> list[str]:
        """Every field, decoded."""
        return [field.decode() for field in self._fields]

    def __repr__(self) -> str:
        return f"Record({self.kind.name}, {self.time}, {self.fields!r}, {len(self.frames)} frames)"


# --- writing batches ----------------------------------------------------------------------


def _flat_items(entry: _Entry) -> tuple[Any, ...]:
    """The meta items of a record without out-of-band buffers (at most one frame)."""
    kind, when, fields, frames = entry
    return (kind, when, len(fields), *fields, len(frames), *frames, 0)


def encode_batch(items: list[Any], buffered: bool = True) -> tuple[bytes, list[Frame], int]:
    """A batch's size and CRC, its body's parts, and its whole size on disk.

    Args:
        items: Whole records, each as its meta items (see :func:`_flat_items`) or, for a record
            with out-of-band buffers, as one ``(kind, time, fields, frames)`` tuple.
        buffered: Whether there may be such tuples (False: the items are the meta).
    """
    meta, buffers = _expand(items) if buffered else (items, [])
    return _encode_parts(marshal.dumps(meta, _MARSHAL_VERSION), buffers)


def _expand(items: list[Any]) -> tuple[list[Any], list[Frame]]:
    """The meta of records some of which have out-of-band buffers (their first frame inline,
    then the buffers' sizes), and those buffers."""
    meta: list[Any] = []
    buffers: list[Frame] = []
    for item in items:
        if item.__class__ is tuple:
            kind, when, fields, frames = item
            extra = frames[1:]
            meta += (kind, when, len(fields), *fields, 1, frames[0], len(extra),
                     *[memoryview(b).nbytes for b in extra])
            buffers += extra
        else:
            meta.append(item)
    return meta, buffers


def _encode_parts(meta: bytes, buffers: Sequence[Frame]) -> tuple[bytes, list[Frame], int]:
    meta_size = _META_SIZE.pack(len(meta))  # a part of its own: a batch's meta may be large
    crc = zlib.crc32(meta, zlib.crc32(meta_size))
    size = len(meta_size) + len(meta)
    for buffer in buffers:
        crc = zlib.crc32(buffer, crc)
        size += memoryview(buffer).nbytes
    return _PREFIX.pack(size, crc), [meta_size, meta, *buffers], _PREFIX.size + size


def _record_items(entry: _Entry) -> tuple[Any, ...]:
    """A record as :func:`encode_batch` takes it."""
    return (entry,) if len(entry[3]) > 1 else _flat_items(entry)


def _batches(items: list[Any]) -> Iterator[tuple[list[Any], bool]]:
    """Cut queued items into batches of at most :data:`BATCH_RECORDS` whole records, each
    with whether it holds records with out-of-band buffers."""
    start = index = records = 0
    buffered = False
    end = len(items)
    while index < end:
        head = items[index]
        if head.__class__ is tuple:
            index += 1
            buffered = True
        else:  # kind, time, n_fields, fields, n_frames, frames, n_buffers (0)
            index += 3 + items[index + 2]
            index += 2 + items[index]
        records += 1
        if records == BATCH_RECORDS or index >= end:
            yield items[start:index] if start or index < end else items, buffered
            start, records, buffered = index, 0, False


def encode_record(kind: RecordKind, fields: Sequence[bytes], frames: Sequence[Frame] = (),
                  when: float | None = None) -> list[Frame]:
    """The parts of a batch holding one record."""
    entry = (_CODES[kind], time() if when is None else when, fields, frames)
    prefix, body, _ = encode_batch([*_record_items(entry)], len(frames) > 1)
    return [prefix, *body]


# --- reading ------------------------------------------------------------------------------


def iter_batches(data: bytes | bytearray | memoryview, *, check: bool = True,
                 start: int | None = None) -> Iterator[Batch]:
    """Yield each whole batch; stop at the first torn one.

    Args:
        data: The journal's bytes, magic included.
        check: Verify each batch's CRC (status displays may skip it).
        start: Where a batch starts in `data`, when `data` is a part of the journal read
            from there (no magic then; a batch cut off by the end of `data` ends it).
    """
    view = memoryview(data).cast("B")
    if start is None:
        if bytes(view[: len(MAGIC)]) not in (MAGIC, *EARLIER_MAGICS):
            raise ValueError(f"not a steersman journal (starts with {bytes(view[:8])!r})")
        start = len(MAGIC)
    offset, end = start, len(view)
    while offset + _PREFIX.size + _META_SIZE.size <= end:
        size, crc = _PREFIX.unpack_from(view, offset)
        start = offset + _PREFIX.size
        stop = start + size
        if size < _META_SIZE.size or stop > end:  # torn, or the zeros past the last batch
            return
        if check and zlib.crc32(view[start:stop]) != crc:
            logger.warning("journal batch at byte %d is corrupt; reading stops there", offset)
            return
        (meta_size,) = _META_SIZE.unpack_from(view, start)
        buffers = start + _META_SIZE.size + meta_size
        try:
            items = marshal.loads(view[buffers - meta_size : buffers])
        except (ValueError, EOFError, TypeError):  # unchecked, torn
            return
        yield Batch(items, view, buffers, stop)
        offset = stop


class Batch(NamedTuple):
    """A whole batch of a journal: its meta items and where its out-of-band buffers are."""

    items: list[Any]
    view: memoryview  # the data read
    buffers: int  # where the batch's buffers start in `view`
    stop: int  # where the batch ends in `view`

    def records(self) -> Iterator[tuple[int, float, Sequence[bytes], list[Frame]]]:
        """Each record: kind code, time, fields (UTF-8) and frames (raises ValueError or
        IndexError if the batch is not what its CRC said, when unchecked)."""
        items = self.items
        if items and items[0].__class__ is tuple:  # an earlier version's batch
            yield from self._tuple_records()
            return
        view, position = self.view, self.buffers
        index, end = 0, len(items)
        while index < end:  # lengths of what was taken, not counts read: always moves on
            kind, when, count = items[index : index + 3]
            fields = items[index + 3 : index + 3 + count]
            index += 3 + len(fields)
            count = items[index]
            frames = items[index + 1 : index + 1 + count]
            index += 1 + len(frames)
            count = items[index]
            if count:
                for size in items[index + 1 : index + 1 + count]:
                    frames.append(view[position : position + size])
                    position += size
                if position > self.stop:
                    raise ValueError("buffers run past the batch")
            index += 1 + count
            yield kind, when, fields, frames

    def _tuple_records(self) -> Iterator[tuple[int, float, Sequence[bytes], list[Frame]]]:
        """The records of a batch written by an earlier version: a tuple each."""
        view, position = self.view, self.buffers
        for kind, when, fields, frames, *buffers in self.items:
            frames = [*frames]
            if buffers:
                for size in buffers[0]:
                    frames.append(view[position : position + size])
                    position += size
                if position > self.stop:
                    raise ValueError("buffers run past the batch")
            yield kind, when, fields, frames


def iter_records(data: bytes | bytearray | memoryview, *, check: bool = True,
                 with_frames: bool = True, start: int | None = None
                 ) -> Iterator[tuple[Record, int]]:
    """Yield each record of the whole batches, with the offset just past its batch; stop at
    the first torn batch (arguments as :func:`iter_batches`; `with_frames`: attach the
    payload frames, or skip them when only counting)."""
    kinds = _KINDS
    for batch in iter_batches(data, check=check, start=start):
        try:
            records = [Record(kinds[kind], when, fields, frames if with_frames else ())
                       for kind, when, fields, frames in batch.records()]
        except (ValueError, TypeError, KeyError, IndexError):  # unchecked, torn
            return
        for record in records:
            yield record, batch.stop


def read_journal(path: Path, *, check: bool = True,
                 with_frames: bool = True) -> tuple[list[Record], int]:
    """All records of a journal file's whole batches, and the byte offset where they end."""
    data = path.read_bytes()
    records: list[Record] = []
    valid_end = len(MAGIC)
    collecting = gc.isenabled()
    gc.disable()  # hundreds of thousands of new objects, no cycles: spare the collector
    try:
        for record, offset in iter_records(data, check=check, with_frames=with_frames):
            records.append(record)
            valid_end = offset
    finally:
        if collecting:
            gc.enable()
    torn = len(data) - valid_end - data.count(0, valid_end)  # zeros: space reserved ahead
    if torn:
        logger.info("journal %s ends with %d byte(s) of a torn batch", path, torn)
    return records, valid_end


# --- the writer ---------------------------------------------------------------------------


class JournalWriter:
    """Appends records to a journal file; durable against a kill at once, against a crash in
    batches (see :data:`SYNC_INTERVAL`).

    :meth:`append` writes a record at once: it survives a kill of this process as soon as the
    call returns. :meth:`enqueue` only queues one: queued records go out, in the order queued,
    in the same write as the next record appended (so none is ever written after a record
    appended after it) or at the background thread's next write (within
    :data:`WRITE_INTERVAL`), whichever comes first. :meth:`defer` keeps a record whose loss is
    harmless for that next write.

    Args:
        path: The journal file; created if missing.
        valid_end: Where whole batches end (from :func:`read_journal`); the file is cut there.
            Found by reading the file when not given.
    """

    def __init__(self, path: Path, valid_end: int | None = None):
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            self._end = _start(fd, path, valid_end)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._queue: list[Any] = []  # records' meta items (see the module), queued without
        # a lock: a list grows in one step, and takers (with the lock) cut off its start
        self._deferred: dict[RecordKind, deque[str]] = {  # strings: no work for the GC
            kind: deque() for kind in RecordKind}
        self._hooks: list[Callable[[], None]] = []
        self._failure: JournalError | None = None  # a write failed: records were lost
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._closing = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, name="steersman-journal-sync",
                                        daemon=True)
        self._syncer.start()

    @property
    def end(self) -> int:
        """Where the next batch goes in the file."""
        return self._end

    def append(self, kind: RecordKind, fields: Sequence[bytes | memoryview],
               frames: Sequence[Frame] = (), when: float | None = None) -> None:
        """Write one record (text fields as UTF-8) now, after the queued ones."""
        entry = (_CODES[kind], time() if when is None else when, fields, frames)
        with self._lock:
            items = self._take_queued()
            items += _record_items(entry)
            self._write(items)
        if not self._dirty.is_set():
            self._dirty.set()

    def enqueue(self, kind: RecordKind, fields: Sequence[bytes | memoryview],
                frames: Sequence[Frame] = (), when: float | None = None) -> None:
        """Queue one record (see the class). Its fields and frames must not change after."""
        if self._failure is not None:
            raise self._failure
        code, when = _CODES[kind], time() if when is None else when
        if len(frames) > 1:  # out-of-band buffers (arrays): rare, a tuple
            self._queue.append((code, when, fields, frames))
        else:  # _flat_items, inline: items the collector does not track, added in one step
            self._queue.extend([code, when, len(fields), *fields, len(frames), *frames, 0])
        if not self._dirty.is_set():
            self._dirty.set()

    def defer(self, kind: RecordKind, text: str) -> None:
        """Keep a one-field record until the next write, where those of a kind are merged into
        one (their fields one a line), after the records queued before them."""
        if self._failure is not None:
            raise self._failure
        self._deferred[kind].append(text)
        if not self._dirty.is_set():
            self._dirty.set()

    def write_queued(self) -> None:
        """Write the queued records now, then the deferred ones: all those queued or deferred
        before the call are in the file when it returns, whichever thread wrote them."""
        when = time()
        with self._lock:
            # Deferred ones taken under the lock, so none is left in another thread's hands
            # when this returns; and taken before the queue, so after the records queued.
            merged = {kind: [texts.popleft() for _ in range(len(texts))]
                      for kind, texts in self._deferred.items() if texts}
            items = self._take_queued()
            for kind, texts in merged.items():
                items += _flat_items((_CODES[kind], when, ["\n".join(texts).encode()], ()))
            if items:
                self._write(items)

    def _take_queued(self) -> list[Any]:
        queue = self._queue
        count = len(queue)  # whole records: each was added in one step
        items = queue[:count]
        del queue[:count]
        return items

    def _write(self, items: list[Any]) -> None:
        """Write the records of `items` at the end, in batches of at most
        :data:`BATCH_RECORDS` (called with the lock held).

        A failed write loses records taken from the queue: every later call raises
        :class:`JournalError`, so the campaign stops instead of going on unrecorded.
        """
        if self._failure is not None:
            raise self._failure
        parts: list[Frame] = []
        size = 0
        for batch, buffered in _batches(items):
            prefix, body, whole = encode_batch(batch, buffered)
            parts.append(prefix)
            parts += body
            size += whole
        try:
            _write_at(self._fd, parts, size, self._end)
        except OSError as exc:
            self._failure = JournalError(f"could not write the journal {self.path}: {exc}")
            logger.error("%s; the campaign stops", self._failure)
            raise self._failure from exc
        self._end += size

    def add_sync_hook(self, hook: Callable[[], None]) -> None:
        """Call `hook()` after the queued records are written, at each background write and
        at close (to flush companion files)."""
        self._hooks.append(hook)

    def flush(self) -> None:
        """Write what is queued and force everything written so far to disk now."""
        self._write_all()
        os.fsync(self._fd)

    def close(self) -> None:
        """Sync, cut the file after the last batch, and close; later appends raise OSError."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._dirty.set()
        self._syncer.join()
        try:
            self._write_all()
            if self._failure is not None:  # records were lost: say so, even at the end
                raise self._failure
            with self._lock:
                os.ftruncate(self._fd, self._end)  # past the end: what a failed write left
                os.fsync(self._fd)
        finally:
            with self._lock:
                os.close(self._fd)
                self._fd = -1

    def _write_all(self) -> None:
        self.write_queued()
        for hook in self._hooks:
            try:
                hook()
            except Exception:
                logger.exception("journal sync hook %r failed", hook)

    def _sync_loop(self) -> None:
        synced = -SYNC_INTERVAL
        while not self._closing.is_set():
            self._dirty.wait()
            self._dirty.clear()
            if self._closing.is_set():
                return
            try:
                self._write_all()
                if monotonic() - synced >= SYNC_INTERVAL:
                    os.fdatasync(self._fd)
                    synced = monotonic()
                elif not self._dirty.is_set():  # the written records still need the sync
                    self._dirty.set()
            except JournalError:  # logged; the agents' next records raise it
                return
            except OSError as exc:  # the sync failed: what was written may not survive
                self._failure = JournalError(f"could not sync the journal {self.path}: {exc}")
                logger.error("%s; the campaign stops", self._failure)
                return
            self._closing.wait(WRITE_INTERVAL)  # batch: at most one write per interval


def _write_at(fd: int, parts: Sequence[Frame], size: int, offset: int) -> None:
    """Write `parts`, `size` bytes in all, at `offset` of the file (the kernel releases the
    interpreter's lock meanwhile)."""
    if len(parts) > _IOV_MAX:  # thousands of out-of-band buffers: in groups
        for first in range(0, len(parts), _IOV_MAX):
            group = parts[first : first + _IOV_MAX]
            group_size = sum(memoryview(part).nbytes for part in group)
            _write_at(fd, group, group_size, offset)
            offset += group_size
        return
    written = os.pwritev(fd, parts, offset)
    if written < size:  # cut short (a signal, say): the rest as one buffer
        rest = memoryview(b"".join(parts))[written:]
        while rest:
            done = os.pwrite(fd, rest, offset + written)
            written += done
            rest = rest[done:]


def _start(fd: int, path: Path, valid_end: int | None) -> int:
    """Start a new journal with its magic, or cut an old one after its last whole batch;
    returns where the next batch goes."""
    if os.fstat(fd).st_size == 0:
        os.write(fd, MAGIC)
        return len(MAGIC)
    if valid_end is None:
        valid_end = read_journal(path, with_frames=False)[1]
    os.ftruncate(fd, valid_end)
    if os.pread(fd, len(MAGIC), 0) in EARLIER_MAGICS:  # batches of this version follow
        os.pwrite(fd, MAGIC, 0)
    return valid_end
