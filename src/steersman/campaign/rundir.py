"""The run directory: where a campaign leaves its parameters, trace, log and journal.

Layout::

    params.json       thinker class, how the campaign was launched, parameters it saved
    results.jsonl     one Result a line (the seeds' trace format), in the order received
    steersman.log     the steersman and thinker loggers
    journal.bin       every request sent and result received, for resume (see journal.py)
    allocation.jsonl  slots allocated per pool over time
    .lock             held (flock) by the live thinker, so status can tell whether it runs
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from time import time
from typing import Any

from steersman.exceptions import RunDirectoryBusy, RunDirectoryError
from steersman.models.result import jsonable

logger = logging.getLogger(__name__)

PARAMS = "params.json"
RESULTS = "results.jsonl"
LOG = "steersman.log"
JOURNAL = "journal.bin"
ALLOCATION = "allocation.jsonl"
LOCK = ".lock"
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


# --- how the campaign was launched (set by `steersman run` / `resume`) ------------------------


@dataclass
class Launch:
    """The campaign file and arguments `steersman run` called, recorded in params.json."""

    path: str
    args: list[str] = field(default_factory=list)
    command: str = "run"


_launch: Launch | None = None


def set_launch(launch: Launch | None) -> None:
    """Record how the current process launched its campaign (None to forget)."""
    global _launch
    _launch = launch


def current_launch() -> Launch | None:
    """How the current process launched its campaign, if through the CLI."""
    return _launch


# --- JSON that never fails --------------------------------------------------------------------


#: One encoder for every call: building one per call would cost more than most encodings.
_ENCODER = json.JSONEncoder(default=jsonable, allow_nan=False, separators=(",", ":"))


def to_json(obj: Any) -> str:
    """Strict JSON of `obj`; what JSON cannot hold becomes null (NaN), text or its repr."""
    try:  # the common case, plain data, takes the fast path
        return _ENCODER.encode(obj)
    except ValueError:  # a NaN or infinity somewhere
        return _ENCODER.encode(jsonable(obj))


# --- the directory ----------------------------------------------------------------------------


class RunDirectory:
    """Owns a run directory for one live thinker: lock, parameters, trace and log files.

    Args:
        path: The directory; created if missing.
        owner: What the lock file names as holder (shown by ``steersman status``).

    Raises:
        RunDirectoryError: If the path exists and is not a directory.
        RunDirectoryBusy: If another live process holds the directory.
    """

    def __init__(self, path: str | os.PathLike[str], owner: str = ""):
        self.path = Path(path).expanduser().resolve()
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryError(f"run dir {str(self.path)!r} exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _take_lock(self.path / LOCK, owner)
        self._params_lock = threading.Lock()
        self._handlers: list[tuple[logging.Logger, list[logging.Handler], tuple[int, bool]]] = []
        self._allocation_fd = -1

    # --- parameters -----------------------------------------------------------------------

    def read_params(self) -> dict[str, Any]:
        return read_params(self.path)

    def update_params(self, update: Callable[[dict[str, Any]], None]) -> None:
        """Apply `update` to params.json, written atomically (a reader never sees half)."""
        with self._params_lock:
            params = self.read_params()
            update(params)
            tmp = self.path / f".{PARAMS}.tmp"
            tmp.write_text(to_json(params) + "\n")
            os.replace(tmp, self.path / PARAMS)

    # --- log ------------------------------------------------------------------------------

    def attach_log(self, logger_names: list[str]) -> None:
        """Send the named loggers (INFO and above) to steersman.log as well.

        Loggers quieter than INFO are opened up to INFO for the file only: what reaches the
        user's own handlers is unchanged.
        """
        handler = logging.FileHandler(self.path / LOG, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.setLevel(logging.INFO)
        for name in dict.fromkeys(logger_names):
            if any(name.startswith(f"{other.name}.") for other, *_ in self._handlers):
                continue  # its records already reach the handler through a parent
            target = logging.getLogger(name)
            saved = (target.level, target.propagate)
            added: list[logging.Handler] = [handler]
            effective = target.getEffectiveLevel()
            if effective > logging.INFO and target.propagate and target.parent is not None:
                forward = _Forward(target.parent, effective)
                target.addHandler(forward)
                added.append(forward)
                target.propagate = False
                target.setLevel(logging.INFO)
            target.addHandler(handler)
            self._handlers.append((target, added, saved))

    def detach_log(self) -> None:
        for target, added, (level, propagate) in self._handlers:
            for handler in added:
                target.removeHandler(handler)
            target.setLevel(level)
            target.propagate = propagate
        for _, added, _ in self._handlers[:1]:
            added[0].close()
        self._handlers.clear()

    # --- trace files ----------------------------------------------------------------------

    def open_traces(self) -> None:
        """Open allocation.jsonl for appending (results.jsonl has a writer of its own: see
        lines.py)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._allocation_fd = os.open(self.path / ALLOCATION, flags, 0o644)

    def write_allocation(self, allocated: Mapping[str | None, int], when: float | None = None,
                         busy: Mapping[str | None, int] | None = None) -> None:
        """Append the slots allocated to each pool (the unallocated pool as "unallocated")."""
        entry: dict[str, Any] = {
            "time": time() if when is None else when,
            "allocated": {_pool_name(p): n for p, n in allocated.items()},
        }
        if busy is not None:
            entry["busy"] = {_pool_name(p): n for p, n in busy.items()}
        os.write(self._allocation_fd, (json.dumps(entry) + "\n").encode())

    def close_traces(self) -> None:
        fd, self._allocation_fd = self._allocation_fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.fsync(fd)
            os.close(fd)

    # --- life cycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Close files, detach the log and release the lock (idempotent)."""
        self.close_traces()
        self.detach_log()
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1


class _Forward(logging.Handler):
    """Pass records at or above the logger's former level on to its parents' handlers."""

    def __init__(self, parent: logging.Logger, level: int):
        super().__init__(level)
        self._parent = parent

    def emit(self, record: logging.LogRecord) -> None:
        self._parent.callHandlers(record)


def _pool_name(pool: str | None) -> str:
    return "unallocated" if pool is None else pool


def _take_lock(path: Path, owner: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirectoryBusy(f"run dir {str(path.parent)!r} is in use by "
                               f"{describe_holder(_read_holder(path))}; wait for it to finish "
                               "or use another run_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, to_json(holder_info(owner)).encode(), 0)
    return fd


def holder_info(owner: str = "") -> dict[str, Any]:
    """Who holds a lock: this process."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "owner": owner, "since": time()}


def describe_holder(info: Mapping[str, Any]) -> str:
    """'Squares (pid 12) on host' for the contents of a lock file."""
    owner = info.get("owner") or f"pid {info.get('pid', '?')}"
    return f"{owner} on {info.get('host', '?')}"


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def lock_holder(run_dir: Path) -> dict[str, Any] | None:
    """Who holds the run directory now (None if nobody: no live thinker)."""
    path = run_dir / LOCK
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def read_params(run_dir: Path) -> dict[str, Any]:
    """params.json of a run directory ({} if there is none yet)."""
    try:
        data = json.loads((run_dir / PARAMS).read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ValueError(f"{run_dir / PARAMS} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{run_dir / PARAMS} must hold a JSON object")
    return data


def iter_lines(path: Path) -> Iterator[bytes]:
    """The whole lines of a JSON-lines file (a torn last line is skipped)."""
    try:
        with open(path, "rb") as stream:
            for line in stream:
                if line.endswith(b"\n"):
                    yield line
    except FileNotFoundError:
        return
