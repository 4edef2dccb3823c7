"""Issue 26, cases C, D, F, G: every command that writes checks where before any work; every reader of a run dir
checks its report.json in one place; a clean error path leaves no traceback from a background thread; a
checkpoint resumes only the run that wrote it."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error

from fedrec.client import supernode
from fedrec.client.supernode import ClientSettings, run_client
from fedrec.common.config import FederationConfig
from fedrec.common.datasets import from_raw
from fedrec.common.errors import FedrecError
from fedrec.common.model import ModelConfig, NeuMF, global_state
from fedrec.common.model_files import ModelFileError
from fedrec.common.settings import to_nested
from fedrec.common.split import temporal_split
from fedrec.server.checkpoint import load_checkpoint, save_checkpoint
from fedrec.simulations.provision import provision
from fedrec.simulations.rundir import RunDir

MASTER = bytes(range(40, 72))
VALID = {"meta": {"dataset": "log.csv", "n_users": 3, "n_items": 5, "seed": 0, "users": None}, "arms": {}}


@pytest.fixture
def a_file(tmp_path) -> Path:
    """A regular file used as a directory: no command can write below it, not even as root."""
    path = tmp_path / "plain-file"
    path.write_text("kept")
    return path


def _run_dir(tmp_path: Path, report_text: str) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(report_text)
    return run


# --- C: output locations, checked before any work ----------------------------------------------------------


# A source that cannot load: had the command read it (the first step of the fit) before checking --out, the
# error would name the source instead.
NO_SOURCE = ("--source", "/nonexistent/source.csv")


def test_synth_below_a_file_fails_before_fitting(a_file, cli):
    result = cli("data", "synth", "--out", str(a_file / "s.csv"), *NO_SOURCE)
    assert result.code == 1
    assert_one_line_error(result, str(a_file), "not a directory", "--out")
    assert a_file.read_text() == "kept"


def test_synth_into_read_only_dir_fails_before_fitting(tmp_path, cli):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        result = cli("data", "synth", "--out", str(ro / "s.csv"), *NO_SOURCE, obey_modes=True)
    finally:
        ro.chmod(0o755)
    assert result.code == 1
    assert_one_line_error(result, f"{ro}: cannot write there", "--out")
    assert list(ro.iterdir()) == []


def test_synth_out_is_a_directory(tmp_path, cli):
    (tmp_path / "d.csv").mkdir()
    result = cli("data", "synth", "--out", str(tmp_path / "d.csv"), *NO_SOURCE)
    assert_one_line_error(result, "is a directory", "--out")


@pytest.mark.parametrize("command", [("certs", "init"), ("certs", "device", "dev-0"), ("certs", "operator")])
def test_certs_below_a_file(a_file, cli, command):
    result = cli(*command, "--out", str(a_file / "pki"))
    assert result.code == 1
    assert_one_line_error(result, str(a_file / "pki"), "--out")
    assert a_file.read_text() == "kept"


def test_retention_on_a_run_dir_it_cannot_write(tmp_path, cli):
    run = _run_dir(tmp_path, json.dumps(VALID))
    run.chmod(0o555)
    try:
        result = cli("retention", str(run), "--quiet", obey_modes=True)
    finally:
        run.chmod(0o755)
    assert result.code == 1
    assert_one_line_error(result, f"{run}: cannot write there", "RUN_DIR")
    assert json.loads((run / "report.json").read_text()) == VALID


def test_rotate_key_in_a_read_only_fleet_makes_no_key(tmp_path, cli):
    data = from_raw("tiny", np.repeat(np.arange(3), 5), np.tile(np.arange(5), 3), 1000 + np.arange(15))
    provision(data, temporal_split(data, 0), tmp_path / "fleet", MASTER, workers=1)
    (tmp_path / "master.key").write_bytes(MASTER)
    (tmp_path / "master.key").chmod(0o600)
    stores_dir = tmp_path / "fleet" / "stores"
    stores = sorted(stores_dir.glob("*.db"))
    before = {p: p.read_bytes() for p in stores}
    args = ["--key-file", str(tmp_path / "master.key"), "--new-key-file", str(tmp_path / "new.key")]
    stores_dir.chmod(0o555)
    try:
        result = cli("store", "rotate-key", *map(str, stores), *args, obey_modes=True)
    finally:
        stores_dir.chmod(0o755)
    assert result.code == 1
    assert_one_line_error(result, f"{stores_dir}: cannot write there", "FILES")
    assert not (tmp_path / "new.key").exists()
    assert {p: p.read_bytes() for p in stores} == before


# --- D: report.json checked in one place for every reader ---------------------------------------------------

DAMAGED = [
    ('{"meta": {"dataset": "log.c', "not valid JSON"),
    ("[1, 2, 3]", "the top level must be an object with meta and arms, got a list"),
    ("{}", "meta missing"),
    ('{"meta": {"dataset": "x", "n_users": "3", "n_items": 5, "seed": 0}, "arms": {}}', "meta.n_users must be an"),
    ('{"meta": {"dataset": "x", "n_users": 3, "n_items": 5, "seed": 0}, "arms": [1]}', "arms must be an object"),
]


@pytest.mark.parametrize(
    "command, text, message", [("retention", *DAMAGED[0]), ("audit", *DAMAGED[1]), ("audit", *DAMAGED[2])]
)
def test_readers_refuse_a_damaged_report_in_one_line(tmp_path, cli, command, text, message):
    run = _run_dir(tmp_path, text)
    result = cli(command, str(run), "--quiet")
    assert result.code == 1
    assert_one_line_error(result, str(run / "report.json"), message)
    assert (run / "report.json").read_text() == text


@pytest.mark.parametrize("text, message", DAMAGED)
def test_report_schema_names_what_is_wrong(tmp_path, text, message):
    run = _run_dir(tmp_path, text)
    with pytest.raises(FedrecError, match="report.json: ") as caught:
        RunDir.finished(run)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r["meta"].pop("seed"), "meta.seed missing"),
        (lambda r: r["meta"].update(n_items=True), "meta.n_items must be an integer, got bool"),
        (lambda r: r["meta"].update(users="all"), "meta.users must be an integer or null"),
        (lambda r: r["arms"].update(ease=[0.1]), "arms.ease must be an object"),
        (lambda r: r["arms"].update(ease={"accuracy": 0.3}), "arms.ease.accuracy must be an object or null"),
    ],
)
def test_report_schema_fields(tmp_path, change, message):
    report = json.loads(json.dumps(VALID))
    change(report)
    run = _run_dir(tmp_path, json.dumps(report))
    with pytest.raises(FedrecError, match=message):
        RunDir(run).read_report()


def test_a_valid_report_reads_back(tmp_path):
    assert RunDir.finished(_run_dir(tmp_path, json.dumps(VALID))).read_report() == VALID


def test_reader_on_a_file_not_a_dir(a_file, cli):
    result = cli("retention", str(a_file), "--quiet")
    assert_one_line_error(result, f"{a_file}: not a directory")


# --- F: no traceback from the SuperNode's output reader on a clean error path -------------------------------

# A SuperNode that is refused and exits while its output is still being read: children.stop() then closes
# the pipe under the reader thread.
FAKE_SUPERNODE = """
import sys
print("[code: 2004] Failed to activate SuperNode.", flush=True)
sys.stdout.write("retrying\\n" * 3000)
sys.exit(1)
"""


def test_refused_supernode_leaves_no_thread_traceback(tmp_path, monkeypatch):
    raised: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))
    monkeypatch.setattr(supernode, "check_inputs", lambda s: {})
    monkeypatch.setattr(supernode, "supernode_argv", lambda s, port, paths: [sys.executable, "-c", FAKE_SUPERNODE])
    settings = ClientSettings(Path("d.db"), Path("d.key"), "127.0.0.1:1", Path("ca.crt"), Path("dev"), port=1)
    with pytest.raises(FedrecError, match="the public key of dev is not registered"):
        run_client(settings, say=lambda line: time.sleep(0.001))  # a slow terminal: the reader lags behind
    time.sleep(1.0)
    assert raised == []


# --- G: a checkpoint belongs to its run ---------------------------------------------------------------------


def _checkpoint_of(out: Path, federation: FederationConfig) -> Path:
    torch.manual_seed(0)
    state = global_state(NeuMF(1, 30, federation.device.model))
    return save_checkpoint(out, 3, state, {"federation": to_nested(federation), "privacy": {}})


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    run = FederationConfig()
    path = _checkpoint_of(tmp_path, run)
    assert load_checkpoint(tmp_path, run)["round"] == 3
    moved = replace(run, server=replace(run.server, out_dir="/elsewhere"))  # the same run, restarted elsewhere
    assert load_checkpoint(tmp_path, moved)["round"] == 3
    other_model = replace(run, device=replace(run.device, model=ModelConfig(gmf_dim=8, mlp_dim=8, layers=(8,))))
    other_budget = replace(run, privacy=replace(run.privacy, epsilon=2.0))
    for other, key in ((other_model, "federation.device.model.gmf_dim"), (other_budget, "federation.privacy.epsilon")):
        with pytest.raises(ModelFileError) as caught:
            load_checkpoint(tmp_path, other)
        message = str(caught.value)
        assert message.startswith(f"{path}: a checkpoint of another run ({key}") and "fresh --out" in message
    assert load_checkpoint(tmp_path)["round"] == 3  # without the run's settings: the digest check only


def test_server_refuses_a_checkpoint_of_another_run_before_starting(tmp_path, cli):
    assert cli("certs", "init", "--out", str(tmp_path / "certs"), "--ip", "127.0.0.1", "--devices", "1").code == 0
    path = _checkpoint_of(tmp_path / "out", FederationConfig())  # 30 rounds
    before = path.read_bytes()
    result = cli(
        "server", "--certs", str(tmp_path / "certs"), "--out", str(tmp_path / "out"), "--port", "19125", "--rounds", "5"
    )
    assert result.code == 1
    line = assert_one_line_error(result, f"{path}: a checkpoint of another run", "federation.server.rounds is 30 there")
    assert "SuperLink" not in result.stderr and len(line) < 300
    assert path.read_bytes() == before
