"""Statistics of an A/B experiment: tests, confidence intervals, Holm correction, SRM.

Every estimator has a name, a point estimate and an interval:

* binary metrics (retention, first payment): difference of proportions, the
  pooled two-proportion z-test for the p-value (= ``statsmodels``
  ``proportions_ztest``) and the Wald interval (= ``statsmodels``
  ``confint_proportions_2indep(method="wald")``);
* continuous metrics (revenue, cost, net value per user): Welch's t-test and
  interval (= ``scipy.stats.ttest_ind(equal_var=False)``);
* ratios of lifts (cost per incremental D7-retained user, incremental ROI):
  Fieller's interval, which is unbounded when the denominator lift is not
  significantly different from 0 (reported as NaN bounds);
* Holm-corrected p-values across arms x metrics (``statsmodels`` ``multipletests``);
* the sample-ratio-mismatch chi-square test of the split (``scipy.stats.chisquare``).

The two-sample functions work on sufficient statistics (counts, means,
variances) and broadcast over arrays, so statistical audits over thousands of
re-randomised splits stay cheap; ``tests/test_stats.py`` checks them against
statsmodels/scipy on the same counts to 1e-9.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from experiments.config import METRICS


@dataclass(frozen=True)
class Estimate:
    """One estimator's result: what was estimated, how, the point and its interval."""

    name: str  # e.g. "d7_retention_lift"
    method: str  # e.g. "two-proportion z-test / Wald CI"
    point: float
    ci_low: float
    ci_high: float
    p_value: float = math.nan
    se: float = math.nan

    def as_dict(self) -> dict:
        return asdict(self)


def _check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha: expected a number in (0, 1), got {alpha!r}")
    return float(alpha)


