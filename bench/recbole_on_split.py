"""RecBole's own models on fedrec's exact split, in RecBole's environment (it does not import fedrec).

    fedrec baseline --arms popularity --seeds S --no-retention --out runs/rb-S
    fedrec data export-split runs/rb-S --format recbole
    recbole-env/bin/python bench/recbole_on_split.py runs/rb-S/export/recbole/fedrec-ml-100k/fedrec-ml-100k.yaml [MODELS] > rb-S.log
    python bench/recbole_on_split.py --summarize rb-0.log rb-1.log rb-2.log

Runs each model (default: the baselines fedrec also has) with RecBole's default settings for it, early
stopping on validation NDCG@10 (the exported yaml's protocol), and prints one line per model with its
validation and test NDCG@10 and HR@10 and its wall time. ``--summarize`` reads those lines from one log per
split seed and prints each model's mean test NDCG@10 and HR@10 with a 95% t interval over the seeds, best
first: docs/simulate.md's table.

RecBole 1.2.1 needs ``numpy<2``, ``pandas<2.2``, ``scipy<1.14`` and ``setuptools<70`` beside it, and it reloads
its own checkpoint with ``torch.load``, which torch 2.6 made weights-only: that one call is allowed full
unpickling here (the file is the one RecBole just wrote).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("Pop", "ItemKNN", "BPR", "MultiVAE", "EASE", "NeuMF")
T975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}  # Student's t, 97.5% quantile, by number of seeds


def summarize(logs: list[str]) -> None:
    runs: dict[str, list[dict]] = {}
    for log in logs:
        for line in Path(log).read_text().splitlines():
            if line.startswith("RESULT "):
                found = json.loads(line[len("RESULT ") :])
                runs.setdefault(found["model"], []).append(found["test"])

    def cell(values: list[float]) -> str:
        mean = statistics.fmean(values)
        if len(values) < 2:
            return f"{mean:.4f}"
        half = T975[len(values)] * statistics.stdev(values) / len(values) ** 0.5
        return f"{mean:.4f} ({mean - half:.4f}-{mean + half:.4f})"

    print("| RecBole model | test NDCG@10 | test HR@10 | seeds |")
    print("| --- | --- | --- | --- |")
    for model, tests in sorted(runs.items(), key=lambda kv: -statistics.fmean(t["ndcg@10"] for t in kv[1])):
        ndcg, hr = [t["ndcg@10"] for t in tests], [t["hit@10"] for t in tests]
        print(f"| {model} | {cell(ndcg)} | {statistics.fmean(hr):.4f} | {len(tests)} |")


def main() -> None:
    if sys.argv[1] == "--summarize":
        summarize(sys.argv[2:])
        return
    import torch
    from recbole.quick_start import run_recbole

    _load = torch.load
    torch.load = lambda *a, **k: _load(*a, **{**k, "weights_only": False})

    config = sys.argv[1]
    models = sys.argv[2].split(",") if len(sys.argv) > 2 else MODELS
    with tempfile.TemporaryDirectory() as saved:
        for model in models:
            t0 = time.perf_counter()
            result = run_recbole(
                model=model,
                config_file_list=[config],
                config_dict={"seed": 0, "reproducibility": True, "show_progress": False, "checkpoint_dir": saved},
            )
            valid, test = dict(result["best_valid_result"]), dict(result["test_result"])
            print(
                "RESULT",
                json.dumps({"model": model, "valid": valid, "test": test, "wall_s": round(time.perf_counter() - t0)}),
                flush=True,
            )


if __name__ == "__main__":
    main()
