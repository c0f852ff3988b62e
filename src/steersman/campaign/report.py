"""The report of a run: PNG plots and a short text summary, from the run directory's files.

Plots (in ``RUN_DIR/report/``):

- ``allocation.png``: one row per worker, each task a bar coloured by topic; below it the slots
  allocated to each pool over time.
- ``utilisation.png``: busy workers over time, stacked by topic.
- ``durations.png``: compute time of tasks, by method.
- ``overhead.png``: per task, time queued at the server before a worker took it, and the
  communication overhead (sending the request and returning the result).
- ``best.png``: the best value found over time, when results carry numbers.

Figures are drawn on matplotlib's Agg canvas without pyplot, so reporting never touches the
caller's plotting backend (a notebook's, say).
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from steersman.campaign.rundir import ALLOCATION, RESULTS, iter_lines, read_params

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

GOALS = ("max", "min")
#: Time bins of the utilisation plot.
UTILISATION_BINS = 600
#: Above this many worker rows, only some rows are labelled.
LABELLED_ROWS = 24


@dataclass
class Trace:
    """The columns of results.jsonl the report needs (times in seconds since `origin`)."""

    task_id: list[str] = field(default_factory=list)
    topic: list[str] = field(default_factory=list)
    method: list[str] = field(default_factory=list)
    worker: list[str] = field(default_factory=list)
    success: list[bool] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    created: list[float] = field(default_factory=list)
    received: list[float] = field(default_factory=list)
    started: list[float] = field(default_factory=list)
    ended: list[float] = field(default_factory=list)
    returned: list[float] = field(default_factory=list)
    origin: float = 0.0

    def __len__(self) -> int:
        return len(self.task_id)

    def array(self, name: str) -> np.ndarray:
        return np.asarray(getattr(self, name), dtype=float)


def load_trace(path: Path) -> Trace:
    """Read the final results of results.jsonl (duplicates by task id and partials skipped)."""
    trace = Trace()
    seen: set[str] = set()
    nan = math.nan
    for line in iter_lines(path):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        task_id = data.get("task_id")
        if data.get("complete") is False or task_id in seen:
            continue
        seen.add(task_id)
        stamps = data.get("timestamp") or {}
        worker = data.get("worker_info") or {}
        value = data.get("value")
        number = (float(value) if isinstance(value, (int, float)) and not isinstance(value, bool)
                  else nan)
        trace.task_id.append(task_id)
        trace.topic.append(str(data.get("topic", "default")))
        trace.method.append(str(data.get("method")))
        trace.worker.append(f"{worker.get('hostname') or '?'} pid {worker.get('pid') or '?'}")
        trace.success.append(bool(data.get("success")))
        trace.value.append(number if math.isfinite(number) else nan)
        for name, key in (("created", "created"), ("received", "input_received"),
                          ("started", "compute_started"), ("ended", "compute_ended"),
                          ("returned", "result_received")):
            stamp = stamps.get(key)
            getattr(trace, name).append(nan if stamp is None else float(stamp))
    return trace


def load_allocation(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Times and slots allocated per pool from allocation.jsonl (pools missing count as 0)."""
    times: list[float] = []
    rows: list[dict[str, int]] = []
    for line in iter_lines(path):
        try:
            entry = json.loads(line)
            times.append(float(entry["time"]))
            rows.append({str(k): int(v) for k, v in entry["allocated"].items()})
        except (ValueError, KeyError, TypeError):
            continue
    pools = sorted({p for row in rows for p in row}, key=lambda p: (p == "unallocated", p))
    return np.asarray(times), {p: np.asarray([row.get(p, 0) for row in rows]) for p in pools}


# --- the report ---------------------------------------------------------------------------


