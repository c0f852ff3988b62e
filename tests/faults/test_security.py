"""Security: a rogue writer on the campaign's Redis cannot get its pickles opened.

With a key, the task server and the thinker reject (and log) every message whose signature is
missing or wrong before unpickling anything, end to end with a real task server; signed work
still flows. The key can also come from the environment.
"""

from __future__ import annotations

import logging
import pickle
import threading
from pathlib import Path
from typing import Any

import fault_tasks as tasks
import pytest

from steersman import LocalTaskServer, PipeQueues, Result
from steersman.models.messages import Kind, encode, join

KEY = "campaign-secret"


class Marker:
    """Unpickling this creates a file: proof that untrusted bytes were unpickled."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def _rogue_messages(marker: Path, kind: Kind) -> list[bytes]:
    """A bare pickle, an unsigned message, and one signed with the wrong key, each carrying
    the marker in its payload."""
    payload = Result(method="double", inputs=((Marker(marker),), {}))
    payload.encode_inputs()
    if kind is Kind.RESULT:
        payload.set_result(Marker(marker))
    return [pickle.dumps(Marker(marker)), join(encode(kind, payload)),
            join(encode(kind, payload, key=b"guessed"))]


@pytest.mark.timeout(40)
def test_rogue_writer_on_redis_is_rejected_end_to_end(
    redis_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Forged requests and results are logged and dropped unopened by a running task server
    and by the thinker; signed requests still get their results."""
    from steersman.queue.redis import make_queue_pairs

    marker = tmp_path / "unpickled"
    client, server_queues = make_queue_pairs(redis_server.host, redis_server.port, key=KEY)
    server = LocalTaskServer(server_queues, [tasks.double], num_workers=1)
    serving = threading.Thread(target=server.serve, daemon=True)  # here, so caplog sees it
    raw = redis_server.client()
    try:
        with caplog.at_level(logging.ERROR, logger="steersman.queue.base"):
            serving.start()
            client.send_inputs(1, method="double")
            assert client.get_result(timeout=20).value == 2  # both sides are up
            for data in _rogue_messages(marker, Kind.REQUEST):
                raw.xadd(client.requests_key, {b"m": data})
            for data in _rogue_messages(marker, Kind.RESULT):
                raw.xadd(client.results_key("default"), {b"m": data})
            client.send_inputs(21, method="double")
            result = client.get_result(timeout=20)
            assert result is not None and result.value == 42
            assert client.get_result(timeout=0.3) is None, "a forged result was delivered"
        rejected = [r.getMessage() for r in caplog.records
                    if "rejected" in r.getMessage() or "dropped" in r.getMessage()]
        assert len(rejected) == 6, rejected
        assert sum("not signed" in m for m in rejected) == 2
        assert sum("signature does not match" in m for m in rejected) == 2
        assert not marker.exists(), "a rogue pickle was opened"
        assert raw.xlen(client.requests_key) == 0  # rejected requests are deleted too
        assert client.active_count == 0
    finally:
        client.send_kill_signal()
        serving.join(20)
        client.close()
        server_queues.close()
        client.purge()
    assert not serving.is_alive()


def test_signing_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queues built without key= sign with STEERSMAN_KEY when it is set."""
    monkeypatch.setenv("STEERSMAN_KEY", KEY)
    queues = PipeQueues()
    try:
        assert queues.signing_key == KEY.encode()
    finally:
        queues.close()
