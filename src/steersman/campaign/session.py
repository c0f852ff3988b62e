"""What a thinker given a run directory does: record, resume, and show progress.

A :class:`Campaign` is attached to a thinker by ``BaseThinker.__init__`` (``run_dir=`` or a
progress display) and driven by ``BaseThinker.run``: :meth:`Campaign.begin` before the agents
start, :meth:`Campaign.end` after they stop. In between it observes the queues: every request and
result is journaled in the order seen, a request before it leaves where it may outlive the
thinker (see :meth:`Recording.request_sent`).

Resume, when the thinker starts on a run directory that holds a journal:

1. *Replay*: each result already processed is handed again, in the order received, to the
   result processor of its topic, so the fresh thinker rebuilds its state. Meanwhile sends are
   suppressed (their requests are already in the journal) and slot operations are no-ops (slots
   belong to live tasks), and ``campaign.replaying`` is True.
2. Results received but whose processing was cut short are processed again, for real.
3. *Resend*: requests that never came back are sent again with their original task ids, after
   taking the slots their submitter had taken.
4. The agents start. A result whose task id was already processed is dropped.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import json
import logging
import os
import pickle
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import time
from typing import TYPE_CHECKING, Any

from steersman.campaign.journal import JournalWriter, Record, RecordKind, read_journal
from steersman.campaign.lines import (
    LINE_FIELD,
    LineWriter,
    line_of,
    line_of_decoded,
    lock_lines,
)
from steersman.campaign.progress import Counters, Display, choose_mode, make_display
from steersman.campaign.receipt import apply_receipt, pack_receipt, received_header
from steersman.campaign.rundir import (
    JOURNAL,
    RESULTS,
    RunDirectory,
    current_launch,
    to_json,
)
from steersman.exceptions import AgentError, RunDirectoryError
from steersman.models.result import Result, writable_frames
from steersman.models.serialization import (
    Frame,
    SerializationMethod,
    deserialize,
    deserialize_inputs,
    serialize,
    serialize_inputs,
)

if TYPE_CHECKING:
    from steersman.queue.base import BaseQueues
    from steersman.thinker.agents import AgentSpec
    from steersman.thinker.base import BaseThinker
    from steersman.thinker.resources import ResourceCounter

logger = logging.getLogger(__name__)

Slots = tuple[str | None, int]


# --- reading a journal back ---------------------------------------------------------------


@dataclass
class JournalState:
    """What a journal says about a run: requests, results, what was processed, sessions."""

    requests: dict[str, Record] = field(default_factory=dict)
    results: list[Record] = field(default_factory=list)
    finals: dict[str, Record] = field(default_factory=dict)
    processed: set[str] = field(default_factory=set)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    ended: dict[str, Any] | None = None
    valid_end: int = 0

    @classmethod
    def load(cls, path: Path, *, check: bool = True, with_frames: bool = True) -> JournalState:
        state = cls()
        records, state.valid_end = read_journal(path, check=check, with_frames=with_frames)
        for record in records:
            kind = record.kind
            if kind is RecordKind.REQUEST:
                state.requests.setdefault(record.field(0), record)
            elif kind is RecordKind.RESULT:
                state.results.append(record)
                if "F" in record.field(2):
                    state.finals.setdefault(record.field(0), record)
            elif kind is RecordKind.PROCESSED:
                state.processed.update(record.field(0).split("\n"))
            elif kind is RecordKind.SESSION:
                state.sessions.append(_loads(record.field(0)))
                state.ended = None
            elif kind is RecordKind.END:
                state.ended = _loads(record.field(0))
        return state

    @property
    def empty(self) -> bool:
        return not self.requests and not self.results

    def unfinished(self) -> list[str]:
        """Task ids sent whose final result never came back, in the order sent."""
        return [tid for tid in self.requests if tid not in self.finals]


def _loads(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def request_slots(record: Record) -> Slots | None:
    """The (pool, count) of slots the submitter of a journaled request had taken."""
    text = record.field(3)
    if not text:
        return None
    pool, count = json.loads(text)
    return pool, int(count)


def decode_request(record: Record) -> Result:
    """The request of a REQUEST record, inputs attached and decoded."""
    result = Result.model_validate_json(record.field_bytes(4))
    result.attach_frames(record.frames, None)
    result.decode_inputs()
    return result


def decode_result(record: Record, request: Record | None) -> Result:
    """The Result of a RESULT record, value decoded and inputs restored from its request."""
    result = Result.model_validate_json(record.field_bytes(3))
    apply_receipt(result, record.field_bytes(4))
    # Fill the payload fields directly: a replay decodes every result of a run, and the
    # model's attribute machinery would cost more than the decoding itself.
    fields = result.__dict__
    method = result.serialization_method
    if record.frames:
        fields["value"] = deserialize(writable_frames(record.frames), method)
    if not result.keep_inputs:
        return result
    if record.field_count > INPUTS_FIELD:  # the inputs as resolved from their proxies
        fields["inputs"] = deserialize_inputs([record.field_bytes(INPUTS_FIELD)], method)
    elif request is not None and request.frames:
        fields["inputs"] = deserialize_inputs(writable_frames(request.frames), method)
    return result


#: Index of the field of a RESULT record that carried proxies holding its resolved inputs.
INPUTS_FIELD = LINE_FIELD + 1


def _plain_payload(result: Result) -> tuple[list[Frame] | None, tuple[bytes, ...]]:
    """The value frames and inputs field a result with proxies is journaled with: the plain
    objects they resolved to, since the stored copies are evicted once resolved."""
    method = result.serialization_method
    frames = serialize(result.value, method) if result.success else None
    if not result.keep_inputs:
        return frames, ()
    args, kwargs = result.inputs
    if method is SerializationMethod.JSON:
        return frames, (bytes(serialize_inputs(args, kwargs, method)[0]),)
    return frames, (pickle.dumps((args, kwargs), protocol=5),)  # one field: in-band


#: Payload frames up to this size are copied when queued for the journal; larger ones are not.
KEEP_AS_BYTES = 1 << 16


def _flags(final: bool, success: bool, keep_inputs: bool, json: bool) -> bytes:
    """The flags field of a RESULT record (see :class:`RecordKind`)."""
    return b"F" * final + b"S" * success + b"K" * keep_inputs + (b"J" if json else b"P")


#: Every flags field, indexed by final + 2 success + 4 keep_inputs + 8 json.
_FLAGS = tuple(_flags(*(bool(index >> bit & 1) for bit in range(4))) for index in range(16))


@functools.lru_cache(maxsize=256)
def _slots_field(slots: Slots | None) -> bytes:
    return to_json(list(slots)).encode() if slots is not None else b""


# --- recording ----------------------------------------------------------------------------


class Recording:
    """Journal and trace of one run directory: the queue-observer half of a campaign.

    Also usable alone, for queues driven without a thinker: see :func:`record`.
    """

    def __init__(self, directory: RunDirectory, state: JournalState, counters: Counters,
                 queues: BaseQueues | None = None, lines: LineWriter | None = None):
        self.dir = directory
        self.state = state
        self.counters = counters
        self.queues = queues
        self._write_requests_now = queues is None or queues.requests_outlive_client
        self.finished: set[str] = set(state.finals)
        self._lock = threading.Lock()
        self._displays: list[Display] = []
        self._catch_up_results()
        self.dir.open_traces()
        self.lines = lines or LineWriter(directory.path / JOURNAL, directory.path / RESULTS)
        try:
            self.journal = JournalWriter(directory.path / JOURNAL, state.valid_end)
        except BaseException:
            self.lines.finish()
            raise
        self.lines.start(self.journal.end, _unfinished_inputs(state))
        self.journal.add_sync_hook(self.lines.wake)

    def request_sent(self, result: Result, slots: Slots | None = None) -> None:
        """Journal a request (with the header it leaves with) after the results queued
        before it, which may have led to it.

        A request that may outlive this process (see ``requests_outlive_client``) is written
        before it leaves: its result may reach the next thinker, which must know it. Any other
        is queued like a result: a kill before the next sync loses it with its task, and the
        resumed thinker sends it again as a new request. Except one with out-of-band buffers
        (arrays): written at once, it is copied once, and its memory is not held until then.
        """
        header = result.wire_header
        if header is None:
            header = result.model_dump_json().encode()
        fields = (result.task_id.encode(), result.topic.encode(), (result.method or "").encode(),
                  _slots_field(slots), header)  # a tuple of bytes: the collector drops it
        frames = result.input_frames or ()
        if self._write_requests_now or len(frames) > 1:
            self.journal.append(RecordKind.REQUEST, fields, frames)
        else:
            self.journal.enqueue(RecordKind.REQUEST, fields, _kept(frames))
        if self._displays:  # counts are for displays only
            self.counters.sent(result.topic)

    def result_received(self, result: Result) -> bool:
        """Queue a result's record; False if it is a duplicate.

        The record goes out, in the order queued, with the next request written (by any agent:
        that request may have been made because of this result) or at the next sync: no
        request outlives, in the journal, a result received before it. Lost to a kill before
        then, the result is not replayed and its request (at most one per slot) is resent.
        """
        final = result.complete is not False
        task_id, topic = result.task_id, result.topic
        with self._lock:
            duplicate = task_id in self.finished
            if not duplicate:
                if final:
                    self.finished.add(task_id)
                self._queue_result(result, final)
        if duplicate:
            logger.warning("dropped a duplicate result of task %s (topic %s)", task_id, topic)
            self.counters.duplicate(topic)
            return False
        if self._displays:  # counts are for displays only
            if final:
                self.counters.received(topic, bool(result.success))
            for display in self._displays:
                display.update(topic)
        return True

    def _queue_result(self, result: Result, final: bool) -> None:
        """Queue the RESULT record (called with the lock: records keep the order received).

        Its results.jsonl line is made from it by the line writer (see lines.py), except for
        a result that carried proxies: only this process saw what they resolved to, so its
        line is made here and goes in the record, with the plain value and inputs (their
        stored copies are evicted, and a replay must not hand out proxies to nothing).
        """
        header = received_header(result)
        success = result.success
        frames = result.value_frames
        if frames is None and success:
            frames = result.encode_value()
        receipt = pack_receipt(result)
        method = result.serialization_method
        flags = _FLAGS[final + 2 * bool(success) + 4 * bool(result.keep_inputs)
                       + 8 * (method is SerializationMethod.JSON)]
        fields: tuple[bytes, ...] = (result.task_id.encode(), result.topic.encode(), flags,
                                     header, receipt)
        if result.proxystore_name is not None:
            fields += (line_of_decoded(header, receipt, result.inputs, result.value, method),)
            frames, inputs = _plain_payload(result)
            fields += inputs
        self.journal.enqueue(RecordKind.RESULT, fields, _kept(frames),
                             result.timestamp.result_received)

    def close(self, outcome: dict[str, Any] | None) -> None:
        """Write the outcome (None: none, as if the thinker were killed), close the journal,
        and wait for the line writer to write the last lines."""
        with contextlib.ExitStack() as cleanup:  # each step even if one before failed
            cleanup.callback(self.dir.close_traces)
            cleanup.callback(self._finish_lines)
            cleanup.callback(self.journal.close)
            self.journal.write_queued()  # results and processed marks before the end
            if outcome is not None:
                self.journal.append(RecordKind.END, [to_json(outcome).encode()])

    def _finish_lines(self) -> None:
        if not self.lines.finish():
            logger.error("the results.jsonl writer failed; rebuilding its lines from the "
                         "journal")
            self.state = JournalState.load(self.journal.path)
            self._catch_up_results()

    def _catch_up_results(self) -> None:
        """Make results.jsonl hold exactly one line per journaled result, in order.

        Lines are written after their journal record (at its next sync), so after a kill the
        file may miss its last lines (or hold a torn one): they are rebuilt from the journal.
        """
        path = self.dir.path / RESULTS
        records = self.state.results
        if not path.exists() and not records:
            return
        with open(path, "a+b") as stream:
            lock_lines(stream.fileno())  # a line writer of a killed thinker may be writing
            stream.seek(0)
            data = stream.read()
            ends = _line_ends(data)
            keep = min(len(ends), len(records))
            cut = ends[keep - 1] if keep else 0
            if cut != len(data):
                stream.truncate(cut)
            if keep < len(records):
                requests = self.state.requests
                for record in records[keep:]:
                    request = requests.get(record.field(0))
                    stream.write(line_of(record.raw_fields, record.frames,
                                         request.frames if request else None))
                logger.info("rebuilt %d line(s) of %s from the journal", len(records) - keep,
                            path)


def _kept(frames: Sequence[Frame] | None) -> tuple[Frame, ...]:
    """Payload frames to keep after their Result, as a tuple (the collector drops tuples of
    bytes): a small single frame as bytes, else the frames with copies of their out-of-band
    buffers (arrays decoded from those share their memory, and a processor, or the thinker
    after sending, may change them before the frames are written)."""
    if not frames:
        return ()
    if len(frames) == 1:  # the serialized stream: bytes, or a view of them
        frame = frames[0]
        return (bytes(frame) if len(frame) <= KEEP_AS_BYTES else frame,)
    return (frames[0], *map(bytes, frames[1:]))


def _unfinished_inputs(state: JournalState) -> dict[bytes, list[bytes]]:
    """Input frames of the journaled requests whose final result is still to come, by task
    id (UTF-8)."""
    return {tid.encode(): [bytes(frame) for frame in state.requests[tid].frames]
            for tid in state.unfinished()}


def _line_ends(data: bytes) -> list[int]:
    ends: list[int] = []
    start = 0
    while True:
        found = data.find(b"\n", start)
        if found < 0:
            return ends
        start = found + 1
        ends.append(start)


# --- the thinker's campaign ---------------------------------------------------------------


class Campaign:
    """Run directory, journal, resume and progress display of one thinker.

    Attributes:
        resumed: The run directory held a journal when the thinker was built.
        pending: Requests that never came back and will be resent when the thinker runs
            (inputs decoded), so a thinker can tell which inputs are already in flight.
        replaying: True while replayed results are handed to the result processors.
        params: What `save_params` recorded.
    """

    def __init__(self, thinker: BaseThinker, run_dir: str | os.PathLike[str] | None,
                 progress: bool | str | None):
        self.thinker = thinker
        self.resumed = False
        self.replaying = False
        self.pending: list[Result] = []
        self.params: dict[str, Any] = {}
        self.counters = Counters()
        self.recording: Recording | None = None
        self.run_dir: Path | None = None
        self._progress = progress
        choose_mode(progress)  # reject bad values now; resolved again when the run begins
        self._display: Display | None = None
        self._claimed: set[str] = set()
        self._claim_lock = threading.Lock()
        self._tls = threading.local()
        self._slot_lock = threading.Lock()
        self._last_allocation: dict[str | None, int] | None = None
        self._active = False
        self._observing = False
        if run_dir is not None:
            self._open(run_dir)

    @property
    def thinker_name(self) -> str:
        cls = type(self.thinker)
        return f"{cls.__module__}.{cls.__qualname__}"

    # --- opening the run directory ----------------------------------------------------------

    def _open(self, run_dir: str | os.PathLike[str]) -> None:
        cls_name = type(self.thinker).__qualname__
        directory = RunDirectory(run_dir, owner=f"{cls_name} (pid {os.getpid()})")
        lines: LineWriter | None = None
        try:
            journal = directory.path / JOURNAL
            lines = LineWriter(journal, directory.path / RESULTS)  # before the journal is read
            state = JournalState.load(journal) if journal.exists() else JournalState()
            previous = {s.get("thinker", "").rsplit(".", 1)[-1] for s in state.sessions}
            previous.discard("")
            if previous and type(self.thinker).__name__ not in previous:  # module aside
                raise RunDirectoryError(f"run dir {str(directory.path)!r} holds a campaign "
                                        f"of {sorted(previous)[0]}, not {cls_name}; use "
                                        "another run_dir")
            directory.update_params(self._initial_params)
            directory.attach_log(["steersman", self.thinker._logger_name])
            self.recording = Recording(directory, state, self.counters, self.thinker.queues,
                                       lines)
            self.run_dir = directory.path
            if self.thinker.rec is not None:
                self.thinker.rec.add_listener(self._on_slots, moves_only=True)
                self._on_slots()
            self.resumed = not state.empty
            self.pending = [decode_request(state.requests[tid]) for tid in state.unfinished()]
            self._claimed = set()
        except BaseException:
            recording, self.recording = self.recording, None
            if recording is not None:
                recording.close(None)
            elif lines is not None:
                lines.finish()
            directory.close()
            raise
        if self.resumed:
            logger.info("resuming from %s: %d result(s) to replay, %d request(s) to resend",
                        directory.path, len(state.finals), len(self.pending))

    def _initial_params(self, params: dict[str, Any]) -> None:
        from steersman import __version__

        params.setdefault("created", time())
        params["thinker"] = self.thinker_name
        params["steersman_version"] = __version__
        params.setdefault("params", {})
        launch = current_launch()
        if launch is not None and (launch.command == "run" or "campaign" not in params):
            params["campaign"] = {"path": launch.path, "args": launch.args}

    def save_params(self, params: Mapping[str, Any]) -> None:
        """Record parameters (JSON-safe copies) in params.json."""
        clean = json.loads(to_json(dict(params)))
        self.params.update(clean)
        if self.recording is not None:
            self.recording.dir.update_params(lambda p: p.setdefault("params", {}).update(clean))

    # --- driven by BaseThinker ------------------------------------------------------------

    def wrap_agent(self, name: str, spec: AgentSpec,
                   method: Callable[..., Any]) -> Callable[..., Any]:
        """The method an agent thread calls: submitters note their slots, processors dedupe."""
        if self.recording is None:
            return method
        if spec.kind == "task_submitter":
            task_type, n_slots = spec.options["task_type"], spec.options["n_slots"]
            fixed = (task_type, n_slots) if isinstance(n_slots, int) else None

            def submit() -> Any:  # a count given as an attribute's name may change
                self._tls.slots = fixed or (task_type, self.thinker.resolve_count(n_slots))
                try:
                    return method()
                finally:
                    self._tls.slots = None

            return submit
        if spec.kind == "result_processor":
            journal = self.recording.journal

            def process(result: Result) -> Any:
                final = result.complete is not False
                if not self._claim(result.task_id, final):
                    logger.info("dropped result of task %s: already processed", result.task_id)
                    return None
                out = method(result)
                if final:  # if a kill loses it, the result is processed again on resume
                    journal.defer(RecordKind.PROCESSED, result.task_id)
                return out

            return process
        return method

    def begin(self, agents: Iterable[tuple[str, AgentSpec]]) -> None:
        """Before the agents start: resume if there is a journal, start recording and display."""
        agents = list(agents)
        thinker = self.thinker
        self._active = True
        if self.recording is not None:
            session = {"pid": os.getpid(), "host": socket.gethostname(),
                       "thinker": self.thinker_name, "started": time(),
                       "resumed": self.resumed}
            self.recording.journal.append(RecordKind.SESSION, [to_json(session).encode()])
        thinker.queues.add_observer(self)
        self._observing = True
        mode = choose_mode(self._progress)  # tqdm bars the thinker opened since are seen now
        display = make_display(mode, self.counters, thinker.rec,
                               f"{type(thinker).__name__}"
                               + (f" — {self.run_dir}" if self.run_dir else ""))
        if display is not None:
            display.start()
            self._display = display
            if self.recording is not None:
                self.recording._displays.append(display)
        if self.recording is not None and self.resumed:
            self._resume(agents)

    def end(self, error: BaseException | None) -> None:
        """After the agents stopped (or failed): record the outcome, close everything."""
        if not self._active:
            return
        self._active = False
        if self._observing:
            self.thinker.queues.remove_observer(self)
            self._observing = False
        if self._display is not None:
            try:
                self._display.stop()
            finally:
                self._display = None
        self.close(error)

    def close(self, error: BaseException | None = None) -> None:
        """Release the run directory (also for a thinker that is never run)."""
        recording, self.recording = self.recording, None
        if recording is None:
            return
        if error is None:
            outcome: dict[str, Any] = {"status": "finished"}
        elif isinstance(error, (KeyboardInterrupt, SystemExit)):
            outcome = {"status": "interrupted", "error": repr(error)}
        else:
            outcome = {"status": "failed", "error": repr(error)}
        outcome["time"] = time()
        if error is not None:  # resumable: its unfinished tasks' inputs are needed again
            self.thinker.queues.keep_pending_inputs()
        try:
            recording.close(outcome)
        finally:
            recording.dir.close()

    # --- queue observer ---------------------------------------------------------------------

    def request_sent(self, result: Result) -> None:
        slots = getattr(self._tls, "slots", None)
        if slots is not None:
            self._tls.slots = None  # a submitter sending several tasks took slots for the first
        if self.recording is not None:
            self.recording.request_sent(result, slots)
        else:
            self.counters.sent(result.topic)

    def result_received(self, result: Result) -> None:
        if self.recording is not None:
            self.recording.result_received(result)
            return
        if result.complete is not False:
            self.counters.received(result.topic, bool(result.success))
        if self._display is not None:
            self._display.update(result.topic)

    def before_acknowledging(self) -> None:
        """Results are acknowledged to a service (Redis): write the queued ones durably first."""
        if self.recording is not None:
            self.recording.journal.write_queued()

    # --- slots over time ------------------------------------------------------------------

    def _on_slots(self) -> None:
        """Record the allocation when it changed (called after every move of slots)."""
        rec, recording = self.thinker.rec, self.recording
        if rec is None or recording is None:
            return
        with self._slot_lock:  # moves in several threads: each records the state it sees
            allocated = {pool: counts[0] for pool, counts in rec.snapshot().items()}
            if allocated != self._last_allocation:
                self._last_allocation = allocated
                recording.dir.write_allocation(allocated)

    # --- resume ---------------------------------------------------------------------------

    def _claim(self, task_id: str, final: bool) -> bool:
        with self._claim_lock:
            if task_id in self._claimed:
                return False
            if final:
                self._claimed.add(task_id)
            return True

    def _resume(self, agents: list[tuple[str, AgentSpec]]) -> None:
        assert self.recording is not None
        state = self.recording.state
        thinker = self.thinker
        processors: dict[str, tuple[str, Callable[[Result], Any]]] = {}
        for name, spec in agents:
            if spec.kind == "result_processor":
                processors.setdefault(spec.options["topic"], (name, getattr(thinker, name)))
        processed = state.processed | {tid for tid, record in state.finals.items()
                                       if record.field(1) not in processors}
        replay: list[tuple[str, str, Record]] = []
        redo: list[tuple[str, str, Record]] = []
        for record in state.results:
            tid, topic = record.field(0), record.field(1)
            if topic in processors and tid in state.finals:  # else: it will come again
                (replay if tid in processed else redo).append((tid, topic, record))
        self._claimed = set(processed)

        self.replaying = True
        real_queues, real_rec = thinker.queues, thinker.rec
        index = _RequestIndex(state.requests, real_queues.serialization_method)
        thinker.queues = _ReplayQueues(real_queues, index, live=False)  # type: ignore[assignment]
        thinker.rec = _ReplayCounter(real_rec) if real_rec is not None else None  # type: ignore
        requests = state.requests
        collecting = gc.isenabled()
        gc.disable()  # a result object each, rarely garbage: spare the collector's passes
        try:
            for tid, topic, record in replay:
                name, method = processors[topic]
                self._call(name, method, decode_result(record, requests.get(tid)))
        finally:
            if collecting:
                gc.enable()
            thinker.queues, thinker.rec = real_queues, real_rec
            self.replaying = False
        logger.info("replayed %d result(s)", len(replay))

        journal = self.recording.journal
        for tid, topic, record in redo:
            request = state.requests.get(tid)
            slots = request_slots(request) if request is not None else None
            took = slots is None or real_rec is None or real_rec.acquire(*slots, timeout=0)
            if not took:  # the processor's release would fail: make slot calls no-ops
                thinker.rec = _ReplayCounter(real_rec)  # type: ignore[assignment,arg-type]
            thinker.queues = _ReplayQueues(real_queues, index, live=True)  # type: ignore[assignment]
            try:
                name, method = processors[topic]
                final = "F" in record.field(2)
                if self._claim(tid, final):
                    self._call(name, method, decode_result(record, request))
                    if final:
                        journal.defer(RecordKind.PROCESSED, tid)
            finally:
                thinker.queues, thinker.rec = real_queues, real_rec
        if redo:
            logger.info("processed again %d result(s) whose processing was cut short",
                        len(redo))
        details = thinker.local_details
        details.__dict__.pop("logger", None)
        details.__dict__.pop("agent_name", None)
        self._resend(state)

    def _resend(self, state: JournalState) -> None:
        thinker = self.thinker
        rec = thinker.rec
        later: list[tuple[Result, Slots]] = []
        for request in self.pending:
            slots = request_slots(state.requests[request.task_id])
            if slots is not None and rec is not None and not rec.acquire(*slots, timeout=0):
                later.append((request, slots))
                continue
            self._send_again(request)
        if later:
            threading.Thread(target=self._resend_when_free, args=(later,), daemon=True,
                             name="steersman-resend").start()
        logger.info("resent %d request(s)%s", len(self.pending) - len(later),
                    f"; {len(later)} wait for slots" if later else "")

    def _resend_when_free(self, waiting: list[tuple[Result, Slots]]) -> None:
        rec = self.thinker.rec
        assert rec is not None
        for request, slots in waiting:
            if not rec.acquire(*slots, cancel_if=self.thinker.done):
                logger.warning("campaign done before task %s could be resent", request.task_id)
                continue
            self._send_again(request)

    def _send_again(self, request: Result) -> None:
        recording = self.recording
        if recording is None:
            return
        request.timestamp.created = time()
        self.thinker.queues.resend(request)
        recording.journal.append(RecordKind.RESENT, [request.task_id.encode()])
        self.counters.sent(request.topic)

    def _call(self, name: str, method: Callable[[Result], Any], result: Result) -> None:
        details = self.thinker.local_details
        if getattr(details, "agent_name", None) != name:  # log as the processor would
            details.logger = logging.getLogger(f"{self.thinker._logger_name}.{name}")
            details.agent_name = name
        try:
            method(result)
        except Exception as exc:
            raise AgentError(name, exc) from exc


class _RequestIndex:
    """Journaled requests by method, topic and input bytes, to match sends made again."""

    def __init__(self, requests: Mapping[str, Record], serialization: Any):
        self._requests = requests
        self._serialization = serialization
        self._index: dict[tuple[str, str, bytes], list[str]] | None = None

    def claim(self, method: str, topic: str, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> str | None:
        """The task id of an unclaimed journaled request with these inputs, if any."""
        try:
            probe = Result(method=method, topic=topic, inputs=(args, kwargs),
                           serialization_method=self._serialization)
            key = (method, topic, _digest(probe.encode_inputs()))
        except Exception:  # inputs the queues could not send either: no match
            return None
        if self._index is None:
            self._index = {}
            for task_id, record in self._requests.items():
                entry = (record.field(2), record.field(1), _digest(record.frames))
                self._index.setdefault(entry, []).append(task_id)
        matches = self._index.get(key)
        return matches.pop(0) if matches else None


class _ReplayQueues:
    """The queues as result processors see them while the journal is replayed.

    A send that matches a journaled request (same method, topic and inputs: the one the
    original run sent) is not sent again and returns that request's task id, so bookkeeping
    keyed by task id holds. Other sends are dropped while replaying already-processed results,
    and sent for real while redoing results whose processing was cut short.
    """

    def __init__(self, queues: BaseQueues, index: _RequestIndex, live: bool):
        self._queues = queues
        self._index = index
        self._live = live

    def send_inputs(self, *input_args: Any, method: str, topic: str = "default",
                    input_kwargs: dict[str, Any] | None = None, **options: Any) -> str:
        task_id = self._index.claim(method, topic, input_args, dict(input_kwargs or {}))
        if task_id is not None:
            logger.debug("resume: %s already sent as task %s", method, task_id)
            return task_id
        if self._live:
            return self._queues.send_inputs(*input_args, method=method, topic=topic,
                                            input_kwargs=input_kwargs, **options)
        logger.debug("replay: dropped a send of %s", method)
        return uuid.uuid4().hex

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queues, name)


def _digest(frames: Sequence[Any]) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for frame in frames:
        digest.update(frame)
    return digest.digest()


class _ReplayCounter:
    """The resource counter during replay: slots belong to live tasks, so moves are no-ops."""

    def __init__(self, rec: ResourceCounter):
        self._rec = rec

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def release(self, *args: Any, **kwargs: Any) -> None:
        return None

    def reallocate(self, *args: Any, callback: Callable[[], None] | None = None,
                   **kwargs: Any) -> bool:
        if callback is not None:
            callback()
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rec, name)


# --- queues without a thinker -------------------------------------------------------------


class QueueRecorder:
    """Records the requests and results of queues driven by hand into a run directory.

    Use it as a context manager, or call :meth:`close` when done. There is no resume: without
    a thinker nothing can rebuild its state.
    """

    def __init__(self, queues: BaseQueues, run_dir: str | os.PathLike[str]):
        directory = RunDirectory(run_dir, owner=f"queues (pid {os.getpid()})")
        try:
            journal = directory.path / JOURNAL
            state = JournalState.load(journal) if journal.exists() else JournalState()
            directory.update_params(lambda p: p.setdefault("created", time()))
            directory.attach_log(["steersman"])
            self.recording = Recording(directory, state, Counters(), queues)
        except BaseException:
            directory.close()
            raise
        self.recording.journal.append(RecordKind.SESSION, [to_json(
            {"pid": os.getpid(), "host": socket.gethostname(), "thinker": "", "started": time(),
             "resumed": not state.empty}).encode()])
        self.queues = queues
        self.run_dir = directory.path
        queues.add_observer(self)
        self._closed = False

    def request_sent(self, result: Result) -> None:
        self.recording.request_sent(result)

    def result_received(self, result: Result) -> None:
        self.recording.result_received(result)

    def before_acknowledging(self) -> None:
        self.recording.journal.write_queued()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.queues.remove_observer(self)
        try:
            self.recording.close({"status": "finished", "time": time()})
        finally:
            self.recording.dir.close()

    def __enter__(self) -> QueueRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def record(queues: BaseQueues, run_dir: str | os.PathLike[str]) -> QueueRecorder:
    """Record every request and result of `queues` in `run_dir` (for campaigns without a
    thinker): results.jsonl, the journal, the log. Returns the recorder to close."""
    return QueueRecorder(queues, run_dir)


def attach(thinker: BaseThinker, run_dir: str | os.PathLike[str] | None,
           progress: bool | str | None) -> Campaign | None:
    """The campaign object of a new thinker, or None when it has neither run dir nor display."""
    if run_dir is None and choose_mode(progress) == "off":
        return None
    return Campaign(thinker, run_dir, progress)
