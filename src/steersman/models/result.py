"""The Result: one task's request, its outcome, and the record of where its time went."""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import traceback
from collections.abc import Sequence
from enum import Enum
from pathlib import PurePath
from time import perf_counter, time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from steersman.models.serialization import (
    Frame,
    SerializationMethod,
    deserialize,
    deserialize_inputs,
    serialize,
    serialize_inputs,
)

Inputs = tuple[tuple[Any, ...], dict[str, Any]]
_HOSTNAME = socket.gethostname()


class _TaskIds:
    """Task ids: 64 random bits drawn once per process, then a count (32 hex digits in all).

    Unique across processes and restarts as random ids are, without a system call per task.
    A forked child draws its own bits, so parent and child never hand out the same id.
    """

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._count = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count):016x}"


_new_task_id = _TaskIds()


class ResourceRequirements(BaseModel):
    """The resources one task asks for; executable tasks render their MPI launch from them."""

    model_config = ConfigDict(extra="forbid")

    node_count: int = Field(1, ge=1, description="Number of nodes")
    cpu_processes: int = Field(1, ge=1, description="Processes (MPI ranks) per node")
    cpu_threads: int = Field(1, ge=1, description="Threads per process")

    @property
    def total_ranks(self) -> int:
        """Ranks over all nodes."""
        return self.node_count * self.cpu_processes


class FailureInformation(BaseModel):
    """Why a task failed: the exception's repr and the formatted traceback."""

    exception: str
    traceback: str | None = None
    timed_out: bool = False
    worker_lost: bool = False

    @classmethod
    def from_exception(cls, exc: BaseException, **flags: bool) -> FailureInformation:
        """Describe `exc`, even one whose ``__repr__`` or ``__str__`` raises: the failure is
        reported all the same (a placeholder names its type), never lost with the worker."""
        return cls(exception=safe_repr(exc), traceback=_format_traceback(exc), **flags)


def _format_traceback(exc: BaseException) -> str | None:
    """The formatted traceback of `exc`; its frames alone if the whole cannot be formatted."""
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception as error:
        try:
            frames = "".join(traceback.format_tb(exc.__traceback__))
        except Exception:
            frames = ""
        return (f"Traceback (most recent call last):\n{frames}{_type_name(exc)}: "
                f"<traceback could not be formatted: {_error_text(error)}>\n")


class WorkerInformation(BaseModel):
    """Where a task ran."""

    hostname: str | None = None
    pid: int | None = None
    executor: str | None = None


class Timestamps(BaseModel):
    """Wall-clock times (seconds since the epoch) of each step of a task's life."""

    created: float = Field(default_factory=time)
    input_received: float | None = None
    compute_started: float | None = None
    compute_ended: float | None = None
    result_sent: float | None = None
    result_received: float | None = None


class TimeSpans(BaseModel):
    """Durations (seconds) of the steps that cost time on each side."""

    serialize_inputs: float | None = None
    deserialize_inputs: float | None = None
    serialize_results: float | None = None
    deserialize_results: float | None = None
    running: float | None = None
    #: Worker: decoding the inputs and fetching their proxies (fetches overlap the decoding).
    proxy_resolve: float | None = None
    #: Client: putting inputs above the threshold in the store.
    proxy_store_inputs: float | None = None
    #: Worker: putting a value above the threshold in the store.
    proxy_store_value: float | None = None
    #: Client: fetching a proxied value when the result arrived.
    proxy_resolve_value: float | None = None
    additional: dict[str, float] = Field(default_factory=dict)


