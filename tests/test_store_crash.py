"""SIGKILL a writer mid-append and mid key rotation: committed data survives, the store opens, never a mix."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fedrec.common.store import DeviceStore, WrongKeyError

KEY = bytes(range(32))
NEW_KEY = bytes(range(100, 132))
ROOT = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from fedrec.common.store import DeviceStore
    path, key = sys.argv[1], bytes(range(32))
    with DeviceStore.open(path, key) as store:
        for batch in range(100000):
            n = 1 + batch % 7
            items = np.arange(n) + batch * 10
            store.append_events(items, items * 3 + 1_000_000, np.full(n, batch % 5, dtype=np.float32))
            if batch % 3 == 0:
                store.put_state("rounds", str(batch).encode())
            print(batch, flush=True)  # printed only after the commit returned
""")


def expected_batches(count: int) -> tuple[list[int], list[int]]:
    items, stamps = [], []
    for batch in range(count):
        n = 1 + batch % 7
        block = list(np.arange(n) + batch * 10)
        items += block
        stamps += [i * 3 + 1_000_000 for i in block]
    return items, stamps


def spawn(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("kill_after", [5, 40])
def test_sigkill_mid_append_keeps_every_committed_event(tmp_path: Path, kill_after: int) -> None:
    path = tmp_path / "dev.db"
    DeviceStore.create(path, KEY, "dev-crash").close()
    proc = spawn(WRITER, str(path))
    committed = -1
    for line in proc.stdout:
        committed = int(line)
        if committed >= kill_after:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with DeviceStore.open(path, KEY) as store:  # opens: verifies every row and the witness
        events = store.read_events()
        rounds = int(store.get_state("rounds"))
    # every batch whose commit was reported is there; at most a few more committed after the last print
    survived = next(b for b in range(committed + 1, committed + 50) if len(expected_batches(b)[0]) == len(events))
    assert survived >= committed + 1
    items, stamps = expected_batches(survived)
    assert events.items.tolist() == items and events.timestamps.tolist() == stamps
    # the writer commits a batch's events, then its state: a kill between the two leaves the last batch's
    # events with the previous state, never state without events
    last_stated = max(b for b in range(survived) if b % 3 == 0)
    assert rounds == last_stated or (last_stated == survived - 1 and rounds == last_stated - 3)


ROTATOR = textwrap.dedent("""
    import os, signal, sys
    import fedrec.common.store as store
    path, stage, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    calls = {"n": 0}
    def step(name):
        if name == stage:
            calls["n"] += 1
            if calls["n"] >= at:
                os.kill(os.getpid(), signal.SIGKILL)
    store._rotation_step = step
    store.rotate_key(path, bytes(range(32)), bytes(range(100, 132)))
""")


@pytest.mark.parametrize(
    "stage,at,rotated",
    [("row", 1, False), ("row", 30, False), ("before-replace", 1, False), ("after-replace", 1, True)],
)
def test_sigkill_mid_rotation_leaves_old_or_new_store(tmp_path: Path, stage: str, at: int, rotated: bool) -> None:
    path = tmp_path / "dev.db"
    with DeviceStore.create(path, KEY, "dev-rot") as store:
        for batch in range(60):
            store.append_events([batch, batch + 1], [batch, batch])
        store.put_state("privacy_ledger", b"ledger")
        want = store.read_events().items.tolist()
    proc = spawn(ROTATOR, str(path), stage, str(at))
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    good, bad = (NEW_KEY, KEY) if rotated else (KEY, NEW_KEY)
    with pytest.raises(WrongKeyError):
        DeviceStore.open(path, bad)
    with DeviceStore.open(path, good) as store:
        assert store.read_events().items.tolist() == want
        assert store.get_state("privacy_ledger") == b"ledger"
    if not rotated:  # and the rotation can simply be run again
        from fedrec.common.store import rotate_key

        rotate_key(path, KEY, NEW_KEY)
        with DeviceStore.open(path, NEW_KEY) as store:
            assert store.read_events().items.tolist() == want
