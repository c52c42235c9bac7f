"""Outputs of an A/B run: CSVs, resolved config, report.md, plots, console table.

Everything is written into a temporary folder next to the destination and
renamed to ``results/<run-id>/`` at the end (``os.replace``), so a run either
leaves a complete folder or none.  Files:

* ``summary.csv``: one row per arm (rates, per-user money, lifts with CIs,
  p-values and Holm p-values, cost per incremental D7-retained user,
  incremental ROI, ground truth from the twins, target checks);
* ``estimates.csv``: every estimator (name, method, point, interval, p-value);
* ``daily.csv``: per arm per day; ``quality.csv``: policies' own model-quality metrics;
* ``frontier.csv``: the oracle's true cost / D7-lift frontier;
* ``config.toml``: the fully resolved config (rerunnable as is);
* ``report.md`` and PNG plots: retention curves, cumulative cost, cost vs
  incremental D7 retention with the oracle frontier.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import tomli_w

if TYPE_CHECKING:
    from experiments.ab_test import ABResult

PLOTS = ("retention_curves.png", "cumulative_cost.png", "cost_vs_d7_lift.png")


def make_temp_dir(parent: Path, run_id: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{run_id}.tmp-", dir=parent))


def _replace_dir(tmp: Path, dest: Path) -> Path:
    """Move ``tmp`` to ``dest`` atomically; an existing ``dest`` is swapped out first, then removed."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700 folders; give the run folder the usual permissions
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.replace(dest, old / "prev")
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def _fmt(x, kind: str = "g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    if kind == "pct":
        return f"{100 * x:.2f}%"
    if kind == "pp":
        return f"{100 * x:+.2f}pp"
    if kind == "p":
        return f"{x:.2g}" if x < 0.001 else f"{x:.3f}"
    if kind == "y":
        return f"{x:.3f}"
    return f"{x:.4g}"


def md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def comparison_table(res: ABResult) -> pd.DataFrame:
    """Human-readable comparison (one row per arm), shared by report.md and the console."""
    s = res.summary
    out = pd.DataFrame({"arm": s["arm"]})
    out["users"] = [_fmt(int(x)) for x in s["users"]]
    out["D1"] = [_fmt(x, "pct") for x in s["d1_retention"]]
    out["D7"] = [_fmt(x, "pct") for x in s["d7_retention"]]
    out["D30"] = [_fmt(x, "pct") for x in s["d30_retention"]]
    out["pay D30"] = [_fmt(x, "pct") for x in s["pay_conv_d30"]]
    out["rev/user"] = [_fmt(x, "y") for x in s["revenue_per_user"]]
    out["cost/user"] = [_fmt(x, "y") for x in s["cost_per_user"]]
    out["net/user"] = [_fmt(x, "y") for x in s["net_value_per_user"]]
    if "d7_lift" in s:
        out["D7 lift pp [95% CI]"] = [
            "" if math.isnan(a) else f"{100 * a:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
            for a, lo, hi in zip(s["d7_lift"], s["d7_lift_ci_low"], s["d7_lift_ci_high"])
        ]
        out["p (Holm)"] = [_fmt(x, "p") for x in s["d7_p_value_holm"]]
    if "true_d7_lift" in s:
        out["true D7 lift"] = [_fmt(x, "pp") for x in s["true_d7_lift"]]
    out["cost/incr. D7 user"] = [_fmt(x, "y") for x in s["cost_per_incremental_d7_user"]]
    if "true_cost_per_incremental_d7_user" in s:
        out["true cost/incr. D7"] = [_fmt(x, "y") for x in s["true_cost_per_incremental_d7_user"]]
    out["ROI"] = [_fmt(x, "y") for x in s["incremental_roi"]]
    out["note"] = s["label"].fillna("")
    return out


def target_table(res: ABResult) -> pd.DataFrame:
    s = res.summary
    t = res.config.targets
    out = pd.DataFrame({
        "arm": s["arm"],
        f"D7 >= {t.d7_retention:.0%}": [_fmt(bool(x)) for x in s["target_d7_retention"]],
        f"pay D30 >= {t.pay_conv_d30:.0%}": [_fmt(bool(x)) for x in s["target_pay_conv_d30"]],
        f"cost/incr. D7 <= {t.cost_per_incremental_d7_vs_best_blanket:g} x best blanket": [
            _fmt(bool(x)) for x in s["target_cost_efficiency"]],
        "all met": [_fmt(bool(x)) for x in s["targets_met"]],
    })
    if "true_targets_met" in s:
        out["true D7 / pay D30"] = [f"{100 * a:.2f}% / {100 * b:.2f}%"
                                    for a, b in zip(s["true_d7_retention"], s["true_pay_conv_d30"])]
        out["all met (truth)"] = [_fmt(bool(x)) for x in s["true_targets_met"]]
    return out


# ----------------------------------------------------------------------
def plot_all(res: ABResult, folder: Path) -> list[str]:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = res.daily
    s = res.summary
    files = []
    # retention curves
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, g in d.groupby("arm", sort=False):
        ax.plot(g["day"], 100 * g["retention"], label=arm)
    ax.set_xlabel("day since install")
    ax.set_ylabel("active users (% of arm)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_title("Retention curves by arm")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / PLOTS[0], dpi=110)
    plt.close(fig)
    files.append(PLOTS[0])
    # cumulative cost
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, g in d.groupby("arm", sort=False):
        ax.plot(g["day"], g["cum_cost_per_user"], label=arm)
    ax.set_xlabel("day since install")
    ax.set_ylabel("cumulative subsidy cost per arm user (yuan)")
    ax.set_title("Cumulative cost by arm")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / PLOTS[1], dpi=110)
    plt.close(fig)
    files.append(PLOTS[1])
    # cost vs incremental D7
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if res.frontier is not None:
        f = res.frontier[np.isfinite(res.frontier["true_cost_per_user"])].sort_values("true_cost_per_user")
        ax.plot(f["true_cost_per_user"], 100 * f["true_d7_lift"], "k--", marker=".", lw=1,
                label="oracle frontier (truth)")
    arms = s[s["arm"] != res.config.control]
    for k, (_, r) in enumerate(arms.iterrows()):
        color = f"C{k % 10}"
        if "d7_lift" in s:
            err = [[100 * (r["d7_lift"] - r["d7_lift_ci_low"])], [100 * (r["d7_lift_ci_high"] - r["d7_lift"])]]
            ax.errorbar(r["cost_per_user"], 100 * r["d7_lift"], yerr=err,
                        fmt="o", color=color, capsize=3, label=f"{r['arm']} (measured)")
        if "true_d7_lift" in s and not math.isnan(r["true_d7_lift"]):
            ax.plot(r["true_cost_per_user"], 100 * r["true_d7_lift"], "x", color=color, ms=8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("subsidy cost per user (yuan)")
    ax.set_ylabel("D7 retention lift vs control (pp)")
    ax.set_title("Cost vs incremental D7 retention (x = true value from twins)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / PLOTS[2], dpi=110)
    plt.close(fig)
    files.append(PLOTS[2])
    return files


def report_markdown(res: ABResult, plots: list[str]) -> str:
    c = res.config
    srm = res.srm
    lines = [
        f"# A/B experiment `{res.run_id}`",
        "",
        f"Scenario `{c.scenario}`, {c.users:,} users, {c.days} days, seed {c.seed}, alpha {c.alpha}, "
        f"{len(c.arms)} arms (control: `{c.control}`). Rerun: `python -m experiments.ab_test --config "
        f"{Path(c.out_dir) / res.run_id / 'config.toml'}`.",
        "",
        "Budgets per arm user (yuan, commitment basis): "
        + ", ".join(f"`{a.label}` {'unlimited' if a.budget_per_user == 'unlimited' else a.budget_per_user}"
                    for a in c.arms) + ".",
        "",
        "## Sample-ratio check",
        "",
        f"Chi-square {srm['chi2']:.3f}, p = {srm['p_value']:.4g}: "
        + ("**WARNING: sample-ratio mismatch (p < 0.001); do not trust the comparison.**"
           if srm["mismatch"] else "no mismatch (p >= 0.001)."),
        f" Observed {srm['observed']}, expected {[round(x, 1) for x in srm['expected']]}.",
        "",
        "## Comparison against control",
        "",
        "Lifts are absolute (pp for rates); D7 CI is Wald, p-value the pooled two-proportion z-test, "
        "Holm-corrected across arms x metrics. `true` columns: the arm's policy applied to the whole cohort "
        "(same budget per user, same random draws) minus control, from the twins. Cost per incremental D7 user "
        "and ROI are ratios of lifts (Fieller CIs in summary.csv).",
        "",
        md_table(comparison_table(res)),
        "",
        "### All tested metrics",
        "",
    ]
    e = res.estimates
    if len(e):
        t = e[e["tested"]].copy()
        tab = pd.DataFrame({
            "arm": t["arm"], "metric": t["metric"],
            "lift": [_fmt(x) for x in t["point"]],
            "95% CI": [f"[{_fmt(a)}, {_fmt(b)}]" for a, b in zip(t["ci_low"], t["ci_high"])],
            "relative": [_fmt(x, "pct") for x in t["relative_lift"]],
            "p": [_fmt(x, "p") for x in t["p_value"]],
            "p (Holm)": [_fmt(x, "p") for x in t["p_value_holm"]],
            "test": t["method"],
        })
        lines += [md_table(tab), ""]
    tg = c.targets
    best = res.summary["best_blanket_cost_per_incremental_d7_user"].iloc[0]
    lines += [
        "## Business-target check",
        "",
        f"Targets: D7 retention >= {tg.d7_retention:.0%}, first-payment conversion by D30 >= {tg.pay_conv_d30:.0%}, "
        f"subsidy cost per incremental D7-retained user <= {tg.cost_per_incremental_d7_vs_best_blanket:g} x the best "
        f"blanket arm's ({_fmt(best, 'y')} yuan). The measured columns are what the A/B test shows; "
        "`all met (truth)` applies the same check to the twins (the arm's policy on the whole cohort, against "
        "the best blanket arm's true cost per incremental D7 user).",
        "",
        md_table(target_table(res)),
        "",
        "## Plots",
        "",
    ]
    for p in plots:
        lines += [f"![{p}]({p})", ""]
    if res.quality_markdown or len(res.quality):
        lines += ["## Policy model quality", ""]
        for arm, md in res.quality_markdown.items():
            lines += [f"### {arm}", "", md, ""]
            for f in res.quality_figures.get(arm, []):
                lines += [f"![{Path(f).name}]({f})", ""]
        if len(res.quality):
            q = res.quality.copy()
            q["value"] = [_fmt(x) if isinstance(x, float) else str(x) for x in q["value"]]
            lines += [md_table(q), ""]
    return "\n".join(lines) + "\n"


def write_outputs(res: ABResult, tmp: Path, dest: Path) -> Path:
    """Write every output into ``tmp`` then rename it to ``dest`` (replacing an older run)."""
    res.summary.to_csv(tmp / "summary.csv", index=False)
    res.estimates.to_csv(tmp / "estimates.csv", index=False)
    res.daily.to_csv(tmp / "daily.csv", index=False)
    res.quality.to_csv(tmp / "quality.csv", index=False)
    if res.frontier is not None:
        res.frontier.to_csv(tmp / "frontier.csv", index=False)
    d = res.config.to_dict()
    d["run_id"] = res.run_id
    (tmp / "config.toml").write_text(
        "# Fully resolved config of this run; rerun with python -m experiments.ab_test --config <this file>\n"
        + tomli_w.dumps(d)
    )
    plots = plot_all(res, tmp)
    (tmp / "report.md").write_text(report_markdown(res, plots))
    return _replace_dir(tmp, dest)


def print_console(res: ABResult) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    if not con.is_terminal or con.width < 200:
        con = Console(width=max(con.width, 240))
    tab = Table(title=f"A/B experiment {res.run_id}", show_lines=False)
    comp = comparison_table(res)
    comp["note"] = comp["note"].str.replace(" (", "\n(", regex=False)
    for c in comp.columns:
        tab.add_column(c, justify="left" if c in ("arm", "note") else "right")
    for _, r in comp.iterrows():
        tab.add_row(*[str(r[c]) for c in comp.columns])
    con.print(tab)
    srm = res.srm
    if srm["mismatch"]:
        con.print(f"[bold red]WARNING: sample-ratio mismatch, chi-square p = {srm['p_value']:.3g} < 0.001[/]")
    else:
        con.print(f"SRM check: p = {srm['p_value']:.3g} (no mismatch)")
    tt = target_table(res)
    met = tt[tt["all met"] == "yes"]["arm"].tolist()
    con.print(f"Arms meeting all business targets: {met or 'none'}")
    if res.run_dir is not None:
        con.print(f"Results: {res.run_dir}/ (report.md, summary.csv, daily.csv, plots)")
    con.print(f"Took {res.timings.get('total', float('nan')):.1f} s")