class Result(BaseModel):
    """A task request and, once it ran, its outcome.

    The thinker creates one per `send_inputs`; the worker fills in the value or the failure; the
    thinker receives it back from `get_result`. `result.json()` writes one line of the trace.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, validate_assignment=False)
    # Payload frames live in slots, not private attributes: pydantic would initialise (and
    # deep-copy the defaults of) private attributes on every construction and validation.
    __slots__ = ("_input_frames", "_value_frames", "_wire_header")
    if TYPE_CHECKING:  # for type checkers only: pydantic would make them private attributes
        _input_frames: list[Frame] | None
        _value_frames: list[Frame] | None
        _wire_header: bytes | None

    task_id: str = Field(default_factory=_new_task_id)
    method: str | None = None
    topic: str = "default"
    inputs: Inputs = Field(default_factory=lambda: ((), {}), exclude=True)
    value: Any = Field(default=None, exclude=True)
    success: bool | None = None
    complete: bool | None = None
    keep_inputs: bool = True
    task_info: dict[str, Any] = Field(default_factory=dict)
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    serialization_method: SerializationMethod = SerializationMethod.PICKLE
    failure_info: FailureInformation | None = None
    worker_info: WorkerInformation | None = None
    max_retries: int = Field(0, ge=0)
    retries: int = Field(0, ge=0)
    timeout: float | None = None
    priority: int = 0
    executor: str | None = None
    message_sizes: dict[str, int] = Field(default_factory=dict)
    # The topic's ProxyStore store (name, threshold in bytes, JSON configuration to rebuild it
    # in a worker elsewhere): set by the client, used by the worker to proxy a large value.
    proxystore_name: str | None = None
    proxystore_threshold: int | None = None
    proxystore_config: dict[str, Any] | None = None
    timestamp: Timestamps = Field(default_factory=Timestamps)
    time: TimeSpans = Field(default_factory=TimeSpans)

    def model_post_init(self, context: Any, /) -> None:
        """Start without payload frames (slots hold them: see ``__slots__``)."""
        _set(self, "_input_frames", None)  # past pydantic's __setattr__: it is slow
        _set(self, "_value_frames", None)
        _set(self, "_wire_header", None)

    def __copy__(self) -> Result:
        return self._sharing_frames(super().__copy__())

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Result:
        return self._sharing_frames(super().__deepcopy__(memo))

    def _sharing_frames(self, copy: Result) -> Result:
        """A copy holds the same payload frames (read-only views) but no wire header."""
        _set(copy, "_input_frames", self._input_frames)
        _set(copy, "_value_frames", self._value_frames)
        _set(copy, "_wire_header", None)
        return copy

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self.model_post_init(None)

    # --- convenient views -------------------------------------------------------------------

    @property
    def args(self) -> tuple[Any, ...]:
        """Positional arguments of the task."""
        return self.inputs[0]

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the task."""
        return self.inputs[1]

    @property
    def timed_out(self) -> bool:
        """Whether the task failed because it exceeded its timeout."""
        return self.failure_info is not None and self.failure_info.timed_out

    # --- outcome ------------------------------------------------------------------------------

    def set_result(self, value: Any, runtime: float | None = None) -> None:
        """Record a successful outcome."""
        _set(self, "_wire_header", None)
        self.value = value
        self.success = True
        self.complete = True
        self.failure_info = None
        if runtime is not None:
            self.time.running = runtime

    def set_failure(self, exc: BaseException, *, final: bool = True, **flags: bool) -> None:
        """Record a failed outcome with the exception and its traceback.

        `final=False` keeps an intermediate result intermediate (the task goes on).
        """
        self.value = None
        _set(self, "_value_frames", None)
        _set(self, "_wire_header", None)
        self.success = False
        self.complete = final
        self.failure_info = FailureInformation.from_exception(exc, **flags)

    def mark_worker(self, executor: str | None = None) -> None:
        """Record where the task runs."""
        self.worker_info = WorkerInformation(hostname=_HOSTNAME, pid=os.getpid(), executor=executor)

    # --- payload encoding ---------------------------------------------------------------------

    def encode_inputs(self) -> list[Frame]:
        """Serialize the inputs into frames (kept for sending), timing it."""
        frames = self._input_frames
        if frames is None:
            start = _clock()
            frames = serialize_inputs(*self.inputs, self.serialization_method)
            _set(self, "_input_frames", frames)
            self.time.serialize_inputs = _clock() - start
            self.message_sizes["inputs"] = _nbytes(frames)
        return frames

    def encode_value(self) -> list[Frame]:
        """Serialize the value into frames, timing it."""
        frames = self._value_frames
        if frames is None:
            start = _clock()
            frames = serialize(self.value, self.serialization_method)
            _set(self, "_value_frames", frames)
            self.time.serialize_results = _clock() - start
            self.message_sizes["value"] = _nbytes(frames)
        return frames

    def decode_inputs(self) -> Inputs:
        """Restore the inputs from received frames, timing it."""
        frames = self._input_frames
        if frames is not None:
            start = _clock()
            frames = writable_frames(frames)
            self.inputs = deserialize_inputs(frames, self.serialization_method)
            self.time.deserialize_inputs = _clock() - start
        return self.inputs

    def decode_value(self) -> Any:
        """Restore the value from received frames, timing it."""
        frames = self._value_frames
        if frames is not None:
            start = _clock()
            self.value = deserialize(writable_frames(frames), self.serialization_method)
            self.time.deserialize_results = _clock() - start
        return self.value

    def attach_frames(self, inputs: Sequence[Frame] | None, value: Sequence[Frame] | None) -> None:
        """Hold received payload frames until they are decoded."""
        _set(self, "_input_frames", list(inputs) if inputs else None)
        _set(self, "_value_frames", list(value) if value else None)

    @property
    def input_frames(self) -> list[Frame] | None:
        return self._input_frames

    @property
    def value_frames(self) -> list[Frame] | None:
        return self._value_frames

    @property
    def wire_header(self) -> bytes | None:
        """The JSON header of the last message this Result was encoded into or decoded from.

        The journal records it instead of dumping the Result again. It is stale once the
        Result changes: :meth:`set_result` and :meth:`set_failure` forget it, and whoever
        changes other header fields after a message must not rely on it.
        """
        return self._wire_header

    def note_wire_header(self, header: bytes | None) -> None:
        """Remember the header of the message just encoded or decoded (see
        :attr:`wire_header`)."""
        _set(self, "_wire_header", header)

    def drop_inputs(self) -> None:
        """Forget the inputs, for results sent back with `keep_inputs=False`."""
        self.inputs = ((), {})
        _set(self, "_input_frames", None)

    # --- trace format -------------------------------------------------------------------------

    def json(  # type: ignore[override]
        self, exclude: set[str] | dict[str, Any] | None = None, **kwargs: Any
    ) -> str:
        """One line of strict JSON (no NaN); values JSON cannot hold are written as their repr,
        large or self-referencing ones as placeholders (see :func:`jsonable`)."""
        data = self.model_dump(exclude=exclude, **kwargs)
        excluded = set(exclude) if exclude is not None else set()
        if "inputs" not in excluded:
            data["inputs"] = [list(self.inputs[0]), self.inputs[1]]
        if "value" not in excluded:
            data["value"] = self.value
        return json.dumps(jsonable(data), allow_nan=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str | bytes) -> Result:
        """Read a line written by :meth:`json` (inputs and value as JSON saw them)."""
        data = json.loads(line)
        inputs = data.pop("inputs", None)
        value = data.pop("value", None)
        result = cls.model_validate(data)
        if inputs is not None:
            result.inputs = (tuple(inputs[0]), dict(inputs[1]))
        result.value = value
        return result


