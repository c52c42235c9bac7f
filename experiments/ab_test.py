"""Simulated A/B experiment: randomise a fresh cohort into arms, simulate, compare, check against truth.

    python -m experiments.ab_test                                  # default config, 100k users, 6 arms
    python -m experiments.ab_test --users 20000 --seed 3 --policies control,blanket_trial_7d,oracle
    python -m experiments.ab_test --config my.toml --out /tmp/results

Steps (all determined by the config; same config => byte-identical summary.csv):

1. validate the config (nothing is simulated or written before it passes);
2. generate the evaluation cohort (scenario, users, seed) and assign users to
   arms with keyed uniform draws (``DOMAIN_ASSIGNMENT``) by the traffic split;
3. fit the arms' policies: learned ones (``needs_logs``) on exploration logs
   collected on a *separate* cohort whose seed is derived from the run seed
   (cached under ``results/logs/``); the oracle reads the truth of this world
   and is labelled "upper bound (reads hidden truth)";
4. ground truth: simulate the whole cohort under each arm's policy (same
   budget per user) and under control, with the same random draws (twins);
5. simulate each arm on its own users at budget = budget per user x arm users;
6. estimate lifts against control (the right test per metric, Holm across
   arms x metrics), cost per incremental D7-retained user, incremental ROI, the
   SRM check, and the business-target check; call policies' ``report(ctx)``;
7. write ``results/<run-id>/`` atomically (see :mod:`experiments.report`).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.config import (
    DEFAULT_CONFIG,
    METRICS,
    ABConfig,
    ArmConfig,
    ConfigError,
    config_from_dict,
    load_config,
)
from experiments.stats import ArmMoments, compare_to_control, srm_test
from policies.base import EvalContext
from policies.baselines import ControlPolicy
from policies.oracle import oracle_allocation
from policies.registry import make_policy
from sim import rng as R
from sim.catalogue import TYPE_NAMES, Catalogue
from sim.model import IncentiveModel
from sim.population import generate_cohort
from sim.scenario import Scenario, load_scenario
from sim.twins import OUTCOME_COLUMNS, StaticEffects, simulate_twin, static_action_outcomes

UPPER_BOUND_LABEL = "upper bound (reads hidden truth)"
# metric key -> column prefix in summary.csv (d7_lift, d7_p_value, ...)
PREFIX = {
    "d1_retention": "d1",
    "d7_retention": "d7",
    "d14_retention": "d14",
    "d30_retention": "d30",
    "pay_conv_d7": "pay_conv_d7",
    "pay_conv_d30": "pay_conv_d30",
    "revenue_per_user": "revenue",
    "cost_per_user": "cost",
    "net_value_per_user": "net_value",
}


@dataclass
class ABResult:
    """Everything a run produced.  ``summary``: one row per arm; ``estimates``: long table of estimators."""

    config: ABConfig
    run_id: str
    summary: pd.DataFrame
    daily: pd.DataFrame
    estimates: pd.DataFrame
    quality: pd.DataFrame
    srm: dict
    frontier: pd.DataFrame | None
    outcomes: dict[str, pd.DataFrame] = field(default_factory=dict)  # per-user outcomes of each arm's users
    assignment: np.ndarray | None = None  # arm index of each cohort user (position order)
    quality_markdown: dict[str, str] = field(default_factory=dict)
    quality_figures: dict[str, list[str]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    run_dir: Path | None = None


# ----------------------------------------------------------------------
def assign_arms(user_ids: np.ndarray, shares, seed: int) -> np.ndarray:
    """Arm index of each user: a keyed U(0,1) draw per (run seed, user) cut by the cumulative split."""
    shares = np.asarray(shares, dtype=np.float64)
    if shares.ndim != 1 or shares.size < 1 or np.any(shares < 0) or not math.isclose(shares.sum(), 1.0, abs_tol=1e-9):
        raise ValueError(f"split: expected non-negative shares summing to 1, got {shares.tolist()}")
    key = R.stream_key(seed, R.DOMAIN_ASSIGNMENT)
    u = R.uniform_array(key, np.asarray(user_ids, dtype=np.int64), 0, 1)
    cum = np.cumsum(shares)
    cum[-1] = 1.0 + 1e-12
    return np.searchsorted(cum, u, side="right").astype(np.int64)


def log_seed(run_seed: int) -> int:
    """Seed of the exploration-log cohort, derived from the run seed (never the evaluation cohort's)."""
    ss = np.random.SeedSequence(int(run_seed), spawn_key=(R.DOMAIN_ASSIGNMENT, 1))
    s = int(ss.generate_state(1, dtype=np.uint32)[0])
    return s if s != run_seed else s + 1


def _scenario_key(sc: Scenario) -> str:
    import hashlib

    return f"{sc.name}-{hashlib.sha256(sc.model_dump_json().encode()).hexdigest()[:8]}"


def get_logs(sc: Scenario, users: int, seed: int, cache_dir: str | Path, days: int | None = None) -> pd.DataFrame:
    """Exploration logs for (scenario, users, seed), from the cache or collected and cached atomically."""
    from experiments.collect import collect_logs, load_logs, write_atomic

    path = Path(cache_dir) / f"{_scenario_key(sc)}-{users}u-seed{seed}-d{days or sc.cohort.days}.parquet"
    if path.exists():
        return load_logs(path)
    df = collect_logs(sc, n_users=users, seed=seed, days=days)
    write_atomic(df, path)
    return df


def _fit(policy: Any, logs, context: dict) -> Any:
    fit = getattr(policy, "fit", None)
    if fit is None:
        return policy
    sig = inspect.signature(fit)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        kw = context
    else:
        kw = {k: v for k, v in context.items() if k in sig.parameters}
    out = fit(logs, **kw)
    return policy if out is None else out


def _twin_copy(policy: Any) -> Any:
    """The policy instance used for its twin: a copy, so that any state a policy keeps while acting
    cannot leak between the twin and the arm.  Truth readers are shared (their cache is the truth)."""
    if _reads_truth(policy):
        return policy
    try:
        return copy.deepcopy(policy)
    except Exception:  # noqa: BLE001 - an uncopyable policy is used as is
        return policy


def _reads_truth(policy: Any) -> bool:
    return bool(getattr(policy, "reads_truth", False))


# ----------------------------------------------------------------------
def _arm_row(name: str, arm: ArmConfig, policy: Any, out: pd.DataFrame, model: IncentiveModel,
             budget: float | None, share: float) -> dict:
    row = {
        "arm": name,
        "policy": arm.policy,
        "label": UPPER_BOUND_LABEL if _reads_truth(policy) else "",
        "users": len(out),
        "share": share,
        "budget_per_user": math.nan if budget is None else budget,
    }
    for metric, (col, _) in METRICS.items():
        row[metric] = float(out[col].mean())
    led = model.ledger
    row["grants"] = led.grants
    for t in TYPE_NAMES[1:]:
        row[f"grants_{t}"] = led.grants_by_type[t]
    row["refused"] = led.refused
    row["spent"] = led.spent
    return row


def _frontier(sc, cohort, seed, budgets, realised: StaticEffects, expected: StaticEffects | None) -> pd.DataFrame:
    """Oracle frontier: allocations on expected effects at each budget, valued on the realised twins."""
    cat = Catalogue.from_scenario(sc)
    if expected is None:
        metrics = tuple(m for m in OUTCOME_COLUMNS if m in ("retained_d7", "p_retained_d7", "cost"))
        expected = static_action_outcomes(sc, cohort, seed=seed, replications=4, metrics=metrics)
    y = realised.outcomes["retained_d7"]
    c = realised.outcomes["cost"]
    n = len(cohort)
    rows = []
    idx = np.arange(n)
    for b in sorted(set(budgets)) + [math.inf]:
        choice = oracle_allocation(expected, cat.commit_costs, None if math.isinf(b) else b * n, "d7_retention")
        rows.append({
            "budget_per_user": b,
            "true_cost_per_user": float(c[idx, choice].mean()),
            "true_d7_lift": float(y[idx, choice].mean() - y[:, 0].mean()),
            "treated_share": float((choice > 0).mean()),
        })
    return pd.DataFrame(rows)


def _business_checks(s: pd.DataFrame, cfg: ABConfig, d7: str, pay: str, cpi: str):
    """The three business targets on columns ``d7``, ``pay`` and ``cpi`` of the summary: three boolean
    Series (control fails the cost check) and the best blanket arm's cost per incremental D7 user."""
    t = cfg.targets
    blanket = s[(s["policy"] == "blanket") & np.isfinite(s[cpi]) & (s[cpi] > 0)]
    best = float(blanket[cpi].min()) if len(blanket) else math.nan
    if math.isnan(best):
        cost_ok = pd.Series(False, index=s.index)
    else:
        cost_ok = np.isfinite(s[cpi]) & (s[cpi] > 0) & (s[cpi] <= t.cost_per_incremental_d7_vs_best_blanket * best)
    cost_ok = cost_ok & (s["arm"] != cfg.control)
    return s[d7] >= t.d7_retention, s[pay] >= t.pay_conv_d30, cost_ok, best


def _target_check(summary: pd.DataFrame, cfg: ABConfig) -> pd.DataFrame:
    s = summary.copy()
    d7_ok, pay_ok, cost_ok, best = _business_checks(s, cfg, "d7_retention", "pay_conv_d30",
                                                    "cost_per_incremental_d7_user")
    s["target_d7_retention"], s["target_pay_conv_d30"], s["target_cost_efficiency"] = d7_ok, pay_ok, cost_ok
    s["best_blanket_cost_per_incremental_d7_user"] = best
    s["targets_met"] = d7_ok & pay_ok & cost_ok
    if "true_d7_retention" in s:
        # the same check on the truth (twins: the arm's policy on the whole cohort), which no real test sees
        d7_ok, pay_ok, cost_ok, _ = _business_checks(s, cfg, "true_d7_retention", "true_pay_conv_d30",
                                                     "true_cost_per_incremental_d7_user")
        s["true_targets_met"] = d7_ok & pay_ok & cost_ok
    return s


# ----------------------------------------------------------------------
def run_experiment(
    config: ABConfig | dict | str | Path | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    *,
    write: bool = True,
) -> ABResult:
    """Run one simulated A/B experiment.

    ``config``: an :class:`ABConfig`, a dict (validated), a TOML path, or None
    (the default config).  ``out_dir`` overrides ``config.out_dir`` (the parent
    of ``<run-id>/``); ``write=False`` keeps everything in memory.
    """
    t_start = time.perf_counter()
    if config is None or isinstance(config, (str, Path)):
        cfg = load_config(config)
    else:
        cfg = config_from_dict(config)
    cfg = cfg.resolved()
    run_id = cfg.run_id or cfg.default_run_id()
    timings: dict[str, float] = {}
    sc = load_scenario(cfg.scenario)
    cat = Catalogue.from_scenario(sc)
    seed, n_users, days = cfg.seed, int(cfg.users), int(cfg.days)
    names = cfg.arm_names
    shares = cfg.shares
    default_b = float(sc.meta.default_budget_per_user)
    budgets = [cfg.arm_budget(i, default_b) for i in range(len(cfg.arms))]
    policies: list[Any] = [make_policy(a.policy, f"arms[{i}].policy", **a.params) for i, a in enumerate(cfg.arms)]

    bar = _Progress(progress, total=2 + (3 if cfg.ground_truth else 2) * len(names))
    # --- cohort and assignment -------------------------------------------
    t0 = time.perf_counter()
    cohort = generate_cohort(sc, n_users, seed=seed)
    arm_of = assign_arms(cohort.user_ids, shares, seed)
    counts = np.bincount(arm_of, minlength=len(names))
    small = [(names[i], int(counts[i])) for i in range(len(names)) if counts[i] < 2]
    if small:
        raise ConfigError(f"split: arm(s) {small} got fewer than 2 users out of {n_users}; raise users or their share")
    timings["cohort"] = time.perf_counter() - t0
    bar.step("cohort and assignment")

    # --- fit --------------------------------------------------------------
    t0 = time.perf_counter()
    logs = None
    if any(getattr(p, "needs_logs", False) for p in policies):
        lseed = cfg.logs.seed if cfg.logs.seed is not None else log_seed(seed)
        logs = get_logs(sc, cfg.logs.users, lseed, cfg.logs.cache_dir, days)
    context = {"scenario": sc, "catalogue": cat, "seed": seed}
    for i, p in enumerate(policies):
        policies[i] = _fit(p, logs if getattr(p, "needs_logs", False) else None, context)
        bar.step(f"fit {names[i]}")
    timings["fit"] = time.perf_counter() - t0

    # --- ground truth (twins of the whole cohort) ---------------------------
    # Run before the arms: a truth-reading policy (the oracle) then reuses the whole cohort's
    # expected effects for its arm's users instead of recomputing them.
    t0 = time.perf_counter()
    control_twin = truth = None
    twins: dict[str, pd.DataFrame] = {}
    needs_report = [i for i, p in enumerate(policies) if callable(getattr(p, "report", None))]
    keep_twins = bool(needs_report)
    expected_for_frontier = None
    if cfg.ground_truth:
        control_twin = simulate_twin(sc, cohort, ControlPolicy(), days=days, seed=seed)
        c_d7, c_pay = control_twin["retained_d7"].mean(), control_twin["paid_d30"].mean()
        c_nv = control_twin["net_value"].mean()
        truth_rows = []
        for i, (name, pol) in enumerate(zip(names, policies)):
            if name == cfg.control and cfg.arms[i].policy == "control":
                tw = control_twin
            else:
                tw = simulate_twin(sc, cohort, _twin_copy(pol), budget_per_user=budgets[i], days=days, seed=seed)
            if keep_twins:  # per-user twins are only kept for policies' report(ctx)
                twins[name] = tw
            eff = getattr(pol, "effects_", None)
            if (_reads_truth(pol) and isinstance(eff, StaticEffects) and len(eff.user_ids) == n_users
                    and getattr(pol, "objective", "") == "d7_retention"):
                expected_for_frontier = eff
            d7_lift = float(tw["retained_d7"].mean() - c_d7)
            cost = float(tw["cost"].mean())
            extra = cost - float(control_twin["cost"].mean())
            truth_rows.append({
                "true_d7_retention": float(tw["retained_d7"].mean()),
                "true_pay_conv_d30": float(tw["paid_d30"].mean()),
                "true_d7_lift": d7_lift,
                "true_pay_conv_d30_lift": float(tw["paid_d30"].mean() - c_pay),
                "true_net_value_lift": float(tw["net_value"].mean() - c_nv),
                "true_cost_per_user": cost,
                "true_cost_per_incremental_d7_user": extra / d7_lift if d7_lift > 0 else math.inf,
                "true_incremental_d7_per_yuan": d7_lift / extra if extra > 0 else math.nan,
            })
            bar.step(f"twin {name}")
        truth = pd.DataFrame(truth_rows)
        truth.loc[np.array(names) == cfg.control, ["true_d7_lift", "true_pay_conv_d30_lift", "true_net_value_lift",
                                                  "true_cost_per_incremental_d7_user"]] = math.nan
    timings["twins"] = time.perf_counter() - t0

    # --- arms -------------------------------------------------------------
    t0 = time.perf_counter()
    rows, dailies, outcomes, models, subsets = [], [], {}, {}, {}
    for i, (name, arm, pol) in enumerate(zip(names, cfg.arms, policies)):
        pos = np.flatnonzero(arm_of == i)
        sub = cohort.subset(pos)
        b = budgets[i]
        m = IncentiveModel(sc, sub, pol, budget=None if b is None else b * len(sub), days=days, seed=seed).run()
        out = m.outcomes()
        outcomes[name], models[name], subsets[name] = out, m, pos
        rows.append(_arm_row(name, arm, pol, out, m, b, shares[i]))
        d = m.daily()
        d.insert(0, "arm", name)
        d["cum_cost"] = d["cost"].cumsum()
        d["cum_cost_per_user"] = d["cum_cost"] / len(sub)
        dailies.append(d)
        bar.step(f"simulate {name}")
    timings["arms"] = time.perf_counter() - t0

    # --- statistics ---------------------------------------------------------
    moments = {name: ArmMoments.from_frame(outcomes[name]) for name in names}
    est = compare_to_control(moments, cfg.control, list(cfg.metrics), cfg.alpha)
    srm = srm_test(counts, shares)
    summary = pd.DataFrame(rows)
    for metric in cfg.metrics:
        pre = PREFIX[metric]
        sub_e = est[est["metric"] == metric].set_index("arm")
        for col, src in (("lift", "point"), ("lift_ci_low", "ci_low"), ("lift_ci_high", "ci_high"),
                         ("p_value", "p_value"), ("p_value_holm", "p_value_holm"), ("relative_lift", "relative_lift")):
            summary[f"{pre}_{col}"] = summary["arm"].map(sub_e[src]).astype(float)
    for ename, pre in (("cost_per_incremental_d7_user", "cost_per_incremental_d7_user"),
                       ("incremental_roi", "incremental_roi")):
        sub_e = est[est["metric"] == ename].set_index("arm")
        summary[pre] = summary["arm"].map(sub_e["point"]).astype(float)
        summary[f"{pre}_ci_low"] = summary["arm"].map(sub_e["ci_low"]).astype(float)
        summary[f"{pre}_ci_high"] = summary["arm"].map(sub_e["ci_high"]).astype(float)
    if truth is not None:
        summary = pd.concat([summary, truth], axis=1)

    summary = _target_check(summary, cfg)

    # --- realised static twins (for policy reports and the frontier) --------
    t0 = time.perf_counter()
    realised = None
    frontier = None
    if needs_report or cfg.frontier:
        metrics = None if needs_report else ("retained_d7", "paid_d30", "net_value", "cost")
        kw = {} if metrics is None else {"metrics": metrics}
        realised = static_action_outcomes(sc, cohort, seed=seed, replications=0, days=days, **kw)
    if cfg.frontier:
        frontier = _frontier(sc, cohort, seed, list(cfg.frontier_budgets) + [default_b], realised,
                             expected_for_frontier)
    timings["truth"] = time.perf_counter() - t0
    bar.step("truth and frontier")

    result = ABResult(
        config=cfg, run_id=run_id, summary=summary, daily=pd.concat(dailies, ignore_index=True),
        estimates=est, quality=pd.DataFrame(), srm=srm, frontier=frontier, outcomes=outcomes, assignment=arm_of,
    )

    # --- policy quality reports + outputs -----------------------------------
    from experiments import report as rep

    # outputs (and policies' report figures) go to a temp folder renamed at the end; without write, a
    # system temp folder that is removed
    tmp_dir = rep.make_temp_dir(Path(out_dir or cfg.out_dir), run_id) if write else Path(tempfile.mkdtemp())
    try:
        t0 = time.perf_counter()
        qrows = []
        oracle_twin = next((twins[n] for n, p in zip(names, policies) if _reads_truth(p) and n in twins), None)
        for i in needs_report:
            name = names[i]
            ctx = EvalContext(
                scenario=sc, cohort=cohort, seed=seed, budget_per_user=budgets[i],
                arm_users=cohort.user_ids[subsets[name]],
                arm_outcomes=outcomes[name], control_outcomes=outcomes[cfg.control], truth=realised,
                policy_twin=twins.get(name), control_twin=control_twin, oracle_twin=oracle_twin,
                out_dir=tmp_dir / f"quality_{name}",
            )
            ctx.out_dir.mkdir(parents=True, exist_ok=True)
            r = policies[i].report(ctx) or {}
            for k, v in (r.get("metrics") or {}).items():
                qrows.append({"arm": name, "policy": cfg.arms[i].policy, "metric": k, "value": v})
            if r.get("markdown"):
                result.quality_markdown[name] = str(r["markdown"])
            figs = [str(Path(f)) for f in (r.get("figures") or [])]
            figs = [str(Path(f).resolve().relative_to(tmp_dir.resolve())) if Path(f).resolve().is_relative_to(
                tmp_dir.resolve()) else f for f in figs]
            result.quality_figures[name] = figs
        result.quality = pd.DataFrame(qrows, columns=["arm", "policy", "metric", "value"])
        timings["reports"] = time.perf_counter() - t0
        timings["total_before_write"] = time.perf_counter() - t_start
        result.timings = timings
        if write:
            t0 = time.perf_counter()
            result.run_dir = rep.write_outputs(result, tmp_dir, Path(out_dir or cfg.out_dir) / run_id)
            timings["write"] = time.perf_counter() - t0
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    bar.close()
    timings["total"] = time.perf_counter() - t_start
    return result


class _Progress:
    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="A/B experiment", unit="step", leave=False)

    def step(self, what: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(what)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------
def _override(cfg: ABConfig, users: int | None, seed: int | None, policies: str | None, out: str | None) -> dict:
    d = cfg.to_dict()
    if users is not None:
        d["users"] = users
    if seed is not None:
        d["seed"] = seed
    if out is not None:
        d["out_dir"] = out
    if policies is not None:
        by_name = {a.label: a for a in cfg.arms}
        arms = []
        for tok in [t.strip() for t in policies.split(",") if t.strip()]:
            if tok in by_name:
                arms.append(by_name[tok].model_dump(mode="json", exclude_none=True))
            elif tok.startswith("blanket_") and ":" not in tok:
                arms.append({"name": tok, "policy": "blanket", "params": {"action": tok.removeprefix("blanket_")}})
            else:
                arms.append({"policy": tok})
        d["arms"] = arms
        d.pop("split", None)
        if cfg.control not in [a.get("name") or a["policy"] for a in arms]:
            raise ConfigError(f"--policies: the control arm {cfg.control!r} must be one of the arms, got {policies!r}")
    if users is not None or seed is not None or policies is not None:
        d.pop("run_id", None)  # a different experiment: its id comes from its own config hash
    return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m experiments.ab_test", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default=None, help=f"experiment TOML (default: {DEFAULT_CONFIG.name} shipped config)")
    ap.add_argument("--users", type=int, default=None, help="cohort size (overrides the config)")
    ap.add_argument("--seed", type=int, default=None, help="run seed (overrides the config)")
    ap.add_argument("--policies", default=None,
                    help="comma-separated arms: config arm names, registry names, blanket_<action>, or module:Class "
                         "(equal split; must include the control arm)")
    ap.add_argument("--out", default=None, help="parent folder of results/<run-id>/ (default: config out_dir)")
    ap.add_argument("--run-id", default=None, help="output folder name (default: from the config hash)")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
        d = _override(cfg, args.users, args.seed, args.policies, args.out)
        if args.run_id:
            d["run_id"] = args.run_id
        cfg = config_from_dict(d, source=args.config or "config")
        res = run_experiment(cfg, progress=not args.no_progress)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from experiments.report import print_console

    print_console(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
