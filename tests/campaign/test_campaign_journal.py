"""The journal: records round-trip, a torn or corrupt tail ends it, the writer repairs it;
records appended are in the file at once, queued ones before the next appended one."""

from __future__ import annotations

import gc
import marshal
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from array import array
from pathlib import Path

import pytest

from steersman.campaign import journal
from steersman.campaign.journal import (
    BATCH_RECORDS,
    MAGIC,
    JournalWriter,
    RecordKind,
    encode_record,
    iter_records,
    read_journal,
)


def _write(path: Path, count: int) -> None:
    writer = JournalWriter(path)
    for i in range(count):
        writer.append(RecordKind.REQUEST, [f"task{i}".encode(), b"sim", b"square", b"", b"{}"],
                      [b"inputs", bytes([i]) * 100])
    writer.close()


def test_records_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    _write(path, 3)
    records, end = read_journal(path)
    assert end == path.stat().st_size
    assert [r.fields[0] for r in records] == ["task0", "task1", "task2"]
    assert all(r.kind is RecordKind.REQUEST for r in records)
    assert bytes(records[2].frames[1]) == bytes([2]) * 100
    assert records[0].time <= records[2].time


def test_unicode_fields_and_empty_frames(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    writer = JournalWriter(path)
    writer.append(RecordKind.SESSION, ['{"who": "thinker ünïcode"}'.encode()])
    writer.close()
    (record,), _ = read_journal(path)
    assert record.fields == ['{"who": "thinker ünïcode"}'] and record.frames == []


def test_torn_tail_is_ignored_then_cut_by_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    _write(path, 2)
    whole = path.stat().st_size
    torn = b"".join(bytes(p) for p in encode_record(RecordKind.RESULT, [b"x"], [b"y" * 50]))
    with open(path, "ab") as stream:
        stream.write(torn[:-7])  # a kill in the middle of a write
    records, end = read_journal(path)
    assert len(records) == 2 and end == whole
    writer = JournalWriter(path, valid_end=end)
    writer.append(RecordKind.PROCESSED, [b"task0"])
    writer.close()
    records, end = read_journal(path)
    assert [r.kind for r in records] == [RecordKind.REQUEST, RecordKind.REQUEST,
                                         RecordKind.PROCESSED]
    assert end == path.stat().st_size


def test_corrupt_record_stops_reading(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    _write(path, 3)
    data = bytearray(path.read_bytes())
    first_end, second_end = [offset for _, offset in iter_records(bytes(data))][:2]
    data[second_end - 5] ^= 0xFF  # inside the second record's payload
    path.write_bytes(bytes(data))
    records, end = read_journal(path)
    assert len(records) == 1 and end == first_end
    assert len(read_journal(path, check=False)[0]) == 3  # counting may skip the check


def test_not_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    path.write_bytes(b"hello world, not a journal")
    with pytest.raises(ValueError, match="not a steersman journal"):
        read_journal(path)


def test_new_journal_starts_with_magic(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    JournalWriter(path).close()
    assert path.read_bytes() == MAGIC
    with pytest.raises(OSError):
        writer = JournalWriter(path)
        writer.close()
        writer.append(RecordKind.END, [b"{}"])


def _kinds(path: Path) -> list[RecordKind]:
    """The kinds of the records in the file now (the writer may still be open)."""
    return [record.kind for record in read_journal(path)[0]]


def test_queued_records_go_out_before_the_next_appended_one(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    writer = JournalWriter(path)
    writer.enqueue(RecordKind.RESULT, [b"task0", b"sim", b"FS", b"{}", b""], [b"value"])
    writer.defer(RecordKind.PROCESSED, "task0")
    writer.append(RecordKind.REQUEST, [b"task1", b"sim", b"square", b"", b"{}"])
    kinds = _kinds(path)  # in the file once append returns (the syncer may have been first)
    assert kinds[:2] == [RecordKind.RESULT, RecordKind.REQUEST] or kinds[:3] == [
        RecordKind.RESULT, RecordKind.PROCESSED, RecordKind.REQUEST]
    writer.defer(RecordKind.PROCESSED, "task2")
    writer.write_queued()
    records, _ = read_journal(path)
    assert {r.kind for r in records} == {RecordKind.RESULT, RecordKind.REQUEST,
                                         RecordKind.PROCESSED}
    marks = [tid for r in records if r.kind is RecordKind.PROCESSED
             for tid in r.field(0).split("\n")]
    assert marks == ["task0", "task2"]
    writer.close()


def test_write_queued_returns_with_every_deferred_record_written(tmp_path: Path) -> None:
    """The background thread's first write races the caller's: whichever takes a deferred
    record, it is in the file when the caller's write_queued returns, and taken once."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for index in range(300):
            writer = JournalWriter(tmp_path / f"journal{index}.bin")
            writer.defer(RecordKind.PROCESSED, "task0")
            writer.append(RecordKind.REQUEST, [b"task1", b"sim", b"square", b"", b"{}"])
            writer.defer(RecordKind.PROCESSED, "task1")
            writer.write_queued()
            records, _ = read_journal(writer.path)
            assert [tid for r in records if r.kind is RecordKind.PROCESSED
                    for tid in r.field(0).split("\n")] == ["task0", "task1"]
            assert writer._syncer.is_alive()
            writer.close()
    finally:
        sys.setswitchinterval(interval)


def test_deferred_records_follow_the_records_queued_before_them(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    writer = JournalWriter(path)
    for i in range(200):  # while the syncer writes batches of them
        writer.enqueue(RecordKind.RESULT, [f"task{i}".encode(), b"sim", b"FS", b"{}", b""])
        writer.defer(RecordKind.PROCESSED, f"task{i}")
    writer.close()
    seen: set[str] = set()
    for record in read_journal(path)[0]:
        if record.kind is RecordKind.RESULT:
            seen.add(record.field(0))
        else:
            assert set(record.field(0).split("\n")) <= seen
    assert len(seen) == 200


def test_an_appended_record_survives_a_sigkill_at_once(tmp_path: Path) -> None:
    """What a kill of the thinker's process keeps: everything appended, and everything queued
    before it, though nothing was synced and nothing closed."""
    path = tmp_path / "journal.bin"
    script = textwrap.dedent(f"""
        import sys, threading
        from pathlib import Path
        from steersman.campaign.journal import JournalWriter, RecordKind
        writer = JournalWriter(Path({str(path)!r}))
        writer.enqueue(RecordKind.RESULT, [b"task0", b"sim", b"FS", b"{{}}", b""], [b"v"])
        writer.append(RecordKind.REQUEST, [b"task1", b"sim", b"square", b"", b"{{}}"])
        print("appended", flush=True)
        threading.Event().wait()
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline() == "appended\n"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stdout.close()
    records, end = read_journal(path)
    assert [(r.kind, r.field(0)) for r in records] == [(RecordKind.RESULT, "task0"),
                                                      (RecordKind.REQUEST, "task1")]
    writer = JournalWriter(path, end)
    writer.append(RecordKind.END, [b"{}"])
    writer.close()
    assert path.stat().st_size == read_journal(path)[1]
    assert _kinds(path)[-1] is RecordKind.END


def test_out_of_band_buffers_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    values = array("d", range(1000))
    writer = JournalWriter(path)
    writer.append(RecordKind.RESULT, [b"task0", b"sim", b"FS", b"{}", b""],
                  [b"stream", memoryview(values), b"tail"])
    writer.append(RecordKind.REQUEST, [b"task1", b"sim", b"square", b"", b"{}"], [b"inputs"])
    writer.close()
    (result, request), _ = read_journal(path)
    assert [bytes(f) for f in result.frames] == [b"stream", values.tobytes(), b"tail"]
    assert [bytes(f) for f in request.frames] == [b"inputs"]


def test_many_queued_records_go_out_in_batches_of_bounded_size(tmp_path: Path,
                                                               monkeypatch) -> None:
    monkeypatch.setattr(JournalWriter, "_sync_loop", lambda self: None)  # all in one write
    path = tmp_path / "journal.bin"
    writer = JournalWriter(path)
    count = 2 * BATCH_RECORDS + 10
    for i in range(count):
        writer.enqueue(RecordKind.RESULT, (f"task{i}".encode(), b"sim", b"FS", b"{}", b""),
                       (bytes([i % 256]) * 10,))
    writer.close()
    read = list(iter_records(path.read_bytes()))
    assert [record.field(0) for record, _ in read] == [f"task{i}" for i in range(count)]
    assert bytes(read[-1][0].frames[0]) == bytes([(count - 1) % 256]) * 10
    assert len({end for _, end in read}) == 3  # where batches end: 256, 256 and 10 records


def test_a_write_cut_short_or_of_many_parts_is_finished(tmp_path: Path, monkeypatch) -> None:
    """A short pwritev (a signal) is completed, and more parts than one call takes are
    written in groups."""
    real = os.pwritev
    monkeypatch.setattr(journal.os, "pwritev",
                        lambda fd, parts, offset: real(fd, [bytes(parts[0])[:3]], offset))
    monkeypatch.setattr(journal, "_IOV_MAX", 2)
    path = tmp_path / "journal.bin"
    values = array("d", range(100))
    writer = JournalWriter(path)
    writer.append(RecordKind.RESULT, [b"task0", b"sim", b"FS", b"{}", b""],
                  [b"stream", memoryview(values), b"tail", b"more"])
    writer.close()
    (record,), end = read_journal(path)
    assert [bytes(f) for f in record.frames] == [b"stream", values.tobytes(), b"tail", b"more"]
    assert end == path.stat().st_size


def test_a_journal_of_an_earlier_version_ending_in_zeros_is_read_and_cut(tmp_path: Path) -> None:
    """Earlier versions reserved space ahead of the last batch, zero-filled."""
    path = tmp_path / "journal.bin"
    _write(path, 2)
    whole = path.stat().st_size
    with open(path, "ab") as stream:
        stream.write(bytes(8192))
    records, end = read_journal(path)
    assert len(records) == 2 and end == whole
    writer = JournalWriter(path)  # finds where the batches end by itself
    writer.append(RecordKind.END, [b"{}"])
    writer.close()
    assert _kinds(path) == [RecordKind.REQUEST, RecordKind.REQUEST, RecordKind.END]
    assert path.stat().st_size == read_journal(path)[1]


def test_queued_records_leave_nothing_for_the_garbage_collector(tmp_path: Path,
                                                               monkeypatch) -> None:
    """Records waiting for their batch hold no object the collector tracks: it has no reason to
    run (and stop every thread) in a journaled campaign more than in one without a journal."""
    monkeypatch.setattr(JournalWriter, "_sync_loop", lambda self: None)  # all stay queued
    writer = JournalWriter(tmp_path / "journal.bin")
    collecting = gc.isenabled()
    gc.disable()  # counting goes on: allocations of tracked objects less their releases
    try:
        before = gc.get_count()[0]
        for i in range(1000):
            writer.enqueue(RecordKind.RESULT, (f"task{i}".encode(), b"sim", b"FS", b"{}", b""),
                           (b"value",))
            writer.enqueue(RecordKind.REQUEST, (f"task{i}".encode(), b"sim", b"f", b"", b"{}"))
        held = gc.get_count()[0] - before
    finally:
        if collecting:
            gc.enable()
    assert held < 50  # a tuple per record would be 2,000
    writer.close()
    records, _ = read_journal(tmp_path / "journal.bin")
    assert len(records) == 2000
    assert (records[-2].field(0), bytes(records[-2].frames[0])) == ("task999", b"value")
    assert records[-1].frames == []


def _earlier_batch(records: list[tuple], buffers: tuple[bytes, ...] = ()) -> bytes:
    """A batch as version 2 journals hold them: a tuple per record."""
    meta = marshal.dumps(records, 2)
    body = struct.pack("<I", len(meta)) + meta + b"".join(buffers)
    return struct.pack("<II", len(body), zlib.crc32(body)) + body


def test_a_journal_of_the_earlier_format_is_read_and_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    request = (RecordKind.REQUEST.value, 1.0, [b"task0", b"sim", b"f", b"", b"{}"], [b"in"])
    result = (RecordKind.RESULT.value, 2.0, [b"task0", b"sim", b"FS", b"{}", b""], [b"head"],
              [3, 2])
    path.write_bytes(b"SMJRNL02" + _earlier_batch([request, result], (b"abc", b"de")))
    (old_request, old_result), end = read_journal(path)
    assert (old_request.kind, old_request.fields, old_request.time) == (
        RecordKind.REQUEST, ["task0", "sim", "f", "", "{}"], 1.0)
    assert [bytes(f) for f in old_result.frames] == [b"head", b"abc", b"de"]
    writer = JournalWriter(path, end)
    writer.append(RecordKind.END, [b"{}"])
    writer.close()
    assert path.read_bytes()[: len(MAGIC)] == MAGIC  # no earlier version reads it now
    assert _kinds(path) == [RecordKind.REQUEST, RecordKind.RESULT, RecordKind.END]


def test_queued_records_are_written_often_and_synced_less_often(tmp_path: Path,
                                                                monkeypatch) -> None:
    """The background thread writes queued records every WRITE_INTERVAL (waking the line
    writer), and syncs them at most every SYNC_INTERVAL, but always in the end."""
    syncs: list[int] = []
    real_sync = os.fdatasync
    monkeypatch.setattr(journal.os, "fdatasync", lambda fd: (syncs.append(fd), real_sync(fd)))
    monkeypatch.setattr(journal, "WRITE_INTERVAL", 0.01)
    monkeypatch.setattr(journal, "SYNC_INTERVAL", 1.0)
    path = tmp_path / "journal.bin"
    writer = JournalWriter(path)

    def until(condition) -> bool:
        for _ in range(600):
            if condition():
                return True
            threading.Event().wait(0.005)
        return False

    writer.enqueue(RecordKind.RESULT, (b"task0", b"sim", b"FS", b"{}", b""), (b"v",))
    assert until(lambda: len(syncs) == 1)  # the first sync is due at once
    assert len(_kinds(path)) == 1
    writer.enqueue(RecordKind.RESULT, (b"task1", b"sim", b"FS", b"{}", b""), (b"v",))
    assert until(lambda: len(_kinds(path)) == 2)
    assert len(syncs) == 1  # written, not yet synced: the interval has not passed
    assert until(lambda: len(syncs) == 2)  # the sync follows without another record
    writer.close()


def test_a_journal_that_cannot_be_written_stops_every_later_record(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """A failed background write loses the records it took: the next record raises, and so
    does close, which still closes the file."""
    import errno

    from steersman.exceptions import JournalError

    def full(fd, parts, size, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = JournalWriter(tmp_path / "journal.bin")
    monkeypatch.setattr(journal, "_write_at", full)
    writer.enqueue(RecordKind.RESULT, (b"task0", b"sim", b"FS", b"{}", b""), (b"v",))
    writer._syncer.join(timeout=10)  # it stops at the failure
    assert not writer._syncer.is_alive()
    with pytest.raises(JournalError, match="No space left on device"):
        writer.enqueue(RecordKind.RESULT, (b"task1", b"sim", b"FS", b"{}", b""), (b"v",))
    with pytest.raises(JournalError):
        writer.defer(RecordKind.PROCESSED, "task0")
    with pytest.raises(JournalError):
        writer.append(RecordKind.END, [b"{}"])
    with pytest.raises(JournalError):
        writer.close()
    assert writer._fd == -1
