"""Optional report.md sections owned by other stages (federated, retention, audit).

Each stage offers ``markdown(report: dict) -> str`` (empty when the report lacks its data); a missing
module simply contributes nothing, so a run dir renders at every stage of the project.
"""

from __future__ import annotations

import importlib
from typing import Callable

SECTION_MODULES = (
    "simulations.federated_report",
    "simulations.retention.report_section",
)


def extra_sections() -> list[Callable[[dict], str]]:
    out = []
    for name in SECTION_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not name.startswith(exc.name or "\0"):
                raise
            continue
        out.append(module.markdown)
    return out
