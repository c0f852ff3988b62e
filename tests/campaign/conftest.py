"""Fixtures for the campaign tests: the small campaigns under campaigns/ are importable."""

from __future__ import annotations

import sys
from pathlib import Path

CAMPAIGNS = Path(__file__).parent / "campaigns"
if str(CAMPAIGNS) not in sys.path:
    sys.path.insert(0, str(CAMPAIGNS))
