"""The ledger cross-check: dp_accounting agrees with the devices' Opacus ledgers, and catches tampering."""

from __future__ import annotations

import csv

import pytest

from fedrec.common.errors import DataError
from fedrec.common.privacy import PrivacyLedger
from fedrec.simulations.audit.accounting import TOLERANCE, check_ledger, read_ledger

DELTA = 1e-5


def write_ledger(path, devices: dict[str, PrivacyLedger], override: dict[str, float] | None = None) -> None:
    """The documented format: one row per history entry, the device's epsilon repeated on each row."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["device_id", "noise_multiplier", "sample_rate", "steps", "epsilon"])
        for device, ledger in devices.items():
            eps = (override or {}).get(device, ledger.epsilon(DELTA))
            for sigma, q, n in ledger.history:
                writer.writerow([device, sigma, q, n, eps])


def known_devices() -> dict[str, PrivacyLedger]:
    a, b, c = PrivacyLedger(), PrivacyLedger(), PrivacyLedger()
    for _ in range(5):
        a.record(1.1, 0.125, 8)  # merged into one entry: 40 steps
    b.record(1.1, 0.125, 8)
    b.record(0.9, 0.25, 4)  # a second mechanism: two rows
    c.record(2.0, 0.05, 100)
    return {"device-a": a, "device-b": b, "device-c": c}


def test_known_ledger_agrees(tmp_path):
    devices = known_devices()
    path = tmp_path / "federated_dp_ledger.csv"
    write_ledger(path, devices)
    parsed = read_ledger(path)
    assert [d.device_id for d in parsed] == list(devices)
    assert len(parsed[1].history) == 2
    eps = [led.epsilon(DELTA) for led in devices.values()]
    result = check_ledger(parsed, DELTA, claimed_max=max(eps))
    assert result["agree"] and result["n_flagged"] == 0
    assert result["epsilon_max"] == pytest.approx(max(eps))
    assert result["epsilon_recomputed_max"] == pytest.approx(max(eps), rel=TOLERANCE)
    assert result["max_relative_gap"] < TOLERANCE
    assert result["steps_max"] == 100


def test_tampered_epsilon_is_flagged(tmp_path):
    devices = known_devices()
    path = tmp_path / "ledger.csv"
    honest = devices["device-b"].epsilon(DELTA)
    write_ledger(path, devices, override={"device-b": honest * 0.9})  # the device under-reports by 10%
    result = check_ledger(read_ledger(path), DELTA)
    assert not result["agree"]
    assert result["flagged_devices"] == ["device-b"]


def test_tampered_history_is_flagged(tmp_path):
    path = tmp_path / "ledger.csv"
    write_ledger(path, known_devices())
    rows = path.read_text().splitlines()
    rows[1] = rows[1].replace(",40,", ",80,")  # device-a's history doubled, its epsilon left as claimed
    path.write_text("\n".join(rows) + "\n")
    result = check_ledger(read_ledger(path), DELTA)
    assert not result["agree"] and result["flagged_devices"] == ["device-a"]


def test_report_claiming_less_than_the_ledgers_is_flagged(tmp_path):
    path = tmp_path / "ledger.csv"
    devices = known_devices()
    write_ledger(path, devices)
    true_max = max(led.epsilon(DELTA) for led in devices.values())
    assert not check_ledger(read_ledger(path), DELTA, claimed_max=0.8 * true_max)["agree"]


def test_malformed_ledgers_name_the_file(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("device_id,noise_multiplier,steps,epsilon\nd,1.0,8,2.0\n")
    with pytest.raises(DataError, match="bad.csv.*sample_rate"):
        read_ledger(path)
    path.write_text("device_id,noise_multiplier,sample_rate,steps,epsilon\nd,1.0,0.1,8,2.0\nd,1.0,0.1,8,3.0\n")
    with pytest.raises(DataError, match="bad.csv:3"):
        read_ledger(path)
    with pytest.raises(DataError, match="not found"):
        read_ledger(tmp_path / "missing.csv")
