"""Raw bytes without copies, writable arrays on arrival, stored blobs, proxies in the worker."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from proxystore.connectors.file import FileConnector
from proxystore.proxy import get_factory
from proxystore.store import Store, register_store, unregister_store

from steersman import Result
from steersman.models.messages import Kind, decode, encode, join
from steersman.models.serialization import SerializationMethod, serialize
from steersman.proxy import (
    _backend,
    decode_blob,
    encode_blob,
    proxy_value,
    resolve_inputs,
    settle_result,
)

pytestmark = pytest.mark.timeout(30)
BIG = np.arange(40_000, dtype=float)


def test_without_a_store_a_large_array_is_its_own_frame_and_not_copied() -> None:
    result = Result(method="echo", inputs=((BIG,), {}))
    parts = encode(Kind.REQUEST, result.__class__.model_validate(result.model_dump()))
    result.encode_inputs()
    parts = encode(Kind.REQUEST, result)
    assert any(np.shares_memory(np.frombuffer(p, dtype=np.uint8), BIG) for p in parts[1:])


@pytest.mark.parametrize("readonly", [True, False])
def test_arrays_decoded_from_any_buffer_are_writable(readonly: bool) -> None:
    result = Result(method="echo")
    result.set_result(BIG)
    parts = encode(Kind.RESULT, result)
    data: Any = join(parts) if readonly else bytearray(join(parts))  # Redis gives bytes
    value = decode(data).result.decode_value()  # type: ignore[union-attr]
    assert np.array_equal(value, BIG) and value.flags.writeable
    # A writable buffer is used in place: no copy.
    assert np.shares_memory(value, np.frombuffer(data, dtype=np.uint8)) is not readonly


def test_blob_round_trip_and_corrupt_blobs() -> None:
    value = {"a": BIG, "b": [1, 2]}
    blob = encode_blob(serialize(value, SerializationMethod.PICKLE))
    assert isinstance(blob, bytes)
    back = decode_blob(blob)
    assert np.array_equal(back["a"], BIG) and back["a"].flags.writeable and back["b"] == [1, 2]
    with pytest.raises(ValueError, match="not a steersman blob"):
        decode_blob(b"XXXX" + blob[4:])
    with pytest.raises(ValueError, match="corrupt"):
        decode_blob(blob[:-1])


def test_proxies_start_fetching_as_soon_as_they_are_unpickled(file_store: Store[Any]) -> None:
    proxy = _backend.put(file_store, serialize(BIG, SerializationMethod.PICKLE))
    copy = pickle.loads(pickle.dumps(proxy))
    future = get_factory(copy)._obj_future  # type: ignore[attr-defined]
    assert future is not None
    assert np.array_equal(future.result(timeout=10), BIG)


def _received(request: Result) -> Result:
    message = decode(join(encode(Kind.REQUEST, request)))
    assert message.result is not None
    return message.result


def test_worker_resolves_inputs_and_times_it(file_store: Store[Any]) -> None:
    proxies = [_backend.put(file_store, serialize(BIG * i, SerializationMethod.PICKLE))
               for i in range(3)]
    request = _received(_with_store(Result(method="echo", inputs=((*proxies, 7), {})),
                                    file_store))
    args, kwargs = resolve_inputs(request)
    assert [type(a) for a in args] == [np.ndarray] * 3 + [int]
    assert np.array_equal(args[2], BIG * 2)
    assert request.time.proxy_resolve is not None and request.time.proxy_resolve > 0


def test_a_missing_input_fails_the_task_with_the_store_named(file_store: Store[Any]) -> None:
    from steersman.models.methods import PythonMethod

    proxy = _backend.put(file_store, serialize(BIG, SerializationMethod.PICKLE))
    file_store.evict(_backend.key_of(proxy)[1])
    request = _received(_with_store(Result(method="echo", inputs=((proxy,), {})), file_store))
    PythonMethod(lambda x: x, name="echo")(request)
    assert request.success is False
    assert file_store.name in request.failure_info.exception  # type: ignore[union-attr]


def _settled_after_eviction(store: Store[Any], final: bool) -> Result:
    """A result whose proxied value was evicted before the thinker resolved it."""
    result = _with_store(Result(method="echo"), store)
    result.set_result(BIG)
    result.complete = final  # False: one of a generator's results, the task goes on
    proxy_value(result)
    received = decode(join(encode(Kind.RESULT, result))).result
    assert received is not None
    store.evict(_backend.key_of(result.value)[1])
    received.decode_value()
    settle_result(received)
    return received


def test_a_value_that_cannot_be_fetched_fails_the_result(file_store: Store[Any]) -> None:
    received = _settled_after_eviction(file_store, final=True)
    assert received.success is False and received.value is None
    assert file_store.name in received.failure_info.exception  # type: ignore[union-attr]
    assert received.complete is True


def test_an_intermediate_value_that_cannot_be_fetched_stays_intermediate(
        file_store: Store[Any]) -> None:
    received = _settled_after_eviction(file_store, final=False)
    assert received.success is False and received.complete is False


def test_an_unusable_store_sends_the_value_inline(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    store = Store("broken-file", FileConnector(str(tmp_path / "gone")))
    (tmp_path / "gone").rmdir()
    (tmp_path / "gone").write_text("a file where the store's directory was")
    register_store(store)
    try:
        result = _with_store(Result(method="echo"), store)
        result.set_result(BIG)
        with caplog.at_level(logging.WARNING, logger="steersman.proxy"):
            proxy_value(result)
        assert result.value is BIG and "value_proxied" not in result.message_sizes
        assert "sending it inline" in caplog.text
    finally:
        unregister_store(store)


def _with_store(result: Result, store: Store[Any]) -> Result:
    result.proxystore_name = store.name
    result.proxystore_threshold = 1000
    result.proxystore_config = _backend.json_config(store.name)
    result.encode_inputs()
    return result


def test_a_worker_elsewhere_rebuilds_the_store_from_the_header(file_store: Store[Any]) -> None:
    config = _backend.json_config(file_store.name)
    unregister_store(file_store)  # as in a fresh worker process
    try:
        rebuilt = _backend.find_store(file_store.name, config)
        assert rebuilt is not file_store and rebuilt.name == file_store.name
        with pytest.raises(LookupError, match="not registered in this process"):
            _backend.find_store("elsewhere", None)
    finally:
        unregister_store(file_store.name)
        register_store(file_store)
