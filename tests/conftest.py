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
from hypothesis import settings as hypothesis_settings
from synthetic_data import synthetic_log
from xdist.scheduler import LoadScopeScheduling

from fedrec.common.datasets import Interactions

# Property tests draw the same examples on every run (CI must not turn red on a newly found case); a case
# they find is fixed and then kept as a test of its own.
hypothesis_settings.register_profile("fedrec", derandomize=True, database=None)
hypothesis_settings.load_profile("fedrec")

# The end-to-end test files, longest first (measured with `--durations=0`). Under `make test` the first
# is a group of its own and the others form a second, each on one xdist worker, ahead of everything else.
LONGEST = (
    "tests/faults/test_soak_deployment.py",
    "tests/test_deployment_secagg.py",
    "tests/test_deployment.py",
    "tests/faults/test_fault1_control.py",
    "tests/test_ray_cluster.py",
    "tests/faults/test_server_processes.py",
    "tests/faults/test_harness_kill.py",
)
# Files whose module-scoped fixture is expensive: one worker runs the whole file and builds it once.
WHOLE_FILES = (
    "tests/test_audit_cli.py",
    "tests/test_retention_run.py",
    "tests/test_retention_ml100k.py",
    "tests/test_retention_user_model.py",
    "tests/test_synth.py",
    "tests/faults/test_fault8_recovery.py",
)
# End-to-end tests wait on heartbeats and stage timeouts of the processes they start; the other workers
# (pure CPU, no deadline) yield the CPU to them.
NICENESS = 10


def _path(nodeid: str) -> str:
    return nodeid.split("::")[0]


class Grouped(LoadScopeScheduling):
    """xdist's `loadscope` with the scopes above: the end-to-end groups, WHOLE_FILES by file, every other
    test on its own (xdist_group marks are not read: pytest 9 ignores the node id suffix xdist writes)."""

    def _split_scope(self, nodeid: str) -> str:
        path = _path(nodeid)
        if path in LONGEST:
            return "e2e-first" if path == LONGEST[0] else "e2e"
        return path if path in WHOLE_FILES else nodeid


def pytest_xdist_make_scheduler(config: pytest.Config, log) -> Grouped | None:
    return Grouped(config, log) if config.getoption("dist") == "loadgroup" else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """End-to-end tests first, in LONGEST order, then the rest in collection order; `make test` keeps this
    order (--no-loadscope-reorder) when it hands tests to its workers."""

    def rank(item: pytest.Item) -> tuple[int, int]:
        if item.get_closest_marker("e2e") is None:
            return (1, 0)
        path = _path(item.nodeid)
        return (0, LONGEST.index(path) if path in LONGEST else len(LONGEST))

    items.sort(key=rank)


_first_test: list[bool] = []


def pytest_runtest_setup(item: pytest.Item) -> None:
    """An xdist worker whose first test is not of a LONGEST file runs at NICENESS from then on; one that
    starts with an e2e group keeps its priority (the group's e2e tests come first in it, the rest after)."""
    if "PYTEST_XDIST_WORKER" in os.environ and not _first_test:
        _first_test.append(True)
        if _path(item.nodeid) not in LONGEST:
            os.nice(NICENESS)


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


@pytest.fixture
def task_identity():
    """Flower stamps every message it builds with the running task's identity (the ServerApp's)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
