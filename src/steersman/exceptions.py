"""Every exception steersman raises, in one place so users can catch them by name."""

from __future__ import annotations


class SteersmanError(Exception):
    """Base class of the errors raised by steersman itself."""


class MessageError(SteersmanError, ValueError):
    """A message could not be decoded: truncated, corrupted, unsigned or from a newer version."""


class QueueConnectionError(SteersmanError, ConnectionError):
    """The queue backend cannot be reached, or the peer at the other end of a pipe is gone."""


class TaskServerDied(QueueConnectionError):
    """The task server process ended while tasks were outstanding."""


class TimeoutException(SteersmanError, TimeoutError):
    """A task ran longer than the timeout given at `send_inputs`."""


class WorkerLost(SteersmanError):
    """The worker process running a task died before returning a result."""


class ExecutableError(SteersmanError, RuntimeError):
    """An executable task exited with a non-zero code; the message holds the tail of stderr."""


class AgentError(SteersmanError, RuntimeError):
    """An agent of a thinker raised; `agent` names it and `__cause__` holds the original error."""

    def __init__(self, agent: str, error: BaseException):
        super().__init__(f"agent {agent!r} failed: {error!r}")
        self.agent = agent
        self.error = error


class ProxyFetchError(SteersmanError, RuntimeError):
    """A value passed by reference could not be fetched from its ProxyStore store."""


class JournalError(SteersmanError, OSError):
    """A campaign's journal could not be written (a full or failed disk): the campaign stops
    rather than go on without recording what it does."""


class RunDirectoryError(SteersmanError, ValueError):
    """A run directory cannot be used: not a directory, or the record of another campaign."""


class RunDirectoryBusy(RunDirectoryError):
    """Another live process holds the run directory."""


class AllocationTimeout(SteersmanError, TimeoutError):
    """A blocking invade did not get its minimum number of cores in time."""
