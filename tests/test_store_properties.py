"""Property tests: any sequence of appends and state writes reads back exactly, across reopen and rotation."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedrec.common.plaintext_scan import scan_file
from fedrec.common.store import SPLITS, DeviceStore, rotate_key

KEY = bytes(range(32))
NEW_KEY = bytes(range(50, 82))
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

batch = st.integers(min_value=0, max_value=12).flatmap(
    lambda n: st.fixed_dictionaries(
        {
            "items": st.lists(INT64, min_size=n, max_size=n),
            "timestamps": st.lists(INT64, min_size=n, max_size=n),
            "values": st.one_of(st.none(), st.lists(st.floats(width=32, allow_nan=True), min_size=n, max_size=n)),
            "event_type": st.text(min_size=1, max_size=8).filter(lambda s: len(s.encode()) <= 255),
            "split": st.sampled_from(SPLITS),
        }
    )
)
state_write = st.tuples(st.sampled_from(["user_embedding", "privacy_ledger", "rounds"]), st.binary(max_size=64))
operation = st.one_of(batch.map(lambda b: ("append", b)), state_write.map(lambda s: ("state", s)))


def expected(ops: list) -> tuple[dict, dict]:
    by_split = {s: {"items": [], "timestamps": [], "values": [], "types": []} for s in SPLITS}
    state = {}
    for kind, op in ops:
        if kind == "state":
            state[op[0]] = op[1]
            continue
        want = by_split[op["split"]]
        n = len(op["items"])
        want["items"] += op["items"]
        want["timestamps"] += op["timestamps"]
        want["values"] += op["values"] if op["values"] is not None else [float("nan")] * n
        want["types"] += [op["event_type"]] * n
    return by_split, state


def check(store: DeviceStore, by_split: dict, state: dict) -> None:
    for split in SPLITS:
        got, want = store.read_events(split), by_split[split]
        assert got.items.tolist() == want["items"]
        assert got.timestamps.tolist() == want["timestamps"]
        assert got.event_types.tolist() == want["types"]
        np.testing.assert_array_equal(got.values, np.array(want["values"], dtype=np.float32))
    assert len(store.read_events(None)) == sum(len(w["items"]) for w in by_split.values())
    for name in ("user_embedding", "privacy_ledger", "rounds"):
        assert store.get_state(name) == state.get(name)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, max_size=8))
def test_any_history_round_trips(ops: list) -> None:
    by_split, state = expected(ops)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dev.db"
        with DeviceStore.create(path, KEY, "dev-prop") as store:
            for kind, op in ops:
                if kind == "append":
                    store.append_events(**op)
                else:
                    store.put_state(*op)
            check(store, by_split, state)  # from the in-memory view
        with DeviceStore.open(path, KEY) as store:
            check(store, by_split, state)  # from disk
        rotate_key(path, KEY, NEW_KEY)
        with DeviceStore.open(path, NEW_KEY) as store:
            check(store, by_split, state)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1681), st.integers(800_000_000, 900_000_000)),
        min_size=3,
        max_size=40,
        unique_by=lambda e: e[0],
    )
)
def test_no_event_is_visible_in_the_file(events: list) -> None:
    items = [i for i, _ in events]
    stamps = [t for _, t in events]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dev.db"
        with DeviceStore.create(path, KEY, "dev-scan") as store:
            store.append_events(items, stamps)
        assert scan_file(path, values=stamps, sequences=[items, sorted(items)]) == []
