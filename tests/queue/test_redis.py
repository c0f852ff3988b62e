"""The Redis backend, against redis-server processes of the tests' own."""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from time import monotonic, sleep
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import UnpickleMarker

from steersman.exceptions import QueueConnectionError
from steersman.models.messages import Kind, encode
from steersman.models.result import Result
from steersman.queue.redis import RedisQueues, make_queue_pairs

pytestmark = pytest.mark.timeout(60)


# --- helpers ------------------------------------------------------------------------------------


def double(x: Any) -> Any:
    return x * 2


def serve_forever(queues: RedisQueues, function: Callable[..., Any] = double) -> None:
    """A minimal task server: run each request until the kill signal arrives."""
    while True:
        message = queues.get_task(timeout=5)
        if message is None:
            continue
        if message.kind is Kind.KILL:
            return
        result = message.result
        assert result is not None
        args, kwargs = result.decode_inputs()
        try:
            result.set_result(function(*args, **kwargs))
        except Exception as exc:
            result.set_failure(exc)
        queues.send_result(result)
        queues.request_done(result.task_id)


def serve_in_child(queues: RedisQueues) -> None:
    """Target of a spawned process: the queues arrive pickled and connect on their own."""
    assert queues._client is None
    serve_forever(queues)
    queues.close()


class Server:
    """A task server thread over the given queues."""

    def __init__(self, queues: RedisQueues, function: Callable[..., Any] = double):
        self.queues = queues
        self.thread = threading.Thread(target=serve_forever, args=(queues, function), daemon=True)
        self.thread.start()


@contextmanager
def serving(client: RedisQueues, server: RedisQueues, function: Callable[..., Any] = double,
            purge: bool = True) -> Iterator[RedisQueues]:
    """`client` with a task server thread on `server` behind it; stopped and closed after."""
    worker = Server(server, function)
    try:
        yield client
    finally:
        client.send_kill_signal()
        worker.thread.join(timeout=10)
        client.close()
        server.close()
        if purge:
            client.purge()


@pytest.fixture
def pair(redis_server: Any) -> Iterator[tuple[RedisQueues, RedisQueues]]:
    """Client and server queues on the session's redis-server, purged afterwards."""
    client, server = make_queue_pairs(redis_server.host, redis_server.port,
                                      topics=["simulate", "train", "infer"])
    yield client, server
    client.close()
    server.close()
    client.purge()


@pytest.fixture
def served(pair: tuple[RedisQueues, RedisQueues]) -> Iterator[RedisQueues]:
    """Client queues with a task server thread behind them."""
    client, server = pair
    worker = Server(server)
    yield client
    client.send_kill_signal()
    worker.thread.join(timeout=10)
    assert not worker.thread.is_alive()


def stream_lengths(queues: RedisQueues, raw: Any) -> dict[str, int]:
    keys = [queues.requests_key, *map(queues.results_key, queues.topics)]
    return {key: raw.xlen(key) if raw.exists(key) else 0 for key in keys}


# --- construction and connection ----------------------------------------------------------------


def test_construction_does_not_connect(unused_port: int) -> None:
    queues = RedisQueues("127.0.0.1", unused_port, topics=["a"])
    assert queues._client is None
    assert queues.prefix.startswith("steersman:")
    assert RedisQueues("127.0.0.1", unused_port).prefix != queues.prefix
    assert "127.0.0.1" in repr(queues)


def test_pairs_share_a_prefix(redis_server: Any) -> None:
    client, server = make_queue_pairs(redis_server.host, redis_server.port, topics=["x"])
    other, _ = make_queue_pairs(redis_server.host, redis_server.port)
    assert client.prefix == server.prefix != other.prefix
    assert client is not server and client.topics == server.topics == ["default", "x"]
    given_client, given_server = make_queue_pairs("localhost", prefix="mine")
    assert given_client.prefix == given_server.prefix == "mine"


