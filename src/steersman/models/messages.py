"""The wire format: one message is a small binary prefix, a JSON header and raw payload frames.

Layout (little endian)::

    b"SM" | version u8 | kind u8 | flags u8 | reserved u8 | n_inputs u16 | n_value u16
    | header_len u32 | frame lengths u64 x (n_inputs + n_value) | header | frames... | [hmac]

The header is the Result without its inputs and value; the frames are the serialized inputs and
value as raw bytes (never hex or base64). With a key, a SHA-256 HMAC of everything before it is
appended, and a message whose signature is missing or wrong is rejected before any decoding.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from pydantic import BaseModel, ConfigDict, ValidationError

from steersman.exceptions import MessageError
from steersman.models.result import Result
from steersman.models.serialization import Frame

MAGIC = b"SM"
VERSION = 1
_PREFIX = struct.Struct("<2sBBBBHHI")
_DIGEST_SIZE = hashlib.sha256().digest_size
_MAX_FRAMES = 65535
_dump_header = Result.__pydantic_serializer__.to_json  # bytes; model_dump_json makes a str


class Kind(IntEnum):
    """What a message carries."""

    REQUEST = 1
    RESULT = 2
    KILL = 3


class Flags(IntFlag):
    """Bits of the prefix that let a router act without parsing the header."""

    NONE = 0
    FAILED = 1
    SIGNED = 2
    INTERMEDIATE = 4


_KINDS = {kind.value: kind for kind in Kind}
_FAILED, _SIGNED, _INTERMEDIATE = Flags.FAILED.value, Flags.SIGNED.value, Flags.INTERMEDIATE.value
_FLAGS = {bits: Flags(bits) for bits in range(2 * max(Flags))}
_FEW_LENGTHS = [struct.Struct(f"<{n}Q") for n in range(8)]  # a message has a frame or two


def _lengths(n_frames: int) -> struct.Struct:
    """The layout of `n_frames` frame lengths."""
    return _FEW_LENGTHS[n_frames] if n_frames < 8 else struct.Struct(f"<{n_frames}Q")


class Routing(BaseModel):
    """The fields of a request that route it. A task server reads only these (half the
    cost of the whole Result) and decodes the Result only when it must change it."""

    model_config = ConfigDict(extra="ignore")

    task_id: str
    method: str | None = None
    topic: str = "default"
    priority: int = 0
    timeout: float | None = None
    executor: str | None = None
    #: When the task server received the request (not part of the header: it stamps it).
    received: float | None = None

    @classmethod
    def of(cls, result: Result) -> Routing:
        """The routing fields of a whole Result."""
        return cls(task_id=result.task_id, method=result.method, topic=result.topic,
                   priority=result.priority, timeout=result.timeout, executor=result.executor,
                   received=result.timestamp.input_received)

    def whole(self, data: Frame, key: bytes | None = None) -> Result:
        """The whole request this was read from (`data`, the message), stamped as received.

        A header that holds valid routing fields but no valid Result gives a bare Result of
        those fields: its failure can still be reported to the thinker.
        """
        try:
            request = decode(data, key=key).result
        except MessageError:
            request = None
        if request is None:
            return self.bare()
        request.timestamp.input_received = self.received
        return request

    def bare(self) -> Result:
        """A Result of the routing fields alone, stamped as received."""
        request = Result(task_id=self.task_id, method=self.method, topic=self.topic,
                         priority=self.priority, timeout=self.timeout, executor=self.executor)
        request.timestamp.input_received = self.received
        return request


@dataclass
class Message:
    """A decoded message: what it is, and the Result it carries (frames attached, not decoded),
    or only the request's :class:`Routing` when that was all that was asked for.

    `data` is the message as received, so a router can forward it without encoding it again.
    """

    kind: Kind
    flags: Flags
    result: Result | None
    data: Frame | None = None
    routing: Routing | None = None

    @property
    def task_id(self) -> str | None:
        """The task the message is about (None for a kill signal)."""
        if self.result is not None:
            return self.result.task_id
        return self.routing.task_id if self.routing is not None else None


def encode(
    kind: Kind, result: Result | None = None, *, key: bytes | None = None, with_inputs: bool = True
) -> list[Frame]:
    """Encode a message as a list of buffers ready for a vectored write (no payload copies)."""
    flags = 0
    header = b""
    inputs: list[Frame] = []
    value: list[Frame] = []
    if result is not None:
        if with_inputs and result.input_frames:
            inputs = result.input_frames
        if kind is Kind.RESULT:
            value = result.encode_value() if result.success else []  # sizes land in the header
            if not result.success:
                flags |= _FAILED
            if result.complete is False:
                flags |= _INTERMEDIATE
        header = _dump_header(result)
        result.note_wire_header(header)
    if key is not None:
        flags |= _SIGNED
    frames = [*inputs, *value]
    if len(inputs) > _MAX_FRAMES or len(value) > _MAX_FRAMES:
        raise ValueError(f"too many payload frames ({len(frames)}); at most {_MAX_FRAMES} each")
    lengths = [memoryview(f).nbytes for f in frames]
    prefix = _PREFIX.pack(MAGIC, VERSION, kind.value, flags, 0, len(inputs), len(value),
                          len(header))
    head = b"".join((prefix, _lengths(len(lengths)).pack(*lengths), header))
    parts: list[Frame] = [head, *frames]
    if key is not None:
        parts.append(_digest(key, parts))
    return parts


def peek(data: Frame) -> tuple[Kind, int]:
    """Read only the kind and the flag bits (test them with ``bits & Flags.FAILED``, say: on a
    plain int that is a C operation, on a Flags an enum call), for routing without decoding
    the header."""
    magic, version, kind, flags, *_ = _unpack_prefix(data)
    if kind not in _KINDS or flags not in _FLAGS:
        raise ValueError(f"unknown message kind {kind} or flags {flags}")
    return _KINDS[kind], flags


def decode(data: Frame, *, key: bytes | None = None, routing_only: bool = False) -> Message:
    """Decode a message; any malformed input raises :class:`MessageError`, nothing else.

    With `routing_only`, a request's header gives only its :class:`Routing` (checked as
    strictly: signature, layout and the routing fields' types) and no Result.
    """
    view = memoryview(data).cast("B")
    magic, version, kind_code, flag_bits, _, n_in, n_val, header_len = _unpack_prefix(view)
    kind, flags = _KINDS.get(kind_code), _FLAGS.get(flag_bits)
    if kind is None or flags is None:
        raise MessageError(f"unknown message kind {kind_code} or flags {flag_bits}")
    if key is not None:
        view = _verify(view, key, flag_bits)
    elif flag_bits & _SIGNED:
        view = view[:-_DIGEST_SIZE]
    offset = _PREFIX.size
    n_frames = n_in + n_val
    end_lengths = offset + 8 * n_frames
    if end_lengths + header_len > len(view):
        raise MessageError(f"message truncated: {len(view)} bytes, header ends past the end")
    lengths = _lengths(n_frames).unpack_from(view, offset)
    header = view[end_lengths : end_lengths + header_len]
    offset = end_lengths + header_len
    if offset + sum(lengths) != len(view):
        raise MessageError(
            f"message length {len(view)} does not match its frames ({offset + sum(lengths)})"
        )
    if routing_only and kind is Kind.REQUEST and header_len:
        return Message(kind, flags, None, data, _parse_routing(header))
    frames: list[memoryview] = []
    for length in lengths:
        frames.append(view[offset : offset + length])
        offset += length
    raw = header.tobytes()  # kept as the wire header: one copy, whatever becomes of `data`
    result = _parse_header(raw) if header_len else None
    if result is not None:
        result.attach_frames(frames[:n_in], frames[n_in:])
        result.note_wire_header(raw)
    elif kind is not Kind.KILL:
        raise MessageError(f"a {kind.name} message must carry a header")
    return Message(kind, flags, result, data)


def header_of(head: Frame) -> memoryview | None:
    """The JSON header of a message, from its first part alone (:func:`encode` puts the prefix,
    the frame lengths and the header there); None if that part does not hold it whole."""
    view = memoryview(head).cast("B")
    *_, n_inputs, n_values, header_len = _unpack_prefix(view)
    start = _PREFIX.size + 8 * (n_inputs + n_values)
    if start + header_len > view.nbytes:
        return None
    return view[start:start + header_len]


def message_size(data: Frame) -> int:
    """The size of the message at the start of `data`, read from its prefix alone."""
    view = memoryview(data).cast("B")
    _, _, _, flags, _, n_inputs, n_values, header_len = _unpack_prefix(view)
    n_frames = n_inputs + n_values
    start = _PREFIX.size + 8 * n_frames
    lengths = _lengths(n_frames).unpack_from(view, _PREFIX.size)
    return start + header_len + sum(lengths) + (_DIGEST_SIZE if flags & _SIGNED else 0)


def join(parts: Sequence[Frame]) -> bytes:
    """Concatenate the parts of a message, for transports that take one buffer."""
    return b"".join(parts)


def _unpack_prefix(data: Frame) -> tuple[bytes, int, int, int, int, int, int, int]:
    if memoryview(data).nbytes < _PREFIX.size:
        raise MessageError(f"message truncated: {memoryview(data).nbytes} bytes, prefix needs 14")
    fields = _PREFIX.unpack_from(data, 0)
    if fields[0] != MAGIC:
        raise MessageError(f"not a steersman message (starts with {bytes(fields[0])!r})")
    if fields[1] != VERSION:
        raise MessageError(f"message version {fields[1]} is not supported (this is {VERSION})")
    return fields


def _parse_header(header: bytes) -> Result:
    try:
        return Result.model_validate_json(header)
    except (ValidationError, ValueError) as exc:
        raise MessageError(f"message header is not a valid Result: {exc}") from None


def _parse_routing(header: memoryview) -> Routing:
    try:
        return Routing.model_validate_json(header.tobytes())
    except (ValidationError, ValueError) as exc:
        raise MessageError(f"message header is not a valid request: {exc}") from None


def _digest(key: bytes, parts: Sequence[Frame]) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.digest()


def _verify(view: memoryview, key: bytes, flags: int) -> memoryview:
    if not flags & _SIGNED or len(view) < _PREFIX.size + _DIGEST_SIZE:
        raise MessageError("message is not signed, and this queue requires signed messages")
    body, signature = view[:-_DIGEST_SIZE], view[-_DIGEST_SIZE:]
    if not hmac.compare_digest(_digest(key, [body]), signature):
        raise MessageError("message signature does not match: rejected without decoding")
    return body
