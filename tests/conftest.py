"""Shared fixtures: a tiny synthetic interaction log, and ML-100K when it is cached (fetched in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_data import synthetic_log

from fedrec.common.datasets import Interactions


@pytest.fixture
def tiny() -> Interactions:
    return synthetic_log()


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The cached ML-100K (fetched by `fedrec data fetch`); skipped only where it cannot be fetched."""
    from fedrec.common.errors import DataError
    from fedrec.common.fetch import default_data_dir, fetch

    try:
        fetch("ml-100k")
    except DataError as exc:  # pragma: no cover - no index reachable
        pytest.skip(f"ML-100K not available: {exc}")
    return default_data_dir()