def write_report(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None,
                 goal: str | None = None, value_topic: str | None = None) -> Path:
    """Draw the plots and write the summary of a run.

    Args:
        run_dir: The run directory.
        out_dir: Where to write (default: ``RUN_DIR/report``).
        goal: Whether the best value is the ``'max'`` or ``'min'`` (default: the ``goal``
            parameter the thinker saved, else max).
        value_topic: Topic whose numeric values are the objective (default: the
            ``value_topic`` parameter the thinker saved, else the topic with most numbers).

    Returns:
        The directory holding the PNGs and ``summary.txt``.
    """
    from steersman.campaign.inspection import status

    run = Path(run_dir).expanduser().resolve()
    info = status(run, last=0)
    saved = (read_params(run).get("params") or {})
    goal = goal or saved.get("goal") or "max"
    if goal not in GOALS:
        raise ValueError(f"unknown goal {goal!r}; valid goals: {list(GOALS)}")
    out = Path(out_dir).expanduser().resolve() if out_dir is not None else run / "report"
    out.mkdir(parents=True, exist_ok=True)

    trace = load_trace(run / RESULTS)
    alloc_times, alloc = load_allocation(run / ALLOCATION)
    starts = [a for a in (trace.array("created"), alloc_times) if np.isfinite(a).any()]
    trace.origin = min(float(np.nanmin(a)) for a in starts) if starts else 0.0
    topics = sorted(set(trace.topic))
    colours = _colours(topics)
    topic = value_topic or saved.get("value_topic") or _value_topic(trace)
    if topic is not None and topic not in topics:
        raise ValueError(f"unknown value_topic {topic!r}; topics in this run: {topics}")

    lanes = assign_lanes(trace)
    capacity = slot_capacity(trace, lanes, info.get("session_starts") or [])
    drawn = []
    for name, draw in (
        ("allocation.png", lambda: _plot_allocation(trace, lanes, alloc_times, alloc, colours)),
        ("utilisation.png", lambda: _plot_utilisation(trace, capacity, colours)),
        ("durations.png", lambda: _plot_durations(trace)),
        ("overhead.png", lambda: _plot_overhead(trace, colours)),
        ("best.png", lambda: _plot_best(trace, topic, goal)),
    ):
        figure = draw()
        if figure is not None:
            figure.savefig(out / name, dpi=110)
            drawn.append(name)
        elif (out / name).exists():
            (out / name).unlink()  # stale from an earlier report
    text = summary(run, info, trace, capacity, topic, goal, drawn)
    (out / "summary.txt").write_text(text)
    logger.info("wrote the report of %s to %s", run, out)
    return out


# --- computations ---------------------------------------------------------------------------


@dataclass
class Lanes:
    """A row for each task: workers that run several tasks at once get one row per slot."""

    row: np.ndarray  # row index of each task (-1: no compute timestamps)
    labels: list[str]


def assign_lanes(trace: Trace) -> Lanes:
    """Pack each worker's tasks into as few rows as never overlap (one row per busy slot)."""
    started, ended = trace.array("started"), trace.array("ended")
    rows = np.full(len(trace), -1)
    by_worker: dict[str, list[int]] = {}
    for i, worker in enumerate(trace.worker):
        if math.isfinite(started[i]) and math.isfinite(ended[i]):
            by_worker.setdefault(worker, []).append(i)
    labels: list[str] = []
    for worker in sorted(by_worker):
        order = sorted(by_worker[worker], key=lambda i: started[i])
        free: list[tuple[float, int]] = []  # (end of its last task, row)
        used: list[int] = []
        for i in order:
            if free and free[0][0] <= started[i]:
                _, row = heapq.heappop(free)
            else:
                row = len(labels) + len(used)
                used.append(row)
            rows[i] = row
            heapq.heappush(free, (ended[i], row))
        for k, _ in enumerate(used):
            labels.append(worker if len(used) == 1 else f"{worker} #{k}")
    return Lanes(rows, labels)


