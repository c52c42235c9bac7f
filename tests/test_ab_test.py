"""The A/B runner end to end on small cohorts: outputs, determinism, truth, bad input, learned arms."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.ab_test import UPPER_BOUND_LABEL, assign_arms, log_seed, main, run_experiment
from experiments.config import ConfigError, config_from_dict, load_config
from policies.base import Observation, Policy
from policies.baselines import BlanketPolicy, ControlPolicy
from sim.population import generate_cohort
from sim.scenario import load_scenario
from sim.twins import simulate_twin

SC = load_scenario("fanqie_newuser")
REQUIRED = (
    "arm policy users d1_retention d7_retention d30_retention pay_conv_d7 pay_conv_d30 revenue_per_user "
    "cost_per_user net_value_per_user d7_lift d7_lift_ci_low d7_lift_ci_high d7_p_value d7_p_value_holm "
    "true_d7_lift cost_per_incremental_d7_user"
).split()


def small(tmp: Path, **over) -> dict:
    d = {
        "users": 3000,
        "seed": 1,
        "arms": [
            {"policy": "control"},
            {"policy": "random"},
            {"name": "blanket_trial_7d", "policy": "blanket", "params": {"action": "trial_7d"}},
            {"policy": "oracle", "params": {"replications": 1}},
        ],
        "frontier_budgets": [0.0, 0.3, 1.0],
        "out_dir": str(tmp / "results"),
        "logs": {"users": 2000, "cache_dir": str(tmp / "logs")},
    }
    d.update(over)
    return d


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ab")
    return tmp, run_experiment(small(tmp), progress=False)


def test_business_check_on_the_truth_uses_the_twins_levels(run):
    """true_targets_met applies the business targets to the twins' absolute levels and true costs."""
    _, res = run
    s, t = res.summary, res.config.targets
    ctrl = s[s["arm"] == "control"].iloc[0]
    # the control twin's levels plus each arm's true lift give the arm's twin levels
    for r in s[s["arm"] != "control"].itertuples():
        assert math.isclose(r.true_d7_retention, ctrl.true_d7_retention + r.true_d7_lift, abs_tol=1e-12)
    best = s[s["policy"] == "blanket"]["true_cost_per_incremental_d7_user"].min()
    for r in s.itertuples():
        cpi = r.true_cost_per_incremental_d7_user
        want = (r.arm != "control" and r.true_d7_retention >= t.d7_retention and r.true_pay_conv_d30 >= t.pay_conv_d30
                and math.isfinite(cpi) and 0 < cpi <= t.cost_per_incremental_d7_vs_best_blanket * best)
        assert bool(r.true_targets_met) == want, r.arm
    assert "all met (truth)" in (res.run_dir / "report.md").read_text()


def test_business_check_on_the_truth_table():
    from experiments.ab_test import _target_check

    cfg = config_from_dict(small(Path("/tmp")))
    s = pd.DataFrame({
        "arm": ["control", "blanket_a", "good", "cheap_no_pay", "pricey"],
        "policy": ["control", "blanket", "x", "x", "x"],
        "d7_retention": [0.06, 0.07, 0.07, 0.07, 0.07], "pay_conv_d30": [0.02] * 5,
        "cost_per_incremental_d7_user": [math.nan, 10.0, 5.0, 5.0, 5.0],
        "true_d7_retention": [0.06, 0.07, 0.085, 0.085, 0.085],
        "true_pay_conv_d30": [0.02, 0.02, 0.031, 0.029, 0.031],
        "true_cost_per_incremental_d7_user": [math.nan, 8.0, 7.5, 5.0, 7.7],
    })
    out = _target_check(s, cfg)
    assert list(out["true_targets_met"]) == [False, False, True, False, False]  # 7.7 > 0.95 x 8.0
    assert not out["targets_met"].any()  # measured D7 7% < 8%


def test_outputs_and_required_columns(run):
    tmp, res = run
    d = res.run_dir
    assert d == tmp / "results" / res.run_id
    for f in ("summary.csv", "daily.csv", "estimates.csv", "quality.csv", "frontier.csv", "config.toml", "report.md",
              "retention_curves.png", "cumulative_cost.png", "cost_vs_d7_lift.png"):
        assert (d / f).stat().st_size > 0, f
    s = pd.read_csv(d / "summary.csv")
    assert [c for c in REQUIRED if c not in s.columns] == []
    assert list(s["arm"]) == ["control", "random", "blanket_trial_7d", "oracle"]
    assert s["users"].sum() == 3000
    daily = pd.read_csv(d / "daily.csv")
    assert set(daily["arm"]) == set(s["arm"]) and daily.groupby("arm").size().eq(30).all()
    md = (d / "report.md").read_text()
    for needle in ("Sample-ratio check", "Business-target check", "cost_vs_d7_lift.png", UPPER_BOUND_LABEL):
        assert needle in md
    # no temp folders left behind
    assert [p.name for p in (tmp / "results").iterdir() if p.name.startswith(".")] == []


