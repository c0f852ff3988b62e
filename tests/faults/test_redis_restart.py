"""Fault 3: Redis restarted in the middle of a campaign run by a thinker and a task server process.

Both sides reconnect on their own; every request runs and every result arrives exactly once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import fault_tasks as tasks
import pytest
from fault_helpers import Collect, Request, run_in_thread

from steersman import LocalTaskServer, Result


@pytest.mark.timeout(60)
def test_campaign_survives_a_redis_restart(
    persistent_redis_server: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """Restart Redis once half the results are in: all arrive, none twice, no error raised."""
    from steersman.queue.redis import make_queue_pairs

    redis = persistent_redis_server
    client, server_queues = make_queue_pairs(redis.host, redis.port, topics=["sim"])
    server = LocalTaskServer(server_queues, [tasks.hang, tasks.double], num_workers=2)
    server.start()
    n = 40
    halfway, restarted = threading.Event(), threading.Event()

    def pace(thinker: Collect, result: Result) -> None:
        if len(thinker.results) == n // 2:
            halfway.set()
            restarted.wait(20)  # results keep arriving while Redis is down: none may be lost

    requests = [Request("hang", (0.02,), {"task_info": {"i": i}}) for i in range(n)]
    thinker = Collect(client, requests, on_result=pace)
    with caplog.at_level(logging.WARNING, logger="steersman.queue.redis"):
        thread, raised = run_in_thread(thinker)
        try:
            assert halfway.wait(30)
            # Another agent waits on its own topic meanwhile: it reads the result streams
            # through the outage (the processor is held up above).
            other = threading.Thread(target=client.get_result, args=("sim", 3.0))
            other.start()
            redis.stop()
            redis.start()
            restarted.set()
            other.join(30)
            thread.join(40)
            assert not thread.is_alive(), "the campaign hung after Redis restarted"
            assert not raised, raised
            assert sorted(r.task_info["i"] for r in thinker.results.values()) == list(range(n))
            assert all(r.success for r in thinker.results.values())
            assert not thinker.duplicates
            assert client.active_count == 0
            assert any("reconnect" in r.getMessage() for r in caplog.records)
            # The server reconnected too: it still serves new requests.
            client.send_inputs(21, method="double")
            result = client.get_result(timeout=20)
            assert result is not None and result.value == 42
        finally:
            restarted.set()
            client.send_kill_signal()
            server.join(20)
            client.close()
    assert server.exitcode == 0
