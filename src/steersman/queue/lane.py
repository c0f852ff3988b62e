"""The lane: requests that need nothing of the task server go from the thinker to the workers.

A task server relays each request to an idle worker: one more process to wake per task. Most
requests need nothing the server alone can do (no priority to order by, no timeout to watch, no
retry, no executor to choose), so the thinker sends those into the lane, one ``SOCK_SEQPACKET``
socket that every worker process of a local task server receives from: each receive takes one
whole message, so workers need no lock between them. Workers take the server's requests first.

What the server still does for lane tasks, it does from what the worker leaves in its
:class:`LaneSlot`, a page of memory shared with the server that holds the lane request the worker
runs: if the worker dies, the server reads the request there and fails it (``WorkerLost``), so
no task is lost.
"""

from __future__ import annotations

import contextlib
import mmap
import select
import socket
from collections.abc import Callable, Sequence

from steersman.models.messages import MAGIC, message_size
from steersman.models.serialization import Frame
from steersman.queue._lifelines import ENDED, Lifelines, wait_ready

#: Largest request that takes the lane (a worker receives it into its slot whole).
LANE_BYTES = 64 << 10
#: Room for requests sent and not yet received: thousands of small ones (the kernel may cap it).
_SEND_BUFFER = 4 << 20


class Lane:
    """Both ends of the lane, made in the thinker's process before the task server forks.

    The thinker keeps the sending end, the server and its workers the receiving end.
    """

    def __init__(self) -> None:
        self.sender, self.receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with contextlib.suppress(OSError):
            self.sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
        self.sender.setblocking(False)

    def send(self, parts: Sequence[Frame], on_full: Callable[[], None] | None,
             lifelines: Lifelines | None = None) -> None:
        """Send one request whole (several threads may send at once); when the lane is full,
        call `on_full` and wait for room. Raises OSError if no worker can ever receive it,
        or once every process `lifelines` watches (the task server) ended."""
        while True:
            try:
                self.sender.sendmsg(parts)
                return
            except BlockingIOError:
                if on_full is not None:
                    on_full()
                # a closed receiving end shows too: the next send raises
                if wait_ready(self.sender.fileno(), select.POLLOUT,
                              lifelines=lifelines) == ENDED:
                    raise BrokenPipeError("the task server ended") from None

    def close_sender(self) -> None:
        self.sender.close()

    def close_receiver(self) -> None:
        self.receiver.close()


class LaneSlot:
    """A worker's record of the lane request it runs, in memory shared with the task server.

    The worker receives each lane request straight into the slot and clears it once the
    request's results are sent, so whatever the moment the worker dies, the server finds the
    request it did not finish (a duplicate result is possible, and dropped by the thinker; a
    lost one is not).
    """

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, LANE_BYTES)  # shared with processes forked later
        self._view = memoryview(self._memory)

    def receive(self, receiver: socket.socket) -> bytes | None:
        """Receive the next lane request into the slot, if one waits, and return a copy of it
        (values decoded from it may outlive the task); None if none waits. Raises EOFError
        once the lane has no sender left."""
        try:
            size = receiver.recv_into(self._view, LANE_BYTES, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        if size == 0:
            raise EOFError("the lane was closed")
        return bytes(self._view[:size])

    def clear(self) -> None:
        """The request's results are sent: nothing to report if this worker dies now."""
        self._view[:len(MAGIC)] = bytes(len(MAGIC))

    @property
    def busy(self) -> bool:
        """Whether the worker runs a lane request now (the server reads it)."""
        return self._view[:len(MAGIC)] == MAGIC

    def take_unfinished(self) -> bytes | None:
        """In the server, after the worker died: the request it had not finished, if any;
        the slot is clear afterwards, for the worker that replaces it."""
        if not self.busy:
            return None
        try:
            return bytes(self._view[:min(message_size(self._view), LANE_BYTES)])
        except Exception:  # a torn prefix: the server reports what it can
            return bytes(self._view)
        finally:
            self.clear()

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # a view still held: the map goes with it
            self._view.release()
            self._memory.close()
