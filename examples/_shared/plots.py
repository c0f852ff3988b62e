"""Figures shared by the examples: which worker ran what, and how the slots were split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

#: Colours of the task kinds, shared by every figure so the examples read alike.
COLOURS = {"simulate": "#1f77b4", "train": "#d62728", "infer": "#ff7f0e", "ml": "#d62728"}


@dataclass(frozen=True)
class Span:
    """One task's time on a worker, in seconds since the run started."""

    start: float
    end: float
    kind: str


def task_spans(results: Sequence[dict[str, Any]], origin: float,
               kind_of: str = "topic") -> list[Span]:
    """The compute intervals of the results (dictionaries from ``results.jsonl``)."""
    spans = []
    for record in results:
        stamps = record.get("timestamp", {})
        start, end = stamps.get("compute_started"), stamps.get("compute_ended")
        if start is None or end is None:
            continue
        spans.append(Span(start - origin, end - origin, str(record.get(kind_of))))
    return sorted(spans, key=lambda s: s.start)


def assign_workers(spans: Sequence[Span]) -> list[int]:
    """Give each span a worker row: the lowest row free when it starts (greedy packing)."""
    free_at: list[float] = []
    rows = []
    for span in spans:
        for row, end in enumerate(free_at):
            if end <= span.start + 1e-6:
                free_at[row] = span.end
                rows.append(row)
                break
        else:
            free_at.append(span.end)
            rows.append(len(free_at) - 1)
    return rows


def utilisation(spans: Sequence[Span], n_workers: int, start: float, end: float) -> float:
    """Fraction of worker time spent computing between `start` and `end`."""
    if end <= start or n_workers < 1:
        return 0.0
    busy = sum(max(0.0, min(s.end, end) - max(s.start, start)) for s in spans)
    return busy / (n_workers * (end - start))


def draw_gantt(ax: Axes, spans: Sequence[Span], labels: dict[str, str],
               legend: bool = True) -> None:
    """One row per worker, one bar per task, coloured by kind."""
    rows = assign_workers(spans)
    for span, row in zip(spans, rows):
        ax.barh(row, span.end - span.start, left=span.start, height=0.8,
                color=COLOURS.get(span.kind, "grey"), edgecolor="white", linewidth=0.3)
    n_rows = max(rows, default=0) + 1
    ax.set_yticks(range(n_rows), [str(r + 1) for r in range(n_rows)])
    ax.set_ylim(-0.6, n_rows - 0.4)
    ax.set_ylabel("Worker")
    if not legend:
        return
    handles = [Patch(color=COLOURS.get(k, "grey"), label=text) for k, text in labels.items()]
    ax.legend(handles=handles,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def draw_slots(ax: Axes, allocation: Sequence[dict[str, Any]], origin: float,
               labels: dict[str, str]) -> None:
    """Stacked slots allocated to each pool over time (a step plot)."""
    times = [rec["time"] - origin for rec in allocation]
    bottom = [0.0] * len(times)
    for pool, label in labels.items():
        counts = [rec["allocated"].get(pool, 0) for rec in allocation]
        top = [b + c for b, c in zip(bottom, counts)]
        ax.fill_between(times, bottom, top, step="post", color=COLOURS.get(pool, "grey"),
                        alpha=0.85, label=label, linewidth=0)
        bottom = top
    ax.set_ylabel("Slots allocated")
    ax.set_ylim(0, max(bottom, default=1) + 0.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def allocation_figure(results: Sequence[dict[str, Any]], allocation: Sequence[dict[str, Any]],
                      path: Path, title: str, labels: dict[str, str]) -> Path:
    """Slots per pool over time (top) and every task on its worker (bottom), in one PNG."""
    origin = min([rec["time"] for rec in allocation]
                 + [r["timestamp"]["created"] for r in results])
    spans = task_spans(results, origin)
    end = max([s.end for s in spans] + [allocation[-1]["time"] - origin if allocation else 0])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.2), sharex=True,
                                      gridspec_kw={"height_ratios": [1, 1.6]})
    draw_slots(top, [*allocation, {**allocation[-1], "time": end + origin}], origin, labels)
    top.set_title(title)
    draw_gantt(bottom, spans, labels, legend=False)
    bottom.set_xlabel("Time since start (s)")
    bottom.set_xlim(0, end)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
