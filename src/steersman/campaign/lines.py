"""results.jsonl, written by a process of its own that follows the journal.

A line of results.jsonl is made from a result's journal record (and its request's, for the
inputs). Decoding the payloads and writing the JSON cost more than journaling the result, so
the thinker's process does not do it: when recording starts, a *line writer* is forked. The
journal wakes it after each of its background writes; it reads the whole batches written
since, appends their lines and waits again. Lines follow their records by about one write
interval (see the journal's ``WRITE_INTERVAL``), always in the journal's order, so that little
is left to write when the run ends.

When the recording closes, the line writer writes the lines of what remains and exits, and the
thinker waits for it: results.jsonl is whole when the run ends. If the thinker's process dies
instead, the line writer exits without writing more (it notices through a pidfd of its parent,
or the end of the wake pipe, and it ignores SIGINT and SIGTERM, so that it never stops half
way through a write): the next thinker on the run directory rebuilds the missing lines from the
journal. Each write holds an exclusive ``flock`` of results.jsonl, taken again by that rebuild,
and the line writer writes only while its parent lives: a rebuild never races a late write.
The line writer keeps open only the files it needs: pipes of the queues inherited by the fork
would otherwise hide the end of a task server from the thinker.

On systems other than Linux the line writer is a thread of the thinker's process.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import os
import pickle
import select
import signal
import struct
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pydantic_core

from steersman.campaign.journal import Batch, RecordKind, iter_batches
from steersman.campaign.receipt import Decoded, Payload, trace_line
from steersman.models.result import TEXT_LIMIT, Inputs, jsonable, safe_repr
from steersman.models.serialization import Frame, SerializationMethod, deserialize
from steersman.queue.pipe import write_all

logger = logging.getLogger(__name__)

#: Bytes of the journal read at a time (a batch larger than this is read whole).
CHUNK = 1 << 20
#: How much lower the line writer's scheduling priority is than the thinker's.
NICENESS = 10
#: Seconds the thinker waits for the line writer to finish its lines when recording closes.
FINISH_TIMEOUT = 300.0
_SETUP, _WAKE, _FINISH = b"s", b"w", b"f"  # messages of the wake pipe; setup: size, pickle
_SIZE = struct.Struct("<Q")
_FORK = sys.platform == "linux"
_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
#: Index of the field of a RESULT record holding its line, when the thinker made it.
LINE_FIELD = 5
_REQUEST, _RESULT = RecordKind.REQUEST.value, RecordKind.RESULT.value


def line_of(fields: Sequence[bytes], frames: Sequence[Frame],
            request_frames: Sequence[Frame] | None) -> bytes:
    """The results.jsonl line of a RESULT record (its fields and frames), given the input
    frames of its request.

    Every result gets its line, whatever its payload holds: values are bounded as
    :func:`~steersman.models.result.jsonable` says, and a payload that cannot be written
    at all is replaced by a text saying why.
    """
    if len(fields) > LINE_FIELD:  # results with proxies: the thinker made the line
        return fields[LINE_FIELD]
    flags, header = fields[2], fields[3]
    if b"P" in flags or b"J" in flags:  # the flags tell what the line needs of the header
        keep_inputs = b"K" in flags
        method = SerializationMethod.JSON if b"J" in flags else SerializationMethod.PICKLE
    else:  # a record of an older journal
        about = pydantic_core.from_json(header)
        keep_inputs = bool(about.get("keep_inputs"))
        method = SerializationMethod.parse(about["serialization_method"])
    inputs = request_frames if keep_inputs else None
    return _line(header, fields[4], _bounded(inputs, method, True),
                 _bounded(frames, method, False), method)


def line_of_decoded(header: bytes, receipt: bytes, inputs: Inputs | None, value: Any,
                    method: SerializationMethod) -> bytes:
    """The results.jsonl line of a result received with `header` and `receipt` whose inputs
    (None: not kept) and value are already decoded (the thinker makes those of results that
    carried proxies: see ``Recording._queue_result``), bounded as :func:`line_of` bounds
    them."""
    return _line(header, receipt, None if inputs is None else _bounded_inputs(inputs),
                 Decoded(jsonable(value)), method)


def _line(header: bytes, receipt: bytes, inputs: Payload, value: Payload,
          method: SerializationMethod) -> bytes:
    try:
        return trace_line(header, receipt, inputs, value, method)
    except Exception as exc:  # a line all the same, saying why
        note = Decoded(f"<cannot write: {safe_repr(exc)}>")
        return trace_line(header, receipt, note if inputs else None, note, method)


def _bounded_inputs(inputs: Any) -> Decoded:
    try:
        args, kwargs = inputs
        return Decoded(([jsonable(arg) for arg in args],
                        {name: jsonable(value) for name, value in kwargs.items()}))
    except Exception:  # not a pair of arguments: trace_line says so
        return Decoded(inputs)


def _bounded(payload: Sequence[Frame] | None, method: SerializationMethod,
             are_inputs: bool) -> Payload:
    """A payload as :func:`trace_line` should take it: as it is if it is too small to hold
    anything :func:`~steersman.models.result.jsonable` would shorten (no bytes-like or string
    is longer than its frames, no container holds more items than they have bytes), else
    decoded and made bounded JSON data (pydantic's serializer would write bytes and strings
    whole)."""
    if not payload or sum(map(len, payload)) <= TEXT_LIMIT:  # frames of bytes, as journaled
        return payload
    try:
        objects = deserialize(payload, method)
    except Exception:
        return payload  # trace_line writes why it cannot be decoded
    return _bounded_inputs(objects) if are_inputs else Decoded(jsonable(objects))


class _Follower:
    """Reads the journal from an offset and appends the lines of its results."""

    def __init__(self, journal: Path, results: Path):
        self.journal = journal
        self.journal_fd = -1  # opened by the setup message
        self.results_fd = os.open(results, _APPEND, 0o644)
        self.offset = -1  # not started: set by the setup message
        self.requests: dict[bytes, list[bytes]] = {}  # inputs of requests whose result is
        # due, by task id
        self.alive: Callable[[], bool] = lambda: True  # whether lines may still be written

    def write_new(self) -> None:
        """Append the lines of the results in the whole batches written since the last call."""
        lines: list[bytes] = []
        want = CHUNK
        while True:
            chunk = os.pread(self.journal_fd, want, self.offset)
            consumed = 0
            for batch in iter_batches(chunk, start=0):
                self._take(batch, lines)
                consumed = batch.stop
            if consumed:
                self.offset += consumed
                want = CHUNK
                continue
            size = int.from_bytes(chunk[:4], "little") if len(chunk) >= 8 else 0
            if len(chunk) < want or not size or 8 + size <= want:
                break  # nothing whole yet (or a torn batch: the reader stops there too)
            want = 8 + size  # one batch larger than the chunk
        if lines:
            fcntl.flock(self.results_fd, fcntl.LOCK_EX)
            try:
                if self.alive():
                    write_all(self.results_fd, [b"".join(lines)])
            finally:
                fcntl.flock(self.results_fd, fcntl.LOCK_UN)

    def _take(self, batch: Batch, lines: list[bytes]) -> None:
        """Keep the inputs of the batch's requests; add the lines of its results."""
        requests = self.requests
        for kind, _, fields, frames in batch.records():
            if kind == _REQUEST:
                requests[fields[0]] = [frame if frame.__class__ is bytes else bytes(frame)
                                       for frame in frames]  # not views of the chunk read
            elif kind == _RESULT:
                task_id = fields[0]
                final = b"F" in fields[2]
                inputs = requests.pop(task_id, None) if final else requests.get(task_id)
                lines.append(line_of(fields, frames, inputs))

    def follow(self, wake_fd: int, parent_fd: int | None) -> None:
        """Take the setup, then write lines at each wake until told to finish, or until the
        parent is gone."""
        poller = select.poll()
        poller.register(wake_fd, select.POLLIN)
        if parent_fd is not None:
            poller.register(parent_fd, select.POLLIN)
        pending = b""
        while True:
            for fd, _ in poller.poll():
                if fd != wake_fd:
                    return  # the parent exited: its successor rebuilds what is missing
                try:
                    data = os.read(wake_fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    return  # every writer of the pipe is gone: so is the parent
                pending += data
            pending, finish = self._take_messages(pending)
            if self.offset >= 0:
                self.write_new()
            if finish:
                if self.offset >= 0:
                    os.fsync(self.results_fd)  # the run ended: its lines on disk too
                return

    def _take_messages(self, pending: bytes) -> tuple[bytes, bool]:
        """Act on the whole messages at the start of `pending`; return the rest, and whether
        one said to finish."""
        finish = False
        while pending:
            code = pending[:1]
            if code == _SETUP:
                if len(pending) < 1 + _SIZE.size:
                    break
                (size,) = _SIZE.unpack_from(pending, 1)
                end = 1 + _SIZE.size + size
                if len(pending) < end:
                    break
                self.offset, self.requests = pickle.loads(pending[1 + _SIZE.size : end])
                self.journal_fd = os.open(self.journal, os.O_RDONLY | os.O_CLOEXEC)
                pending = pending[end:]
                continue
            finish = finish or code == _FINISH
            pending = pending[1:]
        return pending, finish

    def close(self) -> None:
        for fd in (self.journal_fd, self.results_fd):
            if fd >= 0:
                os.close(fd)


class LineWriter:
    """The results.jsonl writer of a recording (see the module).

    Made before the journal is read, so that the process forked holds little of the thinker's
    memory (pages the thinker changes later are copied while both share them); it writes
    nothing until :meth:`start` says where.

    Args:
        journal: The journal file to follow (opened when started).
        results: results.jsonl (created if missing).
    """

    def __init__(self, journal: Path, results: Path):
        self._follower = _Follower(journal, results)
        read_fd, self._wake_fd = os.pipe2(os.O_CLOEXEC) if hasattr(os, "pipe2") else os.pipe()
        os.set_blocking(self._wake_fd, False)
        self._pid = 0
        self._thread: threading.Thread | None = None
        self._broken = False
        if _FORK:
            self._pid = _fork(self._follower, read_fd)
            os.close(read_fd)
            self._follower.close()
        else:
            self._thread = threading.Thread(target=self._run_thread, args=(read_fd,),
                                            name="steersman-lines", daemon=True)
            self._thread.start()

    def start(self, offset: int, requests: dict[bytes, list[bytes]]) -> None:
        """Start writing lines for the batches from `offset` of the journal (results.jsonl
        holds those of the batches before), given the input frames of the requests whose
        final result comes after it."""
        setup = pickle.dumps((offset, requests), pickle.HIGHEST_PROTOCOL)
        try:  # waits for room: the line writer reads it as it comes
            write_all(self._wake_fd, [_SETUP, _SIZE.pack(len(setup)), setup])
        except OSError:
            self._broken = True

    def wake(self) -> None:
        """Tell the line writer that the journal has new batches."""
        self._signal(_WAKE)

    def finish(self, timeout: float = FINISH_TIMEOUT) -> bool:
        """Have the line writer write the lines of what the journal holds, and wait for it;
        True if every line was written (False: rebuild them from the journal)."""
        if self._wake_fd < 0:
            return not self._broken
        self._signal(_FINISH)
        with contextlib.suppress(OSError):
            os.close(self._wake_fd)
        self._wake_fd = -1
        if self._thread is not None:
            self._thread.join(timeout)
            self._broken = self._broken or self._thread.is_alive()
        elif not _wait_child(self._pid, timeout):
            self._broken = True
        return not self._broken

    def _signal(self, what: bytes) -> None:
        try:
            os.write(self._wake_fd, what)
        except BlockingIOError:  # the pipe is full of wakes: it will read the journal anyway
            if what == _FINISH:
                with contextlib.suppress(OSError):
                    write_all(self._wake_fd, [what])  # waits for room
        except OSError:  # it is gone (killed); finish() reports it
            self._broken = True

    def _run_thread(self, read_fd: int) -> None:
        try:
            self._follower.follow(read_fd, None)
        except BaseException:
            self._broken = True
            logger.exception("the results.jsonl writer failed")
        finally:
            os.close(read_fd)
            self._follower.close()


def _fork(follower: _Follower, wake_fd: int) -> int:
    parent = os.getpid()
    keep = {0, 1, 2, wake_fd, follower.results_fd}
    with warnings.catch_warnings():  # the child runs only the code below: no lock to inherit
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        _child(follower, wake_fd, parent, keep)
    return pid


def _child(follower: _Follower, wake_fd: int, parent: int, keep: set[int]) -> NoReturn:
    code = 1
    try:
        _close_others(keep)  # first: the run directory's lock must die with the thinker
        gc.freeze()  # the parent's objects: never collected here, so never copied
        os.nice(NICENESS)  # lines can wait: the thinker and the workers come first
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        follower.alive = lambda: os.getppid() == parent
        if follower.alive():
            follower.follow(wake_fd, _pidfd(parent))
        code = 0
    except BaseException:  # to stderr: this process closed the log's files
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        os._exit(code)


def _close_others(keep: set[int]) -> None:
    """Close every file descriptor but those in `keep`."""
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _max_fd())


def _max_fd() -> int:
    try:
        return max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # an old kernel: the wake pipe's end tells instead
        return None


def _wait_child(pid: int, timeout: float) -> bool:
    """Wait for the line writer's process; True if it exited cleanly."""
    watch = _pidfd(pid)
    if watch is not None:
        try:
            if not select.select([watch], [], [], timeout)[0]:
                os.kill(pid, signal.SIGKILL)
        finally:
            os.close(watch)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def lock_lines(fd: int) -> None:
    """Wait until no line writer is writing to the results.jsonl open as `fd`, and keep
    others from writing until the file is closed (or unlocked)."""
    fcntl.flock(fd, fcntl.LOCK_EX)
