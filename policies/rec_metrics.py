"""Metrics of the two-tower recommender: classification quality on held-out logs, true value from twins.

Held-out logs (rows of the exploration experiment never used to train or to
stop training) give the *prediction* metrics of each head: ROC-AUC, PR-AUC,
a calibration table, and precision / recall / F1 / accuracy at an operating
threshold chosen on the validation split, never on the held-out rows:

* ``"f1"``: the threshold that maximises F1 on the validation split;
* ``"base_rate"``: the threshold that flags as many validation users as
  there are positives (predicted-positive share = base rate).

Accuracy is printed beside the base rate and the accuracy of the trivial
classifier that says "no" to everyone (``1 - base rate``): with a 2% base rate
that trivial classifier is 98% accurate and finds nobody, so accuracy says
nothing about a model of rare outcomes; recall, precision and PR-AUC do.

The *value* metrics come from counterfactual twins (evaluation code, reads
the simulator's truth): a policy's true lift is its twin's mean outcome minus
the control twin's, on the same users with the same luck.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from sim.atomic import save_figure

THRESHOLD_RULES = ("f1", "base_rate")


def _binary(y: Any, p: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.ndim != 1 or y.shape != p.shape or y.size == 0:
        raise ValueError(f"{what}: expected equal-length, non-empty 1-D labels and scores, got {y.shape} and {p.shape}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{what}: labels must be 0/1")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{what}: scores must be finite")
    return y, p


def choose_threshold(y_val: Any, p_val: Any, rule: str = "f1") -> float:
    """Operating threshold chosen on the validation split (see module docstring)."""
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold_rule: expected one of {list(THRESHOLD_RULES)}, got {rule!r}")
    y, p = _binary(y_val, p_val, "validation split")
    if y.sum() == 0:
        return 1.0
    if rule == "base_rate":
        k = int(round(y.sum()))
        return float(np.sort(p)[::-1][k - 1])
    prec, rec, thr = precision_recall_curve(y, p)
    f1 = np.where(prec[:-1] + rec[:-1] > 0, 2 * prec[:-1] * rec[:-1] / np.maximum(prec[:-1] + rec[:-1], 1e-300), 0.0)
    return float(thr[int(np.argmax(f1))])


def classification_metrics(y: Any, p: Any, threshold: float) -> dict[str, float]:
    """ROC-AUC, PR-AUC and threshold metrics, with the base rate and the trivial classifier's accuracy."""
    y, p = _binary(y, p, "held-out split")
    base = float(y.mean())
    pred = p >= threshold
    tp = float((pred & (y == 1)).sum())
    fp = float((pred & (y == 0)).sum())
    fn = float((~pred & (y == 1)).sum())
    tn = float((~pred & (y == 0)).sum())
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    both = 0 < base < 1
    pred05 = p >= 0.5
    return {
        "n": float(y.size),
        "base_rate": base,
        "mean_predicted": float(p.mean()),
        "roc_auc": float(roc_auc_score(y, p)) if both else math.nan,
        "pr_auc": float(average_precision_score(y, p)) if both else math.nan,
        "threshold": float(threshold),
        "flagged_share": float(pred.mean()),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0,
        "accuracy": (tp + tn) / y.size,
        "accuracy_at_0.5": float((pred05 == (y == 1)).mean()),
        "recall_at_0.5": float((pred05 & (y == 1)).sum() / max(1.0, y.sum())),
        "accuracy_all_negative": 1.0 - base,
        "brier": float(np.mean((p - y) ** 2)),
    }


def calibration_table(y: Any, p: Any, n_bins: int = 10) -> pd.DataFrame:
    """Observed rate against mean prediction in quantile bins of the prediction (with binomial SEs)."""
    y, p = _binary(y, p, "calibration")
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins: expected a positive integer, got {n_bins!r}")
    bins = pd.qcut(pd.Series(p).rank(method="first"), q=min(n_bins, y.size), labels=False)
    df = pd.DataFrame({"bin": bins.to_numpy(), "y": y, "p": p})
    g = df.groupby("bin")
    t = pd.DataFrame({
        "n": g.size(),
        "p_low": g["p"].min(),
        "p_high": g["p"].max(),
        "mean_predicted": g["p"].mean(),
        "observed": g["y"].mean(),
    })
    t["observed_se"] = np.sqrt(t["observed"] * (1 - t["observed"]) / t["n"])
    t.index.name = "bin"
    return t.reset_index()


