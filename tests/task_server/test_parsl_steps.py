"""The steps an executable task runs on a Parsl worker, called here directly (no Parsl needed):
pre-processing sees its inputs as the local engines give them, and cleans up when it fails."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from steersman import ExecutableMethod, PipeQueues, Result
from steersman.models.messages import Kind, decode, encode, join
from steersman.task_server.parsl import _prepare_executable


class Inspect(ExecutableMethod):
    """Passes on the type its first input arrived as; fails on request."""

    def __init__(self) -> None:
        super().__init__(["echo"], name="inspect/v1")

    def preprocess(self, run_dir: Path, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> tuple[list[str], str | None]:
        if kwargs.get("fail"):
            raise ValueError("bad input")
        return [type(args[0]).__name__, str(len(args[0]))], None


@pytest.fixture
def run_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where run directories are made during the test."""
    path = tmp_path / "runs"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


def request(queues: PipeQueues, *args: Any, **kwargs: Any) -> bytes:
    result = Result(method="inspect/v1", inputs=(args, kwargs))
    queues.prepare_request(result)
    return bytes(join(encode(Kind.REQUEST, result)))


def test_preprocess_gets_proxied_inputs_resolved(file_store: Any, run_dirs: Path) -> None:
    queues = PipeQueues(proxystore_name=file_store.name, proxystore_threshold=1000)
    outcome = _prepare_executable(Inspect(), request(queues, b"x" * 5000), None, "cpu")
    assert isinstance(outcome, tuple), decode(outcome[0]).result
    prepared, run_dir, command = outcome
    assert command.endswith("echo bytes 5000")
    assert decode(prepared).result.time.proxy_resolve is not None
    assert Path(run_dir).parent == run_dirs
    assert Path(run_dir).name.startswith("steersman-inspect_v1-")
    queues.close()


def test_failed_preprocess_leaves_no_run_directory(run_dirs: Path) -> None:
    queues = PipeQueues()
    outcome = _prepare_executable(Inspect(), request(queues, b"x", fail=True), None, "cpu")
    assert isinstance(outcome, list)
    failed = decode(outcome[0]).result
    assert not failed.success and "bad input" in failed.failure_info.exception
    assert list(run_dirs.iterdir()) == []
    queues.close()