@dataclass
class Capacity:
    """The worker slots a run had: per session (a resumed run's workers are new processes),
    the rows its tasks used, over the span from its first task's start to its last's end."""

    slots: list[int]  # per session that ran tasks
    slot_seconds: float  # sum over those sessions of slots x span
    busy_seconds: float  # compute time of every task

    @property
    def utilisation(self) -> float:
        return self.busy_seconds / self.slot_seconds if self.slot_seconds > 0 else 0.0

    @property
    def most_at_once(self) -> int:
        return max(self.slots, default=0)


def slot_capacity(trace: Trace, lanes: Lanes, session_starts: list[float]) -> Capacity:
    """Each task belongs to the session during which it started; idle time between sessions
    (the campaign was down) counts as no one's."""
    started, ended = trace.array("started"), trace.array("ended")
    ok = np.flatnonzero(lanes.row >= 0)
    starts = sorted(float(t) for t in session_starts if t is not None)
    session = np.searchsorted(np.asarray(starts, dtype=float), started[ok], side="right")
    slots, slot_seconds = [], 0.0
    for k in np.unique(session):
        tasks = ok[session == k]
        span = float(ended[tasks].max() - started[tasks].min())
        slots.append(len(np.unique(lanes.row[tasks])))
        slot_seconds += slots[-1] * span
    busy = float(np.sum(ended[ok] - started[ok]))
    return Capacity(slots, slot_seconds, busy)


def busy_average(starts: np.ndarray, ends: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Average number of intervals in progress over each bin between `edges`."""
    if len(starts) == 0:
        return np.zeros(len(edges) - 1)
    times = np.concatenate([starts, ends])
    steps = np.concatenate([np.ones(len(starts)), -np.ones(len(ends))])
    order = np.argsort(times, kind="stable")
    times, busy = times[order], np.cumsum(steps[order])
    area = np.concatenate([[0.0], np.cumsum(busy[:-1] * np.diff(times))])  # integral at times
    integral = np.interp(edges, times, area, left=0.0, right=area[-1])
    return np.diff(integral) / np.diff(edges)


def _value_topic(trace: Trace) -> str | None:
    counts: dict[str, int] = {}
    for topic, value, ok in zip(trace.topic, trace.value, trace.success):
        if ok and math.isfinite(value):
            counts[topic] = counts.get(topic, 0) + 1
    return max(counts, key=lambda t: counts[t]) if counts else None


def _colours(topics: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(topics) <= 10 else "tab20"]
    return {topic: palette(i % palette.N) for i, topic in enumerate(topics)}


def _figure(width: float, height: float, rows: int = 1, sharex: bool = False,
            ratios: Sequence[float] | None = None) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(rows, 1, sharex=sharex, squeeze=False,
                           gridspec_kw={"height_ratios": ratios} if ratios else None)
    return figure, list(axes[:, 0])


def _duration_axis(axis: Any) -> None:
    """Label a logarithmic axis of seconds as readable durations (100 us, 2.0 ms, 1.50 s)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: _seconds(value)))
    axis.set_minor_formatter(NullFormatter())


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


# --- plots ----------------------------------------------------------------------------------


