"""Issue 14 item 7: checkpoints (and the final model) are verified on load; a flipped byte never loads
as changed weights."""

from __future__ import annotations

import json

import torch
from conftest import assert_one_line_error, flip, model_info, small_model_state

from fedrec.common.model_files import ModelFileError
from fedrec.server.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint, save_final_model


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_round_trips(tmp_path):
    state, _ = small_model_state()
    save_checkpoint(tmp_path, 3, state, {"config": {"lr": 0.1}})
    back = load_checkpoint(tmp_path)
    assert back["round"] == 3 and back["extra"] == {"config": {"lr": 0.1}} and same_state(back["state"], state)


def test_a_flipped_weight_byte_is_refused_naming_the_file(tmp_path):
    state, _ = small_model_state()
    path = save_checkpoint(tmp_path, 3, state, {"config": {}})
    raw = path.read_bytes()
    weights = state["item_emb.weight"].numpy().tobytes()
    at = raw.index(weights) + 17  # inside the item embedding: torch itself loads this without complaint
    path.write_bytes(flip(raw, at))
    changed = torch.load(path, weights_only=True)["state"]
    assert not same_state(changed, state)  # the failure of the issue: a plain load returns other weights
    try:
        load_checkpoint(tmp_path)
    except ModelFileError as exc:
        message = str(exc)
    else:
        raise AssertionError("a checkpoint with a changed weight loaded")
    assert message.startswith(f"{path}: content does not match its SHA-256 digest") and "\n" not in message


def test_every_flipped_byte_is_refused_or_harmless(tmp_path):
    """Every fourth byte of the file, one at a time: refused with one line, or loads exactly what was saved."""
    state, _ = small_model_state()
    path = save_checkpoint(tmp_path, 5, state, {"config": {"seed": 1}})
    raw = path.read_bytes()
    refused = harmless = 0
    for at in range(0, len(raw), 4):
        path.write_bytes(flip(raw, at))
        try:
            back = load_checkpoint(tmp_path)
        except ModelFileError as exc:
            assert str(exc).startswith(str(path)) and "\n" not in str(exc)
            refused += 1
            continue
        assert back["round"] == 5 and back["extra"] == {"config": {"seed": 1}} and same_state(back["state"], state)
        harmless += 1
    assert refused > len(raw) // 4 // 2, (refused, harmless)
    path.write_bytes(raw)
    assert same_state(load_checkpoint(tmp_path)["state"], state)  # the saved checkpoint itself was never lost


def test_a_checkpoint_without_digest_is_refused(tmp_path):
    state, _ = small_model_state()
    torch.save({"round": 1, "state": state, "extra": {}}, tmp_path / CHECKPOINT)
    try:
        load_checkpoint(tmp_path)
    except ModelFileError as exc:
        assert "does not match its SHA-256 digest" in str(exc)
    else:
        raise AssertionError("a checkpoint without digest loaded")


def test_global_model_flipped_byte_refused_by_the_cli(tmp_path, cli):
    state, config = small_model_state()
    model = save_final_model(tmp_path, state, model_info(config))
    assert json.loads((tmp_path / "model.json").read_text())["sha256"]
    assert same_state(torch.load(model, weights_only=True), state)  # still a plain state dict for torch users
    raw = model.read_bytes()
    model.write_bytes(flip(raw, raw.index(state["output.weight"].numpy().tobytes()) + 1))
    result = cli(
        "recommend",
        "--store",
        str(tmp_path / "device.db"),
        "--key-file",
        str(tmp_path / "device.key"),
        "--model",
        str(model),
    )
    assert_one_line_error(result, f"{model}: content does not match the SHA-256 digest in {tmp_path / 'model.json'}")
