"""Model quality against the truth, for the uplift and LTV policies (evaluation code only).

This module READS THE TRUTH: the realised twins of the evaluation cohort
(``ctx.truth``), expected individual effects from fresh-luck replications
(:func:`sim.twins.static_action_outcomes` with ``replications=R``) and the
whole-cohort twins of the policy, control and oracle arms.  Only
``report(ctx)`` calls it, after a run; ``fit``/``act`` never do.

Uplift metrics (multi-treatment: each user is scored by the predicted effect
of the action the model rates best for them):

* ``observed_*``: AUUC and Qini the way a team computes them on a randomised
  evaluation cohort: each evaluation user is assigned one catalogue action
  uniformly at random (seeded) and we observe that action's realised outcome
  (its twin); users assigned their recommended action are "treated", users
  assigned none are "control".  Curves follow causalml's ``get_cumgain`` /
  ``get_qini`` definitions exactly (vectorised for the bootstrap; a test
  checks them point for point against causalml).
* ``true_*``: the same curves with each user's true effect of the recommended
  action (expected effect over fresh luck, and the realised twin effect).
  The true Qini is the area between the model's curve and a random ranking's
  (causalml's definition), so "the AUUC beats random" is "the Qini's
  half-sample bootstrap CI excludes 0"; normalised AUUC = Qini + 0.5 when the
  total effect is positive.
* Spearman rank correlation (scipy) and PEHE (causalml) of predicted against
  true expected effects, per action.
* The true value of the allocation from the twins (D7 lift, first-pay lift,
  net value, cost) and its regret against the oracle at the same budget.

LTV metrics: R2 and MAE (scikit-learn) of predicted against realised D30
revenue without incentive, a decile calibration table and plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.atomic import save_figure

METRIC_LABELS = {"retained_d7": "D7 retention", "paid_d30": "first payment by D30", "net_value": "net value"}


# ---------------------------------------------------------------------------- helpers
def recommended_actions(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each user's best action (>= 1) by value and its value over none: ``(action, score)``."""
    v = np.asarray(values, dtype=np.float64)
    best = np.argmax(v[:, 1:], axis=1) + 1
    return best, v[np.arange(v.shape[0]), best] - v[:, 0]


def expected_truth(scenario, cohort, seed: int, replications: int):
    """Expected outcomes of every day-1 action (fresh-luck replications 1..R).  Reads the truth."""
    from sim.twins import static_action_outcomes

    return static_action_outcomes(scenario, cohort, seed=seed, replications=int(replications))


# ---------------------------------------------------------------------------- uplift curves
def _fill_like_causalml(curve: np.ndarray) -> np.ndarray:
    """causalml sets the curve at depth 0 to 0 and linearly interpolates undefined (0/0) points."""
    c = np.concatenate([[0.0], curve])
    ok = np.isfinite(c)
    if not ok.all():
        x = np.arange(c.shape[0])
        c = np.interp(x, x[ok], c[ok])
    return c


def _curves(score: np.ndarray, y: np.ndarray, w: np.ndarray | None, tau: np.ndarray | None):
    """Gain and Qini curves (depth 0..n) with causalml's definitions (``get_cumgain`` / ``get_qini``).

    With ``tau`` (known effects) both curves are the cumulative sum of ``tau``
    down the ranking; otherwise they come from outcomes ``y`` and treatment
    flags ``w``.  Vectorised so that the bootstrap stays fast; tests check
    equality with causalml's own functions.
    """
    order = np.argsort(-score, kind="stable")
    if tau is not None:
        g = np.concatenate([[0.0], np.cumsum(tau[order])])
        return g, g
    yy, ww = y[order], w[order].astype(np.float64)
    k = np.arange(1, yy.shape[0] + 1, dtype=np.float64)
    n_t = np.cumsum(ww)
    n_c = k - n_t
    y_t = np.cumsum(yy * ww)
    y_c = np.cumsum(yy * (1.0 - ww))
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = y_t / n_t - y_c / n_c
        qini = y_t - y_c * n_t / n_c
    lift = _fill_like_causalml(np.where(np.isfinite(lift), lift, np.nan))
    qini = _fill_like_causalml(np.where(np.isfinite(qini), qini, np.nan))
    return lift * np.arange(lift.shape[0]), qini


