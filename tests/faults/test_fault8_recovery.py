"""Issue 14 item 8: recovery paths. A -wal deleted after kill -9, an interrupted key rotation re-run,
and `fedrec audit` on runs where a section does not apply or lacks its inputs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error

from fedrec.common.datasets import from_raw
from fedrec.common.split import temporal_split
from fedrec.common.store import DeviceStore
from fedrec.simulations.provision import device_key_for, provision

FEDREC = [sys.executable, "-m", "fedrec.simulations.main"]

KEY = bytes(range(32))
MASTER = bytes(range(50, 82))
NEW_MASTER = bytes(range(90, 122))

WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from fedrec.common.store import DeviceStore
    with DeviceStore.open(sys.argv[1], bytes(range(32))) as store:
        for batch in range(100000):
            store.append_events(np.arange(3) + 10 * batch, np.arange(3) + 1_000_000 + batch)
            store.put_state("ledger", str(batch).encode())
            print(batch, flush=True)  # only after both commits returned
""")


@pytest.mark.parametrize("kill_after", [3, 25])
def test_deleted_wal_after_kill_loses_no_committed_write(tmp_path, kill_after):
    path = tmp_path / "device.db"
    DeviceStore.create(path, KEY, "dev-wal").close()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        committed = int(line)
        if committed >= kill_after:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wal = path.with_name(path.name + "-wal")
    assert wal.exists()  # the writer died holding the store open
    wal.unlink()
    path.with_name(path.name + "-shm").unlink(missing_ok=True)
    with DeviceStore.open(path, KEY) as store:  # no RollbackError: the file itself has every commit
        events = store.read_events(None)
        last = int(store.get_state("ledger"))
    assert last >= committed
    expected = np.concatenate([np.arange(3) + 10 * b for b in range(last + 1)])
    assert events.items.tolist()[: len(expected)] == expected.tolist()


@pytest.fixture
def fleet(tmp_path) -> tuple[Path, list[Path]]:
    data = from_raw("tiny", np.repeat(np.arange(4), 5), np.tile(np.arange(5), 4), 1000 + np.arange(20))
    out = tmp_path / "fleet"
    provision(data, temporal_split(data, 0), out, MASTER, workers=1)
    for name, secret in (("old.key", MASTER), ("new.key", NEW_MASTER)):
        (tmp_path / name).write_bytes(secret)
        (tmp_path / name).chmod(0o600)
    return tmp_path, sorted((out / "stores").glob("*.db"))


def contents(path: Path, key: bytes) -> list[int]:
    with DeviceStore.open(path, key) as store:
        return store.read_events(None).items.tolist()


def test_rerun_of_an_interrupted_rotation_resumes(fleet, cli):
    root, stores = fleet
    before = {p: contents(p, device_key_for(MASTER, p.stem)) for p in stores}
    args = ["--key-file", str(root / "old.key"), "--new-key-file", str(root / "new.key")]
    first = cli("store", "rotate-key", *map(str, stores[:2]), *args)  # the run that was interrupted
    assert first.code == 0, first.stderr
    stores[2].with_name(stores[2].name + ".rotating").write_bytes(b"half a store")  # killed mid-copy
    again = cli("store", "rotate-key", *map(str, stores), *args)
    assert again.code == 0, again.stderr
    lines = again.stderr.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["skipped", "skipped", "rotated", "rotated"], lines
    assert "already under the new key" in lines[0] and str(stores[0]) in lines[0]
    for path in stores:
        assert contents(path, device_key_for(NEW_MASTER, path.stem)) == before[path]
    assert not stores[2].with_name(stores[2].name + ".rotating").exists()
    third = cli("store", "rotate-key", *map(str, stores), *args)
    assert third.code == 0 and third.stderr.count("skipped") == 4


def test_resumed_passphrase_rotation(fleet, cli, monkeypatch):
    root, stores = fleet
    monkeypatch.setenv("NEW_PASS", "correct horse battery staple")
    args = ["--key-file", str(root / "old.key"), "--new-passphrase-env", "NEW_PASS"]
    assert cli("store", "rotate-key", str(stores[0]), *args).code == 0
    again = cli("store", "rotate-key", *map(str, stores[:2]), *args)
    assert again.code == 0, again.stderr
    assert again.stderr.startswith(f"skipped {stores[0]}") and f"rotated {stores[1]}" in again.stderr
    inspect = cli("store", "inspect", str(stores[1]), "--passphrase-env", "NEW_PASS")
    assert inspect.code == 0, inspect.stderr


