"""The reallocation example at a tiny size: it runs, writes its files, and reorders by EI."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest


@pytest.fixture(name="campaign")
def _campaign(load_example: Any) -> Any:
    return load_example("reallocation")


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "reallocation"
TINY = ["--pool-size", "20", "--budget", "12", "--workers", "2", "--retrain-every", "4",
        "--sim-time", "0.001", "0.005", "--quiet"]


def test_expected_improvement_is_the_closed_form(campaign: Any) -> None:
    from scipy.stats import norm

    mean, std, best, xi = np.array([1.0, 2.0, 0.5]), np.array([0.5, 1.0, 0.0]), 1.2, 0.1
    z = (best - mean[:2] - xi) / std[:2]
    expected = (best - mean[:2] - xi) * norm.cdf(z) + std[:2] * norm.pdf(z)
    ei = campaign.expected_improvement(mean, std, best, xi)
    assert ei[:2] == pytest.approx(expected)
    assert ei[2] == pytest.approx(best - 0.5 - xi)  # no uncertainty: the plain improvement
    assert (ei >= 0).all()


def test_rank_by_ei_prefers_points_near_the_best(campaign: Any) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, size=(30, 2))
    y = campaign.ackley(x)
    near, far = np.array([[0.05, -0.05]]), np.array([[2.9, 2.9]])
    ranked = campaign.rank_by_ei(x, y, np.vstack([near, far]))
    assert ranked["ei"][0] > ranked["ei"][1]


def test_ackley_minimum_is_zero_at_origin(campaign: Any) -> None:
    assert campaign.ackley(np.zeros((1, 4)))[0] == pytest.approx(0.0, abs=1e-12)


def test_campaign_writes_results_and_figure(campaign: Any, is_png: Any, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    assert campaign.main([*TINY, "--run-dir", str(run_dir)]) == 0
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    sims = [r for r in records if r["topic"] == "simulate"]
    assert len(sims) == 12 and all(r["success"] for r in sims)
    assert any(r["topic"] == "ml" for r in records)  # the GP ran at least once
    ml_runs = (run_dir / "ml_runs.jsonl").read_text().splitlines()
    assert ml_runs and all(json.loads(line)["max_ei"] >= 0 for line in ml_runs)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert math.isfinite(summary["best_value"])
    assert summary["best_value"] == min(r["value"] for r in sims)
    assert is_png(run_dir / "allocation.png")
    allocation = [json.loads(line) for line in (run_dir / "allocation.jsonl").open()]
    assert any(rec["allocated"]["ml"] > 0 for rec in allocation)  # slots moved to ML ...
    assert allocation[-1]["allocated"]["simulate"] == 2  # ... and came back
    out = capsys.readouterr().out
    assert "best value found" in out and str(run_dir / "allocation.png") in out


def test_random_order_never_runs_ml(campaign: Any, tmp_path: Path) -> None:
    assert campaign.main([*TINY, "--order", "random", "--no-figure",
                          "--run-dir", str(tmp_path)]) == 0
    topics = {json.loads(line)["topic"] for line in (tmp_path / "results.jsonl").open()}
    assert topics == {"simulate"}


def test_compare_prints_the_median_table(load_example: Any, is_png: Any, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    compare = load_example("reallocation", "compare")
    assert compare.main(["--seeds", "0", "1", "--run-dir", str(tmp_path), *TINY]) == 0
    table = (tmp_path / "comparison.md").read_text()
    assert "| GP + expected improvement |" in table and "| random |" in table
    assert is_png(tmp_path / "comparison.png")
    assert "median" in capsys.readouterr().out


def test_help_exits_cleanly(campaign: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        campaign.main(["--help"])
    assert exit_info.value.code == 0
    assert "--retrain-every" in capsys.readouterr().out


STEERSMAN = [sys.executable, "-c", "import sys; from steersman.cli import main; sys.exit(main())"]


def simulated(run_dir: Path) -> list[dict[str, Any]]:
    """The simulation lines of a run's results.jsonl (those written so far)."""
    path = run_dir / "results.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [r for r in map(json.loads, (ln for ln in lines if ln.endswith("}")))
            if r["topic"] == "simulate"]


def test_resume_after_kill_neither_repeats_nor_exceeds_the_budget(tmp_path: Path) -> None:
    run_dir, budget = tmp_path / "run", 40
    args = ["--pool-size", "200", "--budget", str(budget), "--workers", "2",
            "--retrain-every", "5", "--sim-time", "0.1", "0.2", "--no-figure", "--quiet"]
    proc = subprocess.Popen([*STEERSMAN, "run", str(EXAMPLE), "--run-dir", str(run_dir), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(simulated(run_dir)) < 8 and proc.poll() is None:
            assert time.monotonic() < deadline, "the first session made no progress"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the thinker and its line writer
        proc.wait()
    assert not (run_dir / "summary.json").exists(), "the run ended before it was killed"

    resumed = subprocess.run([*STEERSMAN, "resume", str(run_dir)], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    sims = simulated(run_dir)
    indices = [r["task_info"]["index"] for r in sims]
    assert len(indices) == len(set(indices)), "a pool point was simulated twice"
    assert len(sims) == budget
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["simulations"] == budget
    ml = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    ml = [r for r in ml if r["topic"] == "ml" and r["success"]]
    ml_runs = (run_dir / "ml_runs.jsonl").read_text().splitlines()
    assert len(ml_runs) == len(ml) >= 1  # the first session's reorderings are kept
    for record in ml:  # the GP never ranked a point already sent
        ranked = record["task_info"]["candidates"]
        assert len(ranked) == len(set(ranked))