def _plot_allocation(trace: Trace, lanes: Lanes, alloc_times: np.ndarray,
                     alloc: dict[str, np.ndarray], colours: dict[str, Any]) -> Figure | None:
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    n_rows = len(lanes.labels)
    has_alloc = len(alloc_times) > 0
    if n_rows == 0 and not has_alloc:
        return None
    top = min(9.0, 1.2 + 0.28 * max(n_rows, 4))
    figure, axes = _figure(11, top + (2.4 if has_alloc else 0.4), rows=2 if has_alloc else 1,
                           sharex=True, ratios=[top, 2.2] if has_alloc else None)
    ax = axes[0]
    started = trace.array("started") - trace.origin
    ended = trace.array("ended") - trace.origin
    topics = np.asarray(trace.topic)
    height = 0.8 if n_rows <= 200 else 1.0
    for topic, colour in colours.items():
        mask = (topics == topic) & (lanes.row >= 0)
        if not mask.any():
            continue
        s, e, r = started[mask], np.maximum(ended[mask], started[mask]), lanes.row[mask]
        lo, hi = r - height / 2, r + height / 2
        verts = np.stack([np.column_stack([s, lo]), np.column_stack([s, hi]),
                          np.column_stack([e, hi]), np.column_stack([e, lo])], axis=1)
        ax.add_collection(PolyCollection(list(verts), facecolors=[colour], edgecolors="none",
                                         rasterized=len(s) > 5000))
    if n_rows:
        ax.set_ylim(n_rows - 0.5, -0.5)
        step = max(1, math.ceil(n_rows / LABELLED_ROWS))
        ticks = list(range(0, n_rows, step))
        ax.set_yticks(ticks)
        ax.set_yticklabels([lanes.labels[i] for i in ticks], fontsize=8)
        finite = np.isfinite(ended)
        if finite.any():
            ax.set_xlim(min(0.0, float(np.nanmin(started))), float(np.nanmax(ended[finite])))
        ax.legend(handles=[Patch(color=c, label=t) for t, c in colours.items()], title="topic",
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        _no_data(ax, "no task carries compute timestamps")
    ax.set_ylabel("worker")
    ax.set_title(f"Tasks on workers ({len(trace)} tasks, {n_rows} worker slots)")
    if has_alloc:
        low = axes[1]
        t = alloc_times - trace.origin
        for pool, counts in alloc.items():
            style = {"color": "0.6", "linestyle": "--"} if pool == "unallocated" else {
                "color": colours.get(pool)}
            end_t = max(float(t[-1]), float(np.nanmax(ended)) if np.isfinite(ended).any() else 0)
            low.step(np.append(t, end_t), np.append(counts, counts[-1]), where="post",
                     label=pool, linewidth=1.8, **style)
        low.set_ylabel("slots allocated")
        low.set_ylim(bottom=0)
        low.legend(title="pool", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        low.set_xlabel("time since start (s)")
    else:
        ax.set_xlabel("time since start (s)")
    return figure


def _plot_utilisation(trace: Trace, capacity: Capacity,
                      colours: dict[str, Any]) -> Figure | None:
    started = trace.array("started") - trace.origin
    ended = trace.array("ended") - trace.origin
    ok = np.isfinite(started) & np.isfinite(ended)
    if not ok.any():
        return None
    t0, t1 = float(started[ok].min()), float(ended[ok].max())
    if t1 <= t0:
        t1 = t0 + 1e-6
    edges = np.linspace(t0, t1, UTILISATION_BINS + 1)
    topics = np.asarray(trace.topic)
    stacks, names = [], []
    for topic in colours:
        mask = ok & (topics == topic)
        if mask.any():
            stacks.append(busy_average(started[mask], ended[mask], edges))
            names.append(topic)
    figure, (ax,) = _figure(11, 4.2)
    mids = (edges[:-1] + edges[1:]) / 2
    ax.stackplot(mids, stacks, labels=names, colors=[colours[n] for n in names], alpha=0.9)
    workers = capacity.most_at_once
    ax.axhline(workers, color="0.2", linestyle="--", linewidth=1.2,
               label=f"worker slots used ({workers})")
    mean = capacity.utilisation
    ax.set_xlim(min(0.0, t0), t1)
    ax.set_ylim(0, max(workers, 1) * 1.12)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("busy workers (average per bin)")
    ax.set_title(f"Worker utilisation: {100 * mean:.1f}% on average")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return figure


def _plot_durations(trace: Trace) -> Figure | None:
    duration = trace.array("ended") - trace.array("started")
    methods = np.asarray(trace.method)
    names = sorted({m for m, d in zip(trace.method, duration) if math.isfinite(d)})
    if not names:
        return None
    data = [duration[(methods == m) & np.isfinite(duration)] for m in names]
    figure, (ax,) = _figure(10, 1.6 + 0.6 * len(names))
    import matplotlib

    horizontal: dict[str, Any] = ({"orientation": "horizontal"}
                                  if _version(matplotlib.__version__) >= (3, 10)
                                  else {"vert": False})
    ax.boxplot(data, whis=(5, 95), showfliers=False, widths=0.6,
               medianprops={"color": "black"}, **horizontal)
    ax.set_yticks(range(1, len(names) + 1))
    ax.set_yticklabels(names)
    positive = np.concatenate(data)
    positive = positive[positive > 0]
    if len(positive) and positive.max() / max(positive.min(), 1e-9) > 100:
        ax.set_xscale("log")
        _duration_axis(ax.xaxis)
    for k, values in enumerate(data, start=1):
        ax.annotate(f"n={len(values)}, median {_seconds(float(np.median(values)))}",
                    xy=(1.0, k), xycoords=("axes fraction", "data"), xytext=(6, 0),
                    textcoords="offset points", va="center", fontsize=9)
    ax.set_xlabel("compute time; boxes: quartiles, whiskers: 5th-95th percentile")
    ax.set_title("Task durations by method")
    ax.invert_yaxis()
    return figure


def _plot_overhead(trace: Trace, colours: dict[str, Any]) -> Figure | None:
    created, received = trace.array("created"), trace.array("received")
    started, ended = trace.array("started"), trace.array("ended")
    returned = trace.array("returned")
    queued = np.where(np.isfinite(received), started - received, started - created)
    overhead = (returned - created) - (ended - started) - np.nan_to_num(queued)
    x = created - trace.origin
    if not (np.isfinite(queued).any() or np.isfinite(overhead).any()):
        return None
    figure, axes = _figure(11, 6.4, rows=2, sharex=True)
    topics = np.asarray(trace.topic)
    panels = (
        (axes[0], queued, "queued at the server", "Time each task waited for a worker"),
        (axes[1], overhead, "overhead",
         "Communication overhead: lifetime minus compute and waiting"),
    )
    for ax, values, label, title in panels:
        for topic, colour in colours.items():
            mask = (topics == topic) & np.isfinite(values) & np.isfinite(x)
            if mask.any():
                shown = np.maximum(values[mask], 1e-6)
                ax.scatter(x[mask], shown, s=6, color=colour, alpha=0.6, linewidths=0,
                           rasterized=mask.sum() > 2000,
                           label=f"{topic} (median {_seconds(float(np.median(values[mask])))})")
        ax.set_yscale("log")
        _duration_axis(ax.yaxis)
        ax.set_ylabel(label)
        ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                  markerscale=2.5)
    axes[1].set_xlabel("time the task was sent, since start (s)")
    return figure


def _plot_best(trace: Trace, topic: str | None, goal: str) -> Figure | None:
    if topic is None:
        return None
    values = trace.array("value")
    when = trace.array("returned") - trace.origin
    mask = (np.asarray(trace.topic) == topic) & np.isfinite(values) & np.isfinite(when)
    mask &= np.asarray(trace.success, dtype=bool)
    if not mask.any():
        return None
    order = np.argsort(when[mask], kind="stable")
    t, v = when[mask][order], values[mask][order]
    best = np.maximum.accumulate(v) if goal == "max" else np.minimum.accumulate(v)
    figure, (ax,) = _figure(10, 4.6)
    ax.scatter(t, v, s=8, color="0.65", linewidths=0, label=f"{topic} results",
               rasterized=len(t) > 2000)
    ax.step(t, best, where="post", color="tab:red", linewidth=2,
            label=f"best so far ({goal})")
    k = int(np.argmax(v) if goal == "max" else np.argmin(v))
    ax.annotate(f"best {v[k]:.6g} at {t[k]:.1f} s", xy=(t[k], v[k]), xytext=(-10, 12),
                textcoords="offset points", ha="right", fontsize=9,
                arrowprops={"arrowstyle": "-", "color": "0.3"})
    ax.set_xlabel("time the result arrived, since start (s)")
    ax.set_ylabel("value")
    ax.set_title(f"Best value found over time ({len(t)} results of topic {topic!r})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return figure


# --- summary --------------------------------------------------------------------------------


def summary(run: Path, info: dict[str, Any], trace: Trace, capacity: Capacity,
            topic: str | None, goal: str, drawn: list[str]) -> str:
    """The text summary of a run."""
    lines = [f"Run directory: {run}", f"Thinker: {info.get('thinker') or 'unknown'}"]
    campaign = info.get("campaign")
    if campaign:
        lines.append(f"Campaign: {campaign.get('path')} {' '.join(campaign.get('args', []))}")
    lines.append(f"State: {info['state']} ({info['sessions']} session(s), "
                 f"{info['pending']} request(s) never came back)")
    n = len(trace)
    if n == 0:
        lines.append("No results yet.")
        return "\n".join(lines) + "\n"
    created, returned = trace.array("created"), trace.array("returned")
    started, ended = trace.array("started"), trace.array("ended")
    span = float(np.nanmax(returned) - np.nanmin(created)) if np.isfinite(returned).any() else 0
    failed = n - sum(trace.success)
    rate = f", {n / span:.1f} results/s" if span > 0 else ""
    lines.append(f"Results: {n} ({failed} failed) in {span:.1f} s{rate}")
    duration = ended - started
    received = trace.array("received")
    queued = np.where(np.isfinite(received), started - received, started - created)
    overhead = (returned - created) - duration - np.nan_to_num(queued)
    lines.append("")
    lines.append(f"{'topic':<16}{'results':>8}{'failed':>8}{'compute':>11}{'queued':>11}"
                 f"{'overhead':>11}   (medians)")
    topics = np.asarray(trace.topic)
    success = np.asarray(trace.success)
    for name in sorted(set(trace.topic)):
        mask = topics == name
        lines.append(f"{name:<16}{int(mask.sum()):>8}{int((~success[mask]).sum()):>8}"
                     f"{_median(duration[mask]):>11}{_median(queued[mask]):>11}"
                     f"{_median(overhead[mask]):>11}")
    lines.append("")
    lines.append(f"{'method':<24}{'n':>7}{'mean':>11}{'median':>11}{'p95':>11}{'max':>11}")
    methods = np.asarray(trace.method)
    for name in sorted(set(trace.method)):
        d = duration[(methods == name) & np.isfinite(duration)]
        if len(d):
            lines.append(f"{name:<24}{len(d):>7}{_seconds(float(d.mean())):>11}"
                         f"{_seconds(float(np.median(d))):>11}"
                         f"{_seconds(float(np.percentile(d, 95))):>11}"
                         f"{_seconds(float(d.max())):>11}")
    if capacity.slots:
        over = "" if len(capacity.slots) == 1 else \
            f" at most, over {len(capacity.slots)} sessions ({sum(capacity.slots)} in all)"
        lines.append("")
        lines.append(f"Workers: {capacity.most_at_once} slot(s) used{over}, utilisation "
                     f"{100 * capacity.utilisation:.1f}% on average")
    if topic is not None:
        values = trace.array("value")
        mask = (topics == topic) & np.isfinite(values) & success
        if mask.any():
            pick = np.nanargmax if goal == "max" else np.nanargmin
            k = int(np.flatnonzero(mask)[pick(values[mask])])
            lines.append(f"Best value ({goal}, topic {topic!r}): {values[k]:.6g} "
                         f"(task {trace.task_id[k]}, at {returned[k] - trace.origin:.1f} s)")
    lines.append("")
    lines.append(f"Plots: {', '.join(drawn) if drawn else 'none (no timestamps)'}")
    return "\n".join(lines) + "\n"


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _median(values: np.ndarray) -> str:
    values = values[np.isfinite(values)]
    return _seconds(float(np.median(values))) if len(values) else "-"


def _seconds(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    if abs(value) < 1e-3:
        return f"{value * 1e6:.0f} us"
    if abs(value) < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"