def test_rows_are_consistent(run):
    _, res = run
    s = res.summary.set_index("arm")
    assert s.loc["oracle", "label"] == UPPER_BOUND_LABEL
    assert math.isnan(s.loc["control", "d7_lift"]) and math.isnan(s.loc["control", "true_d7_lift"])
    for arm in ("random", "blanket_trial_7d", "oracle"):
        assert s.loc[arm, "d7_lift"] == pytest.approx(s.loc[arm, "d7_retention"] - s.loc["control", "d7_retention"])
        assert s.loc[arm, "d7_lift_ci_low"] < s.loc[arm, "d7_lift"] < s.loc[arm, "d7_lift_ci_high"]
        assert s.loc[arm, "d7_p_value"] <= s.loc[arm, "d7_p_value_holm"] <= 1
    # oracle stays within its budget; blanket arms are unlimited by default
    assert s.loc["oracle", "spent"] <= 0.3 * s.loc["oracle", "users"] + 1e-9
    assert s.loc["oracle", "refused"] == 0
    assert math.isnan(s.loc["blanket_trial_7d", "budget_per_user"])
    assert s.loc["blanket_trial_7d", "grants"] == s.loc["blanket_trial_7d", "users"]


def test_arm_outcomes_are_the_twins_of_its_users_and_truth_matches(run):
    """Unbudgeted arms: each user's measured outcome equals their twin under the same policy (same draws)."""
    _, res = run
    coh = generate_cohort(SC, 3000, seed=1)
    tw_c = simulate_twin(SC, coh, ControlPolicy(), seed=1)
    tw_b = simulate_twin(SC, coh, BlanketPolicy("trial_7d"), seed=1)
    for arm, tw in (("control", tw_c), ("blanket_trial_7d", tw_b)):
        got = res.outcomes[arm]
        pd.testing.assert_frame_equal(got, tw.loc[got.index])
    s = res.summary.set_index("arm")
    assert s.loc["blanket_trial_7d", "true_d7_lift"] == pytest.approx(
        tw_b["retained_d7"].mean() - tw_c["retained_d7"].mean(), abs=1e-12)
    assert s.loc["blanket_trial_7d", "true_cost_per_user"] == pytest.approx(tw_b["cost"].mean(), abs=1e-12)


def test_frontier_passes_through_the_oracle_twin(run):
    _, res = run
    f = res.frontier.set_index("budget_per_user")
    s = res.summary.set_index("arm")
    assert f.loc[0.3, "true_d7_lift"] == pytest.approx(s.loc["oracle", "true_d7_lift"], abs=1e-12)
    assert f.loc[0.3, "true_cost_per_user"] == pytest.approx(s.loc["oracle", "true_cost_per_user"], abs=1e-12)
    assert f.loc[0.0, "true_cost_per_user"] == 0.0
    assert f["true_cost_per_user"].is_monotonic_increasing


def test_same_config_gives_byte_identical_summary_and_config_reruns(run, tmp_path):
    tmp, res = run
    cfg = load_config(res.run_dir / "config.toml")  # the resolved config reruns as is
    res2 = run_experiment(cfg, out_dir=tmp_path, progress=False)
    assert res2.run_id == res.run_id
    assert (res2.run_dir / "summary.csv").read_bytes() == (res.run_dir / "summary.csv").read_bytes()
    assert (res2.run_dir / "daily.csv").read_bytes() == (res.run_dir / "daily.csv").read_bytes()
    # a different seed is a different run
    other = run_experiment(small(tmp_path, seed=2, frontier=False, ground_truth=False), write=False, progress=False)
    assert other.run_id != res.run_id
    assert not other.summary["d7_retention"].equals(res.summary["d7_retention"])


def test_assignment_is_keyed_stable_and_follows_the_split():
    uids = np.arange(50_000)
    shares = [0.2, 0.3, 0.5]
    a = assign_arms(uids, shares, 5)
    np.testing.assert_array_equal(a, assign_arms(uids, shares, 5))
    np.testing.assert_array_equal(a[:1000], assign_arms(uids[:1000], shares, 5))  # a user's arm ignores the others
    frac = np.bincount(a, minlength=3) / uids.size
    for f, p in zip(frac, shares):
        assert abs(f - p) <= 3 * math.sqrt(p * (1 - p) / uids.size)
    assert (assign_arms(uids, shares, 6) != a).mean() > 0.3
    assert all(log_seed(s) != s for s in range(200)) and log_seed(3) == log_seed(3)


