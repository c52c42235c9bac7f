"""Sweeps: validation of sweep files, seeds, local/Ray backends give the same table, resume after SIGKILL, failures.

The sweeps here are tiny (a few hundred users) so that the whole file
runs in about a minute on two cores; the shipped sweeps are run by hand
(docs/sweeps.md) and their outputs committed under results/sweeps/.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from scipy import stats

from experiments.aggregate import load_runs, runs_frame, t_interval
from experiments.sweep import _Lock, main, run_sweep, split_done
from experiments.sweep_config import SweepConfigError, load_sweep, replicate_seeds, sweep_from_dict

ROOT = Path(__file__).resolve().parents[1]

# 2 policies x 2 budgets x 3 replicates = 12 runs of 300 users
BASE = {
    "name": "tiny",
    "seed": 4242,
    "replicates": 3,
    "budgets": [0.1, 0.5],
    "experiment": {"users": 300},
    "policies": [
        {"policy": "random"},
        {"policy": "blanket", "params": {"action": "coins_1"}},
    ],
}
OUTPUTS = ("table.csv", "table.md", "runs.csv")


class FailingPolicy:
    """A policy whose act() raises: its runs must be recorded as failed without stopping the sweep."""

    static = True
    needs_logs = False

    def act(self, day, obs):
        raise RuntimeError("deliberate failure for the sweep test")


def _write(tmp: Path, data: dict, name: str = "sweep.toml") -> Path:
    p = tmp / name
    p.write_text(tomli_w.dumps(data))
    return p


def _bytes(sweep_dir: Path) -> dict[str, bytes]:
    return {f: (sweep_dir / f).read_bytes() for f in OUTPUTS}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """The tiny sweep, uninterrupted, one worker (in this process)."""
    tmp = tmp_path_factory.mktemp("sweep_base")
    res = run_sweep(sweep_from_dict(copy.deepcopy(BASE)), workers=1, out=tmp, progress=False, log=None)
    assert (res.planned, res.ok, res.failed) == (12, 12, 0)
    return res.sweep_dir, _bytes(res.sweep_dir)


# ----------------------------------------------------------------------
# validation: bad sweep files are rejected, naming the field, before anything runs
def _with(**kw):
    d = copy.deepcopy(BASE)
    for k, v in kw.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    return d


POINTS = [{"scenario": "fanqie_newuser", "policy": "random", "budget": 0.2}]
BAD = [
    (_with(frobnicate=1), r"unknown field 'frobnicate'"),
    (_with(replicates=0), r"field 'replicates'"),
    (_with(seed=-1), r"field 'seed'"),
    (_with(name="a/b"), r"field 'name'.*plain folder name"),
    (_with(budgets=[-0.1]), r"field 'budgets\[0\]'"),
    (_with(budgets=["lots"]), r"field 'budgets\[0\]'"),
    (_with(budgets=[0.1, 0.1]), r"field 'budgets'.*distinct"),
    (_with(budgets=[]), r"field 'budgets'"),
    (_with(scenarios=["atlantis"]), r"scenarios\[0\].*unknown scenario 'atlantis'"),
    (_with(scenarios="some"), r"field 'scenarios'"),
    (_with(policies=[{"policy": "nope"}]), r"policies\[0\]\.policy: unknown policy 'nope'"),
    (_with(policies=[{"policy": "random"}, {"policy": "no.such.module:Cls"}]),
     r"policies\[1\]\.policy: cannot import module"),
    (_with(policies=[{"policy": "blanket", "params": {"action": "gold_bar"}}]),
     r"policies\[0\]\.params\.action: unknown action 'gold_bar'"),
    (_with(policies=[{"policy": "random", "params": {"temperature": 2}}]), r"policies\[0\]\.policy: bad settings"),
    (_with(policies=[{"policy": "control"}]), r"policies\[0\]\.policy.*control arm is implicit"),
    (_with(policies=[{"policy": "oracle", "grid": {"objective": []}}]), r"policies\[0\]\.grid.*non-empty"),
    (_with(policies=[{"policy": "oracle", "params": {"objective": "net_value"}, "grid": {"objective": ["mix"]}}]),
     r"policies\[0\].*also fixed in params"),
    (_with(policies=[{"policy": "random"}, {"policy": "random"}]), r"policies\[1\].*label 'random'.*already used"),
    (_with(policies=[{"policy": "random", "budgets": [-1]}]), r"policies\[0\]\.budgets\[0\]"),
    (_with(policies=[]), r"policies: expected at least one policy"),
    (_with(policies=None), r"exactly one of \[\[policies\]\]"),
    (_with(points=POINTS), r"exactly one of \[\[policies\]\]"),
    (_with(policies=None, budgets=None, points=[{**POINTS[0], "budget": -1}]), r"points\[0\]\.budget"),
    (_with(policies=None, budgets=None, points=[{**POINTS[0], "scenario": "atlantis"}]), r"points\[0\]\.scenario"),
    (_with(policies=None, budgets=None, points=POINTS, scenarios=["fanqie_newuser"]),
     r"field 'scenarios'.*not used with"),
    (_with(policies=None, points=POINTS), r"field 'budgets'.*not used with"),
    (_with(experiment={"users": "many"}), r"field 'experiment\.users'"),
    (_with(experiment={"users": 2}), r"field 'experiment\.users'"),
    (_with(experiment={"colour": "red"}), r"unknown field 'experiment\.colour'"),
    (_with(experiment={"seed": 3}), r"experiment.*seed: set by the sweep"),
    (_with(experiment={"ground_truth": False}), r"ground_truth.*must be true"),
    (_with(experiment={"metrics": ["d8_retention"]}), r"experiment\.metrics.*unknown metric"),
    (_with(alpha=1.5), r"field 'alpha'"),
]


@pytest.mark.parametrize("data,match", BAD, ids=[m for _, m in BAD])
def test_bad_sweep_rejected_before_anything_runs(tmp_path, data, match):
    path = _write(tmp_path, data)
    with pytest.raises(SweepConfigError, match=match):
        run_sweep(path, out=tmp_path / "out", progress=False, log=None)
    assert not (tmp_path / "out").exists()  # nothing written


def test_cli_reports_bad_file_with_exit_2(tmp_path, capsys):
    path = _write(tmp_path, _with(replicates=-3))
    assert main(["--config", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "replicates" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2


def test_shipped_sweeps_are_valid():
    for f in sorted((ROOT / "experiments" / "sweeps").glob("*.toml")):
        plan = load_sweep(f)
        assert len(plan.points) >= plan.config.replicates


# ----------------------------------------------------------------------
# seeds come from SeedSequence spawning: per replicate, paired across cells (or per cell when unpaired)
def test_run_seeds_spawned_from_sweep_seed():
    plan = sweep_from_dict(copy.deepcopy(BASE))
    expected = [int(s.generate_state(1, dtype=np.uint32)[0]) for s in np.random.SeedSequence(4242).spawn(3)]
    assert replicate_seeds(4242, 3) == expected
    for p in plan.points:
        assert p.seed == expected[p.replicate] == p.config["seed"]
    assert len(set(expected)) == 3 and expected != [4242, 4243, 4244]
    other = sweep_from_dict(_with(seed=4243))
    assert {p.seed for p in other.points}.isdisjoint(expected)
    unpaired = sweep_from_dict(_with(paired=False))
    seeds = [p.seed for p in unpaired.points]
    assert len(set(seeds)) == len(seeds)  # every cell x replicate has its own stream
    # ids are stable and depend on the run's config
    assert [p.point_id for p in sweep_from_dict(copy.deepcopy(BASE)).points] == [p.point_id for p in plan.points]
    assert {p.point_id for p in plan.points}.isdisjoint(p.point_id for p in unpaired.points)


# ----------------------------------------------------------------------
def test_aggregate_table_is_the_t_interval_of_the_run_files(baseline):
    sweep_dir, _ = baseline
    import pandas as pd

    table = pd.read_csv(sweep_dir / "table.csv")
    ok, failed, pending = load_runs(sweep_dir)
    assert (len(ok), len(failed), pending) == (12, 0, [])
    runs = runs_frame(ok)
    cells = table[table["arm"] != "control"]
    assert len(cells) == 4 and (cells["runs"] == 3).all()
    for _, row in cells.iterrows():
        g = runs[(runs["arm"] == row["arm"]) & np.isclose(runs["budget"], row["budget"])]
        assert len(g) == 3 and sorted(g["replicate"]) == [0, 1, 2]
        for m in ("d7_lift", "true_d7_lift", "true_cost_per_user"):
            x = g[m].to_numpy()
            lo, hi = stats.t.interval(0.95, df=2, loc=x.mean(), scale=stats.sem(x))
            assert row[f"{m}_mean"] == pytest.approx(x.mean(), rel=1e-12, abs=1e-15)
            if np.ptp(x) > 0:
                assert (row[f"{m}_ci_low"], row[f"{m}_ci_high"]) == pytest.approx((lo, hi), rel=1e-9)
    ctrl = table[table["arm"] == "control"]
    assert len(ctrl) == 1 and ctrl["runs"].iloc[0] == 3
    for _, g in cells.groupby("budget"):
        assert sorted(g["rank_true_d7"]) == [1.0, 2.0]
    assert (sweep_dir / "frontier.png").stat().st_size > 0 and (sweep_dir / "ranks.png").stat().st_size > 0
    assert "## Headline table" in (sweep_dir / "report.md").read_text()


def test_t_interval_edge_cases():
    assert t_interval([]) [3] == 0
    m, lo, hi, n = t_interval([0.5])
    assert (m, n) == (0.5, 1) and math.isnan(lo) and math.isnan(hi)
    assert t_interval([2.0, 2.0, 2.0])[:3] == (2.0, 2.0, 2.0)
    m, lo, hi, n = t_interval([1.0, 2.0, np.nan, 3.0])
    assert n == 3 and lo < m < hi


# ----------------------------------------------------------------------
# backends: any worker count and Ray give the byte-identical table
def test_two_workers_give_the_same_table(tmp_path, baseline):
    _, expected = baseline
    res = run_sweep(sweep_from_dict(copy.deepcopy(BASE)), workers=2, out=tmp_path, progress=False, log=None)
    assert (res.ok, res.failed) == (12, 0)
    assert _bytes(res.sweep_dir) == expected


def test_ray_backend_gives_the_same_table(tmp_path, baseline):
    ray = pytest.importorskip("ray", reason="ray is not installed (optional group: pip install -e '.[ray]')")
    _, expected = baseline
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = run_sweep(sweep_from_dict(copy.deepcopy(BASE)), backend="ray", out=tmp_path, progress=False, log=None)
    finally:
        ray.shutdown()
    assert (res.ok, res.failed) == (12, 0)
    assert _bytes(res.sweep_dir) == expected


# ----------------------------------------------------------------------
# resume: SIGKILL mid-way, start again: nothing lost or repeated, same table
def test_sigkill_and_resume(tmp_path, baseline):
    _, expected = baseline
    cfg = _write(tmp_path, copy.deepcopy(BASE))
    out = tmp_path / "out"
    runs = out / "tiny" / "runs"
    cmd = [sys.executable, "-m", "experiments.sweep", "--config", str(cfg), "--out", str(out), "--workers", "2",
           "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if runs.is_dir() and len(list(runs.glob("*.json"))) >= 2:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers
    proc.wait()
    before = {p.name: p.read_bytes() for p in runs.glob("*.json")}
    assert 2 <= len(before) < 12, f"kill came too late or too early: {len(before)} finished runs"

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{len(before)} finished ({len(before)} ok, 0 failed), {12 - len(before)} to run" in second.stdout
    after = {p.name: p.read_bytes() for p in runs.glob("*.json")}
    assert len(after) == 12
    assert all(after[k] == v for k, v in before.items())  # finished runs kept as they were, not rerun
    assert not list(runs.glob(".*.tmp"))
    assert _bytes(out / "tiny") == expected


def test_lock_refuses_a_second_sweep_in_the_same_folder(tmp_path):
    plan = sweep_from_dict(copy.deepcopy(BASE))
    from experiments.sweep import SweepLocked

    with _Lock(tmp_path / "tiny"):
        with pytest.raises(SweepLocked, match="another sweep process"):
            run_sweep(plan, out=tmp_path, progress=False, log=None)


# ----------------------------------------------------------------------
def test_failing_run_is_recorded_and_others_finish(tmp_path):
    data = _with(replicates=2, policies=[{"policy": "random"}, {"policy": "test_sweep:FailingPolicy",
                                                                    "name": "failing"}], budgets=[0.2])
    plan = sweep_from_dict(data)
    res = run_sweep(plan, workers=2, out=tmp_path, progress=False, log=None)
    assert (res.planned, res.ok, res.failed) == (4, 2, 2)
    recs = [json.loads(p.read_text()) for p in sorted((res.sweep_dir / "runs").glob("*.json"))]
    failed = [r for r in recs if r["status"] == "failed"]
    assert {r["point"]["arm"] for r in failed} == {"failing"}
    for r in failed:
        assert r["error"] == "RuntimeError: deliberate failure for the sweep test"
        assert "in act" in r["traceback"] and r["summary"] is None
    assert all(r["status"] == "ok" and len(r["summary"]) == 2 for r in recs if r["point"]["arm"] == "random")
    report = (res.sweep_dir / "report.md").read_text()
    assert "## Failed runs" in report and "deliberate failure" in report
    table = (res.sweep_dir / "table.csv").read_text()
    assert "failing" in table  # the cell is listed with 0 runs and its failures
    # not retried unless asked
    assert split_done(plan, res.sweep_dir) == ([], 2, 2)
    again = run_sweep(plan, workers=1, out=tmp_path, progress=False, log=None)
    assert again.ran == 0 and again.failed == 2
    retry = run_sweep(plan, workers=1, out=tmp_path, progress=False, log=None, retry_failed=True)
    assert retry.ran == 2 and retry.failed == 2


def test_a_sweep_whose_runs_all_fail_still_writes_its_report(tmp_path):
    data = _with(replicates=1, policies=[{"policy": "test_sweep:FailingPolicy", "name": "failing"}], budgets=[0.2])
    res = run_sweep(sweep_from_dict(data), workers=1, out=tmp_path, progress=False, log=None)
    assert (res.ok, res.failed) == (0, 1)
    assert "deliberate failure" in (res.sweep_dir / "report.md").read_text()
    assert not (res.sweep_dir / "frontier.png").exists()


def test_worker_init_lets_a_worker_compile_after_its_thread_pool_started():
    """A spawned worker imports numba with the parent's thread count; the initializer sets the worker's
    share.  A kernel compiled after the pool started (a cold cache: a fresh clone) must still work."""
    code = textwrap.dedent("""
        import numba
        from experiments.sweep import _limit_threads, _worker_init
        _worker_init(1)
        _limit_threads(1)  # launches numba's thread pool, as run_point does
        @numba.njit(parallel=True)
        def f(x):
            s = 0.0
            for i in numba.prange(x.shape[0]):
                s += x[i]
            return s
        import numpy as np
        print(f(np.ones(10)))
    """)
    env = {**os.environ, "NUMBA_NUM_THREADS": "2", "NUMBA_CACHE_DIR": tempfile.mkdtemp()}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "10.0"


# ----------------------------------------------------------------------
def test_fit_cache_reuses_a_fit_across_budgets_with_identical_runs(tmp_path):
    """Points differing only in budget share one fit per worker; the runs equal fresh fits' runs."""
    import experiments.sweep as S

    data = _with(replicates=1, budgets=[0.1, 0.5], policies=[{"policy": "ltv", "params": {"n_estimators": 20}}],
                 experiment={"users": 300, "logs": {"users": 2000, "cache_dir": str(tmp_path / "logs")}})
    plan = sweep_from_dict(data)
    S._FIT_CACHE.clear()
    before = dict(S._fit_stats)
    cached = [S.run_point(p.to_dict(), None, True) for p in plan.points]
    assert S._fit_stats["hits"] - before["hits"] >= 1  # the second budget reused the first one's ltv fit
    fresh = [S.run_point(p.to_dict(), None, False) for p in plan.points]
    for a, b in zip(cached, fresh):
        assert a["status"] == b["status"] == "ok", (a["error"], b["error"])
        assert json.dumps(a["summary"], sort_keys=True) == json.dumps(b["summary"], sort_keys=True)
    assert cached[0]["summary"] != cached[1]["summary"]  # budgets differ: the runs do


def test_a_scenario_edited_mid_sweep_is_not_run_under_the_old_id(tmp_path):
    import experiments.sweep as S

    world = tmp_path / "my_world.toml"
    text = (ROOT / "sim" / "scenarios" / "fanqie_newuser.toml").read_text()
    world.write_text(text)
    plan = sweep_from_dict(_with(replicates=1, budgets=[0.1], scenarios=[str(world)],
                                 policies=[{"policy": "random"}]))
    world.write_text(text.replace("churn_if_active = 0.01", "churn_if_active = 0.02"))
    rec = S.run_point(plan.points[0].to_dict())
    assert rec["status"] == "failed" and rec["error"].startswith("ScenarioChanged: scenario")
    assert sweep_from_dict(_with(replicates=1, budgets=[0.1], scenarios=[str(world)],
                                 policies=[{"policy": "random"}])).points[0].point_id != plan.points[0].point_id
