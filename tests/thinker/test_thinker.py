"""BaseThinker and the four agent decorators."""

import logging
import threading
import time

import pytest
from tests.conftest import echo_server

from steersman import (
    AgentError,
    BaseThinker,
    PipeQueues,
    ResourceCounter,
    agent,
    event_responder,
    result_processor,
    task_submitter,
)


@pytest.fixture
def queues():
    queues = PipeQueues(topics=["sim", "ml"])
    server = echo_server(queues, handler=lambda x: x * 2)
    yield queues
    queues.send_kill_signal()
    server.join(5)
    queues.close()


class Batch(BaseThinker):
    """Submit n tasks with a pool of slots; stop when all came back."""

    def __init__(self, queues, n, slots=2, per_task="one"):
        super().__init__(queues, ResourceCounter(slots, ["sim"]))
        self.n, self.one = n, 1
        self.per_task = per_task
        self.sent = 0
        self.values: list[int] = []
        self.loggers: set[str] = set()
        self.rec.reallocate(None, "sim", slots)

    @task_submitter(task_type="sim", n_slots="one")
    def submit(self):
        self.loggers.add(self.logger.name)
        if self.sent >= self.n:
            self.rec.release("sim", 1)
            self.done.wait()
            return
        self.sent += 1
        self.queues.send_inputs(self.sent, method="double", topic="sim")

    @result_processor(topic="sim")
    def receive(self, result):
        self.loggers.add(self.logger.name)
        self.rec.release("sim", 1)
        self.values.append(result.value)
        if len(self.values) == self.n:
            self.done.set()


def test_submitter_and_processor_run_a_campaign(queues):
    thinker = Batch(queues, 25)
    thinker.run()
    assert sorted(thinker.values) == [2 * i for i in range(1, 26)]
    assert {name.rsplit(".", 1)[1] for name in thinker.loggers} == {"submit", "receive"}
    assert queues.active_count == 0


def test_agent_discovery_and_both_decorator_forms():
    class Forms(BaseThinker):
        @agent
        def bare(self):
            pass

        @agent(startup=True)
        def called(self):
            pass

        @result_processor
        def default_topic(self, result):
            pass

        @result_processor("sim")
        def positional_topic(self, result):
            pass

    specs = dict(Forms.list_agents())
    assert specs["bare"].kind == "agent" and not specs["bare"].startup
    assert specs["called"].startup
    assert specs["default_topic"].options == {"topic": "default"}
    assert specs["positional_topic"].options == {"topic": "sim"}


def test_startup_agent_does_not_end_the_campaign(queues):
    order: list[str] = []

    class Startup(BaseThinker):
        @agent(startup=True)
        def setup(self):
            order.append("setup")

        @agent
        def main(self):
            assert not self.done.wait(0.05)  # setup finishing did not set done
            order.append("main")

    Startup(queues).run()
    assert order == ["setup", "main"]


def test_result_processor_drains_outstanding_tasks(queues):
    class Drain(BaseThinker):
        def __init__(self, queues):
            super().__init__(queues)
            self.values: list[int] = []

        @agent
        def send_and_finish(self):
            for i in range(20):
                self.queues.send_inputs(i, method="double", topic="ml")

        @result_processor(topic="ml")
        def receive(self, result):
            self.values.append(result.value)

    thinker = Drain(queues)
    thinker.run()
    assert sorted(thinker.values) == [2 * i for i in range(20)]


def test_failing_agent_stops_the_thinker_quickly(queues):
    class Failing(BaseThinker):
        def __init__(self, queues):
            super().__init__(queues, ResourceCounter(1, ["sim"]))

        @agent
        def explode(self):
            time.sleep(0.02)
            raise KeyError("broken agent")

        @task_submitter(task_type="sim")  # never gets a slot: blocked until done is set
        def submit(self):
            pass

        @result_processor(topic="sim")
        def receive(self, result):
            pass

        @agent
        def waits_forever(self):
            self.done.wait()

    thinker = Failing(queues)
    start = time.perf_counter()
    with pytest.raises(AgentError, match="agent 'explode' failed: KeyError") as info:
        thinker.run()
    assert time.perf_counter() - start < 0.02 + 0.1
    assert isinstance(info.value.__cause__, KeyError)
    assert info.value.agent == "explode"


def test_agent_stuck_in_user_code_does_not_hang_run(queues):
    class Stuck(BaseThinker):
        @agent
        def explode(self):
            raise RuntimeError("boom")

        @agent
        def stuck(self):
            threading.Event().wait(30)  # ignores done: run() must still return

    start = time.perf_counter()
    with pytest.raises(AgentError):
        Stuck(queues).run()
    assert time.perf_counter() - start < 0.5


def test_run_returns_promptly_after_last_agent(queues):
    class Quick(BaseThinker):
        @agent
        def one(self):
            pass

    start = time.perf_counter()
    Quick(queues).run()
    assert time.perf_counter() - start < 0.1


