"""Aggregate a sweep's run files into the comparison table, plots and report.

    python -m experiments.aggregate results/sweeps/budget        # (re)build the outputs of a sweep folder

Reads ``<sweep-dir>/sweep.json`` (the plan) and the run files
``<sweep-dir>/runs/<point-id>.json`` of the plan's points, sorted by point id,
so the outputs do not depend on the backend, the number of workers or the
order in which runs finished.  Writes, atomically:

``runs.csv``
    one row per successful run: the cell (scenario, arm, budget, replicate,
    seed) and its arm's measured and true metrics, next to its control arm's.
``table.csv`` / ``table.md``
    one row per cell (scenario x arm x budget), plus each scenario's control:
    mean and 95% confidence interval across seeds (Student t, ``scipy.stats.t``)
    of measured metrics (the A/B estimate on the arm's users) and true ones (the
    arm's policy and control simulated on the whole cohort with the same draws,
    see ``experiments.ab_test``); cost per incremental D7-retained user as a
    ratio of means; the share of runs whose D7 lift was significant (Holm);
    the arm's rank by true D7 lift among the arms at the same scenario and budget.
``frontier.png``
    budget per user against true incremental D7 retention (mean and CI band)
    for each policy, the oracle (reads the hidden truth: an upper bound) in
    black; uncapped arms as stars at their true cost per user.
``ranks.png``
    each policy's rank by true D7 lift across scenarios (and budgets).
``report.md``
    settings, status of the runs (failed ones with their error), the headline
    table, the plots, and who wins where (with the paired difference's CI).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from experiments.sweep import PLAN_FILE, read_run, run_path
from sim.atomic import write_bytes_atomic

UPPER_BOUND = "upper bound (reads hidden truth)"
# metric -> (markdown header, scale, decimals, signed)
MEASURED = {
    "d7_retention": ("D7 retention %", 100, 2, False),
    "d7_lift": ("D7 lift pp (measured)", 100, 2, True),
    "pay_conv_d30": ("pay D30 %", 100, 2, False),
    "pay_conv_d30_lift": ("pay D30 lift pp (measured)", 100, 2, True),
    "net_value_per_user": ("net value ¥/user", 1, 3, True),
    "net_value_lift": ("net value lift ¥/user (measured)", 1, 3, True),
    "cost_per_user": ("cost ¥/user (measured)", 1, 3, False),
}
TRUE = {
    "true_d7_lift": ("D7 lift pp (true)", 100, 2, True),
    "true_pay_conv_d30_lift": ("pay D30 lift pp (true)", 100, 2, True),
    "true_net_value_lift": ("net value lift ¥/user (true)", 1, 3, True),
    "true_cost_per_user": ("cost ¥/user (true)", 1, 3, False),
}
METRICS = {**MEASURED, **TRUE}
CONTROL_METRICS = ("d7_retention", "pay_conv_d30", "net_value_per_user", "cost_per_user", "true_cost_per_user")
HEADLINE = ("d7_retention", "d7_lift", "true_d7_lift", "true_pay_conv_d30_lift", "true_net_value_lift",
            "cost_per_user", "true_cost_per_user")


# ----------------------------------------------------------------------
def t_interval(values, alpha: float = 0.05) -> tuple[float, float, float, int]:
    """Mean and (1 - alpha) Student-t interval of the mean of finite ``values``: (mean, low, high, n)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan, math.nan, 1
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    if sem == 0.0:
        return mean, mean, mean, n
    lo, hi = stats.t.interval(1.0 - alpha, df=n - 1, loc=mean, scale=sem)
    return mean, float(lo), float(hi), n


def _budget_label(level: Any, budget: float) -> str:
    if math.isinf(budget):
        return "unlimited"
    if level == "scenario":
        return f"{budget:g} (scenario default)"
    return f"{budget:g}"


def load_plan(sweep_dir: str | Path) -> dict[str, Any]:
    p = Path(sweep_dir) / PLAN_FILE
    if not p.exists():
        raise FileNotFoundError(f"{sweep_dir}: no {PLAN_FILE}; is this a sweep folder (results/sweeps/<name>)?")
    return json.loads(p.read_text(encoding="utf-8"))


