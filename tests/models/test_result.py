"""Result, serialization and the wire format."""

import contextlib
import json
import math
import os
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steersman.exceptions import MessageError
from steersman.models import ResourceRequirements, Result, SerializationMethod
from steersman.models.messages import Flags, Kind, decode, encode, join, peek
from steersman.models.serialization import serialize, serialize_inputs


def make_request(*args, **kwargs):
    result = Result(method="f", inputs=(args, kwargs))
    result.encode_inputs()
    return result


def test_resources_total_ranks_and_validation():
    resources = ResourceRequirements(node_count=2, cpu_processes=4)
    assert resources.total_ranks == 8
    with pytest.raises(ValueError):
        ResourceRequirements(node_count=0)
    with pytest.raises(ValueError):
        ResourceRequirements(nodes=2)  # typo is an error, not silently ignored


def test_request_round_trip_keeps_inputs_and_sizes():
    array = np.arange(100_000, dtype=np.float64)
    request = make_request(array, "x", scale=2)
    message = decode(join(encode(Kind.REQUEST, request)))
    assert message.kind is Kind.REQUEST
    received = message.result
    args, kwargs = received.decode_inputs()
    assert np.array_equal(args[0], array) and args[1] == "x" and kwargs == {"scale": 2}
    assert received.message_sizes["inputs"] >= array.nbytes
    assert received.time.deserialize_inputs is not None


def test_large_array_travels_out_of_band():
    array = np.ones(1_000_000)
    frames = serialize(array, SerializationMethod.PICKLE)
    assert len(frames) == 2, "the array buffer must be its own frame"
    assert len(frames[0]) < 1000, "the pickle stream must not contain the array bytes"


def test_payload_is_raw_bytes_not_text():
    payload = bytes(range(256)) * 100
    parts = encode(Kind.REQUEST, make_request(payload))
    data = join(parts)
    assert payload in data  # the raw bytes appear as they are, not hex or base64
    assert payload.hex().encode() not in data


def test_result_flags_and_value():
    request = make_request(1)
    request.set_result({"y": 2.5})
    data = join(encode(Kind.RESULT, request))
    assert peek(data) == (Kind.RESULT, Flags.NONE)
    assert decode(data).result.decode_value() == {"y": 2.5}
    request.set_failure(ValueError("no"))
    kind, flags = peek(join(encode(Kind.RESULT, request)))
    assert flags & Flags.FAILED


def test_failure_carries_traceback():
    result = Result(method="f")
    try:
        raise KeyError("missing")
    except KeyError as exc:
        result.set_failure(exc)
    assert result.success is False and result.complete is True
    assert "KeyError" in result.failure_info.exception
    assert "raise KeyError" in result.failure_info.traceback


def test_json_serialization_names_bad_argument():
    with pytest.raises(TypeError, match="argument 1 of type ndarray"):
        serialize_inputs((1, np.zeros(3)), {}, SerializationMethod.JSON)
    with pytest.raises(TypeError, match="keyword argument 'model'"):
        serialize_inputs((), {"model": object()}, SerializationMethod.JSON)
    frames = serialize_inputs((1, "a"), {"b": [1.5]}, SerializationMethod.JSON)
    assert json.loads(bytes(frames[0])) == [[1, "a"], {"b": [1.5]}]


def test_unknown_serialization_method_lists_choices():
    with pytest.raises(ValueError, match="'pickle', 'json'"):
        SerializationMethod.parse("yaml")


def test_json_trace_line_is_strict_and_round_trips():
    result = Result(method="sim", inputs=((1.0, "C"), {"k": 2}), task_info={"i": 3})
    result.set_result(float("nan"), runtime=0.5)
    line = result.json()
    assert "NaN" not in line
    data = json.loads(line)
    assert data["value"] is None and data["inputs"] == [[1.0, "C"], {"k": 2}]
    assert data["resources"]["node_count"] == 1
    back = Result.from_json(line)
    assert back.task_id == result.task_id and back.args == (1.0, "C") and back.time.running == 0.5


