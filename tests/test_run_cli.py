"""The one-run command line: python -m sim.run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sim.run import main

REQUIRED = ["day", "active_users", "retention", "revenue", "cost", "grants"]


def _run(tmp_path: Path, *args: str, name: str = "run.csv") -> tuple[Path, pd.DataFrame]:
    out = tmp_path / name
    rc = main([*args, "--out", str(out), "--no-progress"])
    assert rc == 0
    return out, pd.read_csv(out)


def test_writes_one_row_per_day(tmp_path, capsys):
    out, df = _run(tmp_path, "--users", "2000", "--days", "12", "--seed", "3", "--policy", "none")
    assert list(df.columns[: len(REQUIRED)]) == REQUIRED
    assert df["day"].tolist() == list(range(1, 13))
    assert (df["retention"] == df["active_users"] / 2000).all()
    assert (df["grants"] == 0).all() and (df["cost"] == 0).all()
    assert (df["revenue"] > 0).all()
    text = capsys.readouterr().out
    assert "retention" in text and "D7" in text and str(out) in text
    assert not list(tmp_path.glob(".*.tmp")), "temporary file left behind"


def test_same_seed_same_file_different_seed_differs(tmp_path):
    args = ["--users", "1500", "--days", "8", "--policy", "random"]
    a, _ = _run(tmp_path, *args, "--seed", "5", name="a.csv")
    b, _ = _run(tmp_path, *args, "--seed", "5", name="b.csv")
    c, _ = _run(tmp_path, *args, "--seed", "6", name="c.csv")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_blanket_with_budget_grants_within_budget(tmp_path):
    _, df = _run(tmp_path, "--users", "1000", "--days", "10", "--policy", "blanket:coins_1", "--budget-per-user", "0.2")
    assert df.loc[0, "grants"] == 200  # coins_1 commits 1 yuan: 0.2 x 1000 yuan buys 200 grants
    assert df.loc[0, "refused"] == 800
    assert (df["grants"].iloc[1:] == 0).all()  # a static policy acts on day 1 only
    assert 0 < df["cost"].sum() <= 200.0


def test_agents_mode_matches_cohort_mode(tmp_path):
    args = ["--users", "300", "--days", "6", "--seed", "2", "--policy", "blanket:unlock_20"]
    a, _ = _run(tmp_path, *args, "--mode", "cohort", name="fast.csv")
    b, _ = _run(tmp_path, *args, "--mode", "agents", name="agents.csv")
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--policy", "blanket:coins_999"], r"--policy: unknown action 'coins_999'"),
        (["--policy", "greedy"], r"--policy: expected none \| random \| blanket:ACTION"),
        (["--users", "0"], r"--users: expected an integer \[1, 50000000\], got 0"),
        (["--users", "ten"], r"--users: expected an integer, got 'ten'"),
        (["--days", "61"], r"--days: expected an integer \[1, 60\], got 61"),
        (["--seed", "-1"], r"--seed: expected an integer >= 0"),
        (["--budget-per-user", "nan"], r"--budget-per-user: expected a finite number >= 0"),
        (["--budget-per-user", "-2"], r"--budget-per-user: expected a finite number >= 0"),
        (["--scenario", "atlantis"], r"unknown scenario 'atlantis'"),
        (["--mode", "turbo"], r"--mode: invalid choice"),
        (["--out", "x.parquet"], r"--out: expected a \.csv path"),
    ],
)
def test_bad_flags_rejected(args, pattern, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*args, "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err), err


def test_module_entry_point(tmp_path):
    out = tmp_path / "cli.csv"
    res = subprocess.run(
        [sys.executable, "-m", "sim.run", "--scenario", "fanqie_newuser", "--users", "500", "--days", "5",
         "--policy", "blanket:trial_3d", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    df = pd.read_csv(out)
    assert len(df) == 5 and df.loc[0, "grants"] == 500
    assert "wrote" in res.stdout
