from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steersman.allocation import (
    AmdahlCurve,
    MeasuredCurve,
    PointsCurve,
    concave_hull,
    curve_from_spec,
)

pytestmark = pytest.mark.timeout(30)


def test_amdahl_values_and_limits() -> None:
    curve = AmdahlCurve(0.1, base=2.0)
    assert curve(0) == 0.0
    assert curve(1) == pytest.approx(2.0)
    assert curve(10) == pytest.approx(2.0 * 10 / (1 + 0.1 * 9))
    assert curve(10**9) < 2.0 / 0.1 + 1e-6
    assert np.allclose(curve.values(16), [curve(c) for c in range(17)])
    assert curve.concave


@pytest.mark.parametrize("f", [0.0, 0.5, 1.0])
def test_amdahl_zero_cores_is_zero_for_every_fraction(f: float) -> None:
    curve = AmdahlCurve(f, base=3.0)
    values = curve.values(4)
    assert values[0] == 0.0
    assert np.array_equal(values, [curve(c) for c in range(5)])


@given(f=st.floats(0, 1), base=st.floats(0.1, 100), y=st.floats(0.0, 200), hi=st.integers(1, 500))
@settings(max_examples=200, deadline=None)
def test_amdahl_min_cores_matches_scan(f: float, base: float, y: float, hi: int) -> None:
    curve = AmdahlCurve(f, base)
    scan = next((c for c in range(0, hi + 1) if curve(c) >= y), None)
    assert curve.min_cores(y, 0, hi) == scan


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_amdahl_rejects_bad_fraction(bad: float) -> None:
    with pytest.raises(ValueError, match="serial_fraction"):
        AmdahlCurve(bad)


def test_points_interpolate_and_stay_flat() -> None:
    curve = PointsCurve([[2, 2.0], [4, 3.0]])
    assert curve(0) == 0.0
    assert curve(1) == pytest.approx(1.0)  # linear from the origin to the first point
    assert curve(3) == pytest.approx(2.5)
    assert curve(100) == pytest.approx(3.0)
    assert curve.concave
    assert curve.min_cores(2.5, 0, 10) == 3
    assert curve.min_cores(3.5, 0, 10) is None


def test_points_detect_non_concave() -> None:
    assert not PointsCurve([[1, 1], [2, 1], [4, 4]]).concave
    assert not PointsCurve([[1, 2], [2, 1]]).concave  # falls, then the flat tail rises


@pytest.mark.parametrize("points", [[], [[2, 1], [1, 2]], [[1, -1]], [[-1, 1]]])
def test_points_reject_bad_tables(points: list[list[float]]) -> None:
    with pytest.raises(ValueError):
        PointsCurve(points)


def test_measured_curve_recovers_amdahl() -> None:
    truth = AmdahlCurve(0.05, 3.0)
    rng = np.random.default_rng(1)
    fitted = MeasuredCurve()
    assert fitted(4) == pytest.approx(4.0)  # the linear prior before any sample
    for c in rng.integers(1, 64, size=100):
        fitted.record(int(c), truth(int(c)) * (1 + 0.02 * rng.standard_normal()))
    snap = fitted.snapshot()
    assert isinstance(snap, AmdahlCurve)
    assert snap.serial_fraction == pytest.approx(0.05, abs=0.01)
    assert fitted(32) == pytest.approx(truth(32), rel=0.05)


def test_measured_curve_single_size_is_linear() -> None:
    fitted = MeasuredCurve()
    for _ in range(5):
        fitted.record(4, 8.0)
    assert fitted(8) == pytest.approx(16.0)


def test_measured_curve_rejects_bad_samples() -> None:
    with pytest.raises(ValueError, match="cores"):
        MeasuredCurve().record(0, 1.0)
    with pytest.raises(ValueError, match="throughput"):
        MeasuredCurve().record(1, -1.0)


def test_spec_round_trip() -> None:
    for curve in (AmdahlCurve(0.2, 1.5), PointsCurve([[1, 1], [4, 3]])):
        again = curve_from_spec(curve.spec())
        assert again is not None
        assert [again(c) for c in range(8)] == pytest.approx([curve(c) for c in range(8)])
    assert curve_from_spec([[1, 1], [2, 2]]) is not None
    assert curve_from_spec(None) is None
    with pytest.raises(ValueError, match="amdahl"):
        curve_from_spec({"linear": 1})


@given(st.lists(st.floats(0, 10), min_size=1, max_size=30))
@settings(max_examples=100, deadline=None)
def test_concave_hull_is_concave_upper_bound(values: list[float]) -> None:
    arr = np.array(values)
    hull = concave_hull(arr)
    assert np.all(hull >= arr - 1e-9)
    assert hull[0] == pytest.approx(arr[0]) and hull[-1] == pytest.approx(arr[-1])
    assert np.all(np.diff(hull, 2) <= 1e-9)
