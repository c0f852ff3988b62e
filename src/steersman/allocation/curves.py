"""Scalability curves: the throughput S(c) an application or a pool reaches on c cores.

A curve is what the policies optimise over. Three kinds cover the common cases: a measured table
(`PointsCurve`), a one-parameter law (`AmdahlCurve`) and a curve fitted while the campaign runs
(`MeasuredCurve`). Every curve has S(0) = 0 and can be rebuilt from `spec()` so it can travel to
the manager process as JSON.
"""

from __future__ import annotations

import abc
import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "AmdahlCurve",
    "Curve",
    "MeasuredCurve",
    "PointsCurve",
    "concave_hull",
    "curve_from_spec",
]

_EPS = 1e-12


class Curve(abc.ABC):
    """Throughput on c cores, with S(0) = 0.

    Subclasses set `concave` when S is concave on the integers: the throughput policy then uses
    the exact greedy algorithm instead of the dynamic programme.
    """

    concave: bool = False

    @abc.abstractmethod
    def __call__(self, cores: int) -> float:
        """Throughput on `cores` cores."""

    @abc.abstractmethod
    def spec(self) -> dict[str, Any]:
        """A JSON-able description that `curve_from_spec` turns back into an equal curve."""

    def values(self, upto: int) -> np.ndarray:
        """S(0), S(1), ..., S(upto) as an array, for the tabulating policies."""
        return np.array([self(c) for c in range(upto + 1)], dtype=float)

    def min_cores(self, throughput: float, lo: int, hi: int) -> int | None:
        """Smallest c in [lo, hi] with S(c) >= throughput, or None if even `hi` falls short.

        The default bisection assumes S does not decrease on [lo, hi].
        """
        if self(lo) >= throughput:
            return lo
        if self(hi) < throughput:
            return None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self(mid) >= throughput:
                hi = mid
            else:
                lo = mid
        return hi


class AmdahlCurve(Curve):
    """Amdahl's law: S(c) = base * c / (f * c + 1 - f) for a serial fraction f.

    Args:
        serial_fraction: share of the work that does not parallelise, in [0, 1].
        base: throughput on one core.
    """

    concave = True

    def __init__(self, serial_fraction: float, base: float = 1.0):
        if not 0.0 <= serial_fraction <= 1.0 or math.isnan(serial_fraction):
            raise ValueError(f"serial_fraction={serial_fraction!r} must lie in [0, 1]")
        if not base >= 0.0 or math.isinf(base):
            raise ValueError(f"base={base!r} must be a finite throughput >= 0")
        self.serial_fraction = float(serial_fraction)
        self.base = float(base)

    def __call__(self, cores: int) -> float:
        if cores <= 0:
            return 0.0
        f = self.serial_fraction
        return self.base * cores / (f * cores + 1.0 - f)

    def values(self, upto: int) -> np.ndarray:
        c = np.arange(upto + 1, dtype=float)
        f = self.serial_fraction
        out = np.zeros_like(c)  # S(0) = 0 even for f = 1, where the formula gives 0 / 0
        out[1:] = self.base * c[1:] / (f * c[1:] + 1.0 - f)
        return out

    def min_cores(self, throughput: float, lo: int, hi: int) -> int | None:
        if throughput <= 0.0:
            return lo
        f, b = self.serial_fraction, self.base
        room = b - throughput * f
        if room <= 0.0:  # y at or above the plateau b / f: only reachable when f == 1
            c = max(lo, 1)
            return c if c <= hi and self(c) >= throughput else None
        c = max(lo, math.ceil(throughput * (1.0 - f) / room - 1e-9))
        while c > lo and self(c - 1) >= throughput:  # guard against rounding
            c -= 1
        while c <= hi and self(c) < throughput:
            c += 1
        return c if c <= hi else None

    def spec(self) -> dict[str, Any]:
        return {"amdahl": self.serial_fraction, "base": self.base}

    def __repr__(self) -> str:
        return f"AmdahlCurve(serial_fraction={self.serial_fraction:g}, base={self.base:g})"


class PointsCurve(Curve):
    """A measured table: linear between the points, from (0, 0) to the first, flat after the last.

    Args:
        points: (cores, throughput) pairs with strictly increasing cores >= 0.
    """

    def __init__(self, points: Iterable[Sequence[float]]):
        pairs = [_pair(p) for p in points]
        if not pairs:
            raise ValueError("points=[] must hold at least one (cores, throughput) pair")
        xs = [x for x, _ in pairs]
        ys = [y for _, y in pairs]
        if any(x < 0 for x in xs) or any(b <= a for a, b in zip(xs, xs[1:])):
            raise ValueError(f"cores {xs} must be >= 0 and strictly increasing")
        if any(not (y >= 0 and math.isfinite(y)) for y in ys):
            raise ValueError(f"throughputs {ys} must be finite and >= 0")
        if xs[0] > 0:
            xs, ys = [0.0, *xs], [0.0, *ys]
        self.points = pairs
        self._xs = np.array(xs)
        self._ys = np.array(ys)
        self._ys[0] = 0.0  # S(0) = 0 by definition
        slopes = [*(np.diff(self._ys) / np.diff(self._xs)), 0.0]
        self.concave = all(b <= a + _EPS for a, b in zip(slopes, slopes[1:]))

    def __call__(self, cores: int) -> float:
        if cores <= 0:
            return 0.0
        return float(np.interp(cores, self._xs, self._ys))

    def values(self, upto: int) -> np.ndarray:
        out = np.interp(np.arange(upto + 1, dtype=float), self._xs, self._ys)
        out[0] = 0.0
        return out

    def min_cores(self, throughput: float, lo: int, hi: int) -> int | None:
        if hi > lo + 4096:
            return super().min_cores(throughput, lo, hi)
        vals = self.values(hi)[lo:]
        hits = np.flatnonzero(vals >= throughput)
        return lo + int(hits[0]) if hits.size else None

    def spec(self) -> dict[str, Any]:
        return {"points": [list(p) for p in self.points]}

    def __repr__(self) -> str:
        return f"PointsCurve({self.points!r})"


