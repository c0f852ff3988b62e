"""Stores from command-line options, as the multi-site example passes them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from proxystore.connectors.file import FileConnector
from proxystore.store import Store, get_store, unregister_store

from steersman import PipeQueues
from steersman.proxy import close_stores, stores_from_options

pytestmark = pytest.mark.timeout(30)


def test_per_topic_backends_as_on_the_command_line(
    tmp_path: Path, make_redis_server: Callable[..., Any], serve: Callable[..., PipeQueues]
) -> None:
    server = make_redis_server()
    names, thresholds = stores_from_options(
        {"big": "redis", "small": "file", "default": None}, 500_000,
        file_dir=tmp_path / "dump", redis_host=server.host, redis_port=server.port)
    try:
        assert set(names) == set(thresholds) == {"big", "small"}
        assert thresholds == {"big": 500_000, "small": 500_000}
        assert names["small"] == f"steersman-file:{(tmp_path / 'dump').resolve()}"
        assert names["big"] == f"steersman-redis:{server.host}:{server.port}"
        again, _ = stores_from_options({"big": "REDIS"}, 1, redis_host=server.host,
                                       redis_port=server.port)
        assert get_store(again["big"]) is get_store(names["big"])  # one store per configuration
        queues = serve(proxystore_name=names, proxystore_threshold=thresholds)
        big = np.arange(100_000, dtype=float)
        for topic in ("big", "small"):
            queues.send_inputs(big, method="echo", topic=topic)
            result = queues.get_result(topic, timeout=20)
            assert result is not None and np.array_equal(result.value, big)
            assert result.message_sizes["value_proxied"] > big.nbytes
        assert server.client().dbsize() == 0
        assert list((tmp_path / "dump").iterdir()) == []
    finally:
        close_stores(names.values())
    assert all(get_store(name) is None for name in names.values())
    assert (tmp_path / "dump").is_dir()  # closing never deletes the user's directory


def test_no_backend_means_no_proxying() -> None:
    assert stores_from_options({"sim": None, "train": "none"}, None) == ({}, {})


def test_a_store_object_is_used_as_is(tmp_path: Path) -> None:
    store = Store(f"given-{uuid.uuid4().hex[:8]}", FileConnector(str(tmp_path)))
    try:
        assert stores_from_options({"sim": store}, 10) == ({"sim": store.name}, {"sim": 10})
        assert get_store(store.name) is store
    finally:
        unregister_store(store)


@pytest.mark.parametrize(("backends", "threshold", "message"), [
    ({"sim": "globus"}, 10, r"unknown ProxyStore backend 'globus' for topic 'sim'; choose one "
                            r"of \['file', 'redis'\] or None, or pass a proxystore Store"),
    ({"sim": "file"}, 10, r"'file' backend, which needs file_dir"),
    ({"sim": "file"}, None, r"a threshold is needed to proxy topics \['sim'\]"),
    ({"sim": "file"}, -5, r"non-negative number of bytes, got -5"),
])
def test_bad_options_name_the_choices(backends: dict[str, Any], threshold: Any,
                                      message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stores_from_options(backends, threshold)
