"""The parts that need ProxyStore: our proxies, finding stores, putting, fetching, evicting.

Imported only when a queue is configured with a store, so ``import steersman`` stays light.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from proxystore.connectors.file import FileConnector, FileKey
from proxystore.proxy import Proxy, extract, get_factory
from proxystore.store import Store, get_or_create_store, get_store, register_store
from proxystore.store.config import StoreConfig
from proxystore.store.exceptions import ProxyResolveMissingKeyError
from proxystore.store.factory import StoreFactory

from steersman.exceptions import ProxyFetchError
from steersman.models.serialization import Frame
from steersman.proxy._blob import blob_parts, decode_blob, encode_blob

logger = logging.getLogger(__name__)

#: Fetches running at once per process; more only compete for the same link.
FETCH_THREADS = 4


class PrefetchFactory(StoreFactory[Any, Any]):
    """Resolves a steersman proxy: starts fetching as soon as it is unpickled.

    Unpickling happens while the rest of the inputs are decoded, so the fetch overlaps the
    decoding. The value is read from the connector directly, not through the store's cache:
    each value is read once, and a cache would pin large values after they were evicted.
    """

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.resolve_async()

    def resolve_async(self) -> None:
        """Fetch in a thread of this process's own pool (fork-safe, unlike a shared one)."""
        self._obj_future = _fetch_pool().submit(self.resolve)

    def resolve(self) -> Any:
        store = self.get_store()
        if _is_file(store):
            data = _file_get(store.connector, FileKey(*self.key))
        else:
            data = store.connector.get(self.key)
        if data is None:
            raise ProxyResolveMissingKeyError(self.key, type(store), store.name)
        return decode_blob(data)


def is_ours(value: Any) -> bool:
    """Whether `value` is a proxy made by steersman (user proxies are left alone)."""
    return isinstance(value, Proxy) and isinstance(get_factory(value), PrefetchFactory)


def key_of(proxy: Any) -> tuple[str, Any]:
    """The (store name, key) a steersman proxy points to."""
    factory = get_factory(proxy)
    assert isinstance(factory, PrefetchFactory), f"not a steersman proxy: {factory!r}"
    return factory.store_config.name, factory.key


def resolve(proxy: Any) -> Any:
    """The plain object behind a steersman proxy (waits for a prefetch under way).

    Raises:
        ProxyFetchError: Naming the store and key, when the object cannot be fetched.
    """
    try:
        return extract(proxy)
    except Exception as exc:
        name, key = key_of(proxy)
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise ProxyFetchError(f"could not fetch {key!r} from ProxyStore store {name!r}: "
                           f"{cause!r}") from exc


# --- stores -----------------------------------------------------------------------------------


def register(choice: str | Store[Any]) -> str:
    """Name of a registered store; a Store object is registered first. Raises on unknown names."""
    if isinstance(choice, Store):
        known = get_store(choice.name)
        if known is None:
            register_store(choice)
        elif known is not choice:
            raise ValueError(f"another store is already registered as {choice.name!r}; give "
                             "this one a different name or pass the name of the registered one")
        return choice.name
    if isinstance(choice, str):
        if get_store(choice) is None:
            raise ValueError(f"proxystore_name {choice!r} is not a registered ProxyStore store; "
                             f"registered stores: {registered_names()} (register it with "
                             "proxystore.store.register_store, or pass the Store object)")
        return choice
    raise TypeError(f"a ProxyStore store must be a registered name or a Store, got {choice!r}")


def registered_names() -> list[str]:
    """Names of the stores registered in this process."""
    from proxystore.store import _stores, _stores_lock

    with _stores_lock:
        return sorted(_stores)


