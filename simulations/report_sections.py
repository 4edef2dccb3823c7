"""report.md sections owned by other stages: federated training and retention.

Each offers ``markdown(report: dict) -> str`` and returns "" when the report lacks its data, so one
renderer serves a baseline run, a simulate run and a run re-read by ``fedrec retention``.
"""

from __future__ import annotations

from collections.abc import Callable

from fedrec.simulations import federated_report
from fedrec.simulations.retention import report_section


def extra_sections() -> list[Callable[[dict], str]]:
    return [federated_report.markdown, report_section.markdown]