def test_event_responder_moves_slots_and_gives_them_back(queues):
    class Retrain(BaseThinker):
        max_ml = 2

        def __init__(self, queues):
            super().__init__(queues, ResourceCounter(4, ["sim", "ml"]))
            self.rec.reallocate(None, "sim", 4)
            self.retrain = threading.Event()
            self.ml_slots_seen = -1
            self.slots_back = threading.Event()
            self.rec.add_listener(self._check_back)

        def _check_back(self):
            if self.ml_slots_seen == 2 and self.rec.allocated_slots("sim") == 4:
                self.slots_back.set()

        @agent
        def trigger(self):
            self.retrain.set()
            assert self.slots_back.wait(5), "gathered slots must go back to sim"

        @event_responder(event_name="retrain", reallocate_resources=True, gather_from="sim",
                         gather_to="ml", disperse_to="sim", max_slots="max_ml")
        def respond(self):
            assert self.rec.acquire("ml", 2, timeout=5)  # gathered in the background
            self.ml_slots_seen = self.rec.allocated_slots("ml")
            self.queues.send_inputs(1, method="double", topic="ml")
            assert self.queues.get_result(topic="ml", timeout=5).value == 2
            self.rec.release("ml", 2)

    thinker = Retrain(queues)
    thinker.run()
    assert thinker.ml_slots_seen == 2  # never more than max_slots
    assert thinker.rec.allocated_slots("sim") == 4 and thinker.rec.allocated_slots("ml") == 0
    assert not thinker.retrain.is_set(), "the event is cleared once every responder finished"


def test_event_responder_failure_releases_and_reports(queues):
    class BadResponder(BaseThinker):
        def __init__(self, queues):
            super().__init__(queues, ResourceCounter(2, ["sim", "ml"]))
            self.rec.reallocate(None, "sim", 2)
            self.go = threading.Event()

        @agent
        def trigger(self):
            self.go.set()
            self.done.wait()

        @event_responder(event_name="go", reallocate_resources=True, gather_from="sim",
                         gather_to="ml", disperse_to="sim", max_slots=2)
        def respond(self):
            self.rec.acquire("ml", 1, timeout=5)
            self.rec.release("ml", 1)
            raise ValueError("responder broke")

    thinker = BadResponder(queues)
    with pytest.raises(AgentError, match="respond"):
        thinker.run()
    rec = thinker.rec
    assert rec.allocated_slots("sim") + rec.allocated_slots("ml") == 2  # nothing leaked


def test_configuration_errors_are_clear(queues):
    class NeedsCounter(BaseThinker):
        @task_submitter(task_type="sim")
        def submit(self):
            pass

    with pytest.raises(ValueError, match="pass resource_counter="):
        NeedsCounter(queues).run()

    class BadTopic(BaseThinker):
        @result_processor(topic="nope")
        def receive(self, result):
            pass

    with pytest.raises(ValueError, match="unknown topic 'nope'"):
        BadTopic(queues).run()

    class NoEvent(BaseThinker):
        @event_responder(event_name="missing")
        def respond(self):
            pass

    with pytest.raises(ValueError, match="not a threading.Event"):
        NoEvent(queues).run()

    with pytest.raises(ValueError, match="no agents"):
        BaseThinker(queues).run()


def test_thread_local_details_and_prepare(queues):
    prepared: list[str] = []

    class Local(BaseThinker):
        def prepare_agent(self):
            self.local_details.name = self.local_details.agent_name
            prepared.append(self.local_details.name)

        @agent
        def a(self):
            assert self.local_details.name == "a"

        @agent
        def b(self):
            assert self.local_details.name == "b"

    Local(queues, logger_name="campaign").run()
    assert sorted(prepared) == ["a", "b"]


def test_thinker_runs_as_a_thread(queues, caplog):
    class Background(BaseThinker):
        @agent
        def work(self):
            self.logger.info("working")

    thinker = Background(queues, logger_name="bg")
    with caplog.at_level(logging.INFO):
        thinker.start()
        thinker.join(5)
    assert not thinker.is_alive()
    assert any(r.name == "bg.work" and r.message == "working" for r in caplog.records)


@pytest.mark.parametrize("n_slots", [0, -1, True, 1.5])
def test_a_submitter_must_take_at_least_one_slot(n_slots):
    with pytest.raises(ValueError, match="n_slots must be a positive integer"):
        task_submitter(task_type="sim", n_slots=n_slots)


def test_a_slot_count_attribute_of_zero_fails_the_thinker_instead_of_spinning(queues):
    thinker = Batch(queues, 5)
    thinker.one = 0
    with pytest.raises(AgentError, match="n_slots='one' is 0"):
        thinker.run()
    assert thinker.sent == 0
