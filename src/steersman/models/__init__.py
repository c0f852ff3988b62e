"""Results, task methods and the codecs that move them."""

from steersman.models.methods import (
    ExecutableMethod,
    PythonGeneratorMethod,
    PythonMethod,
    TaskMethod,
    as_method,
)
from steersman.models.result import (
    FailureInformation,
    ResourceRequirements,
    Result,
    TimeSpans,
    Timestamps,
    WorkerInformation,
)
from steersman.models.serialization import SerializationMethod

__all__ = [
    "ExecutableMethod",
    "FailureInformation",
    "PythonGeneratorMethod",
    "PythonMethod",
    "ResourceRequirements",
    "Result",
    "SerializationMethod",
    "TaskMethod",
    "TimeSpans",
    "Timestamps",
    "WorkerInformation",
    "as_method",
]
