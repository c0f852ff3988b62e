"""One stored object as one buffer: our pickle frames joined behind a small index.

ProxyStore connectors store one bytes-like value per key, so the frames of a value (the pickle
stream and its out-of-band buffers) are joined once, and split again without copying on the way
back. Layout (little endian): ``b"SMB1" | n u32 | lengths u64 x n | frames...``.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence
from typing import Any

from steersman.models.result import writable_frames
from steersman.models.serialization import Frame

MAGIC = b"SMB1"
_COUNT = struct.Struct("<4sI")


def blob_parts(frames: Sequence[Frame]) -> list[memoryview]:
    """The parts of a stored value, for a vectored write that copies nothing."""
    views = [memoryview(f).cast("B") for f in frames]
    lengths = struct.pack(f"<{len(views)}Q", *(v.nbytes for v in views))
    return [memoryview(_COUNT.pack(MAGIC, len(views)) + lengths), *views]


def encode_blob(frames: Sequence[Frame]) -> bytes:
    """Join pickle frames (stream first, then out-of-band buffers) into one stored value.

    The join is the only copy: connectors that take ``bytes`` (Redis) keep this object as is.
    """
    return b"".join(blob_parts(frames))


def decode_blob(data: Frame) -> Any:
    """Rebuild the object stored by :func:`encode_blob`; arrays come back writable."""
    view = memoryview(data).cast("B")
    if view.nbytes < _COUNT.size:
        raise ValueError(f"stored value too short for a steersman blob ({view.nbytes} bytes)")
    magic, count = _COUNT.unpack_from(view, 0)
    if magic != MAGIC:
        raise ValueError(f"stored value is not a steersman blob (starts with {bytes(magic)!r})")
    offset = _COUNT.size + 8 * count
    frames: list[Frame] = []
    for length in struct.unpack_from(f"<{count}Q", view, _COUNT.size):
        frames.append(view[offset : offset + length])
        offset += length
    if offset != view.nbytes or not frames:
        raise ValueError(f"steersman blob is corrupt: frames end at {offset} of {view.nbytes}")
    frames = writable_frames(frames)
    return pickle.loads(frames[0], buffers=frames[1:])