_clock = perf_counter
_set = object.__setattr__


def writable_frames(frames: Sequence[Frame]) -> list[Frame]:
    """Copy read-only out-of-band buffers, so arrays rebuilt from them are writable.

    Arrays that arrive are always writable, as after a local call, whatever the transport:
    pipes deliver writable memory (no copy here); Redis replies and stored objects arrive as
    read-only ``bytes``, whose large buffers are copied once. The pickle stream (frame 0) is
    only read, so it is never copied.
    """
    return [frame if i == 0 or not memoryview(frame).readonly else bytearray(frame)
            for i, frame in enumerate(frames)]


def _nbytes(frames: Sequence[Frame]) -> int:
    return sum(memoryview(f).nbytes for f in frames)


#: Characters of text that one bytes-like value, or the repr of an object JSON cannot hold,
#: contributes to a line of results.jsonl (and to :meth:`Result.json`): past it, a bytes-like
#: becomes a placeholder with its size, a repr is cut and notes its full length.
TEXT_LIMIT = 64 * 1024
#: Characters past which a string is cut to :data:`TEXT_LIMIT` (with a note of its length).
STR_LIMIT = 1 << 20
#: Items past which a list, tuple, set or dict becomes a placeholder with its length.
ITEMS_LIMIT = 1_000_000
#: Nesting depth past which a container becomes a placeholder.
MAX_DEPTH = 200
_PLAIN = frozenset({int, bool, type(None)})  # written as they are
_REALS = frozenset({int, float, bool})
_STR = frozenset({str})
_BYTES = (bytes, bytearray, memoryview)
_CONTAINERS = (dict, list, tuple, set, frozenset)
_isfinite = math.isfinite


def jsonable(obj: Any) -> Any:
    """Make `obj` strict-JSON safe and of bounded size, for lines people and plots read.

    Non-finite floats become null, paths text, NumPy values numbers or lists, unknown objects
    their repr. What would make a line unreadable or huge becomes a short placeholder text: a
    reference cycle (``"<cycle: list>"``), an object whose repr raises (naming its type and
    the error), a bytes-like of more than :data:`TEXT_LIMIT` bytes (``"<bytes: 52428800
    bytes>"``), a container of more than :data:`ITEMS_LIMIT` items or nested deeper than
    :data:`MAX_DEPTH`; a repr longer than :data:`TEXT_LIMIT` characters and a string longer
    than :data:`STR_LIMIT` are cut, noting their full length. Numbers and other strings,
    lists and dicts stay exact.
    """
    return _jsonable(obj, set())


