"""The multi-site example at a tiny size: six agents, two sites, per-site utilisation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

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
