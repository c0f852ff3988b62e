"""Results are journaled from the header they arrived with plus a receipt, and results.jsonl
lines are made from those bytes: both must show each Result exactly as the processor saw it."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from steersman import BaseThinker, LocalTaskServer, PipeQueues, Result, agent, result_processor
from steersman.campaign import record
from steersman.campaign.session import JournalState, decode_result
from steersman.models.messages import Kind, decode, encode, join

NUMBERS = [1.5, 2.0, -1.0, 7.0]


def scaled(x: float, factor: float = 1.0) -> Any:
    if x < 0:
        raise ValueError(f"negative: {x}")
    if x == 7.0:
        return np.arange(5) * factor  # a value with an out-of-band buffer
    return {"x": x, "scaled": x * factor}


class Seen(BaseThinker):
    """Sends NUMBERS and keeps, for each result, its JSON and payload as processed."""

    def __init__(self, queues: PipeQueues, run_dir: Path):
        super().__init__(queues, run_dir=run_dir, progress=False)
        self.seen: dict[str, tuple[dict[str, Any], Any, Any]] = {}
        self.lock = threading.Lock()

    @agent(startup=True)
    def send(self) -> None:
        for x in NUMBERS:
            self.queues.send_inputs(x, method="scaled", topic="sim", input_kwargs={"factor": 2})

    @result_processor(topic="sim")
    def receive(self, result: Result) -> None:
        value = result.value.tolist() if isinstance(result.value, np.ndarray) else result.value
        with self.lock:
            self.seen[result.task_id] = (json.loads(result.model_dump_json()),
                                         [list(result.args), result.kwargs], value)
            if len(self.seen) == len(NUMBERS):
                self.done.set()


def _run(run_dir: Path) -> Seen:
    queues = PipeQueues(topics=["sim"])
    with LocalTaskServer(queues, [scaled], threads=True, num_workers=2):
        thinker = Seen(queues, run_dir)
        thinker.run()
    return thinker


def _lines(run_dir: Path) -> dict[str, dict[str, Any]]:
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    return {data["task_id"]: data for data in map(json.loads, lines)}


def test_journal_and_trace_show_each_result_as_processed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    thinker = _run(run_dir)
    assert len(thinker.seen) == len(NUMBERS)
    assert sum(1 for header, _, _ in thinker.seen.values() if not header["success"]) == 1

    lines = _lines(run_dir)
    assert lines.keys() == thinker.seen.keys()
    for task_id, (header, inputs, value) in thinker.seen.items():
        line = dict(lines[task_id])
        assert (line.pop("inputs"), line.pop("value")) == (inputs, value)
        assert line == header  # the receipt's time stamps included
        assert line["timestamp"]["result_received"] is not None

    state = JournalState.load(run_dir / "journal.bin")
    for task_id, (header, inputs, value) in thinker.seen.items():
        result = decode_result(state.finals[task_id], state.requests[task_id])
        assert json.loads(result.model_dump_json()) == header
        assert [list(result.args), result.kwargs] == inputs
        decoded = result.value.tolist() if isinstance(result.value, np.ndarray) else result.value
        assert decoded == value

    copy = tmp_path / "copy"  # lost lines are rebuilt from the journal, the same
    shutil.copytree(run_dir, copy)
    (copy / "results.jsonl").write_text("")
    with record(PipeQueues(topics=["sim"]), copy):
        pass
    assert _lines(copy) == lines


def test_the_header_a_result_came_with_is_kept_until_it_changes() -> None:
    request = Result(method="scaled", inputs=((1.0,), {}))
    request.encode_inputs()
    parts = encode(Kind.REQUEST, request)
    assert request.wire_header == request.model_dump_json().encode()
    received = decode(join(parts)).result
    assert received is not None and received.wire_header is not None
    assert bytes(received.wire_header) == request.wire_header
    received.set_result(2.0)
    assert received.wire_header is None  # stale: the outcome is not in it