def json_config(name: str) -> dict[str, Any] | None:
    """The store's configuration as JSON data, so a worker elsewhere can rebuild the store.

    None when the configuration holds Python objects (custom serializers): such a store must
    then be registered under the same name in every worker process.
    """
    store = get_store(name)
    assert store is not None, f"store {name!r} is not registered"
    try:
        data: dict[str, Any] = json.loads(store.config().model_dump_json())
    except (TypeError, ValueError) as exc:
        logger.warning("store %r cannot describe itself as JSON (%s): workers must register it "
                       "themselves", name, exc)
        return None
    return data


def find_store(name: str, config: dict[str, Any] | None) -> Store[Any]:
    """The store named `name` in this process, rebuilt from `config` (and registered) if needed."""
    store = get_store(name)
    if store is not None:
        return store
    if config is None:
        raise LookupError(f"ProxyStore store {name!r} is not registered in this process "
                          f"(pid {os.getpid()}) and its configuration was not sent; "
                          f"registered stores: {registered_names()}")
    return get_or_create_store(StoreConfig.model_validate(config), register=True)


def put(store: Store[Any], frames: list[Frame]) -> Proxy[Any]:
    """Store an already serialized value; return a key-only proxy to it."""
    key: Any
    if _is_file(store):
        key = _file_put(store.connector, frames)
    else:
        key = store.put(encode_blob(frames), serializer=_as_is)
    factory = PrefetchFactory(key, store.config())
    return Proxy(factory)


def evict(name: str, key: Any) -> None:
    """Remove one stored value; a store that is gone or fails is logged, not raised."""
    store = get_store(name)
    if store is None:
        logger.warning("cannot evict %r: store %r is no longer registered", key, name)
        return
    try:
        store.evict(key)
    except Exception as exc:  # eviction is cleanup: never fail a campaign for it
        logger.warning("could not evict %r from store %r: %r", key, name, exc)


def _as_is(data: bytes) -> bytes:
    return data


# --- file stores without extra copies -----------------------------------------------------------
# FileConnector.set() takes one buffer and get() returns read-only bytes: for a large array that
# is a join on the way in and a copy on the way out (to make arrays writable). With the same files
# (the object in ``store_dir/<filename>``, then an empty ``<filename>.ready`` marker, as in
# proxystore 1.x), the frames are written with one vectored write and read straight into a
# writable buffer. Only the exact FileConnector class takes this path.


def _is_file(store: Store[Any]) -> bool:
    return type(store.connector) is FileConnector


def _file_put(connector: FileConnector, frames: list[Frame]) -> FileKey:
    key = connector.new_key()
    path = os.path.join(connector.store_dir, key.filename)
    with open(path, "wb", buffering=0) as file:
        _write_all(file.fileno(), blob_parts(frames))
    with open(path + ".ready", "wb"):
        pass
    return key


def _file_get(connector: FileConnector, key: FileKey) -> memoryview | None:
    path = os.path.join(connector.store_dir, key.filename)
    if not os.path.exists(path + ".ready"):
        return None
    with open(path, "rb", buffering=0) as file:
        size = os.fstat(file.fileno()).st_size
        # Uninitialized memory: zero-filling first would touch every page twice.
        view = np.empty(size, dtype=np.uint8).data.cast("B")
        got = 0
        while got < size:
            count = file.readinto(view[got:])
            if not count:
                raise EOFError(f"{path} ended after {got} of {size} bytes")
            got += count
    return view


def _write_all(fd: int, views: list[memoryview]) -> None:
    """Write every view, resuming after partial writes (at most IOV_MAX views per call)."""
    while views:
        written = os.writev(fd, views[:512])
        while views and written >= views[0].nbytes:
            written -= views.pop(0).nbytes
        if written:
            views[0] = views[0][written:]


# --- a fetch pool per process ---------------------------------------------------------------

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _fetch_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="steersman-fetch")
        return _pool


def _forget_pool_in_child() -> None:
    """A forked child inherits the pool object but not its threads: start afresh."""
    global _pool, _pool_lock
    _pool_lock = threading.Lock()
    _pool = None


os.register_at_fork(after_in_child=_forget_pool_in_child)