def test_json_exclude_accepts_set_and_dict_and_handles_objects():
    result = Result(method="train", inputs=((object(),), {}))
    result.set_result(np.float32(1.5))
    assert json.loads(result.json())["value"] == 1.5
    assert "inputs" not in json.loads(result.json(exclude={"inputs", "value"}))
    data = json.loads(result.json(exclude={"timestamp": {"created"}}))
    assert "created" not in data["timestamp"] and "object" in data["inputs"][0][0]


def test_signed_messages_reject_tampering_and_missing_signature():
    key = b"secret"
    data = bytearray(join(encode(Kind.REQUEST, make_request(1), key=key)))
    assert decode(data, key=key).result.method == "f"
    tampered = bytearray(data)
    tampered[-40] ^= 0xFF
    with pytest.raises(MessageError, match="signature"):
        decode(tampered, key=key)
    with pytest.raises(MessageError, match="not signed"):
        decode(join(encode(Kind.REQUEST, make_request(1))), key=key)


def test_unsigned_pickle_is_never_loaded(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    rogue = pickle.dumps(Evil())
    for data in (rogue, b"SM" + rogue):
        with pytest.raises(MessageError):
            decode(data, key=b"k")
    assert not marker.exists()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decoder_rejects_random_bytes_cleanly(data):
    with contextlib.suppress(MessageError):
        decode(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=10_000))
def test_decoder_rejects_truncated_messages(cut):
    data = join(encode(Kind.REQUEST, make_request(np.arange(50.0), "abc")))
    cut = cut % len(data)
    with pytest.raises(MessageError):
        decode(data[:cut])


def test_message_large_numbers_of_frames_and_nan_inputs():
    request = make_request(math.inf)
    decoded = decode(join(encode(Kind.REQUEST, request))).result
    assert decoded.decode_inputs()[0][0] == math.inf


@pytest.mark.parametrize("n_arrays", [1, 6, 12])
def test_messages_with_many_out_of_band_frames_round_trip(n_arrays):
    """Each large array is a frame of its own: from one to more than the few whose layout
    is made ahead."""
    arrays = tuple(np.full(100_000, i, dtype=np.float64) for i in range(n_arrays))
    request = Result(method="f", inputs=(arrays, {}))
    request.encode_inputs()
    parts = encode(Kind.REQUEST, request)
    assert len(parts) == 2 + n_arrays  # prefix and header, the pickle stream, the arrays
    decoded = decode(join(parts)).result
    assert [float(a[0]) for a in decoded.decode_inputs()[0]] == list(map(float, range(n_arrays)))


def test_task_ids_are_unique_within_a_process_and_across_a_fork():
    ids = {Result().task_id for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's ids, through the pipe
        os.write(write_end, "".join(Result().task_id for _ in range(100)).encode())
        os._exit(0)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 1 << 16):
        data += chunk
    os.waitpid(pid, 0)
    child = {data[i:i + 32].decode() for i in range(0, len(data), 32)}
    assert len(child) == 100 and not child & ids
    assert not child & {Result().task_id for _ in range(100)}  # the parent's next ones too


def test_a_request_decodes_to_its_routing_alone_as_strictly_checked():
    from steersman.models.messages import Routing

    request = make_request(3, tag="x")
    request.priority, request.timeout, request.topic = 5, 2.5, "other"
    data = join(encode(Kind.REQUEST, request, key=b"k"))
    message = decode(data, key=b"k", routing_only=True)
    assert message.result is None and message.task_id == request.task_id
    assert message.routing == Routing.of(request)
    with pytest.raises(MessageError):  # the signature is checked all the same
        decode(data[:-1] + bytes([data[-1] ^ 1]), key=b"k", routing_only=True)
    message.routing.received = 12.0
    whole = message.routing.whole(data, key=b"k")
    assert whole.task_id == request.task_id and whole.decode_inputs() == ((3,), {"tag": "x"})
    assert whole.timestamp.input_received == 12.0
    kill = decode(join(encode(Kind.KILL)), routing_only=True)
    assert kill.kind is Kind.KILL and kill.task_id is None


class _Unprintable:
    def __repr__(self):
        raise RuntimeError("repr is broken")


