"""ExecutorTaskServer on standard pools, and GlobusComputeTaskServer on the same contract.

The Globus Compute service is out of reach in tests: its server is built with an executor
factory that returns a local pool instead of the SDK's Executor — the only difference.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial

import engine_tasks as tasks
import pytest
from engine_tasks import GATE

from steersman import PipeQueues, PythonMethod
from steersman.exceptions import WorkerLost
from steersman.models.messages import Routing
from steersman.task_server import ExecutorTaskServer, GlobusComputeTaskServer
from steersman.task_server.engine import WorkerContext
from steersman.task_server.executor import Backend, ExecutorBackend, ExecutorEngine, TaskRunner

FORK = multiprocessing.get_context("fork")


def pool(workers: int) -> partial[ProcessPoolExecutor]:
    return partial(ProcessPoolExecutor, workers, mp_context=FORK)


@pytest.fixture
def served() -> Iterator[PipeQueues]:
    """A 'cpu' pool of two processes and a 'gpu' pool of one; add runs only on cpu."""
    GATE.clear()
    queues = PipeQueues(topics=["probe"])
    server = ExecutorTaskServer(
        [(tasks.add, {"executors": ["cpu"]}), tasks.where, tasks.wait_gate, tasks.die_once,
         tasks.die, tasks.count_up],
        queues, executors={"cpu": pool(2), "gpu": pool(1)},
    )
    server.start()
    yield queues
    GATE.set()
    queues.send_kill_signal()
    server.join(30)
    assert server.exitcode == 0


def test_methods_run_where_placed_and_where_asked(served):
    served.send_inputs(1, 2, method="add")
    result = served.get_result(timeout=30)
    assert result.value == 3 and result.worker_info.executor == "cpu"
    served.send_inputs("x", method="where", executor="gpu")
    assert served.get_result(timeout=30).worker_info.executor == "gpu"
    with pytest.raises(ValueError,
                       match=r"unknown executor 'tpu'; valid executors: \['cpu', 'gpu'\]"):
        served.send_inputs("x", method="where", executor="tpu")


def test_generator_results_arrive_before_the_final_one(served):
    served.send_inputs(3, method="count_up")
    values = [served.get_result(timeout=30) for _ in range(4)]
    assert [(r.value, r.complete) for r in values] == [(0, False), (1, False), (2, False),
                                                       (3, True)]


def test_timeout_and_retries(served):
    served.send_inputs(method="wait_gate", executor="gpu", timeout=0.05, max_retries=1)
    result = served.get_result(timeout=30)
    assert result.timed_out and result.retries == 1


def test_killed_worker_is_retried_on_a_rebuilt_pool(served, tmp_path):
    served.send_inputs(str(tmp_path / "died"), method="die_once", executor="gpu", max_retries=1)
    result = served.get_result(timeout=30)
    assert result.success and result.value == "survived" and result.retries == 1
    served.send_inputs(method="die", executor="gpu")
    result = served.get_result(timeout=30)
    assert not result.success and result.failure_info.worker_lost
    served.send_inputs("after", method="where", executor="gpu")
    assert served.get_result(timeout=30).value == "after"


def test_waiting_tasks_go_out_highest_priority_first(served):
    served.send_inputs(method="wait_gate", executor="gpu")  # holds the one gpu slot
    for tag, priority in [("low", 0), ("high", 3), ("top", 7), ("low", 0)]:
        served.send_inputs(tag, method="where", executor="gpu", priority=priority)
    served.send_inputs(method="where", executor="gpu", timeout=0.01, priority=-5, topic="probe")
    assert served.get_result("probe", timeout=30).timed_out  # everything before it waits
    GATE.set()
    results = [served.get_result(timeout=30) for _ in range(5)]
    order = [r.value for r in sorted(results, key=lambda r: r.timestamp.compute_started)]
    assert order == [True, "top", "high", "low", "low"]


def test_thread_pool_and_instance_executors_work_in_process():
    """An Executor instance (not a factory) used by serve() in the calling process."""
    queues = PipeQueues()
    server = ExecutorTaskServer([tasks.add], queues, {"threads": ThreadPoolExecutor(2)},
                                max_in_flight=None)
    queues.send_inputs(2, 2, method="add")
    queues.send_kill_signal()
    server.serve()
    assert queues.get_result(timeout=30).value == 4


class HeldBackend(Backend):
    """A backend of `capacity` slots whose tasks run until the test finishes them."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.running: list[Future] = []

    def submit(self, runner, payload, priority):
        future = Future()
        self.running.append(future)
        return future

    def finish_all(self) -> None:
        """Finish every task, including those started meanwhile as slots free up."""
        while self.running:
            self.running.pop().set_result([])

    def shutdown(self) -> None:
        pass