@pytest.mark.parametrize(
    ("options", "named"),
    [({"port": 0}, "port"), ({"port": 70000}, "port"), ({"db": -1}, "db"),
     ({"hostname": ""}, "hostname"), ({"prefix": ""}, "prefix"),
     ({"claim_idle": -1}, "claim_idle"), ({"reconnect_timeout": 0}, "reconnect_timeout"),
     ({"server_timeout": 0}, "server_timeout"), ({"server_timeout": "30"}, "server_timeout"),
     ({"serialization_method": "yaml"}, "serialization_method")],
)
def test_bad_options_are_named(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        RedisQueues(**options)


def test_unreachable_server_fails_fast_naming_it(unused_port: int) -> None:
    queues = RedisQueues("127.0.0.1", unused_port)
    start = monotonic()
    with pytest.raises(QueueConnectionError, match=f"127.0.0.1:{unused_port}"):
        queues.send_inputs(1, method="double")
    with pytest.raises(QueueConnectionError, match=f"127.0.0.1:{unused_port}"):
        queues.get_task(timeout=0.1)
    assert monotonic() - start < 5  # no retry loop for a server never reached
    queues.close()


def test_unresolvable_hostname_fails_naming_it() -> None:
    queues = RedisQueues("no-such-host.invalid", 6390)
    with pytest.raises(QueueConnectionError, match="no-such-host.invalid:6390"):
        queues.send_inputs(1, method="double")
    queues.close()


def test_pickled_queues_connect_again_in_a_spawned_process(redis_server: Any) -> None:
    client, server = make_queue_pairs(redis_server.host, redis_server.port, topics=["sim"])
    server.set_methods(["double"])  # connects this copy: the child must not inherit that
    assert server._client is not None
    copy = pickle.loads(pickle.dumps(server))
    assert copy._client is None and copy.prefix == server.prefix

    child = multiprocessing.get_context("spawn").Process(target=serve_in_child, args=(server,))
    child.start()
    try:
        ids = [client.send_inputs(i, method="double", topic="sim") for i in range(3)]
        results = [client.get_result("sim", timeout=30) for _ in ids]
        assert sorted(r.value for r in results if r is not None) == [0, 2, 4]
        assert {r.task_id for r in results if r is not None} == set(ids)
        client.send_kill_signal()
        child.join(timeout=30)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
        client.close()
        server.close()
        client.purge()


def answer_from_worker(queues: RedisQueues, task: Result) -> None:
    """In a worker forked from a connected server: send a result over a connection of its own."""
    queues.on_worker_process()
    task.set_result("from the worker")
    queues.send_result(task)


def test_forked_worker_leaves_the_server_connection_alone(
    pair: tuple[RedisQueues, RedisQueues],
) -> None:
    client, server = pair
    task_id = client.send_inputs(1, method="double")
    message = server.get_task(timeout=5)  # the server is connected now
    assert message is not None and message.result is not None
    worker = multiprocessing.get_context("fork").Process(
        target=answer_from_worker, args=(server, message.result))
    worker.start()
    worker.join(timeout=20)
    assert worker.exitcode == 0
    result = client.get_result(timeout=10)
    assert result is not None and result.value == "from the worker"
    server.request_done(task_id)  # the server's own connection still works
    assert server.get_task(timeout=0) is None
    assert client.wait_until_done(timeout=5)


# --- the queue API end to end ------------------------------------------------------------------


def test_round_trip_and_accounting(served: RedisQueues) -> None:
    ids = [served.send_inputs(i, method="double", task_info={"i": i}) for i in range(5)]
    assert served.active_count <= 5
    assert served.wait_until_done(timeout=0) in (True, False)
    received = {}
    for _ in ids:
        result = served.get_result(timeout=10)
        assert result is not None and result.success
        received[result.task_id] = result
    assert set(received) == set(ids)
    assert all(r.value == 2 * r.task_info["i"] and r.args == (r.task_info["i"],)
               for r in received.values())
    assert served.wait_until_done(timeout=5)
    assert served.active_count == 0


def test_failure_travels_back(served: RedisQueues) -> None:
    served.send_inputs(None, method="double")
    result = served.get_result(timeout=10)
    assert result is not None and result.success is False
    assert result.failure_info is not None and "TypeError" in str(result.failure_info)


def test_topics_are_separate(served: RedisQueues) -> None:
    served.send_inputs(3, method="double", topic="simulate")
    assert served.get_result(topic="infer", timeout=0.2) is None
    result = served.get_result(topic="simulate", timeout=10)
    assert result is not None and result.value == 6 and result.topic == "simulate"
    assert served.active_in("simulate") == 0


def test_unknown_topic_is_rejected(pair: tuple[RedisQueues, RedisQueues]) -> None:
    client, _ = pair
    with pytest.raises(ValueError, match=r"'nope'.*simulate"):
        client.send_inputs(1, method="double", topic="nope")
    with pytest.raises(ValueError, match="'nope'"):
        client.get_result(topic="nope", timeout=0)


def test_methods_published_by_a_server_validate_names_elsewhere(
    pair: tuple[RedisQueues, RedisQueues],
) -> None:
    client, server = pair
    client.send_inputs(1, method="anything")  # nothing published yet: accepted
    server.set_methods(["double", "train"])
    assert client.prefix == server.prefix
    with pytest.raises(ValueError, match=r"'simulate_it'.*\['double', 'train'\]"):
        client.send_inputs(1, method="simulate_it")
    client.send_inputs(1, method="train")


def test_executors_published_by_a_server_validate_names_elsewhere(
    pair: tuple[RedisQueues, RedisQueues],
) -> None:
    client, server = pair
    client.send_inputs(1, method="anything", executor="gpu")  # nothing published yet: accepted
    server.set_executors(["cpu", "gpu"])
    with pytest.raises(ValueError, match=r"unknown executor 'tpu'.*\['cpu', 'gpu'\]"):
        client.send_inputs(1, method="anything", executor="tpu")
    client.send_inputs(1, method="anything", executor="cpu")


def test_json_serialization(redis_server: Any) -> None:
    client, server = make_queue_pairs(redis_server.host, redis_server.port,
                                      serialization_method="json", keep_inputs=False)
    with serving(client, server, lambda payload: {"echo": payload, "n": len(payload)}):
        client.send_inputs(["a", 1, None], method="echo")
        result = client.get_result(timeout=10)
        assert result is not None and result.value == {"echo": ["a", 1, None], "n": 3}
        assert result.args == ()  # keep_inputs=False
        assert result.serialization_method.value == "json"


def test_subsecond_timeouts(pair: tuple[RedisQueues, RedisQueues]) -> None:
    client, server = pair
    start = monotonic()
    assert client.get_result(timeout=0.2) is None
    waited = monotonic() - start
    assert 0.2 <= waited < 1.0
    start = monotonic()
    assert server._recv_request(0.05) is None
    assert monotonic() - start < 0.5
    assert server.get_task(timeout=0) is None


def test_kill_signal_uses_the_request_stream(pair: tuple[RedisQueues, RedisQueues]) -> None:
    client, server = pair
    client.send_kill_signal()
    message = server.get_task(timeout=5)
    assert message is not None and message.kind is Kind.KILL
    raw = client._redis()
    assert raw.xlen(client.requests_key) == 0  # acknowledged and deleted at once


def test_streams_do_not_grow(served: RedisQueues, redis_server: Any) -> None:
    for topic in ("default", "train"):
        for i in range(10):
            served.send_inputs(i, method="double", topic=topic)
        for _ in range(10):
            assert served.get_result(topic, timeout=10) is not None
    raw = redis_server.client()
    assert served.wait_until_done(timeout=5)
    assert max(stream_lengths(served, raw).values()) <= 10  # at most the batch read last
    assert served.get_result(timeout=0.05) is None  # the next read acknowledges that batch
    assert set(stream_lengths(served, raw).values()) == {0}
    assert raw.xpending(served.requests_key, "servers")["pending"] == 0


def test_large_payload_is_raw_bytes(served: RedisQueues, redis_server: Any) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    served.send_inputs(payload, method="double")
    result = served.get_result(timeout=20)
    assert result is not None and result.value == payload * 2


def test_close_ends_a_waiting_reader_promptly(redis_server: Any) -> None:
    client, _ = make_queue_pairs(redis_server.host, redis_server.port)
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            client.get_result()  # reads the result streams, blocked in Redis
        except QueueConnectionError as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    sleep(0.2)
    start = monotonic()
    client.close()
    waiter.join(5)
    assert not waiter.is_alive() and outcome
    assert monotonic() - start < 1.0
    raw = redis_server.client()
    assert not raw.exists(f"{client.prefix}:wake:{client._consumer}")
    client.purge()


# --- redelivery --------------------------------------------------------------------------------


def test_request_of_a_dead_server_goes_to_another(redis_server: Any) -> None:
    client, first = make_queue_pairs(redis_server.host, redis_server.port)
    patient = RedisQueues(redis_server.host, redis_server.port, prefix=client.prefix)
    eager = RedisQueues(redis_server.host, redis_server.port, prefix=client.prefix, claim_idle=0)
    try:
        task_id = client.send_inputs(21, method="double")
        message = first.get_task(timeout=5)
        assert message is not None and message.result is not None
        assert message.result.task_id == task_id
        first.close()  # "dies" without acknowledging

        assert patient.get_task(timeout=0.1) is None  # not idle for 30 s yet
        taken = eager.get_task(timeout=5)
        assert taken is not None and taken.result is not None
        assert taken.result.task_id == task_id
        taken.result.set_result(taken.result.decode_inputs()[0][0] * 2)
        eager.send_result(taken.result)
        eager.request_done(task_id)
        result = client.get_result(timeout=10)
        assert result is not None and result.value == 42

        raw = redis_server.client()
        assert raw.xlen(client.requests_key) == 0
        assert raw.xpending(client.requests_key, "servers")["pending"] == 0
        assert eager.get_task(timeout=0.1) is None  # nothing left to claim
    finally:
        for queues in (client, patient, eager):
            queues.close()
        client.purge()


def test_running_request_is_not_taken_back_by_its_own_server(redis_server: Any) -> None:
    client, server = make_queue_pairs(redis_server.host, redis_server.port, claim_idle=0)
    try:
        client.send_inputs(1, method="double")
        message = server.get_task(timeout=5)
        assert message is not None
        assert server.get_task(timeout=0.2) is None  # its own pending request is not redelivered
    finally:
        client.close()
        server.close()
        client.purge()


def test_groups_lost_with_their_streams_are_made_again(
    served: RedisQueues, redis_server: Any,
) -> None:
    served.send_inputs(1, method="double")
    assert served.get_result(timeout=10) is not None
    raw = redis_server.client()
    streams = [served.requests_key, *map(served.results_key, served.topics),
               *raw.keys(f"{served.prefix}:wake:*")]
    raw.delete(*streams)  # what a restart without persistence does to the groups
    served.send_inputs(2, method="double")
    result = served.get_result(timeout=10)
    assert result is not None and result.value == 4


def test_heartbeat_keeps_a_running_request(redis_server: Any) -> None:
    client, server = make_queue_pairs(redis_server.host, redis_server.port)
    other, third = (RedisQueues(redis_server.host, redis_server.port, prefix=client.prefix,
                                claim_idle=10) for _ in range(2))
    raw = redis_server.client()
    try:
        client.send_inputs(1, method="double")
        assert server.get_task(timeout=5) is not None
        (entry,) = [row["message_id"] for row in raw.xpending_range(
            client.requests_key, "servers", "-", "+", 10)]

        def age(owner: RedisQueues) -> None:  # as if `owner` had been silent for a minute
            raw.xclaim(client.requests_key, "servers", owner._consumer, 0, [entry],
                       idle=60_000, justid=True)

        age(server)
        server._refresh_once()  # what the heartbeat thread does every claim_idle / 3
        assert other.get_task(timeout=0.1) is None

        age(server)
        taken = third.get_task(timeout=5)  # silent too long: taken over at startup
        assert taken is not None
        server._refresh_once()  # ...and not stolen back by the first server's heartbeat
        (row,) = raw.xpending_range(client.requests_key, "servers", "-", "+", 10)
        assert row["consumer"].decode() == third._consumer
    finally:
        for queues in (client, server, other, third):
            queues.close()
        client.purge()


# --- security ----------------------------------------------------------------------------------


def test_unsigned_requests_are_rejected_unopened(
    redis_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    marker = tmp_path / "unpickled"
    client, server = make_queue_pairs(redis_server.host, redis_server.port, key="s3cret")
    raw = redis_server.client()
    rogue = Result(method="double", inputs=((UnpickleMarker(marker),), {}))
    rogue.encode_inputs()
    raw.xadd(client.requests_key, {b"m": pickle.dumps(UnpickleMarker(marker))})
    raw.xadd(client.requests_key, {b"m": b"".join(encode(Kind.REQUEST, rogue))})
    raw.xadd(client.requests_key, {b"m": b"".join(encode(Kind.REQUEST, rogue, key=b"wrong"))})
    try:
        with caplog.at_level(logging.ERROR, logger="steersman.queue.base"):
            assert server.get_task(timeout=0.3) is None
        rejections = [r for r in caplog.records
                      if r.name == "steersman.queue.base" and "rejected" in r.getMessage()]
        assert len(rejections) == 3
        assert not marker.exists()

        task_id = client.send_inputs(2, method="double")  # a signed request still goes through
        message = server.get_task(timeout=5)
        assert message is not None and message.result is not None
        assert message.result.task_id == task_id
        server.request_done(task_id)
        assert raw.xlen(client.requests_key) == 0  # the rejected entries were deleted too
        assert not marker.exists()
    finally:
        client.close()
        server.close()
        client.purge()


# --- connection options ------------------------------------------------------------------------


def test_acl_user_and_password(redis_server: Any) -> None:
    raw = redis_server.client()
    raw.acl_setuser("steersman-test", enabled=True, passwords=["+s3cret"], keys=["*"],
                    channels=["*"], commands=["+@all"])
    options = {"hostname": redis_server.host, "port": redis_server.port,
               "username": "steersman-test"}
    try:
        with serving(*make_queue_pairs(password="s3cret", **options)) as client:
            client.send_inputs(5, method="double")
            result = client.get_result(timeout=10)
            assert result is not None and result.value == 10

        wrong, _ = make_queue_pairs(password="wrong", **options)
        with pytest.raises(QueueConnectionError, match=f"{redis_server.port}"):
            wrong.send_inputs(5, method="double")
        wrong.close()
    finally:
        raw.acl_deluser("steersman-test")


def test_database_number(redis_server: Any) -> None:
    client, server = make_queue_pairs(redis_server.host, redis_server.port, db=3)
    try:
        client.send_inputs(1, method="double")
        assert redis_server.client(db=3).exists(client.requests_key)
        assert not redis_server.client(db=0).exists(client.requests_key)
        assert server.get_task(timeout=5) is not None
    finally:
        client.close()
        server.close()
        client.purge()


@pytest.fixture
def tls_redis_server(tmp_path: Path, make_redis_server: Callable[..., Any]) -> Any:
    """A redis-server that accepts only TLS, with a certificate signed by a test CA."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", "server.key", "-out", "server.csr")
    (tmp_path / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "server.crt")
    server = make_redis_server("--tls-cert-file", str(tmp_path / "server.crt"),
                               "--tls-key-file", str(tmp_path / "server.key"),
                               "--tls-ca-cert-file", str(tmp_path / "ca.crt"),
                               "--tls-auth-clients", "no", "--appendonly", "no", tls=True)
    server.ca = str(tmp_path / "ca.crt")
    return server


def test_tls(tls_redis_server: Any) -> None:
    options = {"hostname": "localhost", "port": tls_redis_server.port}
    pair = make_queue_pairs(ssl=True, ssl_ca_certs=tls_redis_server.ca, **options)
    with serving(*pair, purge=False) as client:
        client.send_inputs(4, method="double")
        result = client.get_result(timeout=10)
        assert result is not None and result.value == 8
    plain, _ = make_queue_pairs(**options)  # without TLS the server is not reachable
    with pytest.raises(QueueConnectionError, match=f"localhost:{tls_redis_server.port}"):
        plain.send_inputs(4, method="double")
    plain.close()


def test_tls_large_message(tls_redis_server: Any) -> None:
    """Large messages travel on raw connections of the pool, with the same TLS options."""
    pair = make_queue_pairs("localhost", tls_redis_server.port, ssl=True,
                            ssl_ca_certs=tls_redis_server.ca)
    payload = bytes(range(256)) * 12_000  # 3 MB: beside its stream entry, in chunks
    with serving(*pair) as client:
        client.send_inputs(payload, method="double")
        result = client.get_result(timeout=20)
        assert result is not None and result.value == payload * 2


# --- surviving a Redis restart ------------------------------------------------------------------


def test_redis_restart_loses_nothing(
    persistent_redis_server: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    redis_server = persistent_redis_server
    client, server = make_queue_pairs(redis_server.host, redis_server.port, topics=["sim"])
    worker = Server(server)
    halfway = threading.Event()
    resume = threading.Event()
    values: list[int] = []
    failures: list[BaseException] = []
    count = 40

    def campaign() -> None:
        try:
            for i in range(count):
                topic = "sim" if i % 2 else "default"
                client.send_inputs(i, method="double", topic=topic)
                if i == count // 2:
                    halfway.set()
                    resume.wait(timeout=10)  # the next sends race the restart
                if i % 4 == 3:  # keep a few tasks in flight across the restart
                    for _ in range(4):
                        result = client.get_result("sim" if _ % 2 else "default", timeout=30)
                        assert result is not None and result.success
                        values.append(result.value)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=campaign, daemon=True)
    with caplog.at_level(logging.WARNING, logger="steersman.queue.redis"):
        thread.start()
        assert halfway.wait(timeout=20)
        redis_server.stop()
        resume.set()
        redis_server.start()
        thread.join(timeout=45)
    try:
        assert not thread.is_alive()
        assert not failures, failures
        assert sorted(values) == [2 * i for i in range(count)]
        assert client.wait_until_done(timeout=10) and client.active_count == 0
        assert any("reconnect attempt" in r.getMessage() for r in caplog.records)
    finally:
        client.send_kill_signal()
        worker.thread.join(timeout=10)
        client.close()
        server.close()


def test_reconnection_gives_up_after_its_time(persistent_redis_server: Any) -> None:
    redis_server = persistent_redis_server
    queues = RedisQueues(redis_server.host, redis_server.port, reconnect_timeout=0.3)
    assert queues.get_task(timeout=0) is None  # connected once
    redis_server.stop()
    start = monotonic()
    with pytest.raises(QueueConnectionError,
                       match=rf"{redis_server.host}:{redis_server.port}.*0.3 s"):
        queues.get_task(timeout=5)
    assert monotonic() - start < 3
    queues.close()


# --- payload framing ---------------------------------------------------------------------------


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.binary(max_size=2048), min_size=1, max_size=5))
def test_message_bytes_arrive_unchanged(
    pair: tuple[RedisQueues, RedisQueues], parts: list[bytes],
) -> None:
    client, server = pair
    client._send_request(parts)
    assert server._recv_request(5) == b"".join(parts)