def load_runs(sweep_dir: str | Path, plan: dict[str, Any] | None = None) -> tuple[list[dict], list[dict], list[str]]:
    """(ok records, failed records, pending point ids) of the plan's points, sorted by point id."""
    plan = plan or load_plan(sweep_dir)
    ok, failed, pending = [], [], []
    for pt in sorted(plan["points"], key=lambda p: p["point_id"]):
        rec = read_run(run_path(Path(sweep_dir), pt["point_id"]))
        if rec is None or rec.get("point_id") != pt["point_id"]:
            pending.append(pt["point_id"])
        elif rec["status"] == "ok":
            ok.append(rec)
        else:
            failed.append(rec)
    return ok, failed, pending


def runs_frame(records: list[dict]) -> pd.DataFrame:
    """One row per successful run: the cell, the arm's row of the A/B summary, and control_* columns."""
    rows = []
    for rec in records:
        pt = rec["point"]
        by_arm = {r["arm"]: r for r in rec["summary"]}
        arm, ctrl = by_arm[pt["arm"]], by_arm[pt["config"]["control"]]
        budget = math.inf if pt["budget"] == "unlimited" else float(pt["budget"])
        alpha = float(pt["config"].get("alpha", 0.05))
        row = {
            "point_id": pt["point_id"], "scenario": pt["scenario"], "arm": pt["arm"], "policy": pt["policy"],
            "label": arm.get("label") or "", "budget_level": str(pt["budget_level"]), "budget": budget,
            "replicate": int(pt["replicate"]), "seed": int(pt["seed"]), "users": int(arm["users"]),
        }
        for m in METRICS:
            row[m] = _num(arm.get(m))
        p = _num(arm.get("d7_p_value_holm"))
        row["d7_significant"] = float(p < alpha and row["d7_lift"] > 0) if math.isfinite(p) else math.nan
        row["targets_met"] = float(bool(arm.get("targets_met")))
        for m in CONTROL_METRICS:
            row[f"control_{m}"] = _num(ctrl.get(m))
        rows.append(row)
    cols = ["point_id", "scenario", "arm", "policy", "label", "budget_level", "budget", "replicate", "seed", "users",
            *METRICS, "d7_significant", "targets_met", *(f"control_{m}" for m in CONTROL_METRICS)]
    return pd.DataFrame(rows, columns=cols)


def _num(v: Any) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _ratio(num: float, den: float) -> float:
    if not (math.isfinite(num) and math.isfinite(den)):
        return math.nan
    return num / den if den > 0 else math.inf


