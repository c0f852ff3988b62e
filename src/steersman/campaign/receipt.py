"""A received Result's journal fields and results.jsonl line, without dumping it again.

A result arrives with its header as JSON already (its message's header). Between decoding the
message and handing the Result to observers, the queues change only a few numbers in it: when
the result was received and how long decoding took (:data:`RECEIPT_FIELDS`). The journal keeps
the header as it came and those numbers (the *receipt*), which is all the agents' threads
spend. The results.jsonl line is made later, by the line writer (see lines.py), from the same
bytes (:func:`trace_line`), so that it shows the result exactly as received.
"""

from __future__ import annotations

import marshal
from collections.abc import Sequence
from typing import Any

import pydantic_core

from steersman.campaign.rundir import to_json
from steersman.models.result import Result, jsonable
from steersman.models.serialization import (
    Frame,
    SerializationMethod,
    deserialize,
)

#: Fields the queues set on receipt, as (sub-model, field).
RECEIPT_FIELDS = (("timestamp", "result_received"), ("time", "deserialize_inputs"),
                  ("time", "deserialize_results"), ("time", "proxy_resolve_value"))
_dump_result = Result.__pydantic_serializer__.to_json  # bytes, without model_dump_json's detour
_TIMESTAMP = b',"timestamp":'


def received_header(result: Result) -> bytes:
    """The header of a Result as its message brought it (dumped if it has none)."""
    wire = result.wire_header
    return wire if wire is not None else _dump_result(result)


def pack_receipt(result: Result) -> bytes:
    """The receipt of a Result just received (see :data:`RECEIPT_FIELDS`)."""
    stamps, spans = result.timestamp, result.time
    return marshal.dumps((stamps.result_received, spans.deserialize_inputs,
                          spans.deserialize_results, spans.proxy_resolve_value), 4)


def unpack_receipt(receipt: bytes) -> tuple[float | None, ...]:
    """The values of :data:`RECEIPT_FIELDS` in a receipt."""
    values = marshal.loads(receipt)
    if not isinstance(values, tuple) or len(values) != len(RECEIPT_FIELDS):
        raise ValueError(f"not a receipt: {receipt!r}")
    return values


def apply_receipt(result: Result, receipt: bytes) -> None:
    """Set a receipt's values on the Result decoded from the header it came with."""
    for (group, name), value in zip(RECEIPT_FIELDS, unpack_receipt(receipt)):
        getattr(result, group).__dict__[name] = value  # plain data: skip pydantic's setattr


class Decoded:
    """Inputs or a value already decoded (for results whose frames do not tell them, as
    those carrying proxies)."""

    __slots__ = ("objects",)

    def __init__(self, objects: Any):
        self.objects = objects


#: Serialized inputs or value (its single frame, its frames, None for none), or their objects.
Payload = bytes | Sequence[Frame] | Decoded | None


def trace_line(header: bytes, receipt: bytes, inputs: Payload, value: Payload,
               method: SerializationMethod) -> bytes:
    """One line of results.jsonl (the seeds' trace format) for a result received with
    `header` and `receipt`, its inputs and value given as they came."""
    cut = header.rfind(_TIMESTAMP)  # the last two objects, time stamps and spans: patched
    if cut < 0:
        raise ValueError("not the header of a Result: it has no time stamps")
    tail = pydantic_core.from_json(b"{" + header[cut + 1 :])
    for (group, name), number in zip(RECEIPT_FIELDS, unpack_receipt(receipt)):
        tail[group][name] = number
    arguments = _objects(inputs, method)
    if arguments is None:
        tail["inputs"] = [[], {}]
    elif isinstance(arguments, str):  # could not decode them
        tail["inputs"] = arguments
    else:
        try:
            args, kwargs = arguments
            tail["inputs"] = [list(args), dict(kwargs)]
        except (TypeError, ValueError) as exc:
            tail["inputs"] = _undecodable(exc)
    tail["value"] = _objects(value, method)
    return b"".join((header[:cut], b",", _json(tail)[1:], b"\n"))


def _json(obj: Any) -> bytes:
    """Strict JSON, as :func:`~steersman.campaign.rundir.to_json` writes it, but several
    times faster (pydantic's serializer, for every line of results.jsonl)."""
    try:
        return pydantic_core.to_json(obj, inf_nan_mode="null", fallback=jsonable)
    except ValueError:  # text that is not UTF-8, say
        return to_json(jsonable(obj)).encode()


def _objects(payload: Payload, method: SerializationMethod) -> Any:
    """The objects of a payload (None for none), or a text saying why they cannot be
    decoded: the line of every result is written all the same."""
    if isinstance(payload, Decoded):
        return payload.objects
    if not payload:
        return None
    try:
        return deserialize([payload] if isinstance(payload, bytes) else payload, method)
    except Exception as exc:
        return _undecodable(exc)


def _undecodable(exc: Exception) -> str:
    return f"<cannot decode: {exc!r}>"