def _pair(point: Sequence[float]) -> tuple[float, float]:
    try:
        return float(point[0]), float(point[1])
    except (IndexError, TypeError, ValueError):
        raise ValueError(f"point {point!r} must be a (cores, throughput) pair") from None


class MeasuredCurve(Curve):
    """An Amdahl curve fitted online to measured (cores, throughput) samples.

    Recent samples weigh more (half-life in samples) so the fit follows a changing workload;
    before the first sample the `prior` curve answers. Safe to feed from several threads.

    Args:
        prior: curve used until a sample arrives (default: linear, one unit per core).
        window: number of samples kept.
        half_life: age, in samples, at which a sample's weight halves.
    """

    concave = True
    _GRID = (np.linspace(0.0, 1.0, 401) ** 2)[:-1]  # fine near f = 0, where most codes live

    def __init__(self, prior: Curve | None = None, window: int = 128, half_life: float = 32.0):
        if window < 1:
            raise ValueError(f"window={window!r} must be >= 1")
        if not half_life > 0:
            raise ValueError(f"half_life={half_life!r} must be > 0")
        self._prior = prior if prior is not None else AmdahlCurve(0.0, 1.0)
        self._samples: deque[tuple[float, float]] = deque(maxlen=window)
        self._half_life = half_life
        self._lock = threading.Lock()
        self._fit: Curve | None = None

    def record(self, cores: float, throughput: float) -> None:
        """Add one measurement: `throughput` observed while running on `cores` cores."""
        if not cores > 0 or not math.isfinite(cores):
            raise ValueError(f"cores={cores!r} must be a finite number > 0")
        if not throughput >= 0 or not math.isfinite(throughput):
            raise ValueError(f"throughput={throughput!r} must be finite and >= 0")
        with self._lock:
            self._samples.append((float(cores), float(throughput)))
            self._fit = None

    @property
    def samples(self) -> int:
        """Number of samples currently kept."""
        return len(self._samples)

    def snapshot(self) -> Curve:
        """The current fit as an immutable curve (the prior before any sample)."""
        with self._lock:
            if self._fit is None:
                self._fit = self._fit_samples() if self._samples else self._prior
            return self._fit

    def _fit_samples(self) -> Curve:
        data = np.array(self._samples)
        c, y = data[:, 0], data[:, 1]
        age = np.arange(len(c))[::-1]
        w = 0.5 ** (age / self._half_life)
        f = self._GRID[:, None]
        x = c[None, :] / (f * c[None, :] + 1.0 - f)
        sxx = (w * x * x).sum(axis=1)
        sxy = (w * x * y).sum(axis=1)
        base = np.divide(sxy, sxx, out=np.zeros_like(sxy), where=sxx > 0)
        resid = (w * (y[None, :] - base[:, None] * x) ** 2).sum(axis=1)
        best = int(np.argmin(resid + 1e-12 * np.arange(len(resid))))  # ties: smallest f
        return AmdahlCurve(float(self._GRID[best]), max(float(base[best]), 0.0))

    def __call__(self, cores: int) -> float:
        return self.snapshot()(cores)

    def values(self, upto: int) -> np.ndarray:
        return self.snapshot().values(upto)

    def min_cores(self, throughput: float, lo: int, hi: int) -> int | None:
        return self.snapshot().min_cores(throughput, lo, hi)

    def spec(self) -> dict[str, Any]:
        return self.snapshot().spec()

    def __repr__(self) -> str:
        return f"MeasuredCurve(samples={self.samples}, fit={self.snapshot()!r})"


def curve_from_spec(
    spec: Curve | Mapping[str, Any] | Sequence[Sequence[float]] | None,
) -> Curve | None:
    """Build a curve from its JSON/YAML form.

    Accepted: a `Curve`; ``{"amdahl": f, "base": b}``; ``{"points": [[c, s], ...]}``; a bare list
    of ``[c, s]`` pairs; None (no curve).
    """
    if spec is None or isinstance(spec, Curve):
        return spec
    if isinstance(spec, Mapping):
        if "amdahl" in spec:
            return AmdahlCurve(float(spec["amdahl"]), float(spec.get("base", 1.0)))
        if "points" in spec:
            return PointsCurve(spec["points"])
        raise ValueError(f"curve {dict(spec)!r} must have a key 'amdahl' or 'points'")
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        return PointsCurve(spec)
    raise ValueError(
        f"curve {spec!r} must be a Curve, {{'amdahl': f}}, {{'points': [[c, s], ...]}} or a list"
    )


def concave_hull(values: np.ndarray, lo: int = 0) -> np.ndarray:
    """Upper concave hull of tabulated values on the integers lo, lo + 1, ...

    Returns an array of the same length whose entries equal `values` at the hull's vertices and
    interpolate linearly between them.
    """
    n = len(values)
    hull: list[int] = []
    for i in range(n):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when it lies on or under the chord from a to i
            if (values[b] - values[a]) * (i - a) <= (values[i] - values[a]) * (b - a) + _EPS:
                hull.pop()
            else:
                break
        hull.append(i)
    return np.interp(np.arange(n) + lo, np.array(hull) + lo, values[hull])