def _curve_areas(score, y=None, w=None, tau=None) -> tuple[float, float]:
    """(AUUC, Qini) per cohort user of one ranking (curves not normalised).

    AUUC = mean over depths 0..n of the gain curve divided by n; Qini = the
    same for the Qini curve minus the straight line of a random ranking to the
    same end point (causalml's ``qini_score`` before normalisation).
    """
    gain, qini = _curves(score, y, w, tau)
    n = gain.shape[0] - 1
    rand = np.linspace(0.0, qini[-1], qini.shape[0])
    return float(gain.mean() / n), float((qini - rand).mean() / n)


def _bootstrap_areas(score, *, y=None, w=None, tau=None, n_bootstrap: int = 200, seed: int = 0,
                     alpha: float = 0.05) -> dict[str, float]:
    """Point estimates and percentile-bootstrap CIs (users resampled with replacement) of :func:`_curve_areas`.

    The scores are per cohort user, so resamples of the full size are on the
    same scale as the point estimate (causalml's own ``return_ci`` normalises
    by the total effect, which is unstable when that total is small).
    """
    def pick(a, i):
        return None if a is None else a[i]

    auuc, qini = _curve_areas(score, y, w, tau)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 31_337]))
    n = score.shape[0]
    boots = np.empty((int(n_bootstrap), 2))
    for b in range(int(n_bootstrap)):
        i = rng.integers(0, n, size=n)
        boots[b] = _curve_areas(score[i], pick(y, i), pick(w, i), pick(tau, i))
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2], axis=0)
    se = boots.std(axis=0, ddof=1)
    p = 2 * min((boots[:, 1] <= 0).mean(), (boots[:, 1] >= 0).mean())
    return {"auuc": auuc, "auuc_se": float(se[0]), "auuc_ci_low": float(lo[0]), "auuc_ci_high": float(hi[0]),
            "qini": qini, "qini_se": float(se[1]), "qini_ci_low": float(lo[1]), "qini_ci_high": float(hi[1]),
            "qini_p_value": float(max(p, 1.0 / n_bootstrap))}


def true_uplift_scores(score: np.ndarray, tau: np.ndarray, *, n_bootstrap: int = 200, seed: int = 0,
                       alpha: float = 0.05) -> dict[str, float]:
    """AUUC and Qini (per user) of a ranking scored with known individual effects ``tau``.

    ``auuc``: mean cumulative true effect per cohort user over targeting
    depths (causalml gain curve with ``treatment_effect_col``); a random
    ranking scores ``auuc_random`` = half the total effect per user.
    ``qini`` = ``auuc - auuc_random`` (the area over random); the ranking
    beats random when the bootstrap CI of ``qini`` excludes 0.
    """
    score = np.asarray(score, dtype=np.float64)
    tau = np.asarray(tau, dtype=np.float64)
    out = _bootstrap_areas(score, tau=tau, n_bootstrap=n_bootstrap, seed=seed, alpha=alpha)
    out["auuc_random"] = out["auuc"] - out["qini"]
    out["total_effect_per_user"] = float(tau.mean())
    return out


