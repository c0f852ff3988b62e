"""Large messages over Redis: carried beside their stream entries as chunk keys."""

from __future__ import annotations

import glob
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.conftest import UnpickleMarker

from steersman import LocalTaskServer
from steersman.models.messages import Kind, encode, join
from steersman.models.result import Result
from steersman.queue import _redis_blobs
from steersman.queue._redis_blobs import (
    BLOB_MIN_BYTES,
    CHUNK_BYTES,
    PIECE_BYTES,
    RECYCLE_SECONDS,
    BadReference,
    BlobRef,
    BlobUnavailable,
    _cut,
    read_blob,
    spare_key,
    take_spare,
)
from steersman.queue.pipe import SPILL_DIR, PipeChannel
from steersman.queue.redis import (
    BLOB_FIELD,
    PAYLOAD_FIELD,
    RedisQueues,
    _topic_of,
    make_queue_pairs,
)

pytestmark = pytest.mark.timeout(60)

BIG = np.random.default_rng(0).random(20_000_000 // 8)  # 20 MB


def add_one(x: np.ndarray) -> np.ndarray:
    return x + 1


def files_of(pid: int | None = None) -> list[str]:
    """Shared-memory files of a process (this one by default), kept ones included."""
    pid = os.getpid() if pid is None else pid
    return glob.glob(f"{SPILL_DIR}/steersman-{pid}-*") \
        + glob.glob(f"{SPILL_DIR}/steersman-kept-{pid}-*")


def blob_keys(raw: Any, queues: RedisQueues) -> list[bytes]:
    return list(raw.scan_iter(match=f"{queues.prefix}:blob:*", count=1000))


def lasting_blob_keys(raw: Any, queues: RedisQueues) -> list[bytes]:
    """Keys of large messages that stay for good (released ones expire, see spares)."""
    return [key for key in blob_keys(raw, queues) if raw.pttl(key) == -1]


def expiring_soon(raw: Any, keys: list[bytes]) -> bool:
    return all(0 < raw.pttl(key) <= RECYCLE_SECONDS * 1000 for key in keys)


def blob_ids(keys: list[bytes]) -> set[bytes]:
    return {key.split(b":blob:")[1].split(b":")[0] for key in keys}


@pytest.fixture(autouse=True)
def no_spares_of_earlier_tests() -> None:
    _redis_blobs.give_back_spares()


@pytest.fixture
def pair(redis_server: Any) -> Iterator[tuple[RedisQueues, RedisQueues]]:
    client, server = make_queue_pairs(redis_server.host, redis_server.port)
    yield client, server
    client.close()
    server.close()
    client.purge()


# --- through a real task server ---------------------------------------------------------------


@pytest.mark.parametrize("threads", [False, True], ids=["worker-processes", "threads"])
def test_large_array_round_trip_is_intact_and_leaves_nothing_for_good(
    redis_server: Any, threads: bool,
) -> None:
    client, server_queues = make_queue_pairs(redis_server.host, redis_server.port)
    server = LocalTaskServer(server_queues, [add_one], threads=threads, num_workers=1)
    server.start()
    raw = redis_server.client()
    try:
        for _ in range(2):
            client.send_inputs(BIG, method="add_one", keep_inputs=False)
            result = client.get_result(timeout=30)
            assert result is not None and result.success, result and result.failure_info
            assert result.value.shape == BIG.shape
            assert np.array_equal(result.value, BIG + 1)
            assert result.value.flags.writeable  # landed in writable memory: no extra copy
        client.send_kill_signal()
        server.join(timeout=30)
        assert server.exitcode == 0
        assert files_of(server.pid) == []  # no request left
        client.close()  # acknowledges (and releases) the last result read
        left = blob_keys(raw, client)
        assert left and expiring_soon(raw, left)  # spares for the next message, for a while
        assert not any(b":ready" in key for key in left)
        # the second request and result reused keys of the first ones: both (2 ids), or one
        # when a writer looked for a spare before the other side's acknowledgement made one
        # (3; a slow machine's order); 4 would be no reuse at all
        assert len(blob_ids(left)) in (2, 3)
        assert raw.xlen(client.requests_key) == 0
        assert raw.xlen(client.results_key("default")) == 0
    finally:
        if server.is_alive():
            server.kill()
        client.close()
        client.purge()


def test_large_request_travels_beside_its_entry(
    pair: tuple[RedisQueues, RedisQueues], redis_server: Any,
) -> None:
    client, server = pair
    raw = redis_server.client()
    task_id = client.send_inputs(BIG, method="add_one")
    ((_, fields),) = raw.xrange(client.requests_key)
    assert PAYLOAD_FIELD not in fields
    ref = BlobRef.from_field(fields[BLOB_FIELD])
    assert ref.size > BIG.nbytes and ref.count == -(-ref.size // PIECE_BYTES)
    assert sorted(blob_keys(raw, client)) == sorted(ref.all_keys(client.prefix))

    message = server.get_task(timeout=10)
    assert message is not None and message.result is not None
    assert message.result.task_id == task_id
    assert np.array_equal(message.result.decode_inputs()[0][0], BIG)
    # it landed in a file in shared memory, which a server hands to its worker by name
    (landing,) = files_of()
    channel = PipeChannel()
    channel.write([message.data])
    forwarded = channel.read(5)
    assert forwarded == message.data
    assert files_of() == [landing]  # handed on as it is, not copied; kept for the next one
    assert lasting_blob_keys(raw, client) != []  # kept until the request is done: a server
    server.request_done(task_id)                  # may die
    assert sorted(blob_keys(raw, client)) == sorted(ref.keys(client.prefix))  # tokens gone
    assert expiring_soon(raw, blob_keys(raw, client))  # the chunks wait for the next message
    assert raw.zrange(spare_key(client.prefix), 0, -1) == [ref.blob_id.encode()]
    assert raw.xlen(client.requests_key) == 0


def test_small_messages_stay_inside_their_entry(
    pair: tuple[RedisQueues, RedisQueues], redis_server: Any,
) -> None:
    client, _ = pair
    raw = redis_server.client()
    client.send_inputs(np.zeros(BLOB_MIN_BYTES // 16), method="add_one")
    ((_, fields),) = raw.xrange(client.requests_key)
    assert BLOB_FIELD not in fields and PAYLOAD_FIELD in fields
    assert blob_keys(raw, client) == []


# --- redelivery --------------------------------------------------------------------------------


def test_large_request_of_a_dead_server_goes_to_another(redis_server: Any) -> None:
    client, first = make_queue_pairs(redis_server.host, redis_server.port)
    eager = RedisQueues(redis_server.host, redis_server.port, prefix=client.prefix, claim_idle=0)
    raw = redis_server.client()
    try:
        task_id = client.send_inputs(BIG, method="add_one")
        message = first.get_task(timeout=10)
        assert message is not None and message.result is not None
        first.close()  # "dies" holding the request, without acknowledging it

        taken = eager.get_task(timeout=10)
        assert taken is not None and taken.result is not None
        assert taken.result.task_id == task_id
        (value,), _ = taken.result.decode_inputs()
        assert np.array_equal(value, BIG)
        taken.result.set_result(value + 1)
        eager.send_result(taken.result)
        eager.request_done(task_id)
        assert raw.xlen(client.requests_key) == 0

        result = client.get_result(timeout=10)
        assert result is not None and np.array_equal(result.value, BIG + 1)
        client.close()
        assert lasting_blob_keys(raw, client) == []
    finally:
        for queues in (client, eager):
            queues.close()
        client.purge()


def test_purge_removes_chunks_nobody_read(
    pair: tuple[RedisQueues, RedisQueues], redis_server: Any,
) -> None:
    client, _ = pair
    raw = redis_server.client()
    client.send_inputs(BIG, method="add_one")
    assert blob_keys(raw, client) != []
    client.purge()
    assert blob_keys(raw, client) == []


def test_entry_whose_chunks_are_gone_is_dropped(
    pair: tuple[RedisQueues, RedisQueues], redis_server: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    client, server = pair
    raw = redis_server.client()
    client.send_inputs(BIG, method="add_one")
    (chunk, *_) = sorted(blob_keys(raw, client))  # a chunk, not the list of tokens
    assert b":ready" not in chunk
    raw.delete(chunk)  # as if another server had finished it already
    with caplog.at_level(logging.WARNING, logger="steersman.queue.redis"):
        assert server.get_task(timeout=2) is None
    assert any("chunks are gone" in r.getMessage() for r in caplog.records)
    assert raw.xlen(client.requests_key) == 0
    assert lasting_blob_keys(raw, client) == []

    task_id = client.send_inputs(BIG, method="add_one")  # the next one still goes through
    message = server.get_task(timeout=10)
    assert message is not None and message.result is not None
    assert message.result.task_id == task_id


# --- streaming: read while written -------------------------------------------------------------


class Writing:
    """A large message written by hand, a chunk at a time, as a writer streams it."""

    def __init__(self, raw: Any, size: int = 3 * CHUNK_BYTES + 5, prefix: str = "t",
                 blob_id: str | None = None):
        self.raw, self.prefix = raw, prefix
        self.message = os.urandom(size)
        self.ref = BlobRef.new(size, blob_id)
        self.chunks = [self.ref.head + b"".join(pieces)
                       for pieces in _cut([self.message], self.ref.chunk_bytes)]

    def chunk(self, n: int, token: bool = True) -> None:
        self.raw.set(self.ref.keys(self.prefix)[n], self.chunks[n])
        if token:
            self.raw.rpush(self.ref.ready_key(self.prefix), n)

    def read(self, streamed: bool = True, shared: bool = False) -> Any:
        ref = BlobRef(self.ref.blob_id, self.ref.stamp, self.ref.size, self.ref.chunk_bytes,
                      streamed)
        return read_blob(self.raw, self.prefix, ref, shared)

    def read_in_thread(self, **options: bool) -> tuple[threading.Thread, dict[str, Any]]:
        out: dict[str, Any] = {}

        def read() -> None:
            try:
                out["buffer"] = self.read(**options)
            except Exception as exc:
                out["error"] = exc

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread, out


def test_a_new_message_is_read_while_it_is_written(redis_server: Any) -> None:
    writing = Writing(redis_server.client())
    writing.chunk(0, token=False)  # the first chunk comes with the entry
    reader, out = writing.read_in_thread(shared=True)
    for n in range(1, writing.ref.count):
        assert reader.is_alive() and not out  # it cannot have the message yet: it waits
        writing.chunk(n)
    reader.join(10)
    assert "error" not in out and bytes(out["buffer"]) == writing.message


def test_a_writer_that_stops_halfway_is_given_up_without_a_hang(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_redis_blobs, "STALL_SECONDS", 0.2)
    writing = Writing(redis_server.client())
    writing.chunk(0, token=False)
    writing.chunk(1)  # and no more
    with pytest.raises(BlobUnavailable, match="no chunk of it came for 0.2 s"):
        writing.read(shared=True)
    assert files_of() == []  # the memory it had taken is given back


def test_a_writer_that_cannot_finish_stops_its_reader_at_once(redis_server: Any) -> None:
    writing = Writing(redis_server.client())
    writing.chunk(0, token=False)
    writing.raw.rpush(writing.ref.ready_key("t"), -1)  # what write_blob pushes on an error
    with pytest.raises(BlobUnavailable, match="could not finish"):
        writing.read()  # at once: STALL_SECONDS is 5 s, the test's timeout would show a wait


def test_an_older_entry_waits_only_for_a_chunk_still_missing(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_redis_blobs, "STALL_SECONDS", 0.5)
    writing = Writing(redis_server.client())
    for n in (0, 2, 3):
        writing.chunk(n, token=False)
    reader, out = writing.read_in_thread(streamed=False)  # taken over: assumed all there
    writing.chunk(1)  # came late (its writer was still at it), announced by its token
    reader.join(10)
    assert "error" not in out and bytes(out["buffer"]) == writing.message


def test_shared_memory_full_midway_goes_on_in_private_memory(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def fallocate(fd: int, start: int, length: int) -> None:
        calls.append(start)
        if len(calls) > 2:  # the first two steps fit, then /dev/shm is full
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(_redis_blobs.os, "posix_fallocate", fallocate)
    monkeypatch.setattr(_redis_blobs, "FIRST_STEP", CHUNK_BYTES)  # steps of 1, 1, 2 MiB
    writing = Writing(redis_server.client())
    for n in range(writing.ref.count):
        writing.chunk(n, token=n > 0)
    buffer = writing.read(shared=True)
    assert len(calls) == 3 and bytes(buffer) == writing.message
    assert files_of() == []  # the half-filled file is gone, the message is private


# --- chunk keys reused between messages --------------------------------------------------------


def _request_ref(raw: Any, queues: RedisQueues) -> BlobRef:
    ((_, fields),) = raw.xrange(queues.requests_key)
    return BlobRef.from_field(fields[BLOB_FIELD])


def test_a_released_message_leaves_its_keys_to_the_next(
    pair: tuple[RedisQueues, RedisQueues], redis_server: Any,
) -> None:
    client, server = pair
    raw = redis_server.client()
    refs = []
    for value in (BIG, BIG + 1):
        task_id = client.send_inputs(value, method="add_one")
        refs.append(_request_ref(raw, client))
        message = server.get_task(timeout=10)
        assert message is not None and message.result is not None
        assert np.array_equal(message.result.decode_inputs()[0][0], value)
        server.request_done(task_id)
    first, second = refs
    assert second.blob_id == first.blob_id and second.stamp != first.stamp
    assert len(blob_ids(blob_keys(raw, client))) == 1  # Redis holds one message's worth


def test_a_reader_never_takes_an_earlier_message_s_chunk(redis_server: Any) -> None:
    raw = redis_server.client()
    earlier = Writing(raw)
    for n in range(earlier.ref.count):
        earlier.chunk(n, token=False)
    later = Writing(raw, blob_id=earlier.ref.blob_id)  # same keys, same size, new stamp
    later.chunk(0, token=False)
    reader, out = later.read_in_thread()
    time.sleep(0.2)
    assert reader.is_alive() and not out  # it waits for the later message's own chunks
    for n in range(1, later.ref.count):
        later.chunk(n)
    reader.join(10)
    assert "error" not in out and bytes(out["buffer"]) == later.message


def test_an_older_entry_waits_for_a_chunk_an_earlier_message_still_holds(
    redis_server: Any,
) -> None:
    raw = redis_server.client()
    earlier = Writing(raw)
    for n in range(earlier.ref.count):
        earlier.chunk(n, token=False)
    later = Writing(raw, blob_id=earlier.ref.blob_id)
    for n in (0, 2, 3):
        later.chunk(n, token=False)
    reader, out = later.read_in_thread(streamed=False)  # assumes all there: checks stamps
    time.sleep(0.2)
    assert reader.is_alive() and not out
    later.chunk(1)
    reader.join(10)
    assert "error" not in out and bytes(out["buffer"]) == later.message


def test_a_late_second_acknowledgement_recycles_nothing(
    pair: tuple[RedisQueues, RedisQueues], redis_server: Any,
) -> None:
    client, server = pair
    raw = redis_server.client()
    task_id = client.send_inputs(BIG, method="add_one")
    ref = _request_ref(raw, client)
    assert server.get_task(timeout=10) is not None
    entry = server._inflight[task_id]
    server.request_done(task_id)
    client.send_inputs(BIG, method="add_one")  # takes the released keys
    assert _request_ref(raw, client).blob_id == ref.blob_id
    assert raw.zcard(spare_key(client.prefix)) == 0
    server._ack(client.requests_key, [entry], {entry: ref})  # as a server that woke up late
    assert raw.zcard(spare_key(client.prefix)) == 0  # the new message's keys are not offered
    assert lasting_blob_keys(raw, client) != [] and not expiring_soon(
        raw, blob_keys(raw, client))
    message = server.get_task(timeout=10)
    assert message is not None and message.result is not None
    assert np.array_equal(message.result.decode_inputs()[0][0], BIG)


def test_a_writer_takes_the_spare_that_fits_best(redis_server: Any) -> None:
    raw = redis_server.client()
    ids = {count: os.urandom(16).hex() for count in (2, 5, 20)}
    raw.zadd(spare_key("t"), {blob_id: count for count, blob_id in ids.items()})
    assert take_spare(raw, "t", 4 * PIECE_BYTES) == ids[5]  # the fewest chunks that are enough
    assert take_spare(raw, "t", 30 * PIECE_BYTES) == ids[20]  # none is enough: the largest
    assert take_spare(raw, "t", 1) == ids[2]
    assert take_spare(raw, "t", 1) is None


def test_unused_spares_expire(
    pair: tuple[RedisQueues, RedisQueues], redis_server: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_redis_blobs, "RECYCLE_SECONDS", 0.2)
    client, server = pair
    raw = redis_server.client()
    task_id = client.send_inputs(BIG, method="add_one")
    assert server.get_task(timeout=10) is not None
    server.request_done(task_id)
    assert blob_keys(raw, client) != []
    deadline = time.monotonic() + 5
    while (blob_keys(raw, client) or raw.exists(spare_key(client.prefix))) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert blob_keys(raw, client) == [] and not raw.exists(spare_key(client.prefix))


# --- memory reused between messages -----------------------------------------------------------


def _written(raw: Any, size: int) -> Writing:
    writing = Writing(raw, size)
    for n in range(writing.ref.count):
        writing.chunk(n, token=n > 0)
    return writing


def _memory(buffer: Any) -> Any:
    """The map a message read into private memory lies in."""
    return memoryview(buffer).obj


def test_memory_of_a_freed_message_is_reused_for_the_next(redis_server: Any) -> None:
    raw = redis_server.client()
    first = _written(raw, 3 * CHUNK_BYTES + 5).read()
    memory = _memory(first)
    del first  # nothing refers to the first message any more
    second = _written(raw, 3 * CHUNK_BYTES + 9)  # a header a few bytes longer, say
    buffer = second.read()
    assert _memory(buffer) is memory and bytes(buffer) == second.message


def test_memory_still_in_use_is_never_overwritten(redis_server: Any) -> None:
    raw = redis_server.client()
    first = _written(raw, 3 * CHUNK_BYTES + 5)
    read = first.read()
    memory = _memory(read)
    kept = np.frombuffer(read, dtype=np.uint8)[100:200]  # a value still alive
    del read
    second = _written(raw, 3 * CHUNK_BYTES + 5)
    buffer = second.read()
    assert bytes(kept) == first.message[100:200]
    assert _memory(buffer) is not memory and bytes(buffer) == second.message


def test_memory_is_reused_only_for_a_message_of_about_its_size(redis_server: Any) -> None:
    raw = redis_server.client()
    first = _written(raw, 8 * CHUNK_BYTES).read()
    memory = _memory(first)
    del first
    small = _written(raw, 2 * CHUNK_BYTES)  # would hold 8 MiB for a 2 MiB message
    assert _memory(small.read()) is not memory


def test_reading_into_shared_memory_leaves_no_descriptor_open(redis_server: Any) -> None:
    raw = redis_server.client()
    raw.ping()  # the connection is open before counting
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        del_me = _written(raw, 3 * CHUNK_BYTES).read(shared=True)
        del del_me
    assert len(os.listdir("/proc/self/fd")) == before


def test_spare_memory_is_given_back_when_unused(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_redis_blobs, "SPARE_SECONDS", 0.05)
    raw = redis_server.client()
    first = _written(raw, 3 * CHUNK_BYTES).read()
    memory = _memory(first)
    del first
    deadline = time.monotonic() + 5
    while not memory.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert memory.closed  # unmapped by the timer, not kept for good


def _served_by_hand(client: RedisQueues, server: RedisQueues, value: np.ndarray,
                    channel: PipeChannel) -> tuple[str, Any]:
    """Send a large request; the server reads it and hands it on as to a worker. Returns the
    task id and what the "worker" mapped."""
    task_id = client.send_inputs(value, method="add_one")
    message = server.get_task(timeout=10)
    assert message is not None
    channel.write([message.data])
    return task_id, channel.read(5)


def test_a_server_reads_a_request_into_the_memory_of_one_its_worker_let_go(
    pair: tuple[RedisQueues, RedisQueues],
) -> None:
    client, server = pair
    channel = PipeChannel()
    task_id, held = _served_by_hand(client, server, BIG, channel)
    (first,) = files_of()
    server.request_done(task_id)  # but the "worker" still maps the request: not reused
    second_id, second = _served_by_hand(client, server, BIG + 1, channel)
    assert len(files_of()) == 2
    assert np.array_equal(np.frombuffer(held, dtype=np.uint8)[-BIG.nbytes:].view(BIG.dtype),
                          BIG)  # the memory still in use kept its bytes
    del held  # the "worker" lets go of the first request
    server.request_done(second_id)
    _, third = _served_by_hand(client, server, BIG + 2, channel)
    assert len(files_of()) == 2 and first in files_of()  # no third file: the first reused
    values = np.frombuffer(third, dtype=np.uint8)[-BIG.nbytes:].view(BIG.dtype)
    assert np.array_equal(values, BIG + 2)
    del second, third, values


def test_kept_files_of_dead_processes_are_removed(redis_server: Any) -> None:
    from steersman.queue.pipe import remove_orphans

    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    orphan = Path(SPILL_DIR, f"steersman-kept-{dead}-{os.urandom(8).hex()}")
    ours = Path(SPILL_DIR, f"steersman-kept-{os.getpid()}-{os.urandom(8).hex()}")
    for path in (orphan, ours):
        path.write_bytes(b"x")
    try:
        assert remove_orphans() >= 1
        assert not orphan.exists() and ours.exists()
    finally:
        for path in (orphan, ours):
            path.unlink(missing_ok=True)


def test_a_forked_child_starts_without_spare_memory(redis_server: Any) -> None:
    raw = redis_server.client()
    del_me = _written(raw, 3 * CHUNK_BYTES).read()
    del del_me
    assert _redis_blobs._SPARES._buffers
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, b"0" if _redis_blobs._SPARES._buffers else b"1")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"


# --- security ----------------------------------------------------------------------------------


def _forge(raw: Any, queues: RedisQueues, message: bytes, size: int | None = None) -> None:
    """Write a large message as a rogue would: chunk keys and an entry naming them."""
    ref = BlobRef.new(len(message) if size is None else size)
    for key, pieces in zip(ref.keys(queues.prefix), _cut([message], ref.chunk_bytes)):
        raw.set(key, b"".join(pieces))
    raw.xadd(queues.requests_key, {BLOB_FIELD: ref.to_field()})


def test_forged_large_messages_are_rejected_unopened(
    redis_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_redis_blobs, "STALL_SECONDS", 0.2)  # forgers send no tokens
    marker = tmp_path / "unpickled"
    client, server = make_queue_pairs(redis_server.host, redis_server.port, key="s3cret")
    raw = redis_server.client()
    rogue = Result(method="add_one", inputs=((UnpickleMarker(marker), np.ones(200_000)), {}))
    rogue.encode_inputs()
    unsigned = join(encode(Kind.REQUEST, rogue))
    assert len(unsigned) > BLOB_MIN_BYTES
    try:
        _forge(raw, client, unsigned)
        _forge(raw, client, join(encode(Kind.REQUEST, rogue, key=b"wrong")))
        _forge(raw, client, pickle.dumps(UnpickleMarker(marker)) + bytes(BLOB_MIN_BYTES))
        _forge(raw, client, unsigned[:BLOB_MIN_BYTES], size=10**10)  # claims 10 GB it lacks
        raw.xadd(client.requests_key, {BLOB_FIELD: b"../../etc:12:34"})
        not_a_chunk = BlobRef.new(10)
        raw.rpush(not_a_chunk.keys(client.prefix)[0], b"0123456789")  # a list, not a string
        raw.xadd(client.requests_key, {BLOB_FIELD: not_a_chunk.to_field()})
        with caplog.at_level(logging.WARNING):
            assert server.get_task(timeout=3) is None  # each one is dropped, the server lives
        rejected = [r for r in caplog.records if "rejected" in r.getMessage()
                    or "dropped" in r.getMessage()]
        assert len(rejected) == 6, [r.getMessage() for r in caplog.records]
        assert not marker.exists()
        assert raw.xlen(client.requests_key) == 0  # the forged entries were deleted
        assert lasting_blob_keys(raw, client) == []  # and their chunks expire

        task_id = client.send_inputs(BIG, method="add_one")  # a signed one goes through
        message = server.get_task(timeout=10)
        assert message is not None and message.result is not None
        assert message.result.task_id == task_id
        assert not marker.exists()
    finally:
        client.close()
        server.close()
        client.purge()


_ID = b"0" * 32


@pytest.mark.parametrize("field", [b"", b"x", _ID + b":" + _ID + b":0:1048576",
                                   _ID + b":" + _ID + b":10:1", _ID + b":" + _ID + b":-5:1048576",
                                   _ID + b":" + _ID + b":" + str(10**12).encode() + b":65536",
                                   b"ZZ" * 16 + b":" + _ID + b":10:1048576",
                                   _ID + b":" + b"ZZ" * 16 + b":10:1048576",
                                   _ID + b":10:1048576", b"\xff"])
def test_malformed_references_are_refused(field: bytes) -> None:
    with pytest.raises(BadReference):
        BlobRef.from_field(field)


def test_references_round_trip() -> None:
    ref = BlobRef.new(5 * CHUNK_BYTES + 1)
    assert BlobRef.from_field(ref.to_field()) == ref
    assert ref.count == 6 and len(set(ref.keys("p"))) == 6


def test_topic_is_read_from_the_first_part_of_a_result() -> None:
    result = Result(method="add_one", topic="train", inputs=((1,), {}))
    result.encode_inputs()
    result.set_result(BIG)
    parts = encode(Kind.RESULT, result, key=b"k")
    assert _topic_of(parts) == "train"
    assert _topic_of([join(parts)]) == "train"
    assert _topic_of(encode(Kind.REQUEST, result)) is None  # only results go directly
    assert _topic_of([b"not a message"]) is None
    assert _topic_of([join(parts)[:40]]) is None  # the header is cut off


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(1, 200))
def test_cut_keeps_every_byte_in_order(parts: list[bytes], size: int) -> None:
    chunks = [b"".join(pieces) for pieces in _cut(parts, size)]
    assert b"".join(chunks) == b"".join(parts)
    assert all(0 < len(chunk) <= size for chunk in chunks)
    assert all(len(chunk) == size for chunk in chunks[:-1])


# --- connection options and server limits -----------------------------------------------------


def round_trip_directly(client: RedisQueues, server: RedisQueues,
                        check: Callable[[], None] = lambda: None) -> None:
    """A large request and its result, served by hand; `check` runs while both wait."""
    task_id = client.send_inputs(BIG, method="add_one")
    check()
    message = server.get_task(timeout=10)
    assert message is not None and message.result is not None
    result = message.result
    (value,), _ = result.decode_inputs()
    result.set_result(value + 1)
    server.send_result(result)
    server.request_done(task_id)
    back = client.get_result(timeout=10)
    assert back is not None and np.array_equal(back.value, BIG + 1)


def test_large_messages_use_the_acl_user_and_database(redis_server: Any) -> None:
    raw = redis_server.client()
    raw.acl_setuser("steersman-large", enabled=True, passwords=["+s3cret"], keys=["*"],
                    channels=["*"], commands=["+@all"])
    client, server = make_queue_pairs(redis_server.host, redis_server.port, db=5,
                                      username="steersman-large", password="s3cret")

    def in_database_5() -> None:
        assert blob_keys(redis_server.client(db=5), client) != []
        assert blob_keys(raw, client) == []

    try:
        round_trip_directly(client, server, in_database_5)
    finally:
        client.close()
        server.close()
        client.purge()
        raw.acl_deluser("steersman-large")


def test_message_larger_than_the_servers_bulk_limit(
    make_redis_server: Callable[..., Any],
) -> None:
    """Chunks keep every argument small: Redis's own limit on one value does not apply
    (scaled down: 1 MiB here, 512 MB by default)."""
    limited = make_redis_server("--proto-max-bulk-len", "1mb", "--appendonly", "no")
    client, server = make_queue_pairs(limited.host, limited.port)
    try:
        round_trip_directly(client, server)
    finally:
        client.close()
        server.close()
        client.purge()