def test_a_store_under_neither_key_still_fails_in_one_line(fleet, cli):
    root, stores = fleet
    (root / "other.key").write_bytes(bytes(32))
    (root / "other.key").chmod(0o600)
    result = cli(
        "store",
        "rotate-key",
        str(stores[0]),
        "--key-file",
        str(root / "other.key"),
        "--new-key-file",
        str(root / "new.key"),
    )
    assert_one_line_error(result, f"{stores[0]}: wrong key")
    assert not stores[0].with_name(stores[0].name + ".rotating").exists()
    assert contents(stores[0], device_key_for(MASTER, stores[0].stem))  # untouched under its own key


SMALL = "central.model = {gmf_dim = 8, mlp_dim = 8, layers = [16, 8]}\ncentral.train = {epochs = 2, batch_size = 64}\n"


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    """A non-DP run (fedrec baseline) of 12 users with several active days each."""
    root = tmp_path_factory.mktemp("audit")
    rng = np.random.default_rng(0)
    path = root / "log.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user", "item", "timestamp", "rating"])
        for u in range(12):
            day = int(rng.integers(0, 20))
            for _ in range(3):
                for item in rng.choice(30, size=3, replace=False):
                    writer.writerow(
                        [u, int(item), day * 86_400 + int(rng.integers(0, 80_000)), int(rng.integers(1, 6))]
                    )
                day += int(rng.integers(1, 9))
    (root / "small.toml").write_text(SMALL)
    run = root / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [
            *FEDREC,
            "baseline",
            "--dataset",
            str(path),
            "--arms",
            "popularity,centralized",
            "--config",
            str(root / "small.toml"),
            "--out",
            str(run),
            "--no-retention",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return run, path


def test_audit_of_a_non_dp_run_says_not_applicable(baseline_run, cli):
    run, path = baseline_run
    result = cli("audit", str(run), "--dataset", str(path), "--shadows", "0", "--quiet")
    assert result.code == 0, result.stderr
    audit = json.loads((run / "audit.json").read_text())
    for section in ("accounting", "wire", "at_rest", "canary"):
        assert "not_applicable" in audit[section], (section, audit[section])
    assert "no DP arm" in audit["accounting"]["not_applicable"]
    assert 0.0 <= audit["mia"]["centralized"]["auc"] <= 1.0
    text = (run / "audit.md").read_text()
    assert "ledgers agree with an independent accountant (within 1%) | not applicable (no DP arm" in text
    assert "| NO |" not in text
    assert json.loads(result.stdout)["accounting"] == {"not_applicable": audit["accounting"]["not_applicable"]}


def test_missing_ledger_and_wire_log_skip_only_their_sections(baseline_run, tmp_path, cli):
    source, path = baseline_run
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(source), str(run)], check=True)
    report = json.loads((run / "report.json").read_text())
    report["arms"]["federated_dp"] = {
        "accuracy": report["arms"]["popularity"]["accuracy"],
        "info": {"model_dir": "models/federated_dp"},
        "privacy": {"delta": 1e-5, "epsilon_max": 1.0, "ledger": "federated_dp_ledger.csv"},
    }
    (run / "report.json").write_text(json.dumps(report))
    (run / "models" / "federated_dp").mkdir(parents=True)
    result = cli("audit", str(run), "--dataset", str(path), "--shadows", "0", "--skip", "canary")
    assert result.code == 0, result.stderr
    audit = json.loads((run / "audit.json").read_text())
    assert audit["accounting"] == {"skipped": f"{run / 'privacy' / 'federated_dp_ledger.csv'}: ledger not found"}
    assert audit["wire"]["skipped"].startswith(f"{run / 'models' / 'federated_dp' / 'wire.jsonl'}: not found")
    assert "manifest.json: not found" in audit["at_rest"]["skipped"]
    assert "auc" in audit["mia"]["centralized"] and "canary" not in audit
    assert "accounting skipped:" in result.stderr
    text = (run / "audit.md").read_text()
    assert "Skipped (" in text and "## 4. What an attacker learns" in text and "| NO |" not in text
