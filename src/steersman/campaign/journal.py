"""The event journal of a run: an append-only log of every request sent and result received.

Why a log and not a database: each record is one ``write()`` on a file opened in append mode,
so it is in the kernel as soon as the call returns and survives the thinker being killed
(SIGKILL) at any point; a background thread ``fdatasync``-s the file in batches so that records
also survive a machine crash, at most one batch late. Payloads are stored as the raw bytes of
their serialized frames: never hex or base64.

A record is a length, a CRC-32 and a body. The body holds its kind, the wall-clock time, a few
short text fields (task id, topic, ...) and payload frames::

    body_len u32 | crc32(body) u32 | kind u8 | time f64 | n_fields u8 | n_frames u16
    | field lengths u32 x n_fields | frame lengths u64 x n_frames | fields | frames

A record cut short by a kill (or a bad CRC) ends the readable journal; the writer truncates the
file there before appending, so later records are never hidden behind a torn one.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from enum import IntEnum
from pathlib import Path
from time import time

from steersman.models.serialization import Frame
from steersman.queue.pipe import write_all

logger = logging.getLogger(__name__)

MAGIC = b"SMJRNL01"
_HEAD = struct.Struct("<II")
_BODY = struct.Struct("<BdBH")
#: Payloads up to this size are copied into one buffer per record; larger ones are not.
_JOIN_BELOW = 1 << 16
#: Upper bound of the interval between two fsyncs of a busy journal (seconds).
SYNC_INTERVAL = 0.2


class RecordKind(IntEnum):
    """What a journal record tells."""

    SESSION = 1  # a thinker started on the run directory; field: JSON of pid, host, class
    REQUEST = 2  # fields: task_id, topic, method, [pool, slots] JSON, header JSON; frames: inputs
    RESULT = 3  # fields: task_id, topic, flags ("F" final, "S" success), header JSON;
    # frames: the value
    PROCESSED = 4  # result processors returned for these final results; field: task ids,
    # one a line
    RESENT = 5  # an unfinished request was sent again on resume; field: task_id
    END = 6  # the thinker's run ended; field: JSON of the outcome


_KINDS = {kind.value: kind for kind in RecordKind}


class Record:
    """One journal record: kind, time, text fields and payload frames.

    Fields are decoded when first asked for (a run's journal holds hundreds of thousands of
    headers, most never read again); frames are views into the journal's bytes.
    """

    __slots__ = ("kind", "time", "frames", "_view", "_spans", "_fields")

    def __init__(self, kind: RecordKind, time: float, fields: Sequence[str] = (),
                 frames: Sequence[memoryview] = (), *, view: memoryview | None = None,
                 spans: Sequence[tuple[int, int]] = ()):
        self.kind = kind
        self.time = time
        self.frames = list(frames)
        self._view = view
        self._spans = spans
        self._fields: list[str] | None = list(fields) if view is None else None

    def field(self, index: int) -> str:
        """One field, decoded."""
        if self._fields is not None:
            return self._fields[index]
        assert self._view is not None
        start, stop = self._spans[index]
        return str(self._view[start:stop], "utf-8")

    def field_bytes(self, index: int) -> bytes:
        """One field as UTF-8 bytes (for parsers that take bytes)."""
        if self._fields is not None:
            return self._fields[index].encode()
        assert self._view is not None
        start, stop = self._spans[index]
        return bytes(self._view[start:stop])

    @property
    def fields(self) -> list[str]:
        """Every field, decoded."""
        if self._fields is None:
            self._fields = [self.field(i) for i in range(len(self._spans))]
        return self._fields

    def __repr__(self) -> str:
        return f"Record({self.kind.name}, {self.time}, {self.fields!r}, {len(self.frames)} frames)"


def encode_record(kind: RecordKind, fields: Sequence[str], frames: Sequence[Frame] = (),
                  when: float | None = None) -> list[Frame]:
    """The parts of one record, ready for a vectored write (one part when it is small)."""
    texts = [f.encode() for f in fields]
    views = [memoryview(f).cast("B") for f in frames]
    sizes = [v.nbytes for v in views]
    head = _BODY.pack(kind, time() if when is None else when, len(texts), len(views)) \
        + struct.pack(f"<{len(texts)}I{len(views)}Q", *map(len, texts), *sizes)
    if sum(sizes) <= _JOIN_BELOW:  # one buffer: a single CRC call and a plain write
        body = b"".join([head, *texts, *views])
        return [_HEAD.pack(len(body), zlib.crc32(body)) + body]
    parts: list[Frame] = [head, *texts, *views]  # large payloads are never copied
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return [_HEAD.pack(sum(memoryview(p).nbytes for p in parts), crc), *parts]


def iter_records(data: bytes | bytearray | memoryview, *, check: bool = True,
                 with_frames: bool = True) -> Iterator[tuple[Record, int]]:
    """Yield each whole record and the offset just past it; stop at the first torn one.

    Args:
        data: The journal's bytes, magic included.
        check: Verify each record's CRC (status displays may skip it).
        with_frames: Slice out the payload frames (skip them when only counting).
    """
    view = memoryview(data).cast("B")
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise ValueError(f"not a steersman journal (starts with {bytes(view[:8])!r})")
    head_unpack, body_unpack = _HEAD.unpack_from, _BODY.unpack_from
    crc32, kinds = zlib.crc32, _KINDS
    body_size, head_size = _BODY.size, _HEAD.size
    offset = len(MAGIC)
    end = len(view)
    while offset + head_size + body_size <= end:
        size, crc = head_unpack(view, offset)
        start = offset + head_size
        stop = start + size
        if stop > end or size < body_size:
            return
        if check and crc32(view[start:stop]) != crc:
            logger.warning("journal record at byte %d is corrupt; reading stops there", offset)
            return
        kind, when, n_fields, n_frames = body_unpack(view, start)
        pos = start + body_size
        layout = _layout(n_fields, n_frames)
        lengths = layout.unpack_from(view, pos)
        pos += layout.size
        spans = []
        for length in lengths[:n_fields]:
            spans.append((pos, pos + length))
            pos += length
        frames = []
        if with_frames:
            for length in lengths[n_fields:]:
                frames.append(view[pos : pos + length])
                pos += length
        offset = stop
        yield Record(kinds[kind], when, (), frames, view=view, spans=spans), offset


@functools.lru_cache(maxsize=64)
def _layout(n_fields: int, n_frames: int) -> struct.Struct:
    return struct.Struct(f"<{n_fields}I{n_frames}Q")


def read_journal(path: Path, *, check: bool = True,
                 with_frames: bool = True) -> tuple[list[Record], int]:
    """All whole records of a journal file, and the byte offset where whole records end."""
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
    if valid_end < len(data):
        logger.info("journal %s ends with %d byte(s) of a torn record", path,
                    len(data) - valid_end)
    return records, valid_end


class JournalWriter:
    """Appends records to a journal file; durable against a kill at once, against a crash in
    batches (see :data:`SYNC_INTERVAL`).

    Args:
        path: The journal file; created if missing.
        valid_end: Where whole records end (from :func:`read_journal`); the file is cut there.
    """

    def __init__(self, path: Path, valid_end: int | None = None):
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        size = os.fstat(fd).st_size
        if size == 0:
            os.write(fd, MAGIC)
        elif valid_end is not None and valid_end < size:
            os.ftruncate(fd, valid_end)
        self._fd = fd
        self._deferred: dict[RecordKind, list[str]] = {}
        self._hooks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._closing = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, name="steersman-journal-sync",
                                        daemon=True)
        self._syncer.start()

    def append(self, kind: RecordKind, fields: Sequence[str], frames: Sequence[Frame] = (),
               when: float | None = None, defer: bool = False) -> None:
        """Write one record; it survives a kill of this process once this returns.

        A deferred record (one field, no frames) is kept in memory until the next batched
        sync, merged with the other deferred records of its kind (their fields joined one a
        line): for records whose loss is harmless, so that they cost no system call.
        """
        with self._lock:
            if defer:
                self._deferred.setdefault(kind, []).append(fields[0])
            else:
                write_all(self._fd, encode_record(kind, fields, frames, when))
        if not self._dirty.is_set():
            self._dirty.set()

    def add_sync_hook(self, hook: Callable[[], None]) -> None:
        """Call `hook()` before each batched sync and at close (to flush companion files)."""
        self._hooks.append(hook)

    def flush(self) -> None:
        """Write deferred records and force everything written so far to disk now."""
        self.write_deferred()
        with self._lock:
            os.fsync(self._fd)

    def _encode_deferred(self) -> list[Frame]:
        parts: list[Frame] = []
        for kind, texts in self._deferred.items():
            parts.extend(encode_record(kind, ["\n".join(texts)]))
        self._deferred.clear()
        return parts

    def write_deferred(self) -> None:
        """Write the deferred records now, and let the sync hooks flush their files."""
        with self._lock:
            if self._deferred:
                write_all(self._fd, self._encode_deferred())
        for hook in self._hooks:
            try:
                hook()
            except Exception:
                logger.exception("journal sync hook %r failed", hook)

    def close(self) -> None:
        """Sync and close; later appends raise OSError."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._dirty.set()
        self._syncer.join()
        self.write_deferred()
        with self._lock:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _sync_loop(self) -> None:
        while not self._closing.is_set():
            self._dirty.wait()
            self._dirty.clear()
            if self._closing.is_set():
                return
            try:
                self.write_deferred()
                os.fdatasync(self._fd)
            except OSError as exc:  # the file was closed under us, or the disk failed
                logger.error("cannot sync the journal %s: %s", self.path, exc)
                return
            self._closing.wait(SYNC_INTERVAL)  # batch: at most one sync per interval
