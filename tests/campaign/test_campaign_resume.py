"""Run directory contents, and resume from a journal cut at many points (in process).

Cutting the journal after record k is what a kill after record k leaves behind (the trace files
are rebuilt from the journal on resume), so resuming from every cut checks the replay, the
reprocessing of interrupted results and the resend of requests, deterministically.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import threading
from pathlib import Path

import pytest
import squares

from steersman import (
    AgentError,
    BaseThinker,
    LocalTaskServer,
    PipeQueues,
    Result,
    agent,
    result_processor,
)
from steersman.campaign import record, status
from steersman.campaign.journal import RecordKind, iter_records, read_journal
from steersman.campaign.rundir import RunDirectoryBusy
from steersman.models.result import Result as ResultModel

N = 24


def _results(run_dir: Path) -> list[ResultModel]:
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    return [ResultModel.from_json(line) for line in lines]


def _check_complete(run_dir: Path, n: int = N) -> None:
    results = _results(run_dir)
    assert len({r.task_id for r in results}) == len(results) == n
    assert sorted(r.args[0] for r in results) == list(range(n))
    assert all(r.value == r.args[0] ** 2 for r in results)


def _run(run_dir: Path, style: str = "squares", n: int = N) -> None:
    assert squares.main(["--run-dir", str(run_dir), "--tasks", str(n), "--style", style,
                         "--delay", "0.001"]) == 0


def test_run_dir_holds_params_results_log_journal_allocation(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _run(run_dir)
    _check_complete(run_dir)
    params = json.loads((run_dir / "params.json").read_text())
    assert params["thinker"].endswith("Squares")
    assert params["params"] == {"n": N, "slots": 4}
    log = (run_dir / "steersman.log").read_text()
    assert "all agents finished" in log and "moved 4 slot(s)" in log
    allocation = [json.loads(line) for line in (run_dir / "allocation.jsonl").open()]
    assert allocation[0]["allocated"] == {"unallocated": 4, "sim": 0}
    assert allocation[-1]["allocated"] == {"unallocated": 0, "sim": 4}
    records, _ = read_journal(run_dir / "journal.bin")
    kinds = [r.kind for r in records]
    assert kinds.count(RecordKind.REQUEST) == kinds.count(RecordKind.RESULT) == N
    processed = [r.field(0).split("\n") for r in records if r.kind is RecordKind.PROCESSED]
    assert sorted(sum(processed, [])) == sorted(r.field(0) for r in records
                                                if r.kind is RecordKind.RESULT)
    assert kinds[0] is RecordKind.SESSION and kinds[-1] is RecordKind.END
    info = status(run_dir)
    assert info["state"] == "finished" and not info["alive"]
    assert info["topics"] == {"sim": {"submitted": N, "done": N, "failed": 0, "pending": 0}}
    assert len(info["last_results"]) == 5


def test_logging_is_restored_after_the_run(tmp_path: Path) -> None:
    logger = logging.getLogger("steersman")
    before = (logger.level, logger.propagate, list(logger.handlers))
    _run(tmp_path / "run", n=4)
    assert (logger.level, logger.propagate, list(logger.handlers)) == before


@pytest.mark.parametrize("style", ["squares", "chain"])
def test_resume_from_a_journal_cut_anywhere(tmp_path: Path, style: str) -> None:
    full = tmp_path / "full"
    _run(full, style)
    data = (full / "journal.bin").read_bytes()
    ends = [offset for _, offset in iter_records(data)]
    rng = random.Random(7)
    cuts = sorted({0, 1, 2, len(ends) - 2, *rng.sample(range(len(ends)), 7)})
    for k in cuts:
        run_dir = tmp_path / f"cut{k}"
        shutil.copytree(full, run_dir)
        (run_dir / "journal.bin").write_bytes(data[: ends[k]] + data[ends[k] : ends[k] + 9])
        _run(run_dir, style)  # raises if a number is processed twice
        _check_complete(run_dir)
        info = status(run_dir)
        assert info["state"] == "finished" and info["pending"] == 0, k
        assert info["results"] == N


def test_rerunning_a_finished_campaign_replays_and_sends_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _run(run_dir, "chain")
    before, _ = read_journal(run_dir / "journal.bin")
    _run(run_dir, "chain")
    after, _ = read_journal(run_dir / "journal.bin")
    new = [r.kind for r in after[len(before):]]
    assert new == [RecordKind.SESSION, RecordKind.END]
    _check_complete(run_dir)


def test_another_thinker_class_cannot_take_the_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _run(run_dir, "chain", n=4)
    with pytest.raises(ValueError, match="holds a campaign of Chain, not Squares"):
        squares.Squares(PipeQueues(topics=["sim"]), 4, 1, 0.0, run_dir)


def test_a_thinker_class_defined_in_a_function_can_take_its_run_dir_again(
        tmp_path: Path) -> None:
    class Local(BaseThinker):
        @agent(startup=True)
        def stop(self) -> None:
            self.done.set()

    for _ in range(2):
        Local(PipeQueues(), run_dir=tmp_path, progress=False).run()
    assert status(tmp_path)["sessions"] == 2


def test_a_campaign_whose_journal_cannot_be_written_stops_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from steersman.campaign import journal
    from steersman.exceptions import JournalError

    real, writes = journal._write_at, []

    def fills_up(*args: object) -> None:
        writes.append(1)
        if len(writes) > 1:  # the first is the session record
            raise OSError(errno.ENOSPC, "No space left on device")
        real(*args)

    monkeypatch.setattr(journal, "_write_at", fills_up)
    with pytest.raises((JournalError, AgentError)) as caught:
        _run(tmp_path / "run", n=400)
    error = caught.value
    assert isinstance(error if isinstance(error, JournalError) else error.error, JournalError)
    assert "No space left on device" in str(error)
    assert not status(tmp_path / "run")["alive"]


def test_run_dir_is_held_by_one_live_thinker(tmp_path: Path) -> None:
    queues = PipeQueues(topics=["sim"])
    first = squares.Squares(queues, 4, 1, 0.0, tmp_path)
    assert status(tmp_path)["alive"]
    with pytest.raises(RunDirectoryBusy, match="is in use by Squares"):
        squares.Squares(queues, 4, 1, 0.0, tmp_path)
    assert first.campaign is not None
    first.campaign.close()
    assert not status(tmp_path)["alive"]
    squares.Squares(queues, 4, 1, 0.0, tmp_path).campaign.close()  # type: ignore[union-attr]


class _Once(BaseThinker):
    """Sends the numbers it is given, processes results until it holds `expected` of them."""

    def __init__(self, queues: PipeQueues, run_dir: Path, numbers: list[int], expected: int):
        super().__init__(queues, run_dir=run_dir, progress=False)
        self.numbers, self.expected = numbers, expected
        self.seen: list[str] = []

    @agent(startup=True)
    def send(self) -> None:
        for number in self.numbers:
            self.queues.send_inputs(number, method="noop", topic="sim")

    @result_processor(topic="sim")
    def receive(self, result: Result) -> None:
        self.seen.append(result.task_id)
        if len(self.seen) == self.expected:
            self.done.set()


def _play_server(queues: PipeQueues, count: int,
                 before: list[Result] | None = None) -> threading.Thread:
    """Answer `count` requests in this process; send the `before` results first."""

    def serve() -> None:
        for old in before or []:
            queues.send_result(old)
        for _ in range(count):
            message = queues.get_task(timeout=10)
            assert message is not None and message.result is not None
            request = message.result
            request.decode_inputs()
            request.set_result(request.args[0] * 10)
            queues.send_result(request)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_result_of_a_task_finished_before_the_restart_is_dropped(tmp_path: Path) -> None:
    queues = PipeQueues(topics=["sim"], methods=["noop"])
    server = _play_server(queues, 2)
    first = _Once(queues, tmp_path, [1, 2], expected=2)
    first.run()
    server.join(timeout=10)
    old = _results(tmp_path)[0]  # as an old task server still running might send it again
    old.set_result(10)

    queues = PipeQueues(topics=["sim"], methods=["noop"])
    server = _play_server(queues, 1, before=[old])
    second = _Once(queues, tmp_path, [3], expected=3)
    assert second.resumed
    second.run()
    server.join(timeout=10)
    assert second.seen[:2] == first.seen  # replayed
    assert len(second.seen) == len(set(second.seen)) == 3
    assert len(_results(tmp_path)) == 3
    assert second.campaign is not None  # the queues dropped it: the old task is not outstanding
    assert sum(c.duplicates for c in second.campaign.counters.topics.values()) == 0


def test_queues_without_a_thinker_can_be_recorded(tmp_path: Path) -> None:
    queues = PipeQueues(topics=["sim"])
    server = LocalTaskServer(queues, [squares.square], num_workers=2)
    server.start()
    try:
        with record(queues, tmp_path):
            for i in range(3):
                queues.send_inputs(i, 0.0, method="square", topic="sim")
            got = [queues.get_result("sim", timeout=20) for _ in range(3)]
    finally:
        queues.send_kill_signal()
        server.join()
    assert all(r is not None and r.success for r in got)
    assert sorted(r.value for r in _results(tmp_path)) == [0, 1, 4]
    assert status(tmp_path)["topics"]["sim"]["done"] == 3
