"""Campaigns that survive and show themselves: run directory, journal, resume, progress, report.

Give a thinker ``run_dir=`` and it records there its parameters, every result
(``results.jsonl``), its log, an event journal and the slots of each pool over time. Start a
thinker again on the same run directory and it resumes: results already processed are replayed
to its result processors, requests that never came back are resent. ``write_report`` draws the
plots and summary of a run; ``status`` tells how far it got and whether it is alive. See
docs/campaign.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from steersman.campaign.session import Campaign, QueueRecorder, record

if TYPE_CHECKING:
    from steersman.campaign.inspection import status
    from steersman.campaign.report import write_report

__all__ = ["Campaign", "QueueRecorder", "record", "status", "write_report"]


def __getattr__(name: str) -> Any:
    # The report needs matplotlib: import it only when asked for.
    if name == "write_report":
        from steersman.campaign.report import write_report

        return write_report
    if name == "status":
        from steersman.campaign.inspection import status

        return status
    raise AttributeError(f"module 'steersman.campaign' has no attribute {name!r}")
