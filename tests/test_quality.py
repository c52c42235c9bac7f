"""Model-quality metrics (policies.quality) on synthetic data with known answers, and the report
integration with an EvalContext on a small cohort."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.collect import collect_logs
from policies.base import EvalContext
from policies.baselines import ControlPolicy
from policies.ltv import LTVPolicy
from policies.oracle import OraclePolicy
from policies.quality import (
    allocation_value,
    effect_accuracy,
    gain_curves,
    ltv_quality,
    observed_uplift_scores,
    plot_calibration,
    plot_gain_curves,
    recommended_actions,
    true_uplift_scores,
)
from policies.uplift import UpliftPolicy
from sim.population import generate_cohort
from sim.scenario import load_scenario
from sim.twins import simulate_twin, static_action_outcomes


def _tau(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return x, 0.02 + 0.05 * x  # effect grows with x; positive on average


def test_perfect_ranking_beats_random_and_reverse_ranking_loses():
    x, tau = _tau()
    good = true_uplift_scores(x, tau, n_bootstrap=100, seed=1)
    bad = true_uplift_scores(-x, tau, n_bootstrap=100, seed=1)
    assert good["qini_ci_low"] > 0 and bad["qini_ci_high"] < 0
    assert good["auuc"] - good["auuc_random"] == pytest.approx(good["qini"], abs=1e-12)
    assert good["auuc_random"] == pytest.approx(bad["auuc_random"], abs=1e-12)
    assert good["total_effect_per_user"] == pytest.approx(tau.mean())


def test_random_ranking_is_indistinguishable_from_random():
    x, tau = _tau(seed=2)
    noise = np.random.default_rng(3).normal(size=x.size)
    s = true_uplift_scores(noise, tau, n_bootstrap=200, seed=4)
    # |Qini| within 3 bootstrap SEs of 0 for a ranking unrelated to the effect
    assert abs(s["qini"]) < 3 * s["qini_se"], s


def test_observed_scores_from_a_randomised_holdout_recover_a_real_effect():
    n, K = 40_000, 3
    rng = np.random.default_rng(5)
    x = rng.normal(size=n)
    p0 = np.full(n, 0.1)
    p1 = np.clip(0.1 + 0.15 * (x > 0), 0, 1)  # action 1 helps only users with x > 0
    u = rng.random(n)
    outcomes = np.column_stack([(u < p0), (u < p1), (u < p0)]).astype(float)
    rec = np.ones(n, dtype=np.int64)
    good = observed_uplift_scores(x, rec, outcomes, seed=0, n_bootstrap=100)
    assert good["qini_ci_low"] > 0
    p = 2 / K  # assigned none or the recommended action
    assert abs(good["users"] - n * p) < 4 * np.sqrt(n * p * (1 - p))


def test_effect_accuracy_of_exact_predictions():
    _, tau = _tau()
    true = np.column_stack([np.zeros_like(tau), tau, -tau])
    acc = effect_accuracy(true.copy(), true, ["none", "a", "b"])
    assert list(acc["action"]) == ["a", "b"]
    np.testing.assert_allclose(acc["spearman"], 1.0)
    np.testing.assert_allclose(acc["root_pehe"], 0.0, atol=1e-15)
    shifted = effect_accuracy(true + 0.01, true, ["none", "a", "b"])
    np.testing.assert_allclose(shifted["root_pehe"], 0.01, rtol=1e-9)


def test_recommended_actions_and_gain_curve_end_points():
    v = np.array([[0.0, 0.2, 0.5], [0.0, -0.1, -0.3], [0.1, 0.4, 0.0]])
    a, s = recommended_actions(v)
    np.testing.assert_array_equal(a, [2, 1, 1])
    np.testing.assert_allclose(s, [0.5, -0.1, 0.3])
    x, tau = _tau(1000)
    c = gain_curves({"model": (x, tau), "oracle": (tau, tau)})
    assert c["share_targeted"].iloc[0] == 0 and c["share_targeted"].iloc[-1] == 1
    for col in ("model", "oracle", "random (same actions as model)"):
        assert c[col].iloc[-1] == pytest.approx(tau.mean())
    assert (c["oracle"] >= c["model"] - 1e-12).all()


def test_ltv_quality_exact_and_calibration_table():
    rng = np.random.default_rng(0)
    y = rng.exponential(size=5000)
    m, tab = ltv_quality(y.copy(), y)
    assert m["r2"] == pytest.approx(1.0) and m["mae"] == pytest.approx(0.0)
    assert len(tab) == 10 and tab["users"].sum() == 5000
    np.testing.assert_allclose(tab["mean_predicted"], tab["mean_actual"])
    m2, _ = ltv_quality(np.full_like(y, y.mean()), y)
    assert m2["r2"] == pytest.approx(0.0, abs=1e-12)


def test_allocation_value_and_regret():
    ctrl = pd.DataFrame({"retained_d7": [0, 0, 1, 0], "paid_d30": [0, 0, 0, 0], "net_value": [0.0, 0, 1, 0],
                         "revenue": [0.0, 0, 1, 0], "cost": [0.0, 0, 0, 0]})
    pol = ctrl.assign(retained_d7=[1, 0, 1, 0], cost=[0.5, 0, 0, 0])
    orc = ctrl.assign(retained_d7=[1, 1, 1, 0], cost=[0.5, 0.5, 0, 0])
    v = allocation_value(pol, ctrl, orc)
    assert v["true_incremental_d7_users"] == 1 and v["oracle_incremental_d7_users"] == 2
    assert v["share_of_oracle_d7"] == 0.5 and v["regret_d7_users"] == 1
    assert v["true_cost_per_user"] == pytest.approx(0.125)
    assert allocation_value(None, ctrl, orc) == {}


def test_plots_are_written(tmp_path):
    x, tau = _tau(500)
    p1 = plot_gain_curves(gain_curves({"model": (x, tau)}), tmp_path / "g.png", "t", "y")
    _, tab = ltv_quality(np.abs(x), np.abs(tau))
    p2 = plot_calibration(tab, tmp_path / "c.png")
    for p in (p1, p2):
        assert Path(p).stat().st_size > 1000
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


@pytest.fixture(scope="module")
def eval_context(tmp_path_factory):
    sc = load_scenario("fanqie_newuser")
    logs = collect_logs(sc, n_users=20_000, seed=41)
    coh = generate_cohort(sc, 3_000, seed=42)
    truth = static_action_outcomes(sc, coh, seed=42)
    ctrl = simulate_twin(sc, coh, ControlPolicy(), seed=42)
    orc = simulate_twin(sc, coh, OraclePolicy(replications=1).fit(None, scenario=sc, seed=42), budget_per_user=0.3,
                        seed=42)
    out = tmp_path_factory.mktemp("report")
    ctx = EvalContext(scenario=sc, cohort=coh, seed=42, budget_per_user=0.3, arm_users=coh.user_ids,
                      arm_outcomes=ctrl, control_outcomes=ctrl, truth=truth, policy_twin=None, control_twin=ctrl,
                      oracle_twin=orc, out_dir=out)
    return sc, logs, coh, ctx


@pytest.mark.parametrize("cls,params,key", [
    (UpliftPolicy, dict(n_estimators=30, min_child_samples=200, eval_replications=1), "retained_d7_true_qini"),
    (LTVPolicy, dict(n_estimators=40), "ltv_r2"),
])
def test_report_against_the_truth(eval_context, cls, params, key):
    sc, logs, coh, ctx = eval_context
    pol = cls(**params).fit(logs, scenario=sc, seed=0)
    ctx.policy_twin = simulate_twin(sc, coh, pol, budget_per_user=0.3, seed=42)
    r = pol.report(ctx)
    assert set(r) == {"metrics", "markdown", "figures"}
    assert np.isfinite(r["metrics"][key])
    assert 0 <= r["metrics"]["oracle_incremental_d7_users"]
    assert "share_of_oracle_d7" in r["metrics"] and "against the truth" in r["markdown"]
    assert r["figures"] and all(Path(f).is_file() for f in r["figures"])


@pytest.mark.parametrize("kind", ["observed", "true"])
def test_vectorised_curves_equal_causalml(kind):
    """The bootstrap's vectorised curves are causalml's get_cumgain / get_qini, point for point."""
    from causalml.metrics import get_cumgain, get_qini

    from policies.quality import _curves

    rng = np.random.default_rng(7)
    n = 3000
    score = rng.normal(size=n)
    if kind == "true":
        tau = rng.normal(0.01, 0.05, size=n)
        gain, qini = _curves(score, None, None, tau)
        df = pd.DataFrame({"model": score, "w": np.ones(n, dtype=np.int64), "tau": tau})
        ref_g = get_cumgain(df[["model", "tau"]], treatment_effect_col="tau")["model"].to_numpy()
        ref_q = get_qini(df, treatment_col="w", treatment_effect_col="tau")["model"].to_numpy()
    else:
        y = (rng.random(n) < 0.1 + 0.05 * (score > 0)).astype(float)
        w = (rng.random(n) < 0.5).astype(np.int64)
        gain, qini = _curves(score, y, w, None)
        df = pd.DataFrame({"model": score, "y": y, "w": w})
        ref_g = get_cumgain(df, outcome_col="y", treatment_col="w")["model"].to_numpy()
        ref_q = get_qini(df, outcome_col="y", treatment_col="w")["model"].to_numpy()
    np.testing.assert_allclose(gain, ref_g, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(qini, ref_q, rtol=1e-9, atol=1e-9)
