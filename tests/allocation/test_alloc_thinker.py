"""The allocator turned on in a thinker with one keyword."""

import threading

import pytest
from tests.conftest import echo_server

from steersman import BaseThinker, LocalTaskServer, PipeQueues, ResourceCounter, agent
from steersman.allocation import CampaignAllocator


@pytest.fixture
def queues():
    queues = PipeQueues(topics=["sim", "ml"])
    server = echo_server(queues, handler=lambda x: x)
    yield queues
    queues.send_kill_signal()
    server.join(5)
    queues.close()


@pytest.mark.timeout(20)
def test_allocator_moves_idle_slots_toward_pending_work(queues):
    rec = ResourceCounter(4, ["sim", "ml"])
    rec.reallocate(None, "sim", 4)
    allocator = CampaignAllocator(rec, {"sim": (1, None), "ml": (0, 3)}, target="share")
    moved = threading.Event()
    rec.add_listener(lambda: rec.allocated_slots("ml") >= 2 and moved.set())

    class Thinker(BaseThinker):
        @agent
        def plan(self):
            self.allocator.set_workload("sim", 1)
            self.allocator.set_workload("ml", 3)
            assert moved.wait(10), "the allocator never moved slots to the ml pool"

    Thinker(queues, rec, allocator=allocator).run()
    assert rec.allocated_slots("ml") >= 2 and rec.allocated_slots("sim") >= 1
    assert rec.allocated_slots("sim") + rec.allocated_slots("ml") == 4


def echo(x):
    return x


@pytest.mark.timeout(30)
def test_allocator_learns_from_every_result():
    queues = PipeQueues(topics=["sim", "ml"])
    server = LocalTaskServer(queues, [echo])
    server.start()
    rec = ResourceCounter(2, ["sim", "ml"])
    allocator = CampaignAllocator(rec, ["sim", "ml"])
    seen: list[str] = []
    allocator.observe = lambda pool, seconds, slots=1: seen.append(pool)  # type: ignore[method-assign]

    class Thinker(BaseThinker):
        @agent
        def work(self):
            for _ in range(3):
                self.queues.send_inputs(1, method="echo", topic="sim")
                assert self.queues.get_result("sim", timeout=5).success

    Thinker(queues, rec, allocator=allocator).run()
    queues.send_kill_signal()
    server.join(10)
    assert seen == ["sim", "sim", "sim"]
    assert allocator not in queues._observers, "the allocator stops listening with the thinker"


def test_allocator_must_manage_the_thinkers_counter(queues):
    with pytest.raises(ValueError, match="resource_counter"):
        BaseThinker(queues, ResourceCounter(1, ["sim"]),
                    allocator=CampaignAllocator(ResourceCounter(1, ["sim"]), ["sim"]))
