"""A harness run never writes into a run dir that already holds one (a crash must not mix two runs)."""

from __future__ import annotations

from fedrec_cli import call_fedrec


def test_a_second_run_into_the_same_out_is_refused_and_the_first_is_kept(tmp_path, monkeypatch, capsys):
    def baseline(path, out):
        args = ("--dataset", str(path), "--out", str(out), "--arms", "random,popularity", "--quiet")
        return call_fedrec(monkeypatch, capsys, "baseline", *args)

    path = tmp_path / "log.csv"
    rows = ["user,item,timestamp"] + [
        f"{u},{(u * 7 + j) % 30},{u * 3 * 86400 + j * 5 * 86400}" for u in range(12) for j in range(6)
    ]
    path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    first = baseline(path, out)
    assert first.code == 0, first.stderr
    report = (out / "report.json").read_bytes()
    again = baseline(path, out)
    assert again.code == 1 and "Traceback" not in again.stderr
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{out}: already holds a run" in lines[0] and "fresh --out" in lines[0]
    assert (out / "report.json").read_bytes() == report
