"""LocalTaskServer with threads and with worker processes, and the task methods."""

import os
import signal
import sys
import time

import pytest

from steersman import (
    ExecutableMethod,
    LocalTaskServer,
    PipeQueues,
    PythonGeneratorMethod,
    PythonMethod,
    ResourceRequirements,
)


def add(a, b):
    return a + b


def count_to(n):
    yield from range(n)
    return "finished"


def fail_until(marker_dir, succeed_on):
    """Fail on the first attempts, succeed on attempt `succeed_on` (counted with files)."""
    attempts = len(os.listdir(marker_dir)) + 1
    open(os.path.join(marker_dir, str(attempts)), "w").close()
    if attempts < succeed_on:
        raise RuntimeError(f"attempt {attempts} fails")
    return attempts


def ranks(_resources=None):
    return _resources.total_ranks


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def half_generator(n):
    yield 1
    raise ValueError("generator broke half way")


def pid():
    return os.getpid()


@pytest.fixture(params=[True, False], ids=["threads", "processes"])
def served(request):
    queues = PipeQueues(topics=["sim"])
    server = LocalTaskServer(queues, [add, count_to, fail_until, ranks, half_generator, pid],
                             threads=request.param, num_workers=2)
    server.start()
    yield queues
    queues.send_kill_signal()
    server.join(30)
    assert server.exitcode == 0


def test_runs_tasks_and_reports_worker(served):
    served.send_inputs(2, 3, method="add", topic="sim")
    result = served.get_result("sim", timeout=30)
    assert result.success and result.value == 5
    assert result.worker_info.hostname and result.worker_info.pid
    stamps = result.timestamp
    assert stamps.created <= stamps.input_received <= stamps.compute_started
    assert stamps.compute_started <= stamps.compute_ended <= stamps.result_sent
    assert stamps.result_sent <= stamps.result_received
    assert result.time.running is not None and result.time.serialize_inputs is not None
    assert result.message_sizes["inputs"] > 0 and result.message_sizes["value"] > 0


def test_unknown_method_fails_naming_known_ones():
    queues = PipeQueues()
    server = LocalTaskServer(queues, [add])
    server.start()
    queues._methods = None  # a client that does not know the method list
    queues.send_inputs(1, method="nope")
    result = queues.get_result(timeout=30)
    assert not result.success
    assert "unknown method 'nope'" in result.failure_info.exception
    assert "['add']" in result.failure_info.exception
    queues.send_kill_signal()
    server.join(30)


def test_generator_streams_intermediate_results(served):
    served.send_inputs(3, method="count_to")
    seen = [served.get_result(timeout=30) for _ in range(4)]
    assert [r.complete for r in seen] == [False, False, False, True]
    assert [r.value for r in seen] == [0, 1, 2, "finished"]
    assert served.active_count == 0


def test_generator_raising_half_way_fails_after_streaming(served):
    served.send_inputs(2, method="half_generator")
    first = served.get_result(timeout=30)
    final = served.get_result(timeout=30)
    assert first.complete is False and first.value == 1
    assert final.complete and not final.success and "half way" in final.failure_info.exception


def test_failed_tasks_are_retried(served, tmp_path):
    served.send_inputs(str(tmp_path), 3, method="fail_until", max_retries=2)
    result = served.get_result(timeout=30)
    assert result.success and result.value == 3 and result.retries == 2


def test_retries_stop_at_max(served, tmp_path):
    served.send_inputs(str(tmp_path), 10, method="fail_until", max_retries=1)
    result = served.get_result(timeout=30)
    assert not result.success and result.retries == 1
    assert len(os.listdir(tmp_path)) == 2


def test_methods_may_ask_for_their_resources(served):
    served.send_inputs(method="ranks", resources={"node_count": 2, "cpu_processes": 3})
    assert served.get_result(timeout=30).value == 6


def test_keep_inputs_false_drops_inputs(served):
    served.send_inputs(1, 2, method="add", keep_inputs=False)
    result = served.get_result(timeout=30)
    assert result.value == 3 and result.args == ()


def test_kill_signal_waits_for_running_tasks():
    queues = PipeQueues()
    slow = PythonMethod(lambda: time.sleep(0.3) or "slept", name="slow")
    server = LocalTaskServer(queues, [slow])
    server.start()
    queues.send_inputs(method="slow")
    queues.send_kill_signal()  # arrives while the task runs
    result = queues.get_result(timeout=30)
    assert result.success and result.value == "slept"
    server.join(30)
    assert server.exitcode == 0


def test_dead_worker_fails_its_task_and_pool_recovers():
    queues = PipeQueues()
    server = LocalTaskServer(queues, [die, add], threads=False, num_workers=1)
    server.start()
    queues.send_inputs(method="die")
    lost = queues.get_result(timeout=30)
    assert not lost.success and lost.failure_info.worker_lost
    assert "died" in lost.failure_info.exception
    queues.send_inputs(1, 1, method="add")
    assert queues.get_result(timeout=30).value == 2
    queues.send_inputs(method="die", max_retries=1)
    retried = queues.get_result(timeout=30)
    assert not retried.success and retried.retries == 1
    queues.send_kill_signal()
    server.join(30)
    assert server.exitcode == 0


def test_process_workers_are_separate_processes():
    queues = PipeQueues()
    server = LocalTaskServer(queues, [pid], threads=False, num_workers=2)
    server.start()
    for _ in range(4):
        queues.send_inputs(method="pid")
    pids = {queues.get_result(timeout=30).value for _ in range(4)}
    assert os.getpid() not in pids and server.pid not in pids
    queues.send_kill_signal()
    server.join(30)


