"""Statistics of the A/B runner, audited against statsmodels/scipy and against the twins' truth.

Fast versions run by default; the full audits (>= 2,000 A/A splits, >= 500
seeds) are marked slow: ``pytest -m slow tests/test_stats.py``.
Bands are 3 standard errors of a binomial proportion; every random quantity is
keyed by a fixed seed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from experiments.ab_test import assign_arms
from experiments.stats import (
    ArmMoments,
    cost_per_incremental_d7,
    fieller_ratio,
    holm,
    incremental_roi,
    lift_estimate,
    srm_test,
    two_proportion_test,
    welch_test,
)
from policies.baselines import BlanketPolicy, ControlPolicy
from sim.model import IncentiveModel
from sim.population import generate_cohort
from sim.scenario import load_scenario

SC = load_scenario("fanqie_newuser")


def band(p: float, n: int) -> float:
    return 3 * math.sqrt(p * (1 - p) / n)


# ---------------------------------------------------------------- exactness
COUNTS = [(30, 100, 20, 120), (781, 10_000, 702, 9_950), (1, 50, 0, 60), (5, 5, 3, 7), (4_000, 50_000, 4_321, 50_100)]


@pytest.mark.parametrize("x1,n1,x0,n0", COUNTS)
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_two_proportion_matches_statsmodels(x1, n1, x0, n0, alpha):
    r = two_proportion_test(x1, n1, x0, n0, alpha)
    _, p = proportions_ztest([x1, x0], [n1, n0])
    lo, hi = confint_proportions_2indep(x1, n1, x0, n0, method="wald", compare="diff", alpha=alpha)
    assert r["p_value"] == pytest.approx(p, abs=1e-9, rel=1e-9)
    assert r["ci_low"] == pytest.approx(lo, abs=1e-9)
    assert r["ci_high"] == pytest.approx(hi, abs=1e-9)
    assert r["diff"] == pytest.approx(x1 / n1 - x0 / n0, abs=1e-12)


def test_two_proportion_vectorised_equals_scalar():
    a = np.array(COUNTS, dtype=float).T
    r = two_proportion_test(*a)
    for k, c in enumerate(COUNTS):
        s = two_proportion_test(*c)
        assert r["p_value"][k] == pytest.approx(float(s["p_value"]), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_welch_matches_scipy(seed, alpha):
    g = np.random.default_rng(seed)
    a = g.exponential(2.0, size=300 + 50 * seed)
    b = g.exponential(2.3, size=250)
    r = welch_test(a.mean(), a.var(ddof=1), a.size, b.mean(), b.var(ddof=1), b.size, alpha)
    ref = sps.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(confidence_level=1 - alpha)
    assert r["p_value"] == pytest.approx(ref.pvalue, abs=1e-9, rel=1e-9)
    assert r["t"] == pytest.approx(ref.statistic, rel=1e-9)
    assert r["ci_low"] == pytest.approx(ci.low, abs=1e-9)
    assert r["ci_high"] == pytest.approx(ci.high, abs=1e-9)
    ref2 = sps.ttest_ind_from_stats(a.mean(), a.std(ddof=1), a.size, b.mean(), b.std(ddof=1), b.size,
                                    equal_var=False)
    assert r["p_value"] == pytest.approx(ref2.pvalue, abs=1e-9)


def test_holm_matches_statsmodels_and_textbook():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    out = holm(p)
    assert np.isnan(out[-1])
    np.testing.assert_allclose(out[:-1], multipletests(p[:-1], method="holm")[1], atol=1e-12)
    # textbook: sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 with monotonicity
    np.testing.assert_allclose(out[:-1], [0.03, 0.06, 0.06, 0.02], atol=1e-12)


def test_fieller_is_tight_when_precise_and_unbounded_when_denominator_is_noise():
    point, lo, hi = fieller_ratio(2.0, 0.5, 1e-10, 1e-10, 0.0)
    assert point == 4.0 and lo == pytest.approx(4.0, abs=1e-3) and hi == pytest.approx(4.0, abs=1e-3)
    # denominator not significant: unbounded interval reported as NaN bounds
    _, lo, hi = fieller_ratio(2.0, 0.01, 0.01, 0.01, 0.0)
    assert math.isnan(lo) and math.isnan(hi)
    # agrees with the delta method for precise estimates
    num, den, vn, vd, c = 1.0, 2.0, 1e-4, 1e-4, 2e-5
    point, lo, hi = fieller_ratio(num, den, vn, vd, c)
    r = num / den
    se = math.sqrt(vn / den**2 + num**2 * vd / den**4 - 2 * num * c / den**3)
    assert lo == pytest.approx(r - 1.959964 * se, rel=2e-2) and hi == pytest.approx(r + 1.959964 * se, rel=2e-2)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: two_proportion_test(5, 0, 1, 10), "nobs"),
        (lambda: two_proportion_test(11, 10, 1, 10), "count"),
        (lambda: two_proportion_test(1, 10, 1, 10, alpha=1.5), "alpha"),
        (lambda: welch_test(0, 1, 1, 0, 1, 10), "nobs"),
        (lambda: srm_test([10, 10], [0.5, 0.4]), "shares"),
        (lambda: srm_test([10, 10, 10], [0.5, 0.5]), "counts/shares"),
        (lambda: lift_estimate("d8_retention", None, None), "metric"),
        (lambda: fieller_ratio(1, 1, 0, 0, 0, alpha=0), "alpha"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_ratio_estimators_on_known_moments():
    ctrl = ArmMoments(10_000, {"cost": 0.0, "retained_d7": 0.06, "net_value": 0.5},
                      {"cost": 0.0, "retained_d7": 0.0564, "net_value": 1.0}, {})
    arm = ArmMoments(10_000, {"cost": 0.3, "retained_d7": 0.09, "net_value": 0.45},
                     {"cost": 0.04, "retained_d7": 0.0819, "net_value": 1.1}, {("cost", "retained_d7"): 0.002})
    e = cost_per_incremental_d7(arm, ctrl)
    assert e.point == pytest.approx(0.3 / 0.03) and e.ci_low < e.point < e.ci_high
    roi = incremental_roi(arm, ctrl)
    assert roi.point == pytest.approx((-0.05) / 0.3)
    worse = ArmMoments(10_000, {**arm.mean, "retained_d7": 0.05}, arm.var, arm.cov)
    assert math.isinf(cost_per_incremental_d7(worse, ctrl).point)


# ---------------------------------------------------------------- SRM
def test_srm_few_false_alarms_on_clean_splits():
    uids = np.arange(20_000)
    n_runs = 200
    alarms = sum(srm_test(np.bincount(assign_arms(uids, [0.25] * 4, s), minlength=4), [0.25] * 4)["mismatch"]
                 for s in range(n_runs))
    # expected 0.2 false alarms at p < 0.001; P(>= 3) < 0.002
    assert alarms <= 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_srm_detects_injected_49_51_at_100k(seed):
    counts = np.bincount(assign_arms(np.arange(100_000), [0.49, 0.51], seed), minlength=2)
    r = srm_test(counts, [0.5, 0.5])
    assert r["mismatch"] and r["p_value"] < 1e-4
    assert not srm_test(counts, [0.49, 0.51])["mismatch"]


# ---------------------------------------------------------------- A/A false positives
def _aa_fpr(n_users: int, n_splits: int, seed: int = 7) -> dict[str, float]:
    """One cohort simulated once under control; the 50/50 split re-randomised n_splits times.

    Valid because under control each user's outcome does not depend on the arm
    (an A/A test): re-randomising the split of fixed outcomes is exactly what
    repeated A/A experiments on this cohort would give.
    """
    coh = generate_cohort(SC, n_users, seed=seed)
    out = IncentiveModel(SC, coh, ControlPolicy(), seed=seed).run().outcomes()
    y7 = out["retained_d7"].to_numpy(float)
    y30 = out["paid_d30"].to_numpy(float)
    rev = out["revenue"].to_numpy(float)
    hits = {"d7": 0, "pay_d30": 0, "revenue": 0}
    for start in range(0, n_splits, 200):  # batches keep the (splits x users) matrix small
        A = np.stack([assign_arms(coh.user_ids, [0.5, 0.5], 10_000 + s)
                      for s in range(start, min(n_splits, start + 200))]).astype(np.float64)
        n1 = A.sum(axis=1)
        n0 = n_users - n1
        for name, y in (("d7", y7), ("pay_d30", y30)):
            x1 = A @ y
            r = two_proportion_test(x1, n1, y.sum() - x1, n0)
            hits[name] += int((r["p_value"] < 0.05).sum())
        s1 = A @ rev
        q1 = A @ (rev**2)
        m1, m0 = s1 / n1, (rev.sum() - s1) / n0
        v1 = (q1 - n1 * m1**2) / (n1 - 1)
        v0 = ((rev**2).sum() - q1 - n0 * m0**2) / (n0 - 1)
        hits["revenue"] += int((welch_test(m1, v1, n1, m0, v0, n0)["p_value"] < 0.05).sum())
    res = {k: v / n_splits for k, v in hits.items()}
    return res


def test_aa_false_positive_rate_fast():
    n = 400
    fpr = _aa_fpr(20_000, n)
    for metric, rate in fpr.items():
        assert abs(rate - 0.05) <= band(0.05, n), f"{metric}: A/A false-positive rate {rate:.3f} over {n} splits"


@pytest.mark.slow
def test_aa_false_positive_rate_full():
    n = 2_000
    fpr = _aa_fpr(100_000, n)
    for metric, rate in fpr.items():
        assert abs(rate - 0.05) <= band(0.05, n), f"{metric}: A/A false-positive rate {rate:.3f} over {n} splits"


# ---------------------------------------------------------------- CI coverage against the twins
def _coverage(n_cohorts: int, n_users: int, action: str = "trial_7d", per_block: int = 50) -> dict[str, float]:
    """Coverage over ``n_cohorts`` independent cohorts of ``n_users`` users, each split 50/50.

    Users are i.i.d. and each user's outcomes depend only on (seed, user id)
    (unbudgeted policies do not couple users), so disjoint blocks of user ids
    of one big simulated population are independent cohorts: a population of
    ``per_block x n_users`` users per seed is simulated once under control and
    once under the blanket policy (the twins), then cut into cohorts.  For each
    cohort the CI of its split is compared with the true lift of the same
    cohort: mean(blanket twin) - mean(control twin) over its users.  (That the
    runner's arm outcomes equal the twin outcomes of its users is checked in
    test_ab_test.py.)
    """
    hits = {"d7": 0, "pay_d30": 0, "net_value": 0}
    done = 0
    seed = 0
    while done < n_cohorts:
        k = min(per_block, n_cohorts - done)
        coh = generate_cohort(SC, k * n_users, seed=seed)
        c = IncentiveModel(SC, coh, ControlPolicy(), seed=seed).run().outcomes()
        t = IncentiveModel(SC, coh, BlanketPolicy(action), seed=seed).run().outcomes()
        for j in range(k):
            sl = slice(j * n_users, (j + 1) * n_users)
            arm = assign_arms(coh.user_ids[sl], [0.5, 0.5], 100_000 + 1_000 * seed + j) == 1
            for name, col in (("d7", "retained_d7"), ("pay_d30", "paid_d30"), ("net_value", "net_value")):
                ct, cc = t[col].to_numpy()[sl], c[col].to_numpy()[sl]
                yt, yc = ct[arm], cc[~arm]
                if name == "net_value":
                    r = welch_test(yt.mean(), yt.var(ddof=1), yt.size, yc.mean(), yc.var(ddof=1), yc.size)
                else:
                    r = two_proportion_test(yt.sum(), yt.size, yc.sum(), yc.size)
                truth = ct.mean() - cc.mean()
                hits[name] += bool(r["ci_low"] <= truth <= r["ci_high"])
        done += k
        seed += 1
    return {k: v / n_cohorts for k, v in hits.items()}


def test_ci_coverage_of_true_lift_fast():
    n = 200
    cov = _coverage(n, 4_000)
    for metric, rate in cov.items():
        assert abs(rate - 0.95) <= band(0.95, n), f"{metric}: 95% CI covered the true lift {rate:.3f} of {n} seeds"


@pytest.mark.slow
def test_ci_coverage_of_true_lift_full():
    n = 500
    cov = _coverage(n, 20_000)
    for metric, rate in cov.items():
        assert abs(rate - 0.95) <= band(0.95, n), f"{metric}: 95% CI covered the true lift {rate:.3f} of {n} seeds"
