"""The journal: records round-trip, a torn or corrupt tail ends it, the writer repairs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from steersman.campaign.journal import (
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
        writer.append(RecordKind.REQUEST, [f"task{i}", "sim", "square", "", "{}"],
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
    writer.append(RecordKind.SESSION, ['{"who": "thinker ünïcode"}'])
    writer.close()
    (record,), _ = read_journal(path)
    assert record.fields == ['{"who": "thinker ünïcode"}'] and record.frames == []


def test_torn_tail_is_ignored_then_cut_by_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    _write(path, 2)
    whole = path.stat().st_size
    torn = b"".join(bytes(p) for p in encode_record(RecordKind.RESULT, ["x"], [b"y" * 50]))
    with open(path, "ab") as stream:
        stream.write(torn[:-7])  # a kill in the middle of a write
    records, end = read_journal(path)
    assert len(records) == 2 and end == whole
    writer = JournalWriter(path, valid_end=end)
    writer.append(RecordKind.PROCESSED, ["task0"])
    writer.close()
    records, end = read_journal(path)
    assert [r.kind for r in records] == [RecordKind.REQUEST, RecordKind.REQUEST,
                                         RecordKind.PROCESSED]
    assert end == path.stat().st_size


def test_corrupt_record_stops_reading(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    _write(path, 3)
    data = bytearray(path.read_bytes())
    first_end = [offset for _, offset in iter_records(bytes(data))][0]
    data[first_end + 40] ^= 0xFF  # inside the second record's body
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
        writer.append(RecordKind.END, ["{}"])