def aggregate_table(runs: pd.DataFrame, failed: list[dict] | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """Mean and CI across seeds per cell (scenario x arm x budget), plus one control row per scenario."""
    n_failed: dict[tuple, int] = {}
    for rec in failed or []:
        pt = rec["point"]
        b = math.inf if pt["budget"] == "unlimited" else float(pt["budget"])
        key = (pt["scenario"], pt["arm"], b)
        n_failed[key] = n_failed.get(key, 0) + 1
    cells = sorted({(r.scenario, r.arm, r.budget) for r in runs.itertuples()} | set(n_failed),
                   key=lambda k: (k[0], k[2], k[1]))
    rows = []
    for sc in sorted({c[0] for c in cells}):
        sub = runs[runs["scenario"] == sc]
        if len(sub):  # control: mean over the runs of a replicate first (identical when paired), then across seeds
            per_rep = sub.groupby("replicate", sort=True)[[f"control_{m}" for m in CONTROL_METRICS]].mean()
            row = {"scenario": sc, "arm": "control", "policy": "control", "label": "", "budget_level": "0",
                   "budget": 0.0, "runs": int(len(per_rep)), "failed": 0}
            for m in METRICS:
                vals = per_rep[f"control_{m}"] if m in CONTROL_METRICS else []
                _put(row, m, t_interval(vals, alpha))
            rows.append(_finish(row, None))
        for c in [c for c in cells if c[0] == sc]:
            g = runs[(runs["scenario"] == c[0]) & (runs["arm"] == c[1]) & (runs["budget"] == c[2])]
            g = g.sort_values("point_id", kind="stable")
            first = g.iloc[0] if len(g) else None
            row = {"scenario": sc, "arm": c[1], "policy": first["policy"] if first is not None else "",
                   "label": first["label"] if first is not None else "",
                   "budget_level": first["budget_level"] if first is not None else "", "budget": c[2],
                   "runs": int(len(g)), "failed": n_failed.get(c, 0)}
            for m in METRICS:
                _put(row, m, t_interval(g[m], alpha))
            rows.append(_finish(row, g))
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # rank by true D7 lift among the arms at the same scenario and budget (1 = best; ties by arm name)
    table["rank_true_d7"] = math.nan
    arms = table[table["arm"] != "control"]
    for _, g in arms.groupby(["scenario", "budget"], sort=True):
        order = g.sort_values(["true_d7_lift_mean", "arm"], ascending=[False, True], kind="stable",
                              na_position="last")
        table.loc[order.index, "rank_true_d7"] = np.arange(1, len(order) + 1, dtype=np.float64)
    return table


def _put(row: dict, m: str, ci: tuple[float, float, float, int]) -> None:
    row[f"{m}_mean"], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = ci[0], ci[1], ci[2]


def _finish(row: dict, g: pd.DataFrame | None) -> dict:
    if g is None or not len(g):
        row["d7_significant_share"] = math.nan
        row["targets_met_share"] = math.nan
        row["cost_per_incremental_d7_user"] = math.nan
        row["true_cost_per_incremental_d7_user"] = math.nan
        return row
    row["d7_significant_share"] = float(np.nanmean(g["d7_significant"])) if g["d7_significant"].notna().any() \
        else math.nan
    row["targets_met_share"] = float(g["targets_met"].mean())
    extra = float((g["cost_per_user"] - g["control_cost_per_user"]).mean())
    row["cost_per_incremental_d7_user"] = _ratio(extra, float(g["d7_lift"].mean()))
    extra_t = float((g["true_cost_per_user"] - g["control_true_cost_per_user"]).mean())
    row["true_cost_per_incremental_d7_user"] = _ratio(extra_t, float(g["true_d7_lift"].mean()))
    return row


# ----------------------------------------------------------------------
def _fmt(mean: float, lo: float, hi: float, scale: float, dec: int, signed: bool) -> str:
    if not math.isfinite(mean):
        return ""
    s = f"{mean * scale:+.{dec}f}" if signed else f"{mean * scale:.{dec}f}"
    if math.isfinite(lo) and math.isfinite(hi):
        s += f" [{lo * scale:.{dec}f}, {hi * scale:.{dec}f}]"
    return s


def _money(v: float) -> str:
    if math.isinf(v):
        return "∞"
    return f"{v:.2f}" if math.isfinite(v) else ""


def _arm_cell(row) -> str:
    return f"{row['arm']} †" if row.get("label") == UPPER_BOUND else str(row["arm"])


def to_markdown(table: pd.DataFrame, metrics=tuple(METRICS), alpha: float = 0.05) -> str:
    """The comparison table as Markdown: mean [CI] per metric; † = oracle (reads the hidden truth)."""
    if table.empty:
        return "_no finished runs yet_\n"
    conf = f"{100 * (1 - alpha):g}%"
    head = ["scenario", "arm", "budget ¥/user", "runs"] + [METRICS[m][0] for m in metrics] + [
        "¥ per incr. D7 user (true)", "D7 lift significant", "rank (true D7)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|"]
    for _, r in table.iterrows():
        runs = f"{int(r['runs'])}" + (f" (+{int(r['failed'])} failed)" if r["failed"] else "")
        cells = [str(r["scenario"]), _arm_cell(r), "—" if r["arm"] == "control" else
                 _budget_label(r["budget_level"], r["budget"]), runs]
        for m in metrics:
            name, scale, dec, signed = METRICS[m]
            cells.append(_fmt(r[f"{m}_mean"], r[f"{m}_ci_low"], r[f"{m}_ci_high"], scale, dec, signed))
        cells.append(_money(r["true_cost_per_incremental_d7_user"]))
        share = r["d7_significant_share"]
        cells.append(f"{100 * share:.0f}%" if math.isfinite(share) else "")
        cells.append(f"{int(r['rank_true_d7'])}" if math.isfinite(r["rank_true_d7"]) else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Mean [{conf} t-interval across seeds]. Measured: A/B estimate on the arm's users vs control; "
                 "true: the arm's policy and control simulated on the whole cohort with the same random draws. "
                 "pp = percentage points. ¥ per incremental D7 user = extra true cost / true D7 lift (ratio of "
                 "means). † reads the hidden truth: an upper bound, not a deployable policy.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------
def _plot_frontier(table: pd.DataFrame, path: Path) -> Path:
    """Per scenario: (left) budget cap vs true D7 lift, capped arms; (right) true cost vs true D7 lift, all arms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = table[(table["arm"] != "control") & (table["runs"] > 0)]
    scenarios = sorted(arms["scenario"].unique())
    finite = arms[np.isfinite(arms["budget"])]
    by_budget = bool(len(finite)) and finite.groupby("scenario")["budget"].nunique().max() >= 2
    ncol = 2 if by_budget else 1  # one budget level per scenario: the cost panel says it all
    fig, axes = plt.subplots(len(scenarios), ncol, figsize=(6.3 * ncol, 4.4 * len(scenarios)), squeeze=False)
    names = sorted(arms["arm"].unique())
    colours = {a: plt.cm.tab10(i % 10) for i, a in enumerate(n for n in names if not _is_oracle(arms, n))}
    dashes = {a: ("--", ":", "-.", (0, (5, 1, 1, 1)))[i % 4]
              for i, a in enumerate(n for n in names if _is_oracle(arms, n))}
    handles: dict[str, Any] = {}
    for row, sc in zip(axes, scenarios):
        g = arms[arms["scenario"] == sc]
        for a in names:
            ga = g[g["arm"] == a]
            if ga.empty:
                continue
            oracle = _is_oracle(arms, a)
            style = {"color": "black", "lw": 2.2, "ls": dashes[a]} if oracle else {"color": colours[a], "lw": 1.4}
            label = f"{a} (oracle: reads the truth)" if oracle else a
            capped = ga[np.isfinite(ga["budget"])].sort_values("budget")
            free = ga[~np.isfinite(ga["budget"])]
            y, lo, hi = (100 * capped[f"true_d7_lift_{k}"] for k in ("mean", "ci_low", "ci_high"))
            panels = ((row[0], capped["budget"]),) if by_budget else ()
            for ax, x in (*panels, (row[-1], capped["true_cost_per_user_mean"])):
                if len(capped) >= 2:
                    (h,) = ax.plot(x, y, marker="o", ms=3.5, **style)
                    ax.fill_between(x, lo, hi, color=style["color"], alpha=0.12, lw=0)
                    handles.setdefault(label, h)
                elif len(capped) == 1:
                    err = np.abs(np.array([[y.iloc[0] - lo.iloc[0]], [hi.iloc[0] - y.iloc[0]]]))
                    h = ax.errorbar(x, y, yerr=err if np.isfinite(err).all() else None, marker="o", ms=5,
                                    ls="none", color=style["color"], capsize=3)
                    handles.setdefault(label, h)
            for _, r in free.iterrows():
                err = None
                if math.isfinite(r["true_d7_lift_ci_low"]):
                    err = [[100 * max(0.0, r["true_d7_lift_mean"] - r["true_d7_lift_ci_low"])],
                           [100 * max(0.0, r["true_d7_lift_ci_high"] - r["true_d7_lift_mean"])]]
                h = row[-1].errorbar([r["true_cost_per_user_mean"]], [100 * r["true_d7_lift_mean"]], yerr=err,
                                    marker="*", ms=11, color=style["color"], ls="none")
                handles.setdefault(f"{a}, uncapped", h)
        for ax in row:
            ax.axhline(0, color="grey", lw=0.8)
            ax.grid(alpha=0.3)
            ax.set_ylabel("true incremental D7 retention, pp")
        if by_budget:
            row[0].set_title(f"{sc}: budget cap")
            row[0].set_xlabel("budget per user, ¥ (commitment basis: the cap on reserved grants)")
        b = sorted(g.loc[np.isfinite(g["budget"]), "budget"].unique())
        capped_at = "" if by_budget or not b else f" (dots: capped at ¥{b[0]:g}/user)"
        row[-1].set_title(f"{sc}: what it really cost{capped_at}")
        row[-1].set_xlabel("true cost per user, ¥ (realised; stars: uncapped arms)")
    fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False)
    fig.suptitle("True incremental D7 retention vs budget and vs cost (mean and 95% CI across seeds)", fontsize=11)
    fig.tight_layout()
    return _save_fig(fig, path)


def _is_oracle(arms: pd.DataFrame, arm: str) -> bool:
    g = arms[arms["arm"] == arm]
    return bool(len(g)) and (g["label"] == UPPER_BOUND).any()


def _plot_ranks(table: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = table[(table["arm"] != "control") & np.isfinite(table["rank_true_d7"])]
    conds = sorted({(r.scenario, r.budget) for r in arms.itertuples()}, key=lambda c: (c[0], c[1]))
    one_scenario = len({c[0] for c in conds}) == 1
    one_budget_each = all(sum(1 for d in conds if d[0] == c[0]) == 1 for c in conds)
    labels = []
    for sc, b in conds:
        bl = "uncapped" if math.isinf(b) else f"¥{b:g}"
        labels.append(bl if one_scenario else sc if one_budget_each else f"{sc}\n{bl}")
    x = {c: i for i, c in enumerate(conds)}
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(conds) + 3), 4.8))
    names = sorted(arms["arm"].unique())
    n_oracle = 0
    for i, a in enumerate(names):
        g = arms[arms["arm"] == a]
        pts = sorted((x[(r.scenario, r.budget)], r.rank_true_d7) for r in g.itertuples())
        oracle = _is_oracle(arms, a)
        ls = ("--", ":", "-.")[n_oracle % 3] if oracle else "-"
        n_oracle += oracle
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", lw=2.2 if oracle else 1.3,
                ls=ls, color="black" if oracle else plt.cm.tab10(i % 10),
                label=f"{a} (oracle)" if oracle else a)
    ax.set_xticks(range(len(conds)), labels, fontsize=8)
    n = int(arms["rank_true_d7"].max()) if len(arms) else 1
    ax.set_yticks(range(1, n + 1))
    ax.set_ylim(n + 0.5, 0.5)
    ax.set_ylabel("rank by true D7 lift (1 = best)")
    ax.set_xlabel("budget" if one_scenario else "scenario")
    ax.set_title("Each policy's rank (mean true D7 lift across seeds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return _save_fig(fig, path)


def _save_fig(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return write_bytes_atomic(path, buf.getvalue())


# ----------------------------------------------------------------------
def _winners(runs: pd.DataFrame, table: pd.DataFrame, paired: bool, alpha: float) -> list[str]:
    out = []
    arms = table[(table["arm"] != "control") & (table["label"] != UPPER_BOUND) & (table["runs"] > 0)]
    for (sc, b), g in arms.groupby(["scenario", "budget"], sort=True):
        g = g.sort_values(["true_d7_lift_mean", "arm"], ascending=[False, True], kind="stable")
        best = g.iloc[0]
        where = f"**{sc}**, budget {'uncapped' if math.isinf(b) else f'¥{b:g}/user'}"
        lift = _fmt(best["true_d7_lift_mean"], best["true_d7_lift_ci_low"], best["true_d7_lift_ci_high"], 100, 2, True)
        line = f"- {where}: best deployable arm by true D7 lift is **{best['arm']}** ({lift} pp)"
        if len(g) > 1:
            second = g.iloc[1]
            a = runs[(runs["scenario"] == sc) & (runs["budget"] == b) & (runs["arm"] == best["arm"])]
            c = runs[(runs["scenario"] == sc) & (runs["budget"] == b) & (runs["arm"] == second["arm"])]
            a, c = a.set_index("replicate")["true_d7_lift"], c.set_index("replicate")["true_d7_lift"]
            diff = ""
            if paired:
                common = sorted(set(a.index) & set(c.index))
                if len(common) >= 2 and np.ptp(a[common].to_numpy() - c[common].to_numpy()) > 0:
                    ci = stats.ttest_rel(a[common], c[common]).confidence_interval(1 - alpha)
                    diff = f"paired difference {100 * (a[common] - c[common]).mean():+.2f} pp " \
                           f"[{100 * ci.low:.2f}, {100 * ci.high:.2f}]"
            elif len(a) >= 2 and len(c) >= 2:
                ci = stats.ttest_ind(a, c, equal_var=False).confidence_interval(1 - alpha)
                diff = f"difference {100 * (a.mean() - c.mean()):+.2f} pp [{100 * ci.low:.2f}, {100 * ci.high:.2f}]"
            line += f"; runner-up **{second['arm']}**" + (f", {diff}" if diff else "")
            if diff:
                line += " (clear)" if ci.low > 0 else " (not clear at this many seeds)"
        oracle = table[(table["scenario"] == sc) & (table["budget"] == b) & (table["label"] == UPPER_BOUND)]
        if len(oracle) and oracle["true_d7_lift_mean"].iloc[0] > 0 and math.isfinite(best["true_d7_lift_mean"]):
            share = best["true_d7_lift_mean"] / oracle["true_d7_lift_mean"].iloc[0]
            line += f"; it gets {100 * share:.0f}% of the oracle's true lift"
        out.append(line + ".")
    return out


def _report(sweep_dir: Path, plan: dict, table: pd.DataFrame, runs: pd.DataFrame, ok: list[dict],
            failed: list[dict], pending: list[str], outputs: dict[str, Path]) -> str:
    sw = plan["sweep"]
    alpha = float(sw.get("alpha", 0.05))
    exp = sw.get("experiment", {})
    users = {p["config"].get("users") for p in plan["points"]}
    days = {p["config"].get("days") for p in plan["points"]}
    budgets = sorted({p["budget"] if p["budget"] == "unlimited" else f"{p['budget']:g}" for p in plan["points"]},
                     key=lambda s: (s == "unlimited", float(s) if s != "unlimited" else 0))
    arms = list(dict.fromkeys(p["arm"] for p in plan["points"]))
    other = json.dumps({k: v for k, v in exp.items() if k != "users"}, sort_keys=True)
    lines = [f"# Sweep `{plan['sweep_id']}`", ""]
    if sw.get("description"):
        lines += [sw["description"].strip(), ""]
    lines += [
        "| setting | value |", "|---|---|",
        f"| scenarios | {', '.join(plan['scenarios'])} |",
        f"| arms (each vs control) | {', '.join(arms)} |",
        f"| budgets (¥/user) | {', '.join(budgets)} |",
        f"| replicates (seeds) per cell | {sw.get('replicates')} (sweep seed {sw.get('seed')}, "
        f"{'paired: common random numbers across cells' if sw.get('paired', True) else 'unpaired'}) |",
        f"| users per run | {', '.join(str(u) for u in sorted(users))} (half control, half the arm) |",
        f"| days | {', '.join(str(d) for d in sorted(days))} |",
        f"| other A/B settings | `{other}` |",
        f"| runs | {len(plan['points'])} planned, {len(ok)} ok, {len(failed)} failed, {len(pending)} not run yet |",
        "",
        "Reproduce: `python -m experiments.sweep --config <this sweep file>` (resumes; see docs/sweeps.md); "
        f"rebuild these outputs: `python -m experiments.aggregate {sweep_dir}`.",
        "",
    ]
    if not table.empty:
        lines += ["## Who wins where (true D7 lift; the oracle is an upper bound and not ranked here)", ""]
        lines += _winners(runs, table, bool(sw.get("paired", True)), alpha) + [""]
        lines += ["## Headline table", "", to_markdown(table, HEADLINE, alpha),
                  f"Every metric, with CIs: [table.md]({outputs['table_md'].name}), "
                  f"[table.csv]({outputs['table_csv'].name}); one row per run: [runs.csv]({outputs['runs_csv'].name}).",
                  ""]
        if "frontier" in outputs:  # plotted when some arm has a finished run
            lines += ["## Frontier", "", f"![frontier]({outputs['frontier'].name})", "",
                      "## Ranks", "", f"![ranks]({outputs['ranks'].name})", ""]
    if failed:
        lines += ["## Failed runs", "", "| point | error |", "|---|---|"]
        for rec in failed:
            err = str(rec.get("error") or "").splitlines()[0] if rec.get("error") else ""
            lines.append(f"| {rec['point_id']} | {err.replace('|', '/')[:300]} |")
        lines += ["", "Rerun them with `--retry-failed`; tracebacks are in their run files.", ""]
    if pending:
        lines += [f"## Not run yet ({len(pending)})", "", "Run the sweep command again to resume.", ""]
    el = [(r["point"]["arm"], float(r.get("elapsed_s") or math.nan)) for r in ok]
    if el:
        t = pd.DataFrame(el, columns=["arm", "s"]).groupby("arm", sort=True)["s"].agg(["count", "mean", "sum"])
        lines += ["## Run times", "", "Seconds per run (one worker), from the run files; they depend on the machine "
                  "and its load.", "", "| arm | runs | mean s | total s |", "|---|---:|---:|---:|"]
        for a, r in t.iterrows():
            lines.append(f"| {a} | {int(r['count'])} | {r['mean']:.1f} | {r['sum']:.0f} |")
        lines += [f"| all | {len(el)} | {np.nanmean([e[1] for e in el]):.1f} | "
                  f"{np.nansum([e[1] for e in el]):.0f} |", ""]
    return "\n".join(lines)


def aggregate(sweep_dir: str | Path) -> dict[str, Path]:
    """Build every output of a sweep folder from its run files; return their paths."""
    sweep_dir = Path(sweep_dir)
    plan = load_plan(sweep_dir)
    alpha = float(plan["sweep"].get("alpha", 0.05))
    ok, failed, pending = load_runs(sweep_dir, plan)
    runs = runs_frame(ok)
    table = aggregate_table(runs, failed, alpha)
    out = {
        "runs_csv": sweep_dir / "runs.csv",
        "table_csv": sweep_dir / "table.csv",
        "table_md": sweep_dir / "table.md",
        "frontier": sweep_dir / "frontier.png",
        "ranks": sweep_dir / "ranks.png",
        "report": sweep_dir / "report.md",
    }
    write_bytes_atomic(out["runs_csv"], runs.to_csv(index=False, lineterminator="\n").encode())
    write_bytes_atomic(out["table_csv"], table.to_csv(index=False, lineterminator="\n").encode())
    write_bytes_atomic(out["table_md"], to_markdown(table, alpha=alpha).encode())
    if not table.empty and ((table["arm"] != "control") & (table["runs"] > 0)).any():  # some arm has a run
        _plot_frontier(table, out["frontier"])
        _plot_ranks(table, out["ranks"])
    else:
        out.pop("frontier")
        out.pop("ranks")
    write_bytes_atomic(out["report"], _report(sweep_dir, plan, table, runs, ok, failed, pending, out).encode())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.aggregate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", help="a sweep folder (holding sweep.json and runs/), e.g. results/sweeps/budget")
    args = ap.parse_args(argv)
    try:
        out = aggregate(args.sweep_dir)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for k, v in out.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
