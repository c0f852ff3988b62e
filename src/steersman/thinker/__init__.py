"""The thinker: agents that decide what to run, and the slots they share."""

from steersman.thinker.agents import agent, event_responder, result_processor, task_submitter
from steersman.thinker.base import BaseThinker
from steersman.thinker.events import Flag
from steersman.thinker.resources import ResourceCounter

__all__ = [
    "BaseThinker",
    "Flag",
    "ResourceCounter",
    "agent",
    "event_responder",
    "result_processor",
    "task_submitter",
]
