"""Garbage on the wire: the decoder raises MessageError for any corruption, and neither the
server loop nor the thinker's receiver stops over it — the next real request gets its result."""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Iterator
from typing import Any

import fault_tasks as tasks
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steersman import LocalTaskServer, PipeQueues, Result
from steersman.exceptions import MessageError
from steersman.models.messages import Kind, decode, encode, join

KEY = b"fuzz-key"


def _message(signed: bool) -> bytes:
    result = Result(method="double", inputs=((list(range(20)),), {"tag": "x" * 30}))
    result.encode_inputs()
    return join(encode(Kind.REQUEST, result, key=KEY if signed else None))


VALID = _message(False)
SIGNED = _message(True)


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """A valid message with bytes flipped, inserted, deleted, or cut short."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete" and data:
            del data[at:at + draw(st.integers(1, 16))]
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(mutated(VALID))
def test_mutated_messages_decode_or_raise_message_error(data: bytes) -> None:
    """Any corruption of a valid message is either harmless or a MessageError, nothing else."""
    with contextlib.suppress(MessageError):
        decode(data)


@settings(max_examples=300, deadline=None)
@given(mutated(SIGNED))
def test_mutated_signed_messages_are_always_rejected(data: bytes) -> None:
    """With a key, every change to a signed message is caught before anything is parsed."""
    if data == SIGNED:
        return
    with pytest.raises(MessageError):
        decode(data, key=KEY)


def _garbage() -> list[bytes]:
    rng = random.Random(7)
    return [
        b"",
        b"SM",
        rng.randbytes(13),
        rng.randbytes(4096),
        VALID[: len(VALID) // 2],
        VALID + b"trailing",
        b"SM\x01\x01\x00\x00\xff\xff\xff\xff" + b"\xff" * 64,  # frame counts far past the end
        b"SM\x09" + VALID[3:],  # a newer version
    ]


@pytest.fixture
def pipe_served() -> Iterator[PipeQueues]:
    queues = PipeQueues()
    server = LocalTaskServer(queues, [tasks.double], num_workers=1)
    server.start()
    yield queues
    queues.send_kill_signal()
    server.join(20)
    assert server.exitcode == 0
    queues.close()


@pytest.mark.timeout(30)
def test_garbage_in_the_request_pipe_of_a_running_server(pipe_served: PipeQueues) -> None:
    """Raw garbage written straight into the request pipe: the server skips it and serves on."""
    for data in _garbage():
        pipe_served._requests.write([data])
    pipe_served.send_inputs(21, method="double")
    result = pipe_served.get_result(timeout=20)
    assert result is not None and result.value == 42
    assert pipe_served.get_result(timeout=0.3) is None
    assert pipe_served.active_count == 0


@pytest.mark.timeout(30)
def test_garbage_on_redis_reaches_neither_side(
    redis_server: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """Garbage added to the request and result streams is dropped and logged by the server
    loop and by the thinker's receiver; real requests and results still go through."""
    from steersman.queue.redis import make_queue_pairs

    client, server_queues = make_queue_pairs(redis_server.host, redis_server.port)
    server = LocalTaskServer(server_queues, [tasks.double], num_workers=1)
    server.start()
    raw = redis_server.client()
    try:
        client.send_inputs(1, method="double")  # the receiver is up and reading results
        assert client.get_result(timeout=20).value == 2
        garbage = _garbage()
        with caplog.at_level(logging.ERROR, logger="steersman.queue.base"):
            for data in garbage:
                raw.xadd(client.requests_key, {b"m": data})
                raw.xadd(client.results_key("default"), {b"m": data})
            client.send_inputs(21, method="double")
            result = client.get_result(timeout=20)
            assert result is not None and result.value == 42
            assert client.get_result(timeout=0.3) is None, "garbage reached the thinker"
        dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
        assert len(dropped) == len(garbage)
        assert client.active_count == 0
    finally:
        client.send_kill_signal()
        server.join(20)
        client.close()
        client.purge()
    assert server.exitcode == 0


@pytest.mark.timeout(30)
def test_a_result_message_on_the_request_channel_is_not_run(pipe_served: PipeQueues) -> None:
    """Only REQUEST messages are tasks: a RESULT message sent to the server is dropped."""
    stray = Result(method="double", inputs=((4,), {}))
    stray.encode_inputs()
    pipe_served._requests.write(encode(Kind.RESULT, stray))
    pipe_served.send_inputs(21, method="double")
    result = pipe_served.get_result(timeout=20)
    assert result is not None and result.value == 42
    assert pipe_served.get_result(timeout=0.5) is None, "the RESULT message was run as a task"


@pytest.mark.timeout(30)
def test_a_result_for_a_task_never_sent_is_dropped(redis_server: Any) -> None:
    """A well-formed result whose task this thinker never sent is not delivered or counted."""
    from steersman.queue.redis import RedisQueues

    client = RedisQueues(redis_server.host, redis_server.port, methods=["double"])
    try:
        client.send_inputs(1, method="double")  # one real task outstanding
        forged = Result(method="double")
        forged.set_result(99)
        redis_server.client().xadd(client.results_key("default"),
                                   {b"m": join(encode(Kind.RESULT, forged))})
        assert client.get_result(timeout=1) is None, "a result for an unknown task arrived"
        assert client.active_count == 1
    finally:
        client.close()
        client.purge()


def _request_with_header(header: dict[str, Any]) -> bytes:
    """A request message around a JSON header given as it is, not as a Result would write it."""
    from steersman.models import messages

    text = json.dumps(header).encode()
    prefix = messages._PREFIX.pack(messages.MAGIC, messages.VERSION, Kind.REQUEST.value, 0, 0,
                                   0, 0, len(text))
    return prefix + text


@pytest.mark.timeout(30)
@pytest.mark.parametrize("threads", [False, True], ids=["processes", "threads"])
def test_a_request_routable_but_not_a_valid_result_comes_back_failed(threads: bool) -> None:
    """The server reads only a request's routing fields: one whose other fields are invalid
    still reaches a worker, which sends it back failed (it does not die), and serving goes on."""
    queues = PipeQueues()
    server = LocalTaskServer(queues, [tasks.double], threads=threads, num_workers=1)
    server.start()
    try:
        header = json.loads(Result(method="double").model_dump_json())
        header["resources"] = {"node_count": "many"}  # not a Result; routing fields are fine
        queues.track(header["task_id"], "default")
        queues._requests.write([_request_with_header(header)])
        failed = queues.get_result(timeout=20)
        assert failed is not None and failed.task_id == header["task_id"]
        assert failed.success is False and "not a valid Result" in failed.failure_info.exception
        assert failed.timestamp.input_received is not None
        queues.send_inputs(21, method="double")
        assert queues.get_result(timeout=20).value == 42
    finally:
        queues.send_kill_signal()
        server.join(20)
        queues.close()
    assert server.exitcode == 0