BASE = {"users": 200, "arms": [{"policy": "control"}, {"policy": "oracle"}]}
BAD = [
    ({**BASE, "arms": [{"policy": "control"}, {"policy": "nope"}]},
     r"arms\[1\]\.policy: unknown policy 'nope'.*control"),
    ({**BASE, "arms": [{"policy": "control"}, {"policy": "oracle", "budget_per_user": -1}]},
     r"arms\[1\]\.budget_per_user"),
    ({**BASE, "budget_per_user": -0.5}, "budget_per_user"),
    ({**BASE, "split": [0.5, 0.4]}, r"split: shares must sum to 1, got 0\.9"),
    ({**BASE, "split": [1.0]}, r"split: expected one share per arm \(2\), got 1"),
    ({**BASE, "users": 100, "split": [0.99, 0.01]}, r"split\[1\]: arm 'oracle' would get about 1\.0"),
    ({**BASE, "colour": "red"}, "unknown field 'colour'"),
    ({**BASE, "arms": [{"policy": "control", "colour": 1}, {"policy": "oracle"}]},
     r"unknown field 'arms\[0\]\.colour'"),
    ({**BASE, "metrics": ["d8_retention"]}, "metrics.*unknown metric"),
    ({**BASE, "control": "ctrl"}, "control: no arm named 'ctrl'"),
    ({**BASE, "arms": [{"policy": "control"}]}, "arms"),
    ({**BASE, "arms": [{"policy": "control"}, {"policy": "control"}]}, "arm names must be unique"),
    ({**BASE, "arms": [{"policy": "control"}, {"policy": "blanket", "params": {"action": "coins_9"}}]},
     r"arms\[1\]\.params\.action: unknown action 'coins_9'"),
    ({**BASE, "arms": [{"policy": "control"}, {"policy": "oracle", "params": {"speed": 2}}]},
     r"arms\[1\]\.policy: bad settings for policy 'oracle'.*objective"),
    ({**BASE, "arms": [{"policy": "control"}, {"policy": "os:path"}]}, r"arms\[1\]\.policy: module 'os' has no class"),
    ({**BASE, "arms": [{"policy": "control"}, {"policy": "collections:OrderedDict"}]},
     r"arms\[1\]\.policy: class collections\.OrderedDict is not a policy: it needs an act"),
    ({**BASE, "alpha": 1.5}, "alpha"),
    ({**BASE, "scenario": "no_such_world"}, "scenario"),
    ({**BASE, "run_id": "../escape"}, "run_id"),
]


@pytest.mark.parametrize("cfg, match", BAD)
def test_bad_config_names_the_field_and_writes_nothing(cfg, match, tmp_path):
    out = tmp_path / "results"
    with pytest.raises(ConfigError, match=match):
        run_experiment({**cfg, "out_dir": str(out)}, progress=False)
    assert not out.exists()


def test_fewer_than_two_users_after_randomisation_writes_nothing(tmp_path):
    uids = np.arange(4)
    seed = next(s for s in range(1000) if np.bincount(assign_arms(uids, [0.5, 0.5], s), minlength=2).min() < 2)
    out = tmp_path / "results"
    with pytest.raises(ConfigError, match="split: arm.*fewer than 2 users"):
        run_experiment({**BASE, "users": 4, "seed": seed, "out_dir": str(out)}, progress=False)
    assert not out.exists()


# ---------------------------------------------------------------- learned arms and report hooks
SEEN: dict = {}


class FakeLearned(Policy):
    """Stands in for a learned policy: needs logs, treats users with long day-0 reading, reports quality."""

    name = "fake_learned"
    static = True
    needs_logs = True

    def __init__(self, action: str = "trial_7d") -> None:
        self.action = action

    def fit(self, logs, **context):
        SEEN["logs"] = logs
        SEEN["context"] = context
        self.threshold_ = float(logs["d0_minutes"].median())
        return self

    def act(self, day: int, obs: Observation) -> np.ndarray:
        a = obs.catalogue.index(self.action)
        return np.where(obs.features["d0_minutes"].to_numpy() > self.threshold_, a, 0).astype(np.int64)

    def report(self, ctx):
        SEEN["ctx"] = ctx
        fig = Path(ctx.out_dir) / "fake.png"
        fig.write_bytes(b"\x89PNG fake")
        eff = ctx.truth.effects("retained_d7")[:, ctx.truth.catalogue.index(self.action)]
        return {"metrics": {"n_logs": float(len(SEEN["logs"])), "true_mean_effect": float(eff.mean())},
                "markdown": "fake learned policy: quality section", "figures": [str(fig)]}


