"""The `steersman` command: help everywhere, one-line errors, run → status → report → resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from steersman.cli import format_status, main

SQUARES = Path(__file__).parent / "campaign" / "campaigns" / "squares.py"
COMMANDS = ["run", "status", "resume", "report", "allocate"]


@pytest.mark.parametrize("argv", [[], *[[c] for c in COMMANDS]])
def test_help_everywhere(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    assert "usage: steersman" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["bogus"], "invalid choice: 'bogus'"),
    ([], "the following arguments are required: COMMAND"),
    (["status"], "the following arguments are required: RUN_DIR"),
    (["status", "x", "--last", "many"], "expected a whole number, got 'many'"),
    (["report", "x", "--goal", "best"], "invalid choice: 'best' (choose from 'max', 'min')"),
])
def test_bad_arguments_give_one_line(argv: list[str], message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "--help" in err


@pytest.mark.parametrize("argv, message", [
    (["status", "/no/such/run"], "steersman status: error: run dir '/no/such/run' does not exist"),
    (["report", "/no/such/run"], "steersman report: error: run dir '/no/such/run' does not"),
    (["resume", "/no/such/run"], "steersman resume: error: run dir '/no/such/run' does not"),
    (["run", "no_such_campaign"], "steersman run: error: no campaign 'no_such_campaign'"),
])
def test_failures_give_one_line(argv: list[str], message: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(message)


def test_a_campaign_without_main_is_refused(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "campaign.py").write_text("x = 1\n")
    assert main(["run", str(tmp_path)]) == 1
    assert "defines no main(argv) function" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["run", str(tmp_path / "empty")]) == 1
    assert "holds no campaign.py" in capsys.readouterr().err


def test_run_status_report_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    args = ["--tasks", "12", "--delay", "0", "--run-dir", str(run_dir)]
    assert main(["run", str(SQUARES), *args]) == 0
    params = json.loads((run_dir / "params.json").read_text())
    assert params["campaign"] == {"path": str(SQUARES.resolve()), "args": args}

    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "state      finished" in out and "latest results:" in out
    assert main(["status", str(run_dir), "--json", "--last", "2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["topics"]["sim"]["done"] == 12 and len(info["last_results"]) == 2

    assert main(["report", str(run_dir)]) == 0
    assert "report written to" in capsys.readouterr().out
    assert (run_dir / "report" / "allocation.png").exists()

    assert main(["resume", str(run_dir)]) == 1
    assert "finished; nothing to resume" in capsys.readouterr().err
    assert main(["resume", str(run_dir), "--force"]) == 0  # replays, sends nothing new
    assert json.loads((run_dir / "params.json").read_text())["campaign"]["args"] == args


def test_a_run_dir_that_cannot_be_used_is_one_line(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("")
    args = ["--tasks", "2", "--delay", "0", "--run-dir"]
    assert main(["run", str(SQUARES), *args, str(tmp_path / "afile")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not a directory" in err
    assert main(["run", str(SQUARES), *args, str(tmp_path / "run")]) == 0
    assert main(["run", str(SQUARES), *args, str(tmp_path / "run"), "--style", "chain"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a campaign of Squares, not Chain" in err


def test_status_says_how_to_continue_a_run_not_started_by_the_cli(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = {"run_dir": str(tmp_path), "state": "killed", "alive": False}
    assert "continue it with: run the campaign again" in format_status(info)
    info["campaign"] = {"path": "c.py", "args": []}
    assert f"continue it with: steersman resume {tmp_path}" in format_status(info)


def test_resume_needs_a_run_started_by_the_cli(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(SQUARES.parent))
    try:
        import squares
    finally:
        sys.path.remove(str(SQUARES.parent))
    squares.main(["--tasks", "2", "--delay", "0", "--run-dir", str(tmp_path)])
    assert main(["resume", str(tmp_path), "--force"]) == 1
    assert "was not started by 'steersman run'" in capsys.readouterr().err


def test_allocate_is_delegated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "apps.json"
    spec.write_text(json.dumps({"cores": 8, "applications": {"a": {}, "b": {}}}))
    code = main(["allocate", str(spec)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip()
    assert main(["allocate", str(tmp_path / "missing.json")]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.json" in err


def test_allocate_without_its_module(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "steersman.allocation.cli", None)
    assert main(["allocate", "x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("steersman allocate: unavailable")
