"""Atomic per-round checkpoints of the global model, so a restarted server resumes where it stopped."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from fedrec.common.model_file import MODEL_INFO

CHECKPOINT = "checkpoint.pt"


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(out_dir: Path, server_round: int, state: dict[str, torch.Tensor], extra: dict) -> Path:
    path = out_dir / CHECKPOINT
    atomic_torch_save({"round": server_round, "state": state, "extra": extra}, path)
    return path


def load_checkpoint(out_dir: Path) -> dict | None:
    path = out_dir / CHECKPOINT
    if not path.exists():
        return None
    return torch.load(path, weights_only=True)


def save_final_model(out_dir: Path, state: dict[str, torch.Tensor], model_info: dict) -> Path:
    """``global_model.pt`` (global params only) beside ``model.json`` (architecture and catalogue size)."""
    atomic_torch_save(state, out_dir / "global_model.pt")
    (out_dir / MODEL_INFO).write_text(json.dumps(model_info, indent=2) + "\n")
    return out_dir / "global_model.pt"
