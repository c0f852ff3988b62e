"""The resource manager: decide how many cores (or worker slots) each application or pool gets.

- `curves`: scalability curves S(c) - measured points, Amdahl's law, fitted online.
- `policies`: best split for a target (throughput, makespan, energy, share) and its score.
- `hysteresis`: move only when the gain is worth it.
- `campaign`: `CampaignAllocator` re-splits a thinker's `ResourceCounter` while it runs.
- `server` / `client`: a manager process serving several applications (invade, reinvade,
  retreat) over a socket or Redis channel.
"""

from steersman.allocation.campaign import CampaignAllocator, PoolLimits
from steersman.allocation.channels import ClientChannel, ServerChannel, connect, listen
from steersman.allocation.client import AllocationClient, AllocationTimeout
from steersman.allocation.constraints import (
    Constraint,
    Distribution,
    proportional_share,
    static_split,
)
from steersman.allocation.curves import (
    AmdahlCurve,
    Curve,
    MeasuredCurve,
    PointsCurve,
    concave_hull,
    curve_from_spec,
)
from steersman.allocation.hysteresis import Hysteresis, Planner
from steersman.allocation.manager import ResourceManager
from steersman.allocation.policies import TARGETS, Target, get_target, optimize, score
from steersman.allocation.server import ManagerProcess, serve
from steersman.allocation.throughput import maximize_throughput, throughput_of, total_throughput
from steersman.allocation.workload import (
    PowerModel,
    energy_of,
    finish_times,
    makespan_of,
    minimize_energy,
    minimize_makespan,
)

__all__ = [
    "TARGETS",
    "AllocationClient",
    "AllocationTimeout",
    "AmdahlCurve",
    "CampaignAllocator",
    "ClientChannel",
    "Constraint",
    "Curve",
    "Distribution",
    "Hysteresis",
    "ManagerProcess",
    "MeasuredCurve",
    "Planner",
    "PointsCurve",
    "PoolLimits",
    "PowerModel",
    "ResourceManager",
    "ServerChannel",
    "Target",
    "concave_hull",
    "connect",
    "curve_from_spec",
    "energy_of",
    "finish_times",
    "get_target",
    "listen",
    "makespan_of",
    "maximize_throughput",
    "minimize_energy",
    "minimize_makespan",
    "optimize",
    "proportional_share",
    "score",
    "serve",
    "static_split",
    "throughput_of",
    "total_throughput",
]