def randomised_assignment(n: int, n_actions: int, seed: int) -> np.ndarray:
    """A uniform random day-1 action per user (the evaluation holdout a team would run)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 4_711])).integers(0, n_actions, size=n)


def observed_uplift_scores(score: np.ndarray, recommended: np.ndarray, outcomes: np.ndarray, *, seed: int = 0,
                           n_bootstrap: int = 200, alpha: float = 0.05) -> dict[str, float]:
    """AUUC and Qini (per user) from observed outcomes of a randomised evaluation cohort.

    ``outcomes`` is the (n, K) realised outcome of each user under each action;
    each user is assigned one action at random and only that outcome is seen.
    Treated = assigned the model's recommended action, control = assigned none;
    causalml's gain and Qini curves from outcomes and treatment flags.
    """
    outcomes = np.asarray(outcomes, dtype=np.float64)
    n, K = outcomes.shape
    assigned = randomised_assignment(n, K, seed)
    y_obs = outcomes[np.arange(n), assigned]
    keep = (assigned == 0) | (assigned == recommended)
    out = _bootstrap_areas(np.asarray(score, dtype=np.float64)[keep], y=y_obs[keep],
                           w=(assigned[keep] != 0).astype(np.int64), n_bootstrap=n_bootstrap, seed=seed, alpha=alpha)
    out["users"] = int(keep.sum())
    return out


def effect_accuracy(pred: np.ndarray, true: np.ndarray, action_names: list[str]) -> pd.DataFrame:
    """Per action: Spearman rank correlation (scipy) and root PEHE (causalml) of predicted vs true effects."""
    from causalml.metrics import pehe
    from scipy.stats import spearmanr

    rows = []
    for k in range(1, pred.shape[1]):
        p, t = pred[:, k], true[:, k]
        rho = spearmanr(p, t).statistic if np.std(p) > 0 and np.std(t) > 0 else float("nan")
        rows.append({"action": action_names[k], "spearman": float(rho), "root_pehe": pehe(t, p, squared=False),
                     "mean_pred": float(p.mean()), "mean_true": float(t.mean())})
    return pd.DataFrame(rows)


def gain_curves(scores: dict[str, tuple[np.ndarray, np.ndarray]], n_points: int = 201) -> pd.DataFrame:
    """Cumulative true gain (per cohort user) against the share targeted, for each (score, tau) ranking."""
    from causalml.metrics import get_cumgain

    frac = np.linspace(0.0, 1.0, n_points)
    out = {"share_targeted": frac}
    for name, (score, tau) in scores.items():
        n = len(score)
        g = get_cumgain(pd.DataFrame({"model": score, "tau": tau}), treatment_effect_col="tau")["model"].to_numpy()
        out[name] = g[np.minimum((frac * n).round().astype(int), n)] / n
    total = next(iter(scores.values()))[1]
    out[f"random (same actions as {next(iter(scores))})"] = frac * float(np.sum(total)) / len(total)
    return pd.DataFrame(out)


def plot_gain_curves(curves: pd.DataFrame, path: Path, title: str, ylabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for c in curves.columns:
        if c == "share_targeted":
            continue
        ax.plot(curves["share_targeted"], curves[c], label=c, ls="--" if c.startswith("random") else "-")
    ax.set_xlabel("share of users targeted (ranked by score)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    p = save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return p


# ---------------------------------------------------------------------------- allocation value
def allocation_value(policy_twin: pd.DataFrame | None, control_twin: pd.DataFrame | None,
                     oracle_twin: pd.DataFrame | None) -> dict[str, float]:
    """True lifts of the allocation over the whole cohort, and regret against the oracle."""
    if policy_twin is None or control_twin is None:
        return {}
    out = {}
    for m in ("retained_d7", "paid_d30", "net_value", "revenue"):
        if m in policy_twin and m in control_twin:
            out[f"true_{m}_lift"] = float(policy_twin[m].mean() - control_twin[m].mean())
    out["true_cost_per_user"] = float(policy_twin["cost"].mean())
    out["true_incremental_d7_users"] = float(policy_twin["retained_d7"].sum() - control_twin["retained_d7"].sum())
    if oracle_twin is not None:
        inc_o = float(oracle_twin["retained_d7"].sum() - control_twin["retained_d7"].sum())
        out["oracle_incremental_d7_users"] = inc_o
        out["oracle_cost_per_user"] = float(oracle_twin["cost"].mean())
        out["share_of_oracle_d7"] = out["true_incremental_d7_users"] / inc_o if inc_o > 0 else float("nan")
        out["regret_d7_users"] = inc_o - out["true_incremental_d7_users"]
        for m in ("paid_d30", "net_value"):
            if m in oracle_twin:
                out[f"regret_{m}_per_user"] = float(oracle_twin[m].mean() - policy_twin[m].mean())
    return out


def allocation_from_truth(actions: np.ndarray, truth, metric: str) -> float:
    """Mean outcome of a static allocation read off the realised twins (no simulation needed)."""
    y = truth.outcomes[metric]
    return float(y[np.arange(len(actions)), actions].mean())


# ---------------------------------------------------------------------------- LTV
def ltv_quality(pred: np.ndarray, actual: np.ndarray, n_bins: int = 10) -> tuple[dict[str, float], pd.DataFrame]:
    """R2, MAE (scikit-learn) and a calibration table by decile of predicted LTV."""
    from sklearn.metrics import mean_absolute_error, r2_score

    pred = np.asarray(pred, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    dec = pd.qcut(pd.Series(pred).rank(method="first"), n_bins, labels=False)
    tab = (pd.DataFrame({"decile": dec + 1, "predicted": pred, "actual": actual})
           .groupby("decile").agg(users=("actual", "size"), mean_predicted=("predicted", "mean"),
                                   mean_actual=("actual", "mean")).reset_index())
    tab["ratio"] = tab["mean_actual"] / tab["mean_predicted"].where(tab["mean_predicted"] != 0)
    metrics = {"r2": float(r2_score(actual, pred)), "mae": float(mean_absolute_error(actual, pred)),
               "mean_actual": float(actual.mean()), "mean_predicted": float(pred.mean())}
    return metrics, tab


def plot_calibration(tab: pd.DataFrame, path: Path, title: str = "LTV calibration by decile") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(tab["mean_predicted"], tab["mean_actual"], "o-", label="deciles")
    hi = float(max(tab["mean_predicted"].max(), tab["mean_actual"].max()))
    ax.plot([0, hi], [0, hi], "k--", lw=1, label="perfect")
    ax.set_xlabel("mean predicted D30 revenue (yuan)")
    ax.set_ylabel("mean realised D30 revenue (yuan)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    p = save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return p


# ---------------------------------------------------------------------------- reports
def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def uplift_quality(policy, scenario, cohort, seed: int, truth, expected, *, n_bootstrap: int = 200,
                   out_dir: Path | None = None, prefix: str = "uplift") -> dict[str, Any]:
    """Uplift model quality on an evaluation cohort against realised (``truth``) and expected effects."""
    feats = cohort.features()
    metric = policy.metrics_[0] if policy.objective != "mix" else None
    values = policy.values(feats)
    rec, score = recommended_actions(values)
    names = list(truth.catalogue.names)
    metrics: dict[str, float] = {}
    md = []
    figures = []
    eval_metrics = [metric] if metric else list(policy.metrics_)
    preds = policy.predict_effects(feats)
    for m in eval_metrics:
        e_true = expected.effects(m)
        r_true = truth.effects(m)
        idx = np.arange(len(rec))
        # for a mix objective, rank by the combined value but score each metric's own effect
        t_exp = true_uplift_scores(score, e_true[idx, rec], n_bootstrap=n_bootstrap, seed=seed)
        t_real = true_uplift_scores(score, r_true[idx, rec], n_bootstrap=n_bootstrap, seed=seed)
        obs = observed_uplift_scores(score, rec, truth.outcomes[m], seed=seed, n_bootstrap=n_bootstrap)
        acc = effect_accuracy(preds[m], e_true, names)
        orc_rec, orc_score = recommended_actions(e_true)
        curves = gain_curves({"model": (score, e_true[idx, rec]), "oracle": (orc_score, e_true[idx, orc_rec])})
        for k, v in t_exp.items():
            metrics[f"{m}_true_{k}"] = v
        for k in ("auuc", "auuc_random", "qini", "qini_ci_low", "qini_ci_high"):
            metrics[f"{m}_realised_{k}"] = t_real[k]
        for k, v in obs.items():
            metrics[f"{m}_observed_{k}"] = v
        metrics[f"{m}_spearman_mean"] = float(acc["spearman"].mean())
        metrics[f"{m}_root_pehe_mean"] = float(acc["root_pehe"].mean())
        metrics[f"{m}_true_auuc_beats_random"] = float(t_exp["qini_ci_low"] > 0)
        label = METRIC_LABELS.get(m, m)
        md += [
            f"**{label}** (ranking: predicted effect of each user's best action)",
            "",
            "| measure (per cohort user) | estimate | 95% CI | random ranking |",
            "|---|---|---|---|",
            f"| true AUUC, expected effects | {t_exp['auuc']:.5f} | "
            f"[{t_exp['auuc_ci_low']:.5f}, {t_exp['auuc_ci_high']:.5f}] | {t_exp['auuc_random']:.5f} |",
            f"| true Qini (AUUC over random), expected effects | {t_exp['qini']:.5f} | "
            f"[{t_exp['qini_ci_low']:.5f}, {t_exp['qini_ci_high']:.5f}] | 0 |",
            f"| true AUUC, realised twin effects | {t_real['auuc']:.5f} | "
            f"[{t_real['auuc_ci_low']:.5f}, {t_real['auuc_ci_high']:.5f}] | {t_real['auuc_random']:.5f} |",
            f"| true Qini, realised twin effects | {t_real['qini']:.5f} | "
            f"[{t_real['qini_ci_low']:.5f}, {t_real['qini_ci_high']:.5f}] | 0 |",
            f"| observed AUUC, randomised holdout ({obs['users']:,} users) | {obs['auuc']:.5f} | "
            f"[{obs['auuc_ci_low']:.5f}, {obs['auuc_ci_high']:.5f}] | |",
            f"| observed Qini, randomised holdout | {obs['qini']:.5f} | "
            f"[{obs['qini_ci_low']:.5f}, {obs['qini_ci_high']:.5f}] | 0 |",
            "",
            "Per-action accuracy against the true expected effects:",
            "",
            _md_table(acc),
            "",
        ]
        if out_dir is not None:
            figures.append(str(plot_gain_curves(
                curves, Path(out_dir) / f"{prefix}_{m}_uplift_curve.png",
                f"{policy.name}: true {label} gain by ranking", f"cumulative true {label} effect per cohort user")))
    return {"metrics": metrics, "markdown": "\n".join(md), "figures": figures}


def uplift_report(policy, ctx) -> dict[str, Any]:
    """``report(ctx)`` of the uplift policy: model quality and allocation value against the truth."""
    if ctx.truth is None:
        return {"metrics": {}, "markdown": "_No twins available: model quality not computed._", "figures": []}
    expected = expected_truth(ctx.scenario, ctx.cohort, ctx.seed, policy.eval_replications)
    q = uplift_quality(policy, ctx.scenario, ctx.cohort, ctx.seed, ctx.truth, expected, n_bootstrap=100,
                       out_dir=Path(ctx.out_dir) if ctx.out_dir is not None else None, prefix=policy.name)
    val = allocation_value(ctx.policy_twin, ctx.control_twin, ctx.oracle_twin)
    md = [f"### {policy.name} ({policy.mode}): uplift model quality against the truth", "",
          f"Learner `{policy.learner}` ({policy.base_learner}), objective `{policy.objective}`, mode `{policy.mode}`, "
          f"fit on {policy.n_logged_:,} logged users.", "", q["markdown"]]
    if val:
        md += ["**Allocation value from the twins (whole cohort, same budget per user)**", "",
               "| measure | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in val.items()] + [""]
    return {"metrics": {**q["metrics"], **val}, "markdown": "\n".join(md), "figures": q["figures"]}


def ltv_report(policy, ctx) -> dict[str, Any]:
    """``report(ctx)`` of the LTV policy: R2, MAE, decile calibration, segment plan, allocation value."""
    feats = ctx.cohort.features()
    pred = policy.predict_ltv(feats)
    if ctx.truth is not None:
        actual = ctx.truth.outcomes[policy.target if policy.target in ctx.truth.outcomes else "revenue"][:, 0]
        src = "realised twins under none"
    elif ctx.control_twin is not None:
        actual = ctx.control_twin[policy.target].to_numpy()
        src = "control twin"
    else:
        return {"metrics": {}, "markdown": "_No twins available: LTV quality not computed._", "figures": []}
    m, tab = ltv_quality(pred, actual)
    figures = []
    if ctx.out_dir is not None:
        figures.append(str(plot_calibration(tab, Path(ctx.out_dir) / f"{policy.name}_ltv_calibration.png")))
    plan = policy.segment_plan(ctx.truth.catalogue.commit_costs if ctx.truth is not None else
                               np.zeros(policy.n_actions_))
    val = allocation_value(ctx.policy_twin, ctx.control_twin, ctx.oracle_twin)
    md = [f"### {policy.name}: LTV model quality against the truth", "",
          f"D30 revenue of the whole evaluation cohort ({src}): R2 = {m['r2']:.3f}, MAE = {m['mae']:.3f} yuan "
          f"(mean {m['mean_actual']:.3f}, predicted {m['mean_predicted']:.3f}).", "",
          "Decile calibration:", "", _md_table(tab), "",
          f"Segment plan (objective `{policy.objective}`, returns per user from the logs' randomised arms):", "",
          _md_table(plan), ""]
    if val:
        md += ["**Allocation value from the twins (whole cohort, same budget per user)**", "",
               "| measure | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in val.items()] + [""]
    metrics = {f"ltv_{k}": v for k, v in m.items()}
    return {"metrics": {**metrics, **val}, "markdown": "\n".join(md), "figures": figures}
