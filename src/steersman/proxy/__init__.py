"""Large values by reference: ProxyStore stores chosen per topic, with a size threshold.

Inputs larger than the threshold of their topic are put in the topic's store by the client and
travel as proxies; values larger than it are put there by the worker. The worker resolves input
proxies before the method runs (fetching starts while the inputs are still being decoded); the
thinker resolves value proxies when the result arrives, so user code sees plain objects on both
sides. Every stored object is evicted once it is no longer needed: a value once the thinker
resolved it, an input once its task's final result came back.

ProxyStore itself is imported only when a store is configured.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

from steersman.models.result import Inputs, Result
from steersman.models.serialization import SerializationMethod, serialize
from steersman.proxy._blob import decode_blob, encode_blob

if TYPE_CHECKING:
    from proxystore.store import Store

    #: A store for every topic, or a dict from topic to store (registered name or Store).
    NameOption = str | Store[Any] | Mapping[str, str | Store[Any] | None] | None
    #: A threshold in bytes for every topic, or a dict from topic to threshold.
    ThresholdOption = int | Mapping[str, int | None] | None

logger = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "QueueProxies",
    "close_stores",
    "decode_blob",
    "encode_blob",
    "parse_proxy_options",
    "proxy_value",
    "resolve_inputs",
    "settle_result",
    "stores_from_options",
]

#: Backends :func:`stores_from_options` builds from a word; others are passed as Store objects.
BACKENDS = ("file", "redis")
_PLAIN = (bool, int, float, complex, type(None))


# --- queue options ----------------------------------------------------------------------------


@dataclass
class QueueProxies:
    """Which store and threshold each topic of a queue uses, and the inputs it has stored.

    The options are plain data, so queues that hold them still pickle; the record of stored
    inputs belongs to the process that stored them: it is neither pickled nor inherited by a
    forked child (a task server must never evict the thinker's inputs).

    Attributes:
        names: Store name per topic; topics absent never proxy.
        thresholds: Size in bytes above which a value of that topic is proxied.
        configs: JSON configuration per store name, for workers that must rebuild the store.
    """

    names: dict[str, str]
    thresholds: dict[str, int]
    configs: dict[str, dict[str, Any] | None]
    _stored: dict[str, list[tuple[str, Any]]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _pid: int = field(default_factory=os.getpid, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"names": self.names, "thresholds": self.thresholds, "configs": self.configs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _stored={}, _lock=threading.Lock(), _pid=os.getpid())

    def _own_records(self) -> None:
        """Start an empty record in a forked child (the parent's belongs to the parent)."""
        if self._pid != os.getpid():
            self._stored, self._lock, self._pid = {}, threading.Lock(), os.getpid()

    def for_topic(self, topic: str) -> tuple[str, int] | None:
        """The (store name, threshold) of `topic`, or None if it does not proxy."""
        name, threshold = self.names.get(topic), self.thresholds.get(topic)
        return None if name is None or threshold is None else (name, threshold)

    @property
    def outstanding(self) -> int:
        """Stored inputs whose task has not come back yet."""
        self._own_records()
        with self._lock:
            return sum(len(keys) for keys in self._stored.values())

    def prepare(self, result: Result) -> None:
        """Mark the request with its topic's store, and put inputs above the threshold there."""
        choice = self.for_topic(result.topic)
        if choice is None:
            return
        name, threshold = choice
        result.proxystore_name, result.proxystore_threshold = name, threshold
        result.proxystore_config = self.configs.get(name)
        keys = _proxy_inputs(result, name, threshold)
        if keys:
            self._own_records()
            with self._lock:
                self._stored[result.task_id] = keys

    def settle(self, result: Result) -> None:
        """Resolve the proxies of an arrived result, then evict what is no longer needed."""
        settle_result(result)
        if result.complete is not False:
            self.forget(result.task_id)

    def adopt(self, request: Result) -> None:
        """Take over the stored inputs of a request an earlier process sent (resent when a
        campaign resumes), so they are evicted when its final result comes back."""
        from steersman.proxy import _backend

        args, kwargs = request.inputs
        keys = [_backend.key_of(value) for value in (*args, *kwargs.values())
                if _backend.is_ours(value)]
        if keys:
            self._own_records()
            with self._lock:
                self._stored[request.task_id] = keys

    def forget(self, task_id: str) -> None:
        """Evict the inputs stored for a task (its result came back, or it was never sent)."""
        self._own_records()
        with self._lock:
            keys = self._stored.pop(task_id, [])
        if keys:
            from steersman.proxy import _backend

            for name, key in keys:
                _backend.evict(name, key)

    def keep_pending(self) -> None:
        """Leave the stored inputs of tasks not back yet to a later process (a campaign that
        stopped before it finished resends them on resume, and adopts them then)."""
        self._own_records()
        with self._lock:
            self._stored.clear()

    def close(self) -> None:
        """Evict the inputs of every task that never came back."""
        self._own_records()
        with self._lock:
            tasks = list(self._stored)
        for task_id in tasks:
            self.forget(task_id)


def parse_proxy_options(
    proxystore_name: NameOption,
    proxystore_threshold: ThresholdOption,
    topics: Iterable[str],
    serialization_method: SerializationMethod = SerializationMethod.PICKLE,
) -> QueueProxies | None:
    """Check the queue options and register Store objects; None when nothing is proxied.

    Args:
        proxystore_name: A store (registered name or Store object) for every topic, or a dict
            from topic to store; topics missing from the dict (or mapped to None) never proxy.
        proxystore_threshold: Size in bytes above which values are proxied, for every topic or
            per topic (same rule for missing topics).
        topics: The queue's topics, to reject unknown ones.
        serialization_method: Proxies need pickle.
    """
    topics = list(topics)
    if proxystore_name is None:
        if proxystore_threshold is not None:
            raise ValueError(f"proxystore_threshold={proxystore_threshold!r} is set but "
                             "proxystore_name is None: name a store for the topics to proxy")
        return None
    if proxystore_threshold is None:
        raise ValueError(f"proxystore_name={proxystore_name!r} needs proxystore_threshold: "
                         "the size in bytes above which values are proxied")
    if serialization_method is not SerializationMethod.PICKLE:
        raise ValueError(f"ProxyStore needs serialization_method='pickle', got "
                         f"{serialization_method.value!r}")
    stores = _per_topic("proxystore_name", proxystore_name, topics)
    thresholds = _per_topic("proxystore_threshold", proxystore_threshold, topics)
    for topic, threshold in thresholds.items():
        _check_threshold(topic, threshold)
    from steersman.proxy import _backend

    names = {topic: _backend.register(store) for topic, store in stores.items()}
    configs = {name: _backend.json_config(name) for name in set(names.values())}
    logger.debug("proxying topics %s with thresholds %s", names, thresholds)
    return QueueProxies(names, thresholds, configs)


def _per_topic(option: str, value: Any, topics: list[str]) -> dict[str, Any]:
    """Expand one value to every topic, or check a dict's topics; None entries are dropped."""
    if not isinstance(value, Mapping):
        return dict.fromkeys(topics, value)
    unknown = sorted(str(t) for t in value if t not in topics)
    if unknown:
        raise ValueError(f"{option} names unknown topic(s) {unknown}; valid topics: "
                         f"{sorted(topics)}")
    return {topic: v for topic, v in value.items() if v is not None}


def _check_threshold(topic: str, threshold: Any) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise ValueError(f"proxystore_threshold for topic {topic!r} must be a non-negative "
                         f"number of bytes, got {threshold!r}")


# --- client: inputs out, results in -----------------------------------------------------------


def _proxy_inputs(result: Result, name: str, threshold: int) -> list[tuple[str, Any]]:
    """Replace each argument above `threshold` by a proxy; return the (store, key) pairs."""
    args, kwargs = result.inputs
    stored: list[tuple[str, Any]] = []
    start = perf_counter()
    proxied = 0

    def maybe_proxy(value: Any) -> Any:
        nonlocal proxied
        if isinstance(value, _PLAIN) or (isinstance(value, (str, bytes))
                                         and len(value) <= threshold // 4):
            return value  # surely small: skip measuring it
        frames = serialize(value, SerializationMethod.PICKLE)
        size = sum(memoryview(f).nbytes for f in frames)
        if size <= threshold:
            return value
        from steersman.proxy import _backend

        store = _backend.find_store(name, result.proxystore_config)
        proxy = _backend.put(store, frames)
        stored.append(_backend.key_of(proxy))
        proxied += size
        return proxy

    try:
        result.inputs = (tuple(maybe_proxy(a) for a in args),
                         {k: maybe_proxy(v) for k, v in kwargs.items()})
    except BaseException:
        _evict_all(stored)
        raise
    if stored:
        result.time.proxy_store_inputs = perf_counter() - start
        result.message_sizes["inputs_proxied"] = proxied
    return stored


def settle_result(result: Result) -> None:
    """Resolve a decoded result's proxies into plain objects; evict the value's stored copy.

    A value that cannot be fetched turns the result into a failure naming the store.
    """
    from steersman.proxy import _backend

    result.inputs = _resolve_all(result.inputs)
    if not _backend.is_ours(result.value):
        return
    start = perf_counter()
    name, key = _backend.key_of(result.value)
    try:
        result.value = _backend.resolve(result.value)
    except Exception as exc:
        result.set_failure(exc, final=result.complete is not False)
    finally:
        _backend.evict(name, key)
    result.time.proxy_resolve_value = perf_counter() - start


def _resolve_all(inputs: Inputs) -> Inputs:
    from steersman.proxy import _backend

    args, kwargs = inputs

    def plain(value: Any) -> Any:
        return _backend.resolve(value) if _backend.is_ours(value) else value

    return tuple(plain(a) for a in args), {k: plain(v) for k, v in kwargs.items()}


def _evict_all(stored: list[tuple[str, Any]]) -> None:
    from steersman.proxy import _backend

    for name, key in stored:
        _backend.evict(name, key)


# --- worker: inputs in, values out ------------------------------------------------------------


def resolve_inputs(result: Result) -> Inputs:
    """Decode a request's inputs and resolve its proxies, timing it on ``time.proxy_resolve``.

    Each proxy starts fetching as soon as it is unpickled, so fetches overlap the decoding of
    the other inputs and each other.
    """
    start = perf_counter()
    inputs = _resolve_all(result.decode_inputs())
    result.time.proxy_resolve = perf_counter() - start
    return inputs


def proxy_value(result: Result) -> None:
    """Put a successful value above the request's threshold in its store (worker side).

    If the store cannot be reached the value travels inline, with a warning: the outcome of a
    task is never lost because of a store.
    """
    name, threshold = result.proxystore_name, result.proxystore_threshold
    if name is None or threshold is None or not result.success:
        return
    if result.serialization_method is not SerializationMethod.PICKLE:
        return
    frames = result.encode_value()
    size = result.message_sizes.get("value", 0)
    if size <= threshold:
        return
    from steersman.proxy import _backend

    start = perf_counter()
    try:
        store = _backend.find_store(name, result.proxystore_config)
        proxy = _backend.put(store, frames)
    except Exception as exc:
        logger.warning("task %s: could not put its %d-byte value in store %r (%r); sending it "
                       "inline", result.task_id, size, name, exc)
        return
    result.value = proxy
    result.attach_frames(result.input_frames, None)
    result.encode_value()
    result.time.proxy_store_value = perf_counter() - start
    result.message_sizes["value_proxied"] = size


# --- stores from command-line options ---------------------------------------------------------


def stores_from_options(
    backends: Mapping[str, str | Store[Any] | None],
    threshold: int | None,
    file_dir: str | Path | None = None,
    redis_host: str = "localhost",
    redis_port: int = 6379,
) -> tuple[dict[str, str], dict[str, int]]:
    """Create and register the stores that command-line options ask for, per topic.

    Meant for ``--<topic>-ps-backend`` style options: the two dicts go straight into a queue's
    ``proxystore_name`` and ``proxystore_threshold``. Topics whose backend is None (or
    ``'none'``) do not proxy. Any other ProxyStore backend (Globus, endpoints, ...) is passed as a
    ready Store object.

    Args:
        backends: Per topic, ``'file'``, ``'redis'``, a Store, or None.
        threshold: Size in bytes above which values are proxied (all topics).
        file_dir: Directory of the file store (needed by ``'file'``).
        redis_host: Host of the Redis server of the ``'redis'`` store.
        redis_port: Port of that server.

    Returns:
        ``(proxystore_name, proxystore_threshold)``, both keyed by topic.
    """
    chosen = {t: b for t, b in backends.items() if not _is_none(b)}
    if not chosen:
        return {}, {}
    if threshold is None:
        raise ValueError(f"a threshold is needed to proxy topics {sorted(chosen)}")
    _check_threshold("all topics", threshold)
    names = {topic: _make_store(topic, backend, file_dir, redis_host, redis_port)
             for topic, backend in chosen.items()}
    return names, dict.fromkeys(names, threshold)


def _is_none(backend: Any) -> bool:
    return backend is None or (isinstance(backend, str) and backend.lower() in ("", "none"))


def _make_store(topic: str, backend: Any, file_dir: str | Path | None, redis_host: str,
                redis_port: int) -> str:
    """Register (once per configuration) the store one topic asked for; return its name."""
    from proxystore.store import Store, get_store, register_store

    from steersman.proxy import _backend

    if isinstance(backend, Store):
        return _backend.register(backend)
    kind = backend.lower() if isinstance(backend, str) else backend
    if kind == "file":
        if file_dir is None:
            raise ValueError(f"topic {topic!r} uses the 'file' backend, which needs file_dir "
                             "(--ps-file-dir)")
        name, connector = _file_connector(Path(file_dir))
    elif kind == "redis":
        name, connector = _redis_connector(redis_host, redis_port)
    else:
        raise ValueError(f"unknown ProxyStore backend {backend!r} for topic {topic!r}; choose "
                         f"one of {list(BACKENDS)} or None, or pass a proxystore Store object "
                         "(Globus, endpoint, ...)")
    if get_store(name) is None:
        # No cache: each value is read once, and a cache would pin large values.
        register_store(Store(name, connector, cache_size=0), exist_ok=True)
    return name


def _file_connector(directory: Path) -> tuple[str, Any]:
    from proxystore.connectors.file import FileConnector

    directory = directory.expanduser().resolve()
    # clear=False: closing the store must never delete a directory the user chose.
    return f"steersman-file:{directory}", FileConnector(str(directory), clear=False)


def _redis_connector(host: str, port: int) -> tuple[str, Any]:
    from proxystore.connectors.redis import RedisConnector

    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"redis_port must be an integer from 1 to 65535, got {port!r}")
    return f"steersman-redis:{host}:{port}", RedisConnector(host, port)


def close_stores(names: Iterable[str]) -> None:
    """Close and unregister stores (at the end of a campaign); unknown names are skipped."""
    from proxystore.store import get_store, unregister_store

    for name in set(names):
        store = get_store(name)
        if store is not None:
            unregister_store(name)
            store.close()
