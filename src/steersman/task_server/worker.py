"""What a worker does with one request, the same on every engine."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from time import time

from steersman.exceptions import MessageError
from steersman.models.messages import Kind, decode, encode, join
from steersman.models.methods import TASK_ERRORS, TaskMethod
from steersman.models.result import Result
from steersman.models.serialization import Frame
from steersman.task_server.engine import Parts

logger = logging.getLogger(__name__)


def execute_request(
    methods: Mapping[str, TaskMethod],
    request: Frame,
    key: bytes | None = None,
    emit: Callable[[str, Parts], None] | None = None,
    executor: str | None = None,
    received: float | None = None,
) -> list[Parts]:
    """Decode a request, run its method and return the encoded result messages.

    Intermediate results of generator methods go to `emit` when given (streaming); otherwise
    they are returned before the final result. `received` is when the server received the
    request, for servers that forward the thinker's message without stamping it.
    """
    try:
        result = decode(request, key=key).result
    except MessageError as exc:  # read by its routing fields alone so far: fail it, to say so
        routing = decode(request, key=key, routing_only=True).routing
        assert routing is not None
        routing.received = received
        result = routing.bare()  # the whole header was just found invalid
        result.set_failure(exc)
        return [encode_final(result, key)]
    assert result is not None and result.method is not None
    if received is not None:
        result.timestamp.input_received = received
    result.mark_worker(executor)
    held: list[Parts] = []

    def send_partial(partial: Result) -> None:
        _proxy_large_value(partial)
        parts = encode(Kind.RESULT, partial, key=key, with_inputs=False)
        if emit is not None:
            emit(partial.topic, parts)
        else:
            held.append(parts)

    try:
        methods[result.method](result, send_partial)
    except TASK_ERRORS as exc:  # raised by the method's own code, outside its function
        result.set_failure(exc)
    _proxy_large_value(result)
    return [*held, encode_final(result, key)]


def _proxy_large_value(result: Result) -> None:
    """Move a value above the request's ProxyStore threshold to its store."""
    if result.proxystore_name is not None and result.success:
        from steersman.proxy import proxy_value

        try:
            proxy_value(result)
        except Exception as exc:  # e.g. a value pickle cannot serialize: encode_final reports it
            logger.debug("task %s: value not proxied: %r", result.task_id, exc)


def encode_final(result: Result, key: bytes | None) -> Parts:
    """Encode a finished result; a value that cannot be serialized becomes a failure."""
    result.timestamp.result_sent = time()
    try:
        return encode(Kind.RESULT, result, key=key, with_inputs=result.keep_inputs)
    except TASK_ERRORS as exc:  # a value's own pickling code may raise anything
        result.set_failure(TypeError(f"the task's value could not be serialized: {exc!r}"))
        return encode(Kind.RESULT, result, key=key, with_inputs=result.keep_inputs)


def execute_joined(methods: Mapping[str, TaskMethod], request: bytes,
                   key: bytes | None = None, executor: str | None = None) -> list[bytes]:
    """:func:`execute_request` for engines that pickle results across processes: one buffer each."""
    return [join(parts) for parts in execute_request(methods, request, key, None, executor)]
