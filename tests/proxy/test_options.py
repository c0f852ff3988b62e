"""Queue options: one store or threshold for all topics or per topic, checked at construction."""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path
from typing import Any

import pytest
from proxystore.connectors.file import FileConnector
from proxystore.store import Store, get_store, unregister_store

from steersman import PipeQueues
from steersman.proxy import parse_proxy_options

pytestmark = pytest.mark.timeout(30)
TOPICS = ["default", "big", "small"]


def test_one_store_for_every_topic(file_store: Store[Any]) -> None:
    options = parse_proxy_options(file_store.name, 100, TOPICS)
    assert options is not None
    assert all(options.for_topic(t) == (file_store.name, 100) for t in TOPICS)
    assert options.configs[file_store.name]["name"] == file_store.name


def test_dicts_per_topic_and_missing_topics_never_proxy(file_store: Store[Any]) -> None:
    options = parse_proxy_options({"big": file_store.name, "small": None},
                                  {"big": 10, "default": 5}, TOPICS)
    assert options is not None
    assert options.for_topic("big") == (file_store.name, 10)
    assert options.for_topic("small") is None  # store None
    assert options.for_topic("default") is None  # no store


def test_threshold_missing_for_a_topic_never_proxies(file_store: Store[Any]) -> None:
    options = parse_proxy_options(file_store.name, {"big": 10}, TOPICS)
    assert options is not None and options.for_topic("small") is None


def test_no_store_means_no_options() -> None:
    assert parse_proxy_options(None, None, TOPICS) is None
    assert PipeQueues()._proxies is None


def test_unregistered_name_is_a_clear_error(file_store: Store[Any]) -> None:
    with pytest.raises(ValueError, match=r"'nope' is not a registered .*" + file_store.name):
        PipeQueues(proxystore_name="nope", proxystore_threshold=10)


@pytest.mark.parametrize(("names", "thresholds", "message"), [
    ({"nosuch": "x"}, 10, r"unknown topic\(s\) \['nosuch'\]; valid topics"),
    ("STORE", {"nosuch": 1}, r"proxystore_threshold names unknown topic"),
    ("STORE", -1, r"non-negative number of bytes, got -1"),
    ("STORE", True, r"non-negative number of bytes, got True"),
    ("STORE", None, r"needs proxystore_threshold"),
    (None, 10, r"proxystore_name is None"),
])
def test_bad_options(file_store: Store[Any], names: Any, thresholds: Any, message: str) -> None:
    names = file_store.name if names == "STORE" else names
    with pytest.raises(ValueError, match=message):
        PipeQueues(topics=["big", "small"], proxystore_name=names,
                   proxystore_threshold=thresholds)


def test_json_serialization_cannot_proxy(file_store: Store[Any]) -> None:
    with pytest.raises(ValueError, match="needs serialization_method='pickle', got 'json'"):
        PipeQueues(serialization_method="json", proxystore_name=file_store.name,
                   proxystore_threshold=10)


def test_store_object_is_registered(tmp_path: Path) -> None:
    store = Store(f"obj-{uuid.uuid4().hex[:8]}", FileConnector(str(tmp_path)))
    try:
        queues = PipeQueues(proxystore_name={"default": store}, proxystore_threshold=1)
        assert get_store(store.name) is store
        assert queues._proxies is not None and queues._proxies.names == {"default": store.name}
        other = Store(store.name, FileConnector(str(tmp_path / "other")))
        with pytest.raises(ValueError, match="already registered"):
            PipeQueues(proxystore_name=other, proxystore_threshold=1)
    finally:
        unregister_store(store.name)


def test_options_pickle_without_the_record_of_stored_inputs(file_store: Store[Any]) -> None:
    options = parse_proxy_options(file_store.name, 1, TOPICS)
    assert options is not None
    options._stored["task"] = [(file_store.name, "key")]
    copy = pickle.loads(pickle.dumps(options))
    assert copy.for_topic("default") == (file_store.name, 1)
    assert copy.outstanding == 0 and options.outstanding == 1
