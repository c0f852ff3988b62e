"""Appending to a file so that what is appended survives a kill of the process at once.

:class:`MappedLog` copies into a shared memory map of the file: the bytes are in the kernel's
page cache as soon as the copy returns, without a system call. :class:`AppendLog` writes them
with ``pwrite()``, for file systems that cannot map files. Both append *units*: a prefix (a
length, say) and a body; the prefix is copied last, so that a reader, or a kill in the
middle, never finds a prefix without its body behind it. Neither is thread-safe: the caller
holds a lock.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Sequence

from steersman.models.serialization import Frame

logger = logging.getLogger(__name__)

#: Bytes of the file mapped at a time (the file is extended, space reserved, this far ahead).
MAP_WINDOW = 4 << 20
_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14; unnamed in 3.11


def open_log(fd: int, end: int, mapped: bool = True) -> MappedLog | AppendLog:
    """A log appending at `end` of the file open (read and write) as `fd`."""
    if mapped:
        try:
            return MappedLog(fd, end)
        except (OSError, ValueError) as exc:  # a file system without shared mappings
            logger.info("cannot map %d for the journal (%s); writing instead", fd, exc)
    return AppendLog(fd, end)


class MappedLog:
    """Copies into a window of the file mapped in memory, moved along as it fills.

    The window's extent of the file is reserved on disk first (``posix_fallocate``), so a full
    disk raises OSError when the window moves instead of killing the process with SIGBUS when
    a page is first written. Past the end, the file holds zeros until :meth:`close`.
    """

    def __init__(self, fd: int, end: int):
        self._fd = fd
        self.end = end
        self._map: mmap.mmap | None = None
        self._base = 0
        self._length = 0
        self._populate = True
        self._move_window(0)

    def write(self, prefix: bytes, body: Sequence[Frame], size: int) -> None:
        """Append `prefix` and the parts of `body`, `size` bytes in all."""
        start = self.end - self._base
        if start + size > self._length:
            self._move_window(size)
            start = self.end - self._base
        window = self._map
        assert window is not None
        offset = start + len(prefix)
        for part in body:
            stop = offset + memoryview(part).nbytes
            window[offset:stop] = part
            offset = stop
        window[start : start + len(prefix)] = prefix
        self.end += size

    def prepare(self, ahead: int) -> None:
        """Fault in the pages of the next `ahead` bytes now.

        Meant for a background thread after a sync (which leaves written pages read-only), so
        that the threads that append copy into pages that are ready: faulting them in one at
        a time would cost those threads more than the copies.
        """
        if self.end + ahead > self._base + self._length:
            self._move_window(ahead)
        if not self._populate or self._map is None:
            return
        start = (self.end - self._base) // mmap.PAGESIZE * mmap.PAGESIZE
        stop = min(self._length, self.end - self._base + ahead)
        try:
            self._map.madvise(_POPULATE_WRITE, start, stop - start)
        except OSError:  # a kernel older than 5.14: appends fault their pages in themselves
            self._populate = False

    def _move_window(self, size: int) -> None:
        """Map the file from the page holding the end, for at least `size` more bytes."""
        if self._length < 0:
            raise OSError("the log is closed")
        granularity = mmap.ALLOCATIONGRANULARITY
        base = self.end - self.end % granularity
        length = max(MAP_WINDOW, -(-(self.end - base + size) // granularity) * granularity)
        os.posix_fallocate(self._fd, base, length)
        if self._map is not None:
            self._map.close()
        self._map = mmap.mmap(self._fd, length, offset=base)
        self._base, self._length = base, length

    def close(self) -> None:
        """Unmap; the caller cuts the file at :attr:`end`. Later writes raise OSError."""
        if self._map is not None:
            self._map.close()
            self._map = None
        self._length = -1


class AppendLog:
    """Writes with ``pwrite()`` (where the file cannot be mapped)."""

    def __init__(self, fd: int, end: int):
        self._fd = fd
        self.end = end
        self._closed = False

    def write(self, prefix: bytes, body: Sequence[Frame], size: int) -> None:
        """Append `prefix` and the parts of `body`, `size` bytes in all."""
        if self._closed:
            raise OSError("the log is closed")
        data = memoryview(b"".join([prefix, *body]))
        while data:
            written = os.pwrite(self._fd, data, self.end)
            self.end += written
            data = data[written:]

    def prepare(self, ahead: int) -> None:
        """Nothing to prepare for writes."""

    def close(self) -> None:
        self._closed = True
