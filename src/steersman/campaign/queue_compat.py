"""The queue operations resume needs, in one place.

Resending a request keeps its task id (``send_inputs`` always makes a new one): the queues count
it as outstanding with their public ``track(task_id, topic)``, and the prebuilt message goes out
through the backend's ``_send_request`` (the contract has no public "send this Result" yet). A
duplicate result needs nothing from us with queues that count outstanding tasks by task id: they
ignore results of tasks they no longer track. Older queues that only count per topic get the
same effect from :func:`expect_extra_result`. If the contract gains ``resend(result)``, only
this file changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from steersman.models.messages import Kind, encode
from steersman.models.result import Result

if TYPE_CHECKING:
    from steersman.queue.base import BaseQueues


def resend(queues: BaseQueues, request: Result) -> None:
    """Send a journaled request again, with its task id, counting it as outstanding."""
    method = getattr(queues, "resend", None)
    if callable(method):
        method(request)
        return
    q: Any = queues
    parts = encode(Kind.REQUEST, request, key=queues.signing_key)
    q._ensure_receiver()
    track = getattr(queues, "track", None)
    if callable(track):
        track(request.task_id, request.topic)
        finish: Any = lambda: q._finish_task(request.topic, request.task_id)  # noqa: E731
    else:
        with q._lock:
            q._active[request.topic] += 1
            q._active_total += 1
        finish = lambda: q._finish_task(request.topic)  # noqa: E731
    try:
        q._send_request(parts)
    except BaseException:
        finish()
        raise


def expect_extra_result(queues: BaseQueues, topic: str) -> None:
    """Keep a duplicate final result from counting a task done twice (per-topic counting)."""
    if callable(getattr(queues, "track", None)):
        return  # counted by task id: the queues ignore a task they no longer track
    q: Any = queues
    with q._lock:
        q._active[topic] += 1
        q._active_total += 1