def test_learned_arm_is_fit_on_separate_cached_logs_and_reports(tmp_path):
    me = f"{__name__}:FakeLearned"
    cfg = small(tmp_path, users=2000, seed=4, frontier=False,
                arms=[{"policy": "control"}, {"name": "learned", "policy": me}])
    res = run_experiment(cfg, progress=False)
    logs = SEEN["logs"]
    assert len(logs) == 2000 and SEEN["context"]["seed"] == 4
    assert logs.attrs.get("seed", log_seed(4)) == log_seed(4)
    # the log cohort is not the evaluation cohort: same ids, different people
    ev = generate_cohort(SC, 2000, seed=4).features()
    assert not np.allclose(ev["d0_minutes"].to_numpy(), logs["d0_minutes"].to_numpy())
    cached = list((tmp_path / "logs").glob("*.parquet"))
    assert len(cached) == 1 and f"seed{log_seed(4)}" in cached[0].name
    # quality hook: metrics in quality.csv, markdown and figure in report
    q = pd.read_csv(res.run_dir / "quality.csv")
    assert set(q["metric"]) == {"n_logs", "true_mean_effect"} and (q["arm"] == "learned").all()
    assert "fake learned policy: quality section" in (res.run_dir / "report.md").read_text()
    assert (res.run_dir / "quality_learned" / "fake.png").exists()
    ctx = SEEN["ctx"]
    assert len(ctx.arm_outcomes) == res.summary.set_index("arm").loc["learned", "users"]
    assert ctx.policy_twin is not None and len(ctx.policy_twin) == 2000
    # second run reads the cache (same logs, no new file)
    run_experiment(cfg, write=False, progress=False)
    pd.testing.assert_frame_equal(SEEN["logs"].reset_index(drop=True), logs.reset_index(drop=True),
                                  check_dtype=False)
    assert len(list((tmp_path / "logs").glob("*.parquet"))) == 1


def test_config_from_dict_round_trip():
    cfg = config_from_dict(BASE)
    r = cfg.resolved()
    assert r.arms[1].budget_per_user == SC.meta.default_budget_per_user
    assert r.arms[0].budget_per_user == "unlimited"
    assert config_from_dict(r.to_dict()).config_hash() == cfg.config_hash()


def test_cli_runs_and_rejects_bad_policy(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["--users", "1500", "--seed", "2", "--policies", "control,blanket_coins_1", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    runs = list(out.iterdir())
    assert len(runs) == 1 and (runs[0] / "summary.csv").exists()
    assert "blanket_coins_1" in capsys.readouterr().out
    bad = tmp_path / "bad"
    assert main(["--users", "1500", "--policies", "control,nope", "--out", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown policy 'nope'" in err and "oracle" in err
    assert not bad.exists()


def test_oracle_reuses_the_whole_cohorts_effects_exactly():
    """The runner simulates the oracle's twin first; its arm then reuses those expected effects."""
    from policies.oracle import OraclePolicy
    from sim.model import IncentiveModel

    coh = generate_cohort(SC, 600, seed=2)
    sub = coh.subset(np.arange(0, 600, 3))
    warm = OraclePolicy(replications=1).fit(None, scenario=SC, seed=2)
    simulate_twin(SC, coh, warm, budget_per_user=0.3, seed=2)
    cold = OraclePolicy(replications=1).fit(None, scenario=SC, seed=2)
    outs = [IncentiveModel(SC, sub, p, budget=0.3 * len(sub), seed=2).run().outcomes() for p in (warm, cold)]
    pd.testing.assert_frame_equal(outs[0], outs[1])
    for k, v in cold.effects_.outcomes.items():
        np.testing.assert_array_equal(warm.effects_.outcomes[k], v)


def test_report_warns_on_sample_ratio_mismatch(run):
    from experiments.report import report_markdown
    from experiments.stats import srm_test

    _, res = run
    assert not res.srm["mismatch"]
    assert "no mismatch" in report_markdown(res, [])
    bad = srm_test(np.array([1400, 1600]), [0.5, 0.5])
    assert bad["mismatch"]
    res_bad = type(res)(**{**res.__dict__, "srm": bad})
    assert "WARNING: sample-ratio mismatch" in report_markdown(res_bad, [])
