"""Atomic per-round checkpoints of the global model, so a restarted server resumes where it stopped.

Both files the server writes carry a SHA-256 of their content (``common.model_files``), checked on
every load: a checkpoint holds its digest inside (one file, replaced atomically, so a crash never
separates file and digest); ``global_model.pt`` stays a plain state dict that ``torch.load`` reads
anywhere, with its digest in the ``model.json`` written beside it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from fedrec.common.model_files import (
    DIGEST,
    FINAL_MODEL,
    MODEL_INFO,
    ModelFileError,
    matches,
    read_torch_file,
    state_digest,
)

CHECKPOINT = "checkpoint.pt"


def atomic_torch_save(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(out_dir: Path, server_round: int, state: dict[str, torch.Tensor], extra: dict) -> Path:
    path = out_dir / CHECKPOINT
    digest = state_digest(state, {"round": server_round, "extra": extra})
    atomic_torch_save({"round": server_round, "state": state, "extra": extra, DIGEST: digest}, path)
    return path


def load_checkpoint(out_dir: Path) -> dict | None:
    """The last checkpoint, verified against the digest it carries; None when there is none."""
    path = out_dir / CHECKPOINT
    if not path.exists():
        return None
    hint = "delete it to start the run over"
    raw = read_torch_file(path, hint)
    if not (
        isinstance(raw, dict)
        and matches(raw.get("state"), raw.get(DIGEST), {"round": raw.get("round"), "extra": raw.get("extra")})
    ):
        raise ModelFileError(f"{path}: content does not match its SHA-256 digest (altered or damaged); {hint}")
    return raw


def save_final_model(out_dir: Path, state: dict[str, torch.Tensor], model_info: dict) -> Path:
    """``global_model.pt`` (global params only) beside ``model.json`` (the run's resolved settings, digest)."""
    atomic_torch_save(state, out_dir / FINAL_MODEL)
    info = {**model_info, DIGEST: state_digest(state)}
    (out_dir / MODEL_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir / FINAL_MODEL
