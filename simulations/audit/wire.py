"""What crossed the wire: the server's wire log checked against the model's global parameters.

A device may send only the shared parameters, each as the full dense table: a missing row, a smaller
shape or an integer array could reveal which items the user touched, and any ``user_emb.*`` array
would reveal the user's own embedding. The log (``wire.jsonl``, one line per round and direction)
records names, shapes, dtypes and bytes of every array; payload values are not needed for this check.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedrec.common.config import DeviceConfig
from fedrec.common.errors import DataError
from fedrec.common.item_rows import COUNTS
from fedrec.common.mechanisms import Mechanism, mechanism_for
from fedrec.common.model import LOCAL_PREFIX, build_model
from fedrec.common.model_files import read_model_info
from fedrec.common.replies import allowed_keys
from fedrec.server.secure_aggregation import SECURE_DIRECTION

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def expected_arrays(model_json: Path) -> dict[str, dict]:
    """Name -> {shape, dtype} of every global parameter of the run's model (from its model.json)."""
    device = read_model_info(model_json).federation.device
    model = build_model(1, device.n_items, device.model)
    return {
        name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        for name, t in model.state_dict().items()
        if not name.startswith(LOCAL_PREFIX)
    }


def check_metric_keys(entry: dict, private: bool) -> list[str]:
    """Reply metrics outside the declared allow-list (``fedrec.common.replies``) of the run's mechanism."""
    direction = entry.get("direction")
    if direction not in ("up", "evaluate"):
        return []
    allowed = allowed_keys("train" if direction == "up" else "evaluate", private)
    extra = sorted(set(entry.get("metric_keys", [])) - set(allowed))
    if not extra:
        return []
    return [
        f"round {entry.get('round')} {direction}: reply metric(s) {', '.join(extra)} are not on the "
        f"allow-list of {'a private' if private else 'a non-private'} run ({', '.join(allowed)})"
    ]


def shared_up_arrays(
    expected: dict[str, dict], device: DeviceConfig, mechanism: Mechanism, round_number: int
) -> dict[str, dict]:
    """What a reply may carry in a round of a shared-noise mechanism: the arrays of its share
    (``Mechanism.share_names``), each a global parameter's shape, or the noisy item histogram."""
    histogram = {"shape": [device.n_items], "dtype": "float64"}
    names = mechanism.share_names(device, round_number, list(expected))
    return {name: expected[name] if name in expected else histogram for name in names}


def check_line(entry: dict, expected: dict[str, dict], private: bool = True, complete: bool = True) -> list[str]:
    """Every problem with one round-direction of the log, as readable sentences (``complete``: every
    expected array must be there). A reply without DP may also carry the per-row example counts of the
    item table (fedrec.common.item_rows); a private one may not."""
    where = f"round {entry.get('round')} {entry.get('direction')}"
    if entry.get("direction") == "evaluate":
        return []  # evaluation replies carry metrics only (checked by check_metric_keys)
    if entry.get("direction") == SECURE_DIRECTION:
        return []  # masked vectors only; the aggregate they reveal is the round's "up" line
    arrays: dict[str, dict] = entry.get("arrays", {})
    problems = []
    for name, meta in arrays.items():
        if name == COUNTS and not private and entry.get("direction") == "up":
            continue
        if name.startswith(LOCAL_PREFIX):
            problems.append(f"{where}: local array {name} crossed the wire")
            continue
        if name not in expected:
            problems.append(f"{where}: {name} is not a global parameter of the model")
            continue
        shape, dtype = list(meta.get("shape", [])), str(meta.get("dtype", ""))
        if shape != expected[name]["shape"]:
            problems.append(f"{where}: {name} has shape {shape}, the full table is {expected[name]['shape']}")
        if dtype not in FLOAT_DTYPES:
            problems.append(f"{where}: {name} has dtype {dtype} (indices or ids?), expected a float table")
        else:
            dense_bytes = int(np.prod(shape)) * np.dtype(dtype if dtype != "bfloat16" else "float16").itemsize
            if int(meta.get("bytes", 0)) < dense_bytes:
                problems.append(
                    f"{where}: {name} carries {meta.get('bytes')} bytes, fewer than a dense "
                    f"{shape} {dtype} array ({dense_bytes})"
                )
    if entry.get("same_names_in_all") is False:
        problems.append(f"{where}: messages of this round carried different array names")
    missing = sorted(set(expected) - set(arrays)) if complete else []
    if missing and entry.get("n_messages", 1):
        problems.append(f"{where}: global parameter(s) {', '.join(missing)} missing (partial update?)")
    return problems


def audit_wire_log(wire_log: Path, model_json: Path) -> dict:
    expected = expected_arrays(model_json)
    info = read_model_info(model_json)
    mechanism = mechanism_for(info.privacy)
    private, shared = info.privacy.private, not mechanism.replies_parameters
    device = info.federation.device
    try:
        lines = [json.loads(x) for x in wire_log.read_text().splitlines() if x.strip()]
    except FileNotFoundError:
        raise DataError(f"{wire_log}: not found (the server's wire log)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{wire_log}:{exc.lineno}: not JSON") from None
    problems = [
        p
        for entry in lines
        for p in (
            check_line(entry, shared_up_arrays(expected, device, mechanism, int(entry.get("round", 0))))
            if shared and entry.get("direction") == "up"
            else check_line(entry, expected, private)
        )
        + check_metric_keys(entry, private)
    ]
    keys = sorted({k for e in lines for k in e.get("metric_keys", [])})
    seen: dict[str, dict] = {}
    for entry in lines:
        for name, meta in entry.get("arrays", {}).items():
            seen.setdefault(name, {"shape": meta.get("shape"), "dtype": meta.get("dtype"), "bytes": meta.get("bytes")})
    by_direction = {
        d: sum(int(e.get("bytes_total", 0)) for e in lines if e.get("direction") == d) for d in ("down", "up")
    }
    return {
        "ok": not problems and bool(lines),
        "log": str(wire_log),
        "rounds": len({e.get("round") for e in lines}),
        "messages_up": sum(int(e.get("n_messages", 0)) for e in lines if e.get("direction") == "up"),
        "bytes_up": by_direction["up"],
        "bytes_down": by_direction["down"],
        "arrays": seen,
        "metric_keys": keys,
        "private": private,
        "problems": problems[:50] if lines else [f"{wire_log}: empty log"],
    }


def audit_wire(logs: dict[str, tuple[Path, Path]]) -> dict:
    """``logs``: arm -> (wire.jsonl, model.json). ok only if every arm's log is clean."""
    if not logs:
        return {"ok": False, "arrays": {}, "arms": {}, "problems": ["no wire log found in the run dir"]}
    arms = {arm: audit_wire_log(wire, model) for arm, (wire, model) in logs.items()}
    first = next(iter(arms.values()))
    return {"ok": all(a["ok"] for a in arms.values()), "arrays": first["arrays"], "arms": arms}
