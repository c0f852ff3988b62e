"""Values and exceptions that are hard to describe: a value or input that holds itself, an
object or exception whose repr raises, a value of many megabytes. Each task still gets its
Result, results.jsonl a readable line of bounded size, and the run directory reopens."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bad_value_tasks as tasks
import pytest
from fault_helpers import Collect, Request, run_in_thread

from steersman import LocalTaskServer, PipeQueues, Result

METHODS = [tasks.cyclic_list, tasks.cyclic_dict, tasks.echo, tasks.unprintable,
           tasks.large_bytes, tasks.raise_bad_repr, tasks.raise_bad_str,
           tasks.raise_unprintable, tasks.double]


@pytest.fixture(params=[True, False], ids=["threads", "processes"])
def queues(request: pytest.FixtureRequest) -> Iterator[PipeQueues]:
    """Queues to a running server with one worker (a worker lost would show)."""
    queues = PipeQueues()
    server = LocalTaskServer(queues, METHODS, threads=request.param, num_workers=1)
    server.start()
    yield queues
    queues.send_kill_signal()
    server.join(20)
    assert server.exitcode == 0
    queues.close()


def _run(thinker: Collect) -> None:
    thread, raised = run_in_thread(thinker)
    thread.join(60)
    assert not thread.is_alive(), "the campaign hung"
    assert not raised, raised


def _lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def _by_method(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {line["method"]: line for line in lines}


@pytest.mark.timeout(90)
def test_self_referencing_values_and_inputs_get_readable_lines_and_the_run_reopens(
        queues: PipeQueues, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cyclic: list[Any] = [2.5]
    cyclic.append(cyclic)
    requests = [Request("cyclic_list"), Request("cyclic_dict"), Request("echo", (cyclic,)),
                Request("unprintable"), Request("double", (4,))]
    thinker = Collect(queues, requests, run_dir=run_dir)
    _run(thinker)
    assert all(r.success for r in thinker.results.values())
    assert thinker.by_method("double")[0].value == 8

    lines = _by_method(_lines(run_dir))
    assert len(lines) == len(requests)
    assert lines["cyclic_list"]["value"] == ["<cycle: list>"]
    assert lines["cyclic_dict"]["value"] == {"energy": -1.5, "self": "<cycle: dict>"}
    assert lines["echo"]["inputs"] == [[[2.5, "<cycle: list>"]], {}]
    assert lines["unprintable"]["value"] == ("<bad_value_tasks.Unprintable: repr failed: "
                                             "RuntimeError('repr is broken')>")
    assert lines["double"]["value"] == 8

    before = (run_dir / "results.jsonl").read_bytes()
    _run(Collect(queues, [], run_dir=run_dir))  # reopens: the lines are all there
    assert (run_dir / "results.jsonl").read_bytes() == before

    (run_dir / "results.jsonl").unlink()  # as if the thinker died before writing them
    resumed = Collect(queues, [], run_dir=run_dir)
    _run(resumed)
    assert (run_dir / "results.jsonl").read_bytes() == before  # rebuilt from the journal
    assert len(resumed.results) == len(requests)  # replayed, cycles and all
    (value,) = (r.value for r in resumed.results.values() if r.method == "cyclic_list")
    assert value[0] is value


@pytest.mark.timeout(60)
def test_exceptions_whose_repr_or_str_raises_fail_their_task_like_any_other(
        queues: PipeQueues) -> None:
    """The worker survives (no WorkerLost); the failure names the exception's type, says its
    repr failed, and keeps the traceback where it can be formatted."""
    requests = [Request("raise_bad_repr"), Request("raise_bad_str"),
                Request("raise_unprintable"), Request("double", (21,))]
    thinker = Collect(queues, requests)
    _run(thinker)
    results: dict[str, Result] = {r.method: r for r in thinker.results.values()}
    assert results["double"].value == 42
    for method in ("raise_bad_repr", "raise_bad_str", "raise_unprintable"):
        result = results[method]
        assert result.success is False and result.complete, method
        info = result.failure_info
        assert info is not None and not info.worker_lost, (method, info)

    bad_repr = results["raise_bad_repr"].failure_info
    assert bad_repr.exception == ("<bad_value_tasks.BadReprError: repr failed: "
                                  "RuntimeError('repr is broken')>")
    assert "raise BadReprError(\"bad repr\")" in bad_repr.traceback
    assert bad_repr.traceback.rstrip().endswith("bad_value_tasks.BadReprError: bad repr")

    bad_str = results["raise_bad_str"].failure_info
    assert bad_str.exception == "BadStrError('bad str')"
    assert "raise BadStrError(\"bad str\")" in bad_str.traceback

    unprintable = results["raise_unprintable"].failure_info
    assert unprintable.exception.startswith("<bad_value_tasks.UnprintableError: repr failed:")
    assert "in raise_unprintable" in unprintable.traceback  # the frames, at least
    assert ("bad_value_tasks.UnprintableError: <traceback could not be formatted: "
            "RuntimeError('notes are broken')>") in unprintable.traceback


@pytest.mark.timeout(90)
def test_a_large_bytes_value_is_a_short_placeholder_in_its_line(
        queues: PipeQueues, tmp_path: Path) -> None:
    """The journal keeps the exact value (the thinker got it); results.jsonl notes its size."""
    size = 5 << 20
    run_dir = tmp_path / "run"
    thinker = Collect(queues, [Request("large_bytes", (size,)), Request("double", (1,))],
                      run_dir=run_dir)
    _run(thinker)
    assert thinker.by_method("large_bytes")[0].value == bytes(size)
    text = (run_dir / "results.jsonl").read_text()
    assert len(text) < 10_000, len(text)
    lines = _by_method(_lines(run_dir))
    assert lines["large_bytes"]["value"] == f"<bytes: {size} bytes>"
    assert lines["large_bytes"]["inputs"] == [[size], {}]
    assert lines["double"]["value"] == 2
