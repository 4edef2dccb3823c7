"""The Python API: README's example runs as printed, and gives the numbers `fedrec baseline` gives on the
same settings; data may come as a DataFrame-like table or loaded Interactions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from fedrec_cli import run_fedrec
from synthetic_data import synthetic_log

from fedrec.common.errors import DataError
from fedrec.simulations.api import Results, baseline, interactions

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    return re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S).group(1)


def test_the_readme_example_gives_what_the_cli_gives(tmp_path, monkeypatch, ml100k_dir, capsys):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    results: Results = scope["results"]
    printed = capsys.readouterr().out
    assert "EASE's lambda, chosen on validation" in printed and "itemknn" in printed
    assert {row["arm"] for row in scope["table"]} == {"popularity", "ease", "itemknn"}
    cli = run_fedrec("baseline", "--dataset", "ml-100k", "--arms", "popularity,ease,itemknn", "--users", "200",
                     "--seeds", "0,1", "--no-retention", "--quiet", "--out", str(tmp_path / "cli"))  # fmt: skip
    assert cli.code == 0, cli.stderr
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    for name, arm in results.arms.items():
        assert arm.per_seed == report["arms"][name]["accuracy_seeds"]
        assert arm.ndcg == report["arms"][name]["accuracy"]["ndcg@10"]


class Table:
    """What the API reads of a pandas DataFrame: named columns with to_numpy() (pandas is not installed here)."""

    def __init__(self, **columns: np.ndarray):
        self.data = columns
        self.columns = list(columns)

    def __getitem__(self, name: str):
        column = self.data[name]
        return type("Column", (), {"to_numpy": lambda self: column})()


def test_a_table_and_interactions_give_the_same_run(tmp_path):
    log = synthetic_log(n_users=30, n_items=25, per_user=10, seed=2)
    table = Table(
        user=log.user_ids[log.users],
        item=log.item_ids[log.items],
        timestamp=log.timestamps,
        rating=log.ratings,
    )
    from_table = baseline(tmp_path / "a", table, arms=["popularity", "ease"], retention=False, show=False)
    from_log = baseline(tmp_path / "b", log, arms=["popularity", "ease"], retention=False, show=False)
    assert from_table.arms["ease"].per_seed == from_log.arms["ease"].per_seed
    assert from_table.report["meta"]["n_interactions"] == len(log)


def test_bad_data_is_one_line():
    with pytest.raises(DataError, match="missing column"):
        interactions(Table(user=np.arange(3), item=np.arange(3)))
    with pytest.raises(DataError, match="not int"):
        interactions(42)