def test_tasks_go_where_load_is_the_smallest_share_of_capacity():
    """Tasks waiting for a slot count too: with 1 and 4 slots, 10 tasks split 2 and 8."""
    small, big = HeldBackend(1), HeldBackend(4)
    engine = ExecutorEngine({"small": small, "big": big})
    engine.start(WorkerContext(methods={"where": PythonMethod(tasks.where)}))

    def submit(count: int) -> list[str]:
        return [engine.submit(Routing(task_id=str(i), method="where"), [b""]).executor
                for i in range(count)]

    first = submit(10)
    assert (first.count("small"), first.count("big")) == (2, 8)
    assert (len(small.running), len(big.running)) == (1, 4)  # the others wait for a slot
    big.finish_all()  # and the 4 that waited, which start as slots free: 'big' is idle
    assert submit(4) == ["big"] * 4
    engine.shutdown()


def test_engine_turns_broken_pools_into_lost_workers():
    engine = ExecutorEngine({"pool": ExecutorBackend(pool(1))})
    assert engine._translate(engine.backends["pool"], RuntimeError("x")).__class__ is RuntimeError
    from concurrent.futures.process import BrokenProcessPool

    lost = engine._translate(engine.backends["pool"], BrokenProcessPool("gone"))
    assert isinstance(lost, WorkerLost) and "'pool'" in str(lost)


@pytest.mark.parametrize("bad, message", [
    ({}, "executors must name at least one executor"),
    ({"cpu": 3}, "expected a concurrent.futures.Executor or a factory of one"),
])
def test_bad_executors_are_rejected(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ExecutorTaskServer([tasks.add], PipeQueues(), bad)


def test_bad_method_options_name_the_valid_ones():
    with pytest.raises(ValueError,
                       match=r"unknown executors \['tpu'\]; valid executors: \['cpu'\]"):
        ExecutorTaskServer([(tasks.add, {"executors": ["tpu"]})], PipeQueues(), {"cpu": pool(1)})
    with pytest.raises(ValueError, match=r"unknown method options \['cache'\].*\['executors'\]"):
        ExecutorTaskServer([(tasks.add, {"cache": True})], PipeQueues(), {"cpu": pool(1)})
    with pytest.raises(ValueError, match="max_in_flight names unknown executors"):
        ExecutorTaskServer([tasks.add], PipeQueues(), {"cpu": pool(1)}, max_in_flight={"x": 1})


def test_runner_is_picklable():
    import pickle

    clone = pickle.loads(pickle.dumps(TaskRunner(PythonMethod(tasks.add), None, "cpu")))
    assert repr(clone) == "TaskRunner('add' on 'cpu')"


# --- Globus Compute, on the same contract ---------------------------------------------------


def local_endpoint(endpoint_id: str, batch_size: int, made: list[tuple[str, int]]) -> Executor:
    made.append((endpoint_id, batch_size))
    return ProcessPoolExecutor(1, mp_context=FORK)


def test_globus_server_runs_each_method_on_its_endpoint():
    made: list[tuple[str, int]] = []
    queues = PipeQueues()
    server = GlobusComputeTaskServer({tasks.add: "ep-cpu", tasks.where: "ep-gpu"}, queues,
                                     batch_size=16,
                                     executor_factory=partial(local_endpoint, made=made))
    queues.send_inputs(1, 2, method="add", timeout=30)
    queues.send_inputs("x", method="where", max_retries=1)
    queues.send_inputs("y", method="where", executor="ep-cpu")
    queues.send_kill_signal()
    server.serve()  # in this process, so the factory calls are visible here
    results = {r.value: r for r in (queues.get_result(timeout=30) for _ in range(3))}
    assert results[3].worker_info.executor == "ep-cpu"
    assert results["x"].worker_info.executor == "ep-gpu"
    assert results["y"].worker_info.executor == "ep-cpu"
    assert sorted(made) == [("ep-cpu", 16), ("ep-gpu", 16)]


def test_globus_server_validates_its_arguments():
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        GlobusComputeTaskServer({tasks.add: "ep"}, PipeQueues(), batch_size=0)
    with pytest.raises(ValueError, match="methods must map at least one function"):
        GlobusComputeTaskServer({}, PipeQueues())


def test_globus_default_factory_is_the_sdk_executor():
    from globus_compute_sdk import Executor as ComputeExecutor

    from steersman.task_server.globus import sdk_executor

    assert ComputeExecutor.__mro__[1] is Executor  # the contract our backend relies on
    assert sdk_executor.__name__ == "sdk_executor"
