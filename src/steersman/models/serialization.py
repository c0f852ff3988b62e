"""Turn task inputs and values into frames of bytes, and back.

Pickle uses protocol 5 with out-of-band buffers, so a large array travels as its own frame and
is never copied into the pickle stream. JSON is for users who need language-neutral payloads.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from enum import Enum
from typing import Any

Frame = bytes | bytearray | memoryview

#: Buffers smaller than this stay inside the pickle stream: a frame of its own costs more.
OUT_OF_BAND_MIN_BYTES = 64 * 1024


class SerializationMethod(str, Enum):
    """How task inputs and values are encoded."""

    PICKLE = "pickle"
    JSON = "json"

    @classmethod
    def parse(cls, value: str | SerializationMethod) -> SerializationMethod:
        """Accept a method or its name, and name the choices when the name is wrong."""
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in cls)
            raise ValueError(
                f"unknown serialization_method {value!r}; choose one of {choices}"
            ) from None


def serialize(obj: Any, method: SerializationMethod) -> list[Frame]:
    """Encode `obj` as a list of frames: the main stream first, then out-of-band buffers."""
    if method is SerializationMethod.JSON:
        return [_json_dumps(obj)]
    frames: list[Frame] = [b""]

    def keep_out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: let pickle copy it in-band
            return True
        if view.nbytes < OUT_OF_BAND_MIN_BYTES:
            return True
        frames.append(view)
        return False

    frames[0] = pickle.dumps(obj, protocol=5, buffer_callback=keep_out_of_band)
    return frames


def deserialize(frames: Sequence[Frame], method: SerializationMethod) -> Any:
    """Decode frames made by :func:`serialize`."""
    if not frames:
        raise ValueError("no frames to deserialize")
    if method is SerializationMethod.JSON:
        return json.loads(bytes(frames[0]))
    return pickle.loads(frames[0], buffers=frames[1:])


def serialize_inputs(
    args: tuple[Any, ...], kwargs: dict[str, Any], method: SerializationMethod
) -> list[Frame]:
    """Encode task arguments; with JSON, name the argument that JSON cannot carry."""
    if method is SerializationMethod.JSON:
        _check_json_arguments(args, kwargs)
    return serialize((args, kwargs), method)


def deserialize_inputs(
    frames: Sequence[Frame], method: SerializationMethod
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Decode task arguments made by :func:`serialize_inputs`."""
    args, kwargs = deserialize(frames, method)
    return tuple(args), dict(kwargs)


def _json_dumps(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()


def _check_json_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    named = [(f"argument {i}", a) for i, a in enumerate(args)]
    named += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in named:
        try:
            _json_dumps(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{label} of type {type(value).__name__} cannot be encoded as JSON ({exc}); "
                "use serialization_method='pickle' for Python objects"
            ) from None
