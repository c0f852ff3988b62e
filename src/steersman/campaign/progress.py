"""Live progress of a campaign: per-topic counts, slots per pool and throughput.

Two displays share one set of counters: a `rich` panel redrawn a few times a second in a
terminal, and `tqdm` bars (``tqdm.auto``, so notebooks get widgets). Both are optional imports.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steersman.thinker.resources import ResourceCounter

logger = logging.getLogger(__name__)

#: Redraws per second of the rich display.
REFRESH_PER_SECOND = 4
#: Seconds of history behind the throughput figure.
THROUGHPUT_WINDOW = 10.0
MODES = ("auto", "rich", "tqdm", "off")


@dataclass
class TopicCounts:
    submitted: int = 0
    done: int = 0
    failed: int = 0
    duplicates: int = 0

    @property
    def running(self) -> int:
        """Sent and not yet back (queued or running at the task server)."""
        return max(0, self.submitted - self.done - self.failed)


class Counters:
    """Thread-safe counts the displays read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.topics: dict[str, TopicCounts] = {}
        self.started = monotonic()
        self._finished: deque[float] = deque()
        self.total_finished = 0

    def sent(self, topic: str, count: int = 1) -> None:
        with self._lock:
            self._topic(topic).submitted += count

    def received(self, topic: str, success: bool) -> None:
        now = monotonic()
        with self._lock:
            counts = self._topic(topic)
            if success:
                counts.done += 1
            else:
                counts.failed += 1
            self.total_finished += 1
            self._finished.append(now)

    def duplicate(self, topic: str) -> None:
        with self._lock:
            self._topic(topic).duplicates += 1

    def snapshot(self) -> tuple[dict[str, TopicCounts], float, float]:
        """Copies of the per-topic counts, results per second lately, seconds elapsed."""
        now = monotonic()
        with self._lock:
            while self._finished and self._finished[0] < now - THROUGHPUT_WINDOW:
                self._finished.popleft()
            window = min(THROUGHPUT_WINDOW, now - self.started)
            rate = len(self._finished) / window if window > 0 else 0.0
            topics = {t: TopicCounts(**vars(c)) for t, c in self.topics.items()}
        return topics, rate, now - self.started

    def _topic(self, topic: str) -> TopicCounts:
        counts = self.topics.get(topic)
        if counts is None:
            counts = self.topics[topic] = TopicCounts()
        return counts


class Display:
    """A progress display: started and stopped with the thinker, told of every result."""

    def __init__(self, counters: Counters, rec: ResourceCounter | None, title: str):
        self.counters = counters
        self.rec = rec
        self.title = title

    def start(self) -> None: ...

    def update(self, topic: str) -> None:
        """A result of `topic` arrived (the rich display ignores it: it redraws on a clock)."""

    def stop(self) -> None: ...


class RichDisplay(Display):
    """One panel in the terminal, redrawn :data:`REFRESH_PER_SECOND` times a second."""

    def start(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self._live = Live(get_renderable=self.render, console=Console(),
                          refresh_per_second=REFRESH_PER_SECOND, transient=False,
                          redirect_stdout=True, redirect_stderr=True)
        self._live.start()

    def stop(self) -> None:
        self._live.stop()

    def render(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        topics, rate, elapsed = self.counters.snapshot()
        table = Table(title=self.title, title_justify="left", expand=False)
        for name in ("topic", "submitted", "running", "done", "failed"):
            table.add_column(name, justify="left" if name == "topic" else "right")
        for topic, counts in sorted(topics.items()):
            failed = f"[red]{counts.failed}[/red]" if counts.failed else "0"
            table.add_row(topic, str(counts.submitted), str(counts.running), str(counts.done),
                          failed)
        lines: list[Any] = [table]
        slots = slot_summary(self.rec)
        if slots:
            lines.append(Text(f"slots (busy/allocated): {slots}"))
        lines.append(Text(f"{rate:.1f} results/s over the last {THROUGHPUT_WINDOW:.0f} s, "
                          f"{self.counters.total_finished} in {format_duration(elapsed)}"))
        return Group(*lines)


class TqdmDisplay(Display):
    """One tqdm bar per topic, as the seeds' notebooks draw them (works in Jupyter too)."""

    def start(self) -> None:
        self._bars: dict[str, Any] = {}
        self._lock = threading.Lock()

    def update(self, topic: str) -> None:
        from tqdm.auto import tqdm

        topics, _, _ = self.counters.snapshot()
        counts = topics.get(topic)
        if counts is None:
            return
        with self._lock:
            bar = self._bars.get(topic)
            if bar is None:
                bar = self._bars[topic] = tqdm(desc=topic, unit="result", leave=True)
            bar.n = counts.done + counts.failed
            bar.set_postfix(submitted=counts.submitted, running=counts.running,
                            failed=counts.failed, refresh=False)
            bar.update(0)

    def stop(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.refresh()
                bar.close()
            self._bars.clear()


def slot_summary(rec: ResourceCounter | None) -> str:
    """'pool busy/allocated' for each pool with slots, e.g. 'simulate 3/4, train 1/1'."""
    if rec is None:
        return ""
    parts = []
    for pool, (allocated, idle) in rec.snapshot().items():
        if allocated or pool is not None:
            name = "unallocated" if pool is None else pool
            parts.append(f"{name} {allocated - idle}/{allocated}")
    return ", ".join(parts)


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def choose_mode(progress: bool | str | None) -> str:
    """Resolve the `progress` argument of a thinker to 'rich', 'tqdm' or 'off'.

    None means rich when stdout is a terminal and no tqdm bar is already open (a thinker that
    draws its own bars, as in the seeds, keeps them undisturbed), and off otherwise.
    """
    if progress is None or progress == "auto":
        if not _stdout_is_terminal() or _tqdm_bars_open():
            return "off"
        return "rich" if _importable("rich") else "off"
    if progress is False or progress == "off":
        return "off"
    mode = ("rich" if _importable("rich") else "tqdm") if progress is True else progress
    if mode in ("rich", "tqdm"):
        if not _importable(str(mode)):
            raise ValueError(f"progress={progress!r} needs the {mode!r} package: "
                             "pip install 'steersman[progress]'")
        return str(mode)
    raise ValueError(f"unknown progress={progress!r}; valid: None, True, False, "
                     f"{', '.join(repr(m) for m in MODES)}")


def make_display(mode: str, counters: Counters, rec: ResourceCounter | None,
                 title: str) -> Display | None:
    if mode == "rich":
        return RichDisplay(counters, rec, title)
    if mode == "tqdm":
        return TqdmDisplay(counters, rec, title)
    return None


def _stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _tqdm_bars_open() -> bool:
    module = sys.modules.get("tqdm")
    cls = getattr(module, "tqdm", None)
    instances = getattr(cls, "_instances", None)
    try:
        return bool(instances) and len(instances) > 0  # type: ignore[arg-type]
    except TypeError:
        return False


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