def expected_calibration_error(table: pd.DataFrame) -> float:
    return float((table["n"] * (table["observed"] - table["mean_predicted"]).abs()).sum() / table["n"].sum())


def ips_lift(target_actions: Any, logged_actions: Any, propensity: Any, y: Any) -> dict[str, float]:
    """Inverse-propensity estimate, on randomised logs, of a policy's lift over "none" (and its SE).

    Each logged user contributes ``1[a = pi(x)] y / p - 1[a = none] y / p0``.
    Honest (unbiased under the logging design) but noisy: only the users whose
    logged action matches the policy's count.
    """
    pi = np.asarray(target_actions, dtype=np.int64)
    a = np.asarray(logged_actions, dtype=np.int64)
    prop = np.asarray(propensity, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if not (pi.shape == a.shape == prop.shape == y.shape) or pi.ndim != 1 or pi.size == 0:
        raise ValueError("ips_lift: expected equal-length 1-D target actions, logged actions, propensities, outcomes")
    term = ((a == pi) * y - (a == 0) * y) / prop
    se = float(term.std(ddof=1) / math.sqrt(term.size)) if term.size > 1 else math.nan
    return {"lift": float(term.mean()), "se": se}


def twin_value(policy: pd.DataFrame, control: pd.DataFrame) -> dict[str, float]:
    """True value of a policy on a cohort from its twin and the control twin (same users, same luck).

    Lifts are per user; ``incremental_d7_users`` and ``incremental_payers``
    are totals; ``incremental_d7_per_yuan`` divides by the realised cost.
    Standard errors are of the paired per-user differences.
    """
    if len(policy) != len(control) or not np.array_equal(policy.index.to_numpy(), control.index.to_numpy()):
        raise ValueError("twin_value: policy and control twins must cover the same users in the same order")
    n = len(policy)
    out: dict[str, float] = {"users": float(n)}
    for col, name in (("retained_d7", "d7"), ("paid_d30", "paid_d30"), ("net_value", "net_value"),
                      ("revenue", "revenue"), ("retained_d30", "d30")):
        d = policy[col].to_numpy(np.float64) - control[col].to_numpy(np.float64)
        out[f"{name}_lift"] = float(d.mean())
        out[f"{name}_lift_se"] = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    cost = float(policy["cost"].sum())
    out["cost_per_user"] = cost / n
    out["incremental_d7_users"] = out["d7_lift"] * n
    out["incremental_payers"] = out["paid_d30_lift"] * n
    out["incremental_d7_per_yuan"] = out["incremental_d7_users"] / cost if cost > 0 else math.nan
    out["incremental_d7_per_yuan_se"] = out["d7_lift_se"] * n / cost if cost > 0 else math.nan
    return out


def static_value(truth, actions: np.ndarray, metric: str = "retained_d7") -> float:
    """Total incremental ``metric`` of a static allocation from realised twins of every action."""
    y = truth.outcomes[metric]
    a = np.asarray(actions, dtype=np.int64)
    return float((y[np.arange(a.size), a] - y[:, 0]).sum())


# ----------------------------------------------------------------------------------------------
# figures (matplotlib, Agg backend; written atomically)
# ----------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def calibration_figure(tables: dict[str, pd.DataFrame], path: str | Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, len(tables), figsize=(4.6 * len(tables), 4.2), squeeze=False)
    for ax, (name, t) in zip(axes[0], tables.items()):
        hi = float(max(t["mean_predicted"].max(), (t["observed"] + 2 * t["observed_se"]).max())) * 1.05
        ax.plot([0, hi], [0, hi], color="grey", lw=1, ls="--", label="perfect calibration")
        ax.errorbar(t["mean_predicted"], t["observed"], yerr=2 * t["observed_se"], fmt="o-", ms=4, capsize=2,
                    label="held-out logs (±2 SE)")
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        ax.set_xlabel("mean predicted probability (decile)")
        ax.set_ylabel("observed rate")
        ax.set_title(f"calibration: {name}")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def pr_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, dict[str, float]]], path: str | Path) -> Path:
    """Precision-recall curves with the operating point and the base rate (a random ranker)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 4.2), squeeze=False)
    for ax, (name, (y, p, m)) in zip(axes[0], curves.items()):
        prec, rec, _ = precision_recall_curve(y, p)
        ax.plot(rec, prec, label=f"PR-AUC {m['pr_auc']:.3f}")
        ax.axhline(m["base_rate"], color="grey", ls="--", lw=1, label=f"base rate {m['base_rate']:.3f}")
        ax.plot([m["recall"]], [m["precision"]], "o", color="C3",
                label=f"threshold {m['threshold']:.3f}: P {m['precision']:.2f}, R {m['recall']:.2f}")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_ylim(0, 1)
        ax.set_title(f"precision-recall: {name}\n"
                     f"accuracy {m['accuracy']:.3f} vs all-'no' {m['accuracy_all_negative']:.3f}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def modes_figure(values: dict[str, dict[str, float]], composition: pd.DataFrame, path: str | Path,
                 blanket: dict[str, float] | None = None) -> Path:
    """Gain vs response mode (and the oracle, blanket arms): value per yuan, lifts, and who gets treated.

    ``values``: arm -> twin_value dict (plus ``treated_share`` and ``treated_control_d7``).
    ``composition``: rows = arm, columns = hidden segment, share of treated users.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    bars = {**{f"blanket {k}": v for k, v in (blanket or {}).items()},
            **{k: v["incremental_d7_per_yuan"] for k, v in values.items()}}
    names = list(bars)
    colours = ["#bbbbbb" if n.startswith("blanket") else ("C2" if "oracle" in n else "C0") for n in names]
    ax.barh(names, [bars[n] for n in names], color=colours)
    ax.set_xlabel("true incremental D7-retained users per yuan")
    ax.set_title("value per yuan (twins)")
    ax = axes[1]
    arms = list(values)
    x = np.arange(len(arms))
    w = 0.38
    ax.bar(x - w / 2, [values[a]["treated_control_d7"] for a in arms], w,
           label="D7 rate of treated users under control\n(would retain anyway)", color="#999999")
    ax.bar(x + w / 2, [values[a]["treated_d7_lift"] for a in arms], w,
           label="true D7 lift among treated users", color="C1")
    ax.set_xticks(x, arms)
    ax.axhline(0, color="black", lw=0.8)
    for j, a in enumerate(arms):
        top = max(values[a]["treated_control_d7"], values[a]["treated_d7_lift"])
        label = f"{values[a]['treated_share']:.0%} treated\n{values[a].get('treated_cost', math.nan):.2f} yuan each"
        ax.annotate(label,
                    (x[j], top), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8)
    ax.set_title("who is treated: sure things or persuadables?")
    ax.legend(fontsize=8)
    ax = axes[2]
    comp = composition.loc[arms]
    bottom = np.zeros(len(arms))
    for j, seg in enumerate(comp.columns):
        ax.bar(arms, comp[seg].to_numpy(), bottom=bottom, label=seg, color=f"C{j}")
        bottom += comp[seg].to_numpy()
    ax.set_ylabel("share of treated users")
    ax.set_title("treated users by hidden segment (truth)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A plain GitHub markdown table (no optional dependency on ``tabulate``); integer columns stay integers."""
    cols = [str(c) for c in df.columns]
    idx_name = df.index.name or ""
    lines = ["| " + " | ".join([idx_name, *cols]) + " |", "|" + "---|" * (len(cols) + 1)]

    def cell(v: Any, integral: bool) -> str:
        if isinstance(v, (float, np.floating)):
            if not math.isfinite(v):
                return "nan"
            return str(int(v)) if integral else format(float(v), floatfmt)
        return str(v)

    integral = {c: pd.api.types.is_integer_dtype(df[c]) or (
        pd.api.types.is_float_dtype(df[c]) and str(c) in ("n", "users") and bool(np.all(np.mod(df[c], 1) == 0)))
        for c in df.columns}
    for i in range(len(df)):
        cells = [cell(df.iloc[i, j], integral[c]) for j, c in enumerate(df.columns)]
        lines.append("| " + " | ".join([str(df.index[i]), *cells]) + " |")
    return "\n".join(lines)