def test_duplicate_and_missing_methods_are_rejected():
    with pytest.raises(ValueError, match="two methods are named 'add'"):
        LocalTaskServer(PipeQueues(), [add, add])
    with pytest.raises(ValueError, match="at least one method"):
        LocalTaskServer(PipeQueues(), [])
    with pytest.raises(ValueError, match="num_workers"):
        LocalTaskServer(PipeQueues(), [add], num_workers=0)
    with pytest.raises(TypeError, match="not a generator function"):
        PythonGeneratorMethod(add)


class Echo(ExecutableMethod):
    def __init__(self, **kwargs):
        super().__init__([sys.executable, "-c", "import sys; print(' '.join(sys.argv[1:]))"],
                         name="echo", **kwargs)

    def postprocess(self, run_dir):
        return (run_dir / "stdout.txt").read_text().split()


def test_executable_method_runs_and_postprocesses():
    queues = PipeQueues()
    failing = ExecutableMethod([sys.executable, "-c", "import sys; sys.stderr.write('bad input'); "
                                "sys.exit(3)"], name="fails")
    server = LocalTaskServer(queues, [Echo(), failing])
    server.start()
    queues.send_inputs("a", 1, method="echo")
    result = queues.get_result(timeout=30)
    assert result.value == ["a", "1"]
    assert {"preprocess", "execute", "postprocess"} <= set(result.time.additional)
    queues.send_inputs(method="fails")
    failed = queues.get_result(timeout=30)
    assert not failed.success
    assert "exited with code 3" in failed.failure_info.exception
    assert "bad input" in failed.failure_info.exception
    queues.send_kill_signal()
    server.join(30)


def test_mpi_launch_is_rendered_from_resources():
    method = Echo(mpi=True, mpi_command_string="mpiexec -n {total_ranks} -ppn {cpu_processes}")
    resources = ResourceRequirements(node_count=2, cpu_processes=4)
    assert method.render_mpi_launch(resources) == "mpiexec -n 8 -ppn 4"
    assert method.command_line(resources, ["x"])[:5] == ["mpiexec", "-n", "8", "-ppn", "4"]
    with pytest.raises(ValueError, match="mpi_command_string"):
        ExecutableMethod(["a"], mpi=True)


def test_server_as_a_context_manager_stops_cleanly():
    """``with server:`` starts the server, and leaving it sends the kill signal and waits."""
    queues = PipeQueues()
    with LocalTaskServer(queues, [add]) as server:
        queues.send_inputs(1, 2, method="add")
        assert queues.get_result(timeout=30).value == 3
    assert not server.is_alive() and server.exitcode == 0


def test_worker_info_names_the_engine_executor(served):
    """Results say they ran on 'default', the one name `executor=` accepts here."""
    served.send_inputs(1, 1, method="add", topic="sim")
    assert served.get_result("sim", timeout=30).worker_info.executor == "default"
    served.send_inputs(1, 1, method="add", topic="sim", executor="default")
    assert served.get_result("sim", timeout=30).worker_info.executor == "default"


@pytest.mark.parametrize("name", ["sims/echo", "x" * 300, "a b\\c:*"])
def test_executable_method_names_need_not_be_file_names(name):
    """A run directory's name is made from the method's: it must stay a valid file name."""
    queues = PipeQueues()
    method = ExecutableMethod([sys.executable, "-c", "print('ran')"], name=name)
    assert "/" not in method.run_dir_prefix and len(method.run_dir_prefix) < 100
    with LocalTaskServer(queues, [method]):
        queues.send_inputs(method=name)
        result = queues.get_result(timeout=30)
    assert result.success, result.failure_info
    assert result.value == "ran\n"


class ExitsOutsideItsFunction(PythonMethod):
    """A method whose call raises SystemExit itself, out of reach of the method's own
    handling of what the function raises."""

    def __call__(self, result, emit=None):
        raise SystemExit(4)


@pytest.mark.timeout(60)
def test_thread_engine_keeps_serving_after_a_task_raised_a_base_exception():
    queues = PipeQueues()
    server = LocalTaskServer(queues, [ExitsOutsideItsFunction(add, name="exits"), add],
                             threads=True, num_workers=1)
    server.start()
    try:
        queues.send_inputs(1, 2, method="exits")
        failed = queues.get_result(timeout=20)
        assert failed is not None, "the task's thread died without a result"
        assert not failed.success and "SystemExit(4)" in failed.failure_info.exception
        queues.send_inputs(1, 2, method="add")  # the one thread still serves
        assert queues.get_result(timeout=20).value == 3
    finally:
        queues.send_kill_signal()
        server.join(20)
    assert server.exitcode == 0


def test_start_gate_settles_once_whether_a_request_runs():
    """The worker's start and the server's skip of one ticket: whichever comes first wins."""
    from steersman.task_server.local import StartGates

    gates = StartGates(2)
    first, second = gates.gate(0), gates.gate(1)
    assert first.skip(5)  # given up on before the worker got to it
    assert not first.start(5)  # so the worker skips it
    assert second.start(5)  # another slot's record is apart
    assert first.start(6)  # started first: the server must kill to stop it
    assert not first.skip(6)
    first.end()  # it ran: nothing to kill any more
    assert first.skip(6)
    gates.close()
