"""Over Redis, a request is in the journal before it leaves and a result before the thinker
acknowledges it to Redis; over pipes, which die with the thinker, requests wait for the batch."""

from __future__ import annotations

from typing import Any

import pytest
from tests.conftest import echo_server

from steersman.campaign import QueueRecorder, journal
from steersman.campaign.journal import RecordKind, read_journal
from steersman.campaign.rundir import JOURNAL
from steersman.queue.pipe import PipeQueues
from steersman.queue.redis import make_queue_pairs


def test_results_are_journaled_before_redis_forgets_them(redis_server: Any, tmp_path,
                                                         monkeypatch) -> None:
    monkeypatch.setattr(journal, "SYNC_INTERVAL", 3600.0)  # no help from the batched sync
    client, server_queues = make_queue_pairs(redis_server.host, redis_server.port)
    server = echo_server(server_queues)
    try:
        with QueueRecorder(client, tmp_path / "run") as recorder:
            task_id = client.send_inputs(7, method="echo")
            assert client.get_result(timeout=10) is not None  # read, not yet acknowledged
            raw = redis_server.client()
            stream = client.results_key("default")
            assert raw.xlen(stream) == 1
            assert client.get_result(timeout=0.05) is None  # this read acknowledges it
            assert raw.xlen(stream) == 0
            records, _ = read_journal(recorder.run_dir / JOURNAL)
            assert any(r.kind is RecordKind.RESULT and r.field(0) == task_id for r in records)
    finally:
        client.send_kill_signal()
        server.join(5)
        client.purge()


def _requests(run_dir: Any) -> list[str]:
    return [record.field(0) for record in read_journal(run_dir / JOURNAL)[0]
            if record.kind is RecordKind.REQUEST]


@pytest.mark.parametrize("backend", ["pipe", "redis"])
def test_requests_wait_for_the_batch_only_where_they_die_with_the_thinker(
        backend: str, redis_server: Any, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(journal.JournalWriter, "_sync_loop", lambda self: None)  # no batches
    if backend == "pipe":
        queues: Any = PipeQueues()  # no server: the pipe holds the request
    else:
        queues = make_queue_pairs(redis_server.host, redis_server.port)[0]
    assert queues.requests_outlive_client is (backend == "redis")
    try:
        with QueueRecorder(queues, tmp_path / "run") as recorder:
            task_id = queues.send_inputs(7, method="echo")
            assert _requests(recorder.run_dir) == ([task_id] if backend == "redis" else [])
        assert _requests(tmp_path / "run") == [task_id]  # written when the recording closed
    finally:
        if backend == "redis":
            queues.purge()


def test_a_request_with_arrays_is_written_before_it_leaves_even_over_pipes(
        tmp_path, monkeypatch) -> None:
    """Written at once, its out-of-band buffers are copied once, into the journal; an array
    changed after sending does not change the record."""
    import numpy as np
    monkeypatch.setattr(journal.JournalWriter, "_sync_loop", lambda self: None)  # no batches
    queues = PipeQueues()
    values = np.arange(100_000, dtype=float)
    with QueueRecorder(queues, tmp_path / "run") as recorder:
        small = queues.send_inputs(7, method="echo")
        large = queues.send_inputs(values, method="echo")
        values[:] = -1
        assert _requests(recorder.run_dir) == [small, large]  # the small one went first
        (record,) = [r for r in read_journal(recorder.run_dir / JOURNAL)[0]
                     if r.field(0) == large]
        assert len(record.frames) > 1  # the array out of band
        assert bytes(record.frames[1]) == np.arange(100_000, dtype=float).tobytes()
    queues.send_kill_signal()
