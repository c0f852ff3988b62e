"""The molecular-design example at a tiny size: real xTB on a few small molecules."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

TINY = ["--search-count", "5", "--initial-count", "2", "--batch-size", "2", "--workers", "2",
        "--conformers", "2", "--n-estimators", "4", "--max-atoms", "12", "--max-molecules", "10",
        "--quiet"]


@pytest.fixture(name="campaign")
def _campaign(load_example: Any) -> Any:
    return load_example("molecular_design")


def test_vertical_ip_is_physical(load_example: Any) -> None:
    load_example("molecular_design")  # puts examples/ on the path for the shared helpers
    from _shared.chem import compute_vertical

    water, methane = compute_vertical("O", n_conformers=1), compute_vertical("C", n_conformers=1)
    assert 10 < water < 20 and 10 < methane < 20  # GFN2-xTB vertical IPs, in eV


def test_model_ranks_from_fingerprints(load_example: Any) -> None:
    load_example("molecular_design")
    from _shared.chem import run_model, train_model

    smiles = ["C", "CC", "CCC", "CCCC", "O", "CO", "CCO", "CCCO"]
    values = [1.0, 1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 5.0]
    model = train_model(smiles, values, n_estimators=8)
    low, high = run_model(model, ["CCCCC", "CCCCO"])
    assert high > low


def test_three_thinkers_write_traces_and_figure(campaign: Any, is_png: Any, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert campaign.main([*TINY, "--run-dir", str(tmp_path)]) == 0
    summaries = {s["thinker"]: s for s in json.loads((tmp_path / "summary.json").read_text())}
    assert set(summaries) == {"random", "batched", "interleaved"}
    for name, summary in summaries.items():
        records = [json.loads(line) for line in (tmp_path / name / "results.jsonl").open()]
        sims = [r for r in records if r["topic"] == "simulate"]
        assert len(sims) == 5 and summary["simulations"] == 5
        for record in sims:
            if record["success"]:
                assert math.isfinite(record["value"]) and 5 < record["value"] < 25
        learned = {r["topic"] for r in records} - {"simulate"}
        assert learned == (set() if name == "random" else {"train", "infer"})
        assert 0 < summary["utilisation"] <= 1
    assert is_png(tmp_path / "molecular_design.png")
    out = capsys.readouterr().out
    assert "utilisation" in out and str(tmp_path / "molecular_design.png") in out


def test_help_lists_the_thinkers(campaign: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        campaign.main(["--help"])
    assert exit_info.value.code == 0
    assert "interleaved" in capsys.readouterr().out
