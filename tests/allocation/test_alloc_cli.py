from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from steersman.allocation.cli import configure_parser, main, run

pytestmark = pytest.mark.timeout(30)

EXAMPLE = Path(__file__).with_name("example_constraints.yaml")


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return run(parser.parse_args(list(argv)))


@pytest.mark.parametrize("target", ["throughput", "makespan", "energy", "share"])
def test_example_file_prints_a_table(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(str(EXAMPLE), "--target", target) == 0
    out = capsys.readouterr().out
    assert f"target: {target}   cores: 64" in out
    for name in ("cfd", "md", "ml-train", "post", "total"):
        assert name in out
    assert "throughput vs static split:" in out


def test_policy_beats_static_in_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(str(EXAMPLE)) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("throughput"))
    assert float(line.split(":")[1].strip().rstrip("x")) > 1.0


def test_json_file_and_cores_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"applications": [{"name": "a", "curve": {"amdahl": 0.0}},
                                                 {"name": "b", "workload": 3}]}))
    assert _run(str(path), "--cores", "8") == 0
    assert "cores: 8" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("{not json", ".json", "invalid JSON"),
        ("applications: [1, 2\n", ".yaml", "invalid YAML at line 2, column 1: expected ','"),
        ("applications: {a: {min: 3, max: 2}}\ncores: 4", ".yaml", "min=3 > max=2"),
        ("applications: {a: {}}", ".yaml", "no 'cores'"),
        ("applications: {a: {speed: 2}}\ncores: 4", ".yaml", "unknown keys ['speed']"),
        ("applications: {a: {min: 9}}\ncores: 4", ".yaml", "min=9 for 'a' exceeds"),
        ("applications: {a: {curve: {linear: 1}}}\ncores: 4", ".yaml", "'amdahl' or 'points'"),
        ("cores: 4", ".yaml", "'applications' is missing"),
        ("applications: {a: {min: .inf}}\ncores: 4", ".yaml", "min=inf for 'a' must be a whole"),
        ("applications: {a: {curve: [[1]]}}\ncores: 4", ".yaml", "point [1] must be a (cores, "),
        ("applications: {a: {}}\ncores: 4\ntarget: speed", ".yaml", "unknown target 'speed'"),
    ],
)
def test_bad_files_give_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, suffix: str, message: str
) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    assert _run(str(path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("steersman allocate: error:") and message in err
    assert err.count("\n") == 1


def test_missing_or_unreadable_file_is_a_failure_not_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe")
    for path in ("/nonexistent/constraints.yaml", str(tmp_path), str(binary)):
        assert _run(path) == 1  # exit 1 like status/report; 2 is for usage errors
        err = capsys.readouterr().err
        assert err.startswith(f"steersman allocate: error: cannot read {path!r}: ")
        assert err.count("\n") == 1


def test_both_entry_points_exit_1_for_a_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    from steersman.cli import main as steersman_main

    assert main([str(EXAMPLE)]) == 0
    assert "target: throughput   cores: 64" in capsys.readouterr().out
    assert main(["/nonexistent/constraints.yaml"]) == 1
    assert steersman_main(["allocate", "/nonexistent/constraints.yaml"]) == 1
    assert capsys.readouterr().err.count("\n") == 2