class _Huge:
    def __repr__(self):
        return "h" * 100_000


def test_jsonable_writes_cycles_and_unprintable_objects_as_placeholders():
    from steersman.models.result import jsonable

    items = [1.0]
    items.append(items)
    mapping = {"a": float("nan")}
    mapping["self"] = mapping
    mapping["items"] = (items, {items[0]})
    assert jsonable(items) == [1.0, "<cycle: list>"]
    assert jsonable(mapping) == {"a": None, "self": "<cycle: dict>",
                                 "items": [[1.0, "<cycle: list>"], [1.0]]}
    shared = [2, "x"]
    assert jsonable([shared, shared]) == [[2, "x"], [2, "x"]]  # shared is not a cycle
    assert jsonable([_Unprintable()]) == [
        f"<{__name__}._Unprintable: repr failed: RuntimeError('repr is broken')>"]
    deep: list = []
    inner = deep
    for _ in range(500):  # deeper than a recursion would go
        inner.append([])
        inner = inner[0]
    assert "<too deep: list>" in json.dumps(jsonable(deep))
    result = Result(method="f", inputs=((items,), {"m": mapping}))
    result.set_result(_Unprintable())
    data = json.loads(result.json())
    assert data["inputs"][0] == [[1.0, "<cycle: list>"]]
    assert "repr failed" in data["value"]


def test_jsonable_bounds_bytes_reprs_and_long_text_but_keeps_numbers_exact():
    from steersman.models import result as module
    from steersman.models.result import jsonable

    big = 50 << 20
    assert jsonable(bytes(big)) == f"<bytes: {big} bytes>"
    ITEMS_LIMIT, STR_LIMIT, TEXT_LIMIT = module.ITEMS_LIMIT, module.STR_LIMIT, module.TEXT_LIMIT
    over = TEXT_LIMIT + 1
    assert jsonable({"b": bytearray(over)}) == {"b": f"<bytearray: {over} bytes>"}
    assert jsonable(memoryview(bytes(big))) == f"<memoryview: {big} bytes>"
    assert jsonable(b"ab\xff") == "b'ab\\xff'"  # short: its repr, as before
    huge = jsonable(_Huge())
    assert len(huge) < TEXT_LIMIT + 100 and huge.endswith("... <repr cut: 100000 characters>")
    text = "t" * (STR_LIMIT + 1)
    assert jsonable(text) == "t" * TEXT_LIMIT + f"... <str cut: {STR_LIMIT + 1} characters>"
    assert jsonable("s" * STR_LIMIT) == "s" * STR_LIMIT
    floats = [0.25 * i for i in range(100_000)]
    assert jsonable(floats) == floats and jsonable(tuple(floats)) == floats
    assert jsonable([1, float("inf"), 2.5]) == [1, None, 2.5]
    assert jsonable({"x": 1.0, 2: 3}) == {"x": 1.0, "2": 3}
    assert jsonable([10**400, 1.5]) == [10**400, 1.5]  # too large for a float: kept exact
    assert jsonable(range(3)) == "range(0, 3)"
    assert jsonable(list(range(ITEMS_LIMIT + 1))) == f"<list: {ITEMS_LIMIT + 1} items>"
    assert jsonable(np.arange(3.0)) == [0.0, 1.0, 2.0] and jsonable(np.float32(1.5)) == 1.5


def test_failure_of_an_exception_whose_repr_or_traceback_cannot_be_written():
    class BadRepr(Exception):
        def __repr__(self):
            raise RuntimeError("repr is broken")

        @property
        def __notes__(self):
            raise RuntimeError("notes are broken")

    result = Result(method="f")
    try:
        raise BadRepr("x")
    except BadRepr as exc:
        result.set_failure(exc)
    info = result.failure_info
    assert result.success is False
    assert info.exception == (f"<{__name__}.{BadRepr.__qualname__}: repr failed: "
                              "RuntimeError('repr is broken')>")
    assert 'raise BadRepr("x")' in info.traceback
    assert "<traceback could not be formatted: RuntimeError('notes are broken')>" in info.traceback
