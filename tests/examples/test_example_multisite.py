"""The multi-site example at a tiny size: six agents, two sites, per-site utilisation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "multisite"
TINY = ["--search-count", "8", "--retrain-after", "3", "--num-models", "2", "--buffer-size", "3",
        "--conformers", "1", "--n-estimators", "4", "--max-atoms", "12", "--max-molecules", "30",
        "--progress", "off"]


@pytest.fixture(name="campaign")
def _campaign(load_example: Any) -> Any:
    return load_example("multisite")


def check_run(run_dir: Path, is_png: Any) -> dict[str, Any]:
    records = [json.loads(line) for line in (run_dir / "results.jsonl").open()]
    sims = [r for r in records if r["topic"] == "simulate"]
    assert len(sims) == 8
    assert {r["topic"] for r in records} >= {"simulate", "train"}  # the ensemble retrained
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["sites"]) == {"simulation", "ml"}
    assert report["sites"]["simulation"]["tasks"] == 8
    for site in report["sites"].values():
        assert 0 <= site["utilisation"] <= 1
    assert is_png(run_dir / "multisite.png")
    return report


def test_local_engine(campaign: Any, is_png: Any, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    assert campaign.main([*TINY, "--engine", "local", "--no-refill-while-training",
                          "--run-dir", str(tmp_path)]) == 0
    check_run(tmp_path, is_png)
    assert "site simulation" in capsys.readouterr().out


@pytest.mark.slow
def test_two_parsl_executors_with_proxystore(campaign: Any, is_png: Any, tmp_path: Path) -> None:
    pytest.importorskip("parsl")
    pytest.importorskip("proxystore")
    assert campaign.main([*TINY, "--run-dir", str(tmp_path), "--train-ps-backend", "file",
                          "--infer-ps-backend", "file", "--ps-threshold", "1000"]) == 0
    report = check_run(tmp_path, is_png)
    assert report["sites"]["simulation"]["executors"] == ["simulation"]
    assert report["sites"]["ml"]["executors"] == ["ml"]
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").open()]
    assert any("value_proxied" in r["message_sizes"] for r in records if r["topic"] == "train")


def test_help_lists_the_proxystore_options(campaign: Any,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        campaign.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--simulate-ps-backend", "--infer-ps-backend", "--train-ps-backend",
                   "--ps-threshold", "--ps-file-dir", "--buffer-size", "--retrain-after",
                   "--simulate-workers", "--ml-workers"):
        assert option in out


STEERSMAN = [sys.executable, "-c", "import sys; from steersman.cli import main; sys.exit(main())"]


def lines(run_dir: Path) -> list[dict[str, Any]]:
    """The results.jsonl lines written so far."""
    path = run_dir / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.endswith("}")]


def test_resume_after_kill_during_learning(tmp_path: Path) -> None:
    """Replayed training and inference results (no round in progress) neither crash nor repeat."""
    run_dir, count = tmp_path / "run", 40
    args = ["--search-count", str(count), "--retrain-after", "4", "--num-models", "2",
            "--buffer-size", "3", "--conformers", "4", "--n-estimators", "4",
            "--max-atoms", "14", "--max-molecules", "200", "--engine", "local",
            "--progress", "off"]
    proc = subprocess.Popen([*STEERSMAN, "run", str(EXAMPLE), "--run-dir", str(run_dir), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while (not any(r["topic"] == "infer" for r in lines(run_dir))
               and proc.poll() is None):
            assert time.monotonic() < deadline, "the first session made no progress"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the thinker, its workers and its line writer
        proc.wait()
    assert not (run_dir / "report.json").exists(), "the run ended before it was killed"

    resumed = subprocess.run([*STEERSMAN, "resume", str(run_dir)], capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    records = lines(run_dir)
    smiles = [r["inputs"][0][0] for r in records if r["topic"] == "simulate"]
    assert len(smiles) == count and len(set(smiles)) == count  # none simulated twice
    assert json.loads((run_dir / "report.json").read_text())["simulations"] == count
