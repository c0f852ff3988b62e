"""The progress display: mode choice, the rich panel's content, tqdm bars, a thinker with it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import squares

from steersman.campaign.progress import Counters, RichDisplay, TqdmDisplay, choose_mode
from steersman.thinker import ResourceCounter


def test_auto_mode_is_off_when_stdout_is_not_a_terminal() -> None:
    assert choose_mode(None) == "off"  # pytest captures stdout
    assert choose_mode(False) == "off"
    assert choose_mode(True) == "rich"
    assert choose_mode("tqdm") == "tqdm"


def test_progress_true_without_either_package_is_a_clear_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("steersman.campaign.progress._importable", lambda name: False)
    with pytest.raises(ValueError, match=r"progress=True needs the 'tqdm' package"):
        choose_mode(True)
    monkeypatch.setattr("steersman.campaign.progress._importable", lambda name: name == "tqdm")
    assert choose_mode(True) == "tqdm"


def test_unknown_mode_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown progress='fancy'; valid: None, True, False"):
        choose_mode("fancy")


def test_auto_mode_leaves_a_thinkers_own_tqdm_bars_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from tqdm import tqdm

    monkeypatch.setattr("steersman.campaign.progress._stdout_is_terminal", lambda: True)
    assert choose_mode(None) == "rich"
    bar = tqdm(total=3, file=io.StringIO())
    try:
        assert choose_mode(None) == "off"
    finally:
        bar.close()


def test_bars_opened_after_init_still_turn_the_panel_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tqdm import tqdm

    from steersman import PipeQueues

    monkeypatch.setattr("steersman.campaign.progress._stdout_is_terminal", lambda: True)
    thinker = squares.Squares(PipeQueues(topics=["sim"]), 1, 1, 0.0, tmp_path)
    assert thinker.campaign is not None
    thinker.campaign._progress = None  # the seed's default
    bar = tqdm(total=1, file=io.StringIO())  # the seed opens its bars after super().__init__
    try:
        thinker.campaign.begin([])
        assert thinker.campaign._display is None
    finally:
        thinker.campaign.end(None)
        bar.close()


def _counters() -> Counters:
    counters = Counters()
    counters.sent("simulate", 5)
    counters.sent("train")
    counters.received("simulate", True)
    counters.received("simulate", False)
    return counters


def test_rich_panel_shows_counts_slots_and_throughput() -> None:
    from rich.console import Console

    rec = ResourceCounter(4, ["simulate", "train"])
    rec.reallocate(None, "simulate", 3)
    rec.acquire("simulate", 2)
    display = RichDisplay(_counters(), rec, "Thinker")
    console = Console(file=io.StringIO(), width=100)
    console.print(display.render())
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "simulate" in text and "train" in text
    assert "simulate 2/3" in text and "unallocated 0/1" in text
    assert "results/s" in text
    row = next(line for line in text.splitlines() if "simulate" in line and "│" in line)
    assert [cell.strip() for cell in row.split("│")[1:-1]] == ["simulate", "5", "3", "1", "1"]


def test_tqdm_bars_follow_the_counts(capsys: pytest.CaptureFixture[str]) -> None:
    counters = _counters()
    display = TqdmDisplay(counters, None, "Thinker")
    display.start()
    display.update("simulate")
    display.stop()
    err = capsys.readouterr().err
    assert "simulate" in err and "2result" in err.replace(" ", "")


def test_a_thinker_with_a_tqdm_display_runs(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from steersman import LocalTaskServer, PipeQueues

    queues = PipeQueues(topics=["sim"])
    server = LocalTaskServer(queues, [squares.square], num_workers=2)
    server.start()
    try:
        thinker = squares.Squares(queues, 6, 2, 0.0, None)
        thinker.campaign = None  # progress=False in the campaign class: attach one by hand
        from steersman.campaign.session import Campaign

        thinker.campaign = Campaign(thinker, tmp_path, "tqdm")
        thinker.run()
    finally:
        queues.send_kill_signal()
        server.join()
    assert len(thinker.values) == 6
    assert "sim" in capsys.readouterr().err