def two_proportion_test(x1, n1, x0, n0, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Difference of proportions x1/n1 - x0/n0 (arrays broadcast).

    Returns ``diff, se, ci_low, ci_high, z, p_value``: p-value of the pooled
    z-test, Wald (unpooled) interval.  A pooled variance of 0 (both arms all 0
    or all 1) gives ``p_value = 1`` and a zero-width interval.
    """
    alpha = _check_alpha(alpha)
    x1, n1, x0, n0 = (np.asarray(v, dtype=np.float64) for v in (x1, n1, x0, n0))
    if np.any(n1 < 1) or np.any(n0 < 1):
        raise ValueError("nobs: each group needs at least 1 observation")
    if np.any((x1 < 0) | (x1 > n1) | (x0 < 0) | (x0 > n0)):
        raise ValueError("count: counts must lie in [0, nobs]")
    p1, p0 = x1 / n1, x0 / n0
    diff = p1 - p0
    pp = (x1 + x0) / (n1 + n0)
    se_pooled = np.sqrt(pp * (1 - pp) * (1 / n1 + 1 / n0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se_pooled > 0, diff / np.where(se_pooled > 0, se_pooled, 1.0), 0.0)
    p = 2 * sps.norm.sf(np.abs(z))
    se = np.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    q = sps.norm.ppf(1 - alpha / 2)
    return {"diff": diff, "se": se, "ci_low": diff - q * se, "ci_high": diff + q * se, "z": z, "p_value": p}


def welch_test(mean1, var1, n1, mean0, var0, n0, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Welch's t-test of mean1 - mean0 from means, sample variances (ddof=1) and sizes (arrays broadcast).

    Returns ``diff, se, ci_low, ci_high, t, df, p_value``.  Zero variance in
    both groups gives ``p_value = 1`` if the means are equal, else 0.
    """
    alpha = _check_alpha(alpha)
    m1, v1, n1, m0, v0, n0 = (np.asarray(v, dtype=np.float64) for v in (mean1, var1, n1, mean0, var0, n0))
    if np.any(n1 < 2) or np.any(n0 < 2):
        raise ValueError("nobs: Welch's test needs at least 2 observations per group")
    a, b = v1 / n1, v0 / n0
    se = np.sqrt(a + b)
    diff = m1 - m0
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(se > 0, (a + b) ** 2 / (a**2 / (n1 - 1) + b**2 / (n0 - 1)), 1.0)
        t = np.where(se > 0, diff / np.where(se > 0, se, 1.0), np.where(diff == 0, 0.0, np.inf))
    p = 2 * sps.t.sf(np.abs(t), df)
    q = sps.t.ppf(1 - alpha / 2, df)
    return {"diff": diff, "se": se, "ci_low": diff - q * se, "ci_high": diff + q * se, "t": t, "df": df, "p_value": p}


def fieller_ratio(num, den, var_num, var_den, cov, alpha: float = 0.05) -> tuple[float, float, float]:
    """Point and Fieller interval of ``num / den`` for (approximately) normal estimates.

    Returns ``(ratio, low, high)``; bounds are NaN when the interval is
    unbounded (``den`` not significantly different from 0 at ``alpha``).
    """
    alpha = _check_alpha(alpha)
    z2 = sps.norm.ppf(1 - alpha / 2) ** 2
    point = num / den if den != 0 else math.nan
    A = den * den - z2 * var_den
    B = num * den - z2 * cov
    C = num * num - z2 * var_num
    disc = B * B - A * C
    if A <= 0 or disc < 0:
        return point, math.nan, math.nan
    r = math.sqrt(disc)
    return point, (B - r) / A, (B + r) / A


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values (statsmodels ``multipletests``); NaNs pass through."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def srm_test(counts, shares, threshold: float = 0.001) -> dict:
    """Sample-ratio-mismatch chi-square test of observed arm sizes against the planned shares."""
    counts = np.asarray(counts, dtype=np.float64)
    shares = np.asarray(shares, dtype=np.float64)
    if counts.shape != shares.shape or counts.ndim != 1 or counts.size < 2:
        raise ValueError(
            f"counts/shares: expected two 1-D arrays of the same length >= 2, got {counts.shape}, {shares.shape}"
        )
    if not math.isclose(shares.sum(), 1.0, abs_tol=1e-9):
        raise ValueError(f"shares: must sum to 1, got {shares.sum():.6g}")
    keep = shares > 0
    expected = counts.sum() * shares[keep]
    chi2, p = sps.chisquare(counts[keep], expected)
    return {"chi2": float(chi2), "p_value": float(p), "mismatch": bool(p < threshold), "threshold": threshold,
            "observed": counts.astype(int).tolist(), "expected": (counts.sum() * shares).tolist()}


# ----------------------------------------------------------------------
@dataclass
class ArmMoments:
    """Sufficient statistics of one arm's per-user outcomes."""

    n: int
    mean: dict[str, float]
    var: dict[str, float]
    cov: dict[tuple[str, str], float]

    @classmethod
    def from_frame(cls, df: pd.DataFrame, pairs=(("cost", "retained_d7"), ("net_value", "cost"))) -> ArmMoments:
        n = len(df)
        cols = sorted({c for c, _ in METRICS.values() if c in df} | {c for p in pairs for c in p if c in df})
        X = df[cols].to_numpy(dtype=np.float64)
        mean = X.mean(axis=0)
        var = X.var(axis=0, ddof=1) if n > 1 else np.zeros(len(cols))
        cv = {}
        for a, b in pairs:
            if a in df and b in df and n > 1:
                ia, ib = cols.index(a), cols.index(b)
                cv[(a, b)] = float(((X[:, ia] - mean[ia]) * (X[:, ib] - mean[ib])).sum() / (n - 1))
        return cls(n, dict(zip(cols, mean.tolist())), dict(zip(cols, var.tolist())), cv)


def lift_estimate(metric: str, arm: ArmMoments, ctrl: ArmMoments, alpha: float = 0.05) -> Estimate:
    """Absolute lift of ``metric`` (a key of :data:`METRICS`) of an arm over control, with the right test."""
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {list(METRICS)}, got {metric!r}")
    col, kind = METRICS[metric]
    if kind == "binary":
        r = two_proportion_test(round(arm.mean[col] * arm.n), arm.n, round(ctrl.mean[col] * ctrl.n), ctrl.n, alpha)
        method = "two-proportion z-test (pooled), Wald CI"
    else:
        r = welch_test(arm.mean[col], arm.var[col], arm.n, ctrl.mean[col], ctrl.var[col], ctrl.n, alpha)
        method = "Welch t-test and CI"
    return Estimate(f"{metric}_lift", method, float(r["diff"]), float(r["ci_low"]), float(r["ci_high"]),
                    float(r["p_value"]), float(r["se"]))


def _delta(arm: ArmMoments, ctrl: ArmMoments, a: str, b: str):
    da = arm.mean[a] - ctrl.mean[a]
    db = arm.mean[b] - ctrl.mean[b]
    va = arm.var[a] / arm.n + ctrl.var[a] / ctrl.n
    vb = arm.var[b] / arm.n + ctrl.var[b] / ctrl.n
    c = arm.cov.get((a, b), 0.0) / arm.n + ctrl.cov.get((a, b), 0.0) / ctrl.n
    return da, db, va, vb, c


def cost_per_incremental_d7(arm: ArmMoments, ctrl: ArmMoments, alpha: float = 0.05) -> Estimate:
    """Incremental subsidy cost per incremental D7-retained user: (cost lift) / (D7 lift), Fieller CI.

    ``inf`` when the arm retains no more users than control.
    """
    dc, dr, vc, vr, c = _delta(arm, ctrl, "cost", "retained_d7")
    point, lo, hi = fieller_ratio(dc, dr, vc, vr, c, alpha)
    if dr <= 0:
        point, lo, hi = math.inf, math.nan, math.nan
    return Estimate("cost_per_incremental_d7_user", "ratio of lifts, Fieller CI", point, lo, hi)


def incremental_roi(arm: ArmMoments, ctrl: ArmMoments, alpha: float = 0.05) -> Estimate:
    """(incremental revenue - incremental cost) / incremental cost, Fieller CI (NaN without extra cost)."""
    dn, dc, vn, vc, c = _delta(arm, ctrl, "net_value", "cost")
    if dc <= 0:
        return Estimate("incremental_roi", "ratio of lifts, Fieller CI", math.nan, math.nan, math.nan)
    point, lo, hi = fieller_ratio(dn, dc, vn, vc, c, alpha)
    return Estimate("incremental_roi", "ratio of lifts, Fieller CI", point, lo, hi)


def compare_to_control(
    moments: dict[str, ArmMoments], control: str, metrics: list[str], alpha: float = 0.05
) -> pd.DataFrame:
    """Long table of every estimator of every non-control arm, with Holm p-values across arms x metrics."""
    if control not in moments:
        raise ValueError(f"control: no arm named {control!r}; arms are {list(moments)}")
    rows = []
    ctrl = moments[control]
    for arm, m in moments.items():
        if arm == control:
            continue
        for metric in metrics:
            e = lift_estimate(metric, m, ctrl, alpha)
            base = ctrl.mean[METRICS[metric][0]]
            rel = e.point / base if base != 0 else math.nan
            rows.append({"arm": arm, "metric": metric, **e.as_dict(), "relative_lift": rel, "tested": True})
        for e in (cost_per_incremental_d7(m, ctrl, alpha), incremental_roi(m, ctrl, alpha)):
            rows.append({"arm": arm, "metric": e.name, **e.as_dict(), "relative_lift": math.nan, "tested": False})
    df = pd.DataFrame(rows)
    if len(df):
        df["p_value_holm"] = np.nan
        t = df["tested"].to_numpy(dtype=bool)
        df.loc[t, "p_value_holm"] = holm(df.loc[t, "p_value"].to_numpy())
    return df