def _jsonable(obj: Any, path: set[int]) -> Any:
    """:func:`jsonable`, given the ids of the containers around `obj`."""
    cls = obj.__class__
    if cls in _PLAIN:
        return obj
    if cls is float:
        return obj if _isfinite(obj) else None
    if cls is str:
        return obj if len(obj) <= STR_LIMIT else _cut_str(obj)
    if isinstance(obj, _CONTAINERS):
        return _container(obj, path)
    return _other(obj, path)


def _container(obj: Any, path: set[int]) -> Any:
    if len(obj) > ITEMS_LIMIT:
        return _many(obj)
    is_dict = isinstance(obj, dict)
    items = obj.values() if is_dict else obj
    if _REALS.issuperset(map(type, items)) and _finite(items) \
            and (not is_dict or _STR.issuperset(map(type, obj))):
        return dict(obj) if is_dict else list(obj)  # numbers alone: no call per item
    key = id(obj)
    if key in path:
        return _cycle(obj)
    if len(path) >= MAX_DEPTH:
        return f"<too deep: {_type_name(obj)}>"
    path.add(key)
    try:
        if is_dict:
            return {k if k.__class__ is str else _key(k): _jsonable(v, path)
                    for k, v in obj.items()}
        return [_jsonable(v, path) for v in obj]
    finally:
        path.discard(key)


def _finite(values: Any) -> bool:
    """Whether numbers are all finite (a NaN or an infinity makes their sum one)."""
    try:
        return _isfinite(sum(values))
    except OverflowError:  # an int too large for a float: look at them one by one
        return False


def _other(obj: Any, path: set[int]) -> Any:
    """:func:`_jsonable` of the less common types (subclasses of the common ones included)."""
    if obj is None or isinstance(obj, (bool, int)):
        return obj
    if isinstance(obj, str):
        return obj if len(obj) <= STR_LIMIT else _cut_str(obj)
    if isinstance(obj, float):
        return obj if _isfinite(obj) else None
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, _BYTES):
        return _bytes(obj)
    try:
        if isinstance(obj, Enum):
            return _jsonable(obj.value, path)
        item = getattr(obj, "item", None)  # NumPy scalars
        if callable(item) and getattr(obj, "ndim", None) == 0:
            return _jsonable(item(), path)
        tolist = getattr(obj, "tolist", None)  # small NumPy arrays
        if callable(tolist) and getattr(obj, "size", math.inf) <= 10_000:
            return _jsonable(tolist(), path)
    except Exception:  # an object that only looks like those: its repr will do
        pass
    return safe_repr(obj)


def safe_repr(obj: Any) -> str:
    """The repr of `obj`, cut past :data:`TEXT_LIMIT` characters; a placeholder naming its
    type and the error if it raises."""
    try:
        text = repr(obj)
    except Exception as error:
        return f"<{_type_name(obj)}: repr failed: {_error_text(error)}>"
    if len(text) <= TEXT_LIMIT:
        return text
    return f"{text[:TEXT_LIMIT]}... <repr cut: {len(text)} characters>"


def _key(key: Any) -> str:
    """A dict key as text."""
    if isinstance(key, _BYTES) and _nbytes_of(key) > TEXT_LIMIT:
        return _bytes(key)
    try:
        text = str(key)
    except Exception:
        return safe_repr(key)
    return text if len(text) <= TEXT_LIMIT else _cut_str(text, "key")


def _bytes(obj: bytes | bytearray | memoryview) -> str:
    """Text as results.jsonl writes bytes (as pydantic does), its repr if not UTF-8; a
    placeholder with its size past :data:`TEXT_LIMIT`."""
    size = _nbytes_of(obj)
    if size > TEXT_LIMIT:
        return f"<{_type_name(obj)}: {size} bytes>"
    try:
        return bytes(obj).decode()
    except (UnicodeDecodeError, ValueError):
        return safe_repr(obj)


def _nbytes_of(obj: bytes | bytearray | memoryview) -> int:
    try:
        return obj.nbytes if isinstance(obj, memoryview) else len(obj)
    except ValueError:  # a released memoryview
        return 0


def _cut_str(text: str, what: str = "str") -> str:
    return f"{text[:TEXT_LIMIT]}... <{what} cut: {len(text)} characters>"


def _cycle(obj: Any) -> str:
    return f"<cycle: {_type_name(obj)}>"


def _many(obj: Any) -> str:
    return f"<{_type_name(obj)}: {len(obj)} items>"


def _type_name(obj: Any) -> str:
    cls = type(obj)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _error_text(error: BaseException) -> str:
    """What an error raised while describing something says, itself described safely."""
    try:
        return repr(error)
    except Exception:
        return _type_name(error)
