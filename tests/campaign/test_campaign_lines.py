"""results.jsonl is written by a line writer of its own (a forked process on Linux, a thread
elsewhere) that follows the journal: lines whole and in order when the recording closes,
rebuilt when the writer dies, no late write after its thinker is killed, and no inherited
pipe kept open."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from steersman.campaign import lines as lines_module
from steersman.campaign.journal import Record
from steersman.campaign.progress import Counters
from steersman.campaign.rundir import JOURNAL, RESULTS, RunDirectory
from steersman.campaign.session import JournalState, Recording
from steersman.models.result import Result

SRC = Path(__file__).resolve().parents[2] / "src"


def _exchange(recording: Recording, index: int, proxied: bool = False) -> Result:
    """Journal one request and its result, as the queues would."""
    request = Result(method="square", topic="sim", inputs=((index,), {}))
    request.encode_inputs()
    recording.request_sent(request, ("sim", 1))
    request.timestamp.result_received = time.time()
    request.set_result(index * index)
    if proxied:  # the frames carry a proxy; the thinker saw what it resolved to
        request.proxystore_name = "store"
        request.set_result("proxy blob")
        request.encode_value()
        request.__dict__["value"] = index * index
    else:
        request.encode_value()
    recording.result_received(request)
    return request


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / RESULTS).read_text().splitlines()]


def _open(run_dir: Path) -> Recording:
    directory = RunDirectory(run_dir, owner="test")
    return Recording(directory, JournalState(), Counters())


def _close(recording: Recording) -> None:
    recording.close(None)
    recording.dir.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie of ours is gone too
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="the line writer is a process on Linux")
def test_lines_are_written_by_another_process_while_the_run_goes_on(tmp_path: Path) -> None:
    recording = _open(tmp_path)
    pid = recording.lines._pid
    assert pid not in (0, os.getpid())
    sent = [_exchange(recording, i).task_id for i in range(40)]
    deadline = time.monotonic() + 10
    while len(_lines(tmp_path)) < 40 and time.monotonic() < deadline:
        time.sleep(0.02)  # written after the journal's next sync, without closing
    assert [line["task_id"] for line in _lines(tmp_path)] == sent
    sent += [_exchange(recording, i).task_id for i in range(40, 60)]
    _close(recording)
    lines = _lines(tmp_path)
    assert [line["task_id"] for line in lines] == sent  # whole and in order once closed
    assert [line["value"] for line in lines] == [i * i for i in range(60)]
    assert all(line["inputs"] == [[i], {}] for i, line in zip(range(60), lines))
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped


@pytest.mark.skipif(sys.platform != "linux", reason="the line writer is a process on Linux")
def test_line_writer_keeps_no_inherited_pipe(tmp_path: Path) -> None:
    read, write = os.pipe()  # as the queues' pipes: the fork would inherit them
    try:
        recording = _open(tmp_path)
        _exchange(recording, 1)
        deadline = time.monotonic() + 10
        while not _lines(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.02)  # a line written: the writer closed what it inherited before
        targets = sorted(os.readlink(f"/proc/{recording.lines._pid}/fd/{fd}")
                         for fd in os.listdir(f"/proc/{recording.lines._pid}/fd"))
        mine = {os.readlink(f"/proc/self/fd/{fd}") for fd in (read, write)}
        assert not mine & set(targets)
        assert str(tmp_path / RESULTS) in targets
        assert sum(target.startswith("pipe:") for target in targets) <= 4  # std + wake
        _close(recording)
    finally:
        os.close(read)
        os.close(write)


@pytest.mark.skipif(sys.platform != "linux", reason="the line writer is a process on Linux")
def test_lines_are_rebuilt_when_the_line_writer_dies(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    recording = _open(tmp_path)
    os.kill(recording.lines._pid, signal.SIGKILL)
    sent = [_exchange(recording, i).task_id for i in range(30)]
    with caplog.at_level(logging.ERROR, logger="steersman.campaign.session"):
        _close(recording)
    assert [line["task_id"] for line in _lines(tmp_path)] == sent
    assert "results.jsonl writer failed" in caplog.text


def test_lines_from_a_thread_where_processes_are_not_forked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lines_module, "_FORK", False)
    recording = _open(tmp_path)
    assert recording.lines._thread is not None and recording.lines._pid == 0
    sent = [_exchange(recording, i).task_id for i in range(25)]
    _close(recording)
    assert [line["task_id"] for line in _lines(tmp_path)] == sent
    assert not recording.lines._thread.is_alive()


def test_line_of_a_result_with_proxies_is_made_by_the_thinker(tmp_path: Path) -> None:
    recording = _open(tmp_path)
    _exchange(recording, 3, proxied=True)
    _exchange(recording, 4)
    _close(recording)
    assert [line["value"] for line in _lines(tmp_path)] == [9, 16]  # resolved, not the blob


KILLED = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {tests!r})
    from test_campaign_lines import _exchange, _open
    recording = _open({run_dir!r})
    for i in range(200):
        _exchange(recording, i)
    recording.journal.write_queued()
    print(recording.lines._pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.skipif(sys.platform != "linux", reason="the line writer is a process on Linux")
def test_line_writer_stops_with_its_killed_thinker_and_the_next_rebuilds(
        tmp_path: Path) -> None:
    script = KILLED.format(tests=str(Path(__file__).parent), run_dir=str(tmp_path))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC),
                                                       os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    child = int(done.stdout.split()[0])
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _gone(child)
    state = JournalState.load(tmp_path / JOURNAL)
    assert len(state.results) == 200
    resumed = Recording(RunDirectory(tmp_path, owner="test"), state, Counters())
    _close(resumed)
    assert [line["value"] for line in _lines(tmp_path)] == [i * i for i in range(200)]


@pytest.mark.parametrize("method", ["pickle", "json"])
@pytest.mark.parametrize("keep_inputs", [True, False])
def test_line_from_the_record_flags_matches_the_line_from_the_header(
        tmp_path: Path, keep_inputs: bool, method: str) -> None:
    recording = _open(tmp_path)
    request = Result(method="square", topic="sim", inputs=((3,), {"x": [1.5]}),
                     keep_inputs=keep_inputs, serialization_method=method)
    request.encode_inputs()
    recording.request_sent(request, ("sim", 1))
    request.timestamp.result_received = time.time()
    request.set_result({"y": 9})
    request.encode_value()
    recording.result_received(request)
    _close(recording)
    state = JournalState.load(tmp_path / JOURNAL)
    record = state.results[0]
    flags = record.field_bytes(2)
    assert (b"K" in flags) is keep_inputs and (b"J" in flags) is (method == "json")
    older = Record(record.kind, record.time,  # as journals written before these flags
                   [record.field_bytes(0), record.field_bytes(1), b"FS",
                    *(record.field_bytes(i) for i in range(3, record.field_count))],
                   record.frames)
    inputs = state.requests[record.field(0)].frames
    line = lines_module.line_of(record.raw_fields, record.frames, inputs)
    assert line == lines_module.line_of(older.raw_fields, older.frames, inputs)
    parsed = json.loads(line)
    assert parsed["value"] == {"y": 9}
    assert parsed["inputs"] == ([[3], {"x": [1.5]}] if keep_inputs else [[], {}])
    assert _lines(tmp_path) == [parsed]


def _exchange_value(recording: Recording, value: object, inputs: tuple = ((), {}),
                    proxied: bool = False) -> Result:
    """Journal one request with `inputs` and its result with `value`."""
    request = Result(method="make", topic="sim", inputs=inputs)
    request.encode_inputs()
    recording.request_sent(request, ("sim", 1))
    request.timestamp.result_received = time.time()
    if proxied:  # the frames carry a proxy; the thinker saw what it resolved to
        request.proxystore_name = "store"
        request.set_result("proxy blob")
        request.encode_value()
        request.__dict__["value"] = value
    else:
        request.set_result(value)
        request.encode_value()
    recording.result_received(request)
    return request


def test_lines_bound_what_one_value_contributes(tmp_path: Path) -> None:
    """Large bytes-likes become a note of their size, long strings are cut, from the line
    writer as from the thinker (proxied values); numbers and shorter text stay exact."""
    big = 3 << 20
    recording = _open(tmp_path)
    _exchange_value(recording, bytes(big), ((bytearray(big),), {"raw": b"\xff" * big}))
    _exchange_value(recording, {"text": "x" * (2 << 20), "small": b"ab"}, proxied=True)
    floats = [0.5 * i for i in range(200_000)]
    _exchange_value(recording, floats, (("y" * 100_000,), {}))
    _exchange_value(recording, [bytes(big)] * 3, proxied=True)
    _close(recording)
    size = (tmp_path / RESULTS).stat().st_size
    assert size < 8 << 20, size  # the floats: 200_000 of them, exact
    first, second, third, fourth = _lines(tmp_path)
    assert first["value"] == f"<bytes: {big} bytes>"
    assert first["inputs"] == [[f"<bytearray: {big} bytes>"], {"raw": f"<bytes: {big} bytes>"}]
    text = second["value"]["text"]
    assert len(text) < 70_000 and text.endswith(f"... <str cut: {2 << 20} characters>")
    assert second["value"]["small"] == "ab"
    assert third["value"] == floats and third["inputs"] == [["y" * 100_000], {}]
    assert fourth["value"] == [f"<bytes: {big} bytes>"] * 3


def test_line_rebuilt_from_the_journal_is_bounded_too(tmp_path: Path) -> None:
    recording = _open(tmp_path)
    recording.lines.finish()  # no line writer: the lines are rebuilt when recording closes
    cyclic: list[object] = [1.5]
    cyclic.append(cyclic)
    _exchange_value(recording, cyclic, ((bytearray(1 << 20),), {}))
    _close(recording)
    (line,) = _lines(tmp_path)
    assert line["value"] == [1.5, "<cycle: list>"]
    assert line["inputs"] == [[f"<bytearray: {1 << 20} bytes>"], {}]


def test_a_value_that_cannot_be_written_still_gets_its_line(tmp_path: Path) -> None:
    """Invalid UTF-8 sends the line through the json module, which cannot write an int of
    5001 digits: the line says so, and the next lines follow."""
    recording = _open(tmp_path)
    _exchange_value(recording, [b"\xff", 10**5000], ((2,), {}))
    _exchange_value(recording, 3)
    _close(recording)
    bad, good = _lines(tmp_path)
    assert bad["value"].startswith("<cannot write: ValueError(")
    assert bad["inputs"] == bad["value"]
    assert good["value"] == 3
