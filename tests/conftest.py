"""Shared fixtures: a tiny synthetic interaction log, ML-100K when it is cached (fetched in CI), and what
the parallel run (pytest-xdist, `make test`) needs: a directory every worker sees, fixtures built there
once per run, and the longest tests scheduled first."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock
from synthetic_data import synthetic_log

from fedrec.common.datasets import Interactions

# The end-to-end tests, longest first (measured with `--durations=0`; one not named here runs after
# these). Under `make test` the soak has a worker of its own and the others share a second one, in
# this order, while the remaining workers take every other test.
LONGEST = (
    "tests/faults/test_soak_deployment.py",
    "tests/test_deployment_secagg.py",
    "tests/test_deployment.py",
    "tests/faults/test_fault1_control.py",
    "tests/test_ray_cluster.py",
    "tests/faults/test_server_processes.py",
    "tests/faults/test_harness_kill.py",
)
# End-to-end tests wait on heartbeats and stage timeouts of the processes they start: the workers that run
# the other tests (pure CPU, no deadline) yield the CPU to them.
NICENESS = 10


def _path(item: pytest.Item) -> str:
    return item.nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """End-to-end tests first, in LONGEST order and in two xdist groups, then the rest in collection order;
    `make test` keeps this order (--no-loadscope-reorder) when it hands tests to its workers."""

    def rank(item: pytest.Item) -> tuple[int, int]:
        if item.get_closest_marker("e2e") is None:
            return (1, 0)
        return (0, LONGEST.index(_path(item)) if _path(item) in LONGEST else len(LONGEST))

    items.sort(key=rank)
    for item in items:
        if item.get_closest_marker("e2e") is not None:
            item.add_marker(pytest.mark.xdist_group("e2e-soak" if _path(item) == LONGEST[0] else "e2e"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """On an xdist worker, a test that is not end-to-end runs at NICENESS (once lowered, a worker's priority
    stays low: the e2e groups are handed out before any other test, so no e2e test runs after it)."""
    if "PYTEST_XDIST_WORKER" in os.environ and item.get_closest_marker("e2e") is None:
        current = os.nice(0)
        if current < NICENESS:
            os.nice(NICENESS - current)


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


@pytest.fixture(scope="session")
def run_shared(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, Callable[[Path], None]], Path]:
    """``run_shared(name, build)``: ``<run temp>/name``, built by ``build`` in the first process of this test
    run that asks for it; every other xdist worker waits for it and reuses it. Users only read it."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base  # popen-gwN/.. is the run's

    def built(name: str, build: Callable[[Path], None]) -> Path:
        out, done = shared / name, shared / f"{name}.built"
        with FileLock(str(shared / f"{name}.lock")):
            if not done.exists():
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                build(out)
                done.touch()
        return out

    return built
