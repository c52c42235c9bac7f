"""Floors and speed of the uplift and LTV policies on a scenario at its default budget.

Reads the truth (evaluation code): the twins of the evaluation cohort.  The
policies themselves are fit on the logs of a separate exploration cohort.

    python benchmarks/bench_uplift.py                       # default scenario, 100k logs, 100k evaluation users
    python benchmarks/bench_uplift.py --log-users 200000 --learners x,t,dr --out results/bench_uplift.json

Prints, and writes as JSON:
* fit wall time of each policy on the logs (threads = --n-jobs);
* the uplift policy's true incremental D7-retained users against the oracle's
  at the same budget (both optimising D7, both on commitment costs), in
  budgeted and cost-blind mode;
* every blanket arm (unlimited, its full cost shows) against the uplift policy
  at the default budget, and against the uplift policy run at a budget whose
  realised cost is <= 95% of that blanket arm's cost per user;
* the true AUUC / Qini of the uplift model's ranking with bootstrap CIs;
* the LTV model's R2 / MAE on the evaluation cohort's D30 revenue;
* an "observable ceiling": the value of allocating on the best function of
  the observables fit to the *true* expected effects of the evaluation
  cohort itself (cross-fitted), which no policy that sees only observables can
  beat by much; it says how much of the oracle is reachable at all.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from experiments.collect import collect_logs
from policies.baselines import BlanketPolicy, ControlPolicy
from policies.ltv import LTVPolicy
from policies.oracle import OraclePolicy, oracle_allocation
from policies.quality import allocation_from_truth, expected_truth, ltv_quality, uplift_quality
from policies.solver import allocate
from policies.uplift import FEATURES, UpliftPolicy
from sim.atomic import write_text_atomic
from sim.catalogue import Catalogue
from sim.population import generate_cohort
from sim.scenario import load_scenario
from sim.twins import simulate_twin, static_action_outcomes


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="fanqie_newuser", help="shipped scenario name or TOML path")
    ap.add_argument("--log-users", type=int, default=100_000, help="users in the logged exploration cohort")
    ap.add_argument("--log-seed", type=int, default=1001, help="seed of the exploration cohort")
    ap.add_argument("--eval-users", type=int, default=100_000, help="users in the evaluation cohort")
    ap.add_argument("--eval-seed", type=int, default=2002, help="seed of the evaluation cohort (not the log seed)")
    ap.add_argument("--budget", type=float, default=None, help="budget per user (default: the scenario's)")
    ap.add_argument("--learners", default="x", help="comma-separated uplift learners to compare (x,t,dr,uplift_rf)")
    ap.add_argument("--n-jobs", type=int, default=1, help="threads per LightGBM model")
    ap.add_argument("--replications", type=int, default=4, help="fresh-luck replications for expected effects")
    ap.add_argument("--bootstrap", type=int, default=200, help="bootstrap draws for AUUC/Qini CIs")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the observable-ceiling diagnostic")
    ap.add_argument("--timing-only", action="store_true", help="only time the fits (each learner and LTV), then stop")
    ap.add_argument("--out", default=None, help="write the figures as JSON here (atomic)")
    return ap.parse_args(argv)


def observable_ceiling(X: np.ndarray, eff: np.ndarray, commit: np.ndarray, budget: float, seed: int,
                       n_jobs: int) -> np.ndarray:
    """Allocation on E[true expected effect | observables], cross-fitted on the evaluation cohort (truth!)."""
    from lightgbm import LGBMRegressor
    from sklearn.model_selection import KFold, cross_val_predict

    pred = np.zeros_like(eff)
    for k in range(1, eff.shape[1]):
        m = LGBMRegressor(n_estimators=200, learning_rate=0.05, num_leaves=31, random_state=seed, n_jobs=n_jobs,
                          verbose=-1)
        pred[:, k] = cross_val_predict(m, X, eff[:, k], cv=KFold(3, shuffle=True, random_state=seed))
    return allocate(pred, commit, budget)


def main(argv=None) -> dict:
    a = parse_args(argv)
    sc = load_scenario(a.scenario)
    cat = Catalogue.from_scenario(sc)
    commit = cat.commit_costs
    bpu = sc.meta.default_budget_per_user if a.budget is None else float(a.budget)
    res: dict = {"scenario": sc.name, "log_users": a.log_users, "eval_users": a.eval_users, "budget_per_user": bpu,
                 "n_jobs": a.n_jobs, "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}
    print(f"scenario {sc.name}: logs {a.log_users:,} (seed {a.log_seed}), evaluation {a.eval_users:,} "
          f"(seed {a.eval_seed}), budget {bpu} yuan/user, load average {os.getloadavg()[0]:.1f}")

    t = time.perf_counter()
    logs = collect_logs(sc, n_users=a.log_users, seed=a.log_seed)
    res["collect_s"] = time.perf_counter() - t
    # causalml's first import (shap, scipy.stats, ...) takes seconds: once per process, timed apart from fits
    t = time.perf_counter()
    import causalml.inference.meta  # noqa: F401

    res["causalml_import_s"] = time.perf_counter() - t
    print(f"causalml import {res['causalml_import_s']:.1f}s (once per process, not part of the fit times)")
    if a.timing_only:
        res["fit_s"] = {}
        for lrn in [s.strip() for s in a.learners.split(",") if s.strip()]:
            t = time.perf_counter()
            UpliftPolicy(learner=lrn, n_jobs=a.n_jobs).fit(logs, scenario=sc, seed=a.log_seed)
            res["fit_s"][lrn] = time.perf_counter() - t
            print(f"uplift[{lrn}] fit on {a.log_users:,} logged users: {res['fit_s'][lrn]:.1f}s")
        t = time.perf_counter()
        LTVPolicy(n_jobs=a.n_jobs).fit(logs, scenario=sc, seed=a.log_seed)
        res["fit_s"]["ltv"] = time.perf_counter() - t
        print(f"ltv fit: {res['fit_s']['ltv']:.1f}s; load average {os.getloadavg()[0]:.1f}")
        return _write(res, a.out)
    coh = generate_cohort(sc, a.eval_users, seed=a.eval_seed)
    feats = coh.features()
    B = bpu * len(coh)

    # ---- truth (evaluation only)
    t = time.perf_counter()
    truth = static_action_outcomes(sc, coh, seed=a.eval_seed, replications=0)
    expected = expected_truth(sc, coh, a.eval_seed, a.replications)
    res["truth_s"] = time.perf_counter() - t
    control = simulate_twin(sc, coh, ControlPolicy(), seed=a.eval_seed)
    c_d7 = float(control["retained_d7"].mean())
    oracle = OraclePolicy(replications=a.replications).fit(None, scenario=sc, seed=a.eval_seed)
    o_tw = simulate_twin(sc, coh, oracle, budget_per_user=bpu, seed=a.eval_seed)
    inc_o = float(o_tw["retained_d7"].sum() - control["retained_d7"].sum())
    res["control_d7"] = c_d7
    res["oracle"] = {"incremental_d7_users": inc_o, "d7": float(o_tw["retained_d7"].mean()),
                     "cost_per_user": float(o_tw["cost"].mean())}
    print(f"control D7 {c_d7:.4f}; oracle D7 {o_tw['retained_d7'].mean():.4f}, +{inc_o:.0f} retained users, "
          f"cost {o_tw['cost'].mean():.4f}/user")

    def value_of(actions: np.ndarray) -> dict:
        d7 = allocation_from_truth(actions, truth, "retained_d7")
        return {"d7": d7, "incremental_d7_users": (d7 - c_d7) * len(coh),
                "cost_per_user": allocation_from_truth(actions, truth, "cost"),
                "paid_d30": allocation_from_truth(actions, truth, "paid_d30"),
                "net_value": allocation_from_truth(actions, truth, "net_value")}

    # ---- uplift learners
    res["uplift"] = {}
    main_pol = None
    for lrn in [s.strip() for s in a.learners.split(",") if s.strip()]:
        pol = UpliftPolicy(learner=lrn, n_jobs=a.n_jobs)
        t = time.perf_counter()
        pol.fit(logs, scenario=sc, seed=a.log_seed)
        fit_s = time.perf_counter() - t
        v = pol.values(feats)
        entry = {"fit_s": fit_s}
        for mode in ("budgeted", "cost_blind"):
            pol.mode = mode
            tw = simulate_twin(sc, coh, pol, budget_per_user=bpu, seed=a.eval_seed)
            inc = float(tw["retained_d7"].sum() - control["retained_d7"].sum())
            entry[mode] = {"incremental_d7_users": inc, "share_of_oracle": inc / inc_o,
                           "d7": float(tw["retained_d7"].mean()), "cost_per_user": float(tw["cost"].mean()),
                           "paid_d30": float(tw["paid_d30"].mean()),
                           "net_value": float(tw["net_value"].mean())}
            print(f"uplift[{lrn}] {mode:10s} fit {fit_s:5.1f}s: +{inc:.0f} D7 users = {inc / inc_o:.1%} of oracle, "
                  f"D7 {tw['retained_d7'].mean():.4f}, cost {tw['cost'].mean():.4f}/user")
        pol.mode = "budgeted"
        entry["values_check"] = bool(np.array_equal(allocate(v, commit, B), allocate(pol.values(feats), commit, B)))
        res["uplift"][lrn] = entry
        if main_pol is None:
            main_pol = pol

    # ---- blanket arms (unlimited) vs uplift
    pol = main_pol
    v = pol.values(feats)
    up_default = value_of(allocate(v, commit, B))
    res["blanket"] = []
    for act in cat.names[1:]:
        tw = simulate_twin(sc, coh, BlanketPolicy(act), budget_per_user=None, seed=a.eval_seed)
        b_d7, b_cost = float(tw["retained_d7"].mean()), float(tw["cost"].mean())
        # the uplift policy on a commitment budget whose realised cost is <= 95% of the blanket's cost per user
        lo, hi = 0.0, float(commit.max())
        for _ in range(30):
            mid = (lo + hi) / 2
            if value_of(allocate(v, commit, mid * len(coh)))["cost_per_user"] <= 0.95 * b_cost:
                lo = mid
            else:
                hi = mid
        matched = value_of(allocate(v, commit, lo * len(coh)))
        row = {"action": act, "d7": b_d7, "cost_per_user": b_cost,
               "uplift_default_d7": up_default["d7"], "uplift_default_cost": up_default["cost_per_user"],
               "beats_at_default": bool(up_default["d7"] > b_d7 and up_default["cost_per_user"] <= 0.95 * b_cost),
               "matched_commit_budget_per_user": lo, "matched_d7": matched["d7"],
               "matched_cost_per_user": matched["cost_per_user"], "beats_cost_matched": bool(matched["d7"] > b_d7)}
        res["blanket"].append(row)
        print(f"blanket {act:10s} D7 {b_d7:.4f} cost {b_cost:.4f} | uplift at <=95% of its cost: "
              f"D7 {matched['d7']:.4f} "
              f"cost {matched['cost_per_user']:.4f} -> {'beats' if row['beats_cost_matched'] else 'LOSES'} | "
              f"uplift at default budget D7 {up_default['d7']:.4f} cost {up_default['cost_per_user']:.4f}")

    # ---- model quality against the truth
    t = time.perf_counter()
    q = uplift_quality(pol, sc, coh, a.eval_seed, truth, expected, n_bootstrap=a.bootstrap)
    res["uplift_quality"] = q["metrics"]
    res["quality_s"] = time.perf_counter() - t
    m = q["metrics"]
    print(f"true AUUC (expected effects) {m['retained_d7_true_auuc']:.5f} vs random "
          f"{m['retained_d7_true_auuc_random']:.5f}; "
          f"Qini {m['retained_d7_true_qini']:.5f} CI [{m['retained_d7_true_qini_ci_low']:.5f}, "
          f"{m['retained_d7_true_qini_ci_high']:.5f}]; observed Qini {m['retained_d7_observed_qini']:.5f} "
          f"CI [{m['retained_d7_observed_qini_ci_low']:.5f}, {m['retained_d7_observed_qini_ci_high']:.5f}]; "
          f"Spearman {m['retained_d7_spearman_mean']:.3f}")

    # ---- LTV
    lp = LTVPolicy(n_jobs=a.n_jobs)
    t = time.perf_counter()
    lp.fit(logs, scenario=sc, seed=a.log_seed)
    ltv_fit = time.perf_counter() - t
    lm, tab = ltv_quality(lp.predict_ltv(feats), truth.outcomes["revenue"][:, 0])
    ltw = simulate_twin(sc, coh, lp, budget_per_user=bpu, seed=a.eval_seed)
    res["ltv"] = {"fit_s": ltv_fit, **lm, "split": lp.last_split_,
                  "plan": lp.segment_plan(commit).to_dict(orient="records"),
                  "true_net_value_lift": float(ltw["net_value"].mean() - control["net_value"].mean()),
                  "true_paid_d30_lift": float(ltw["paid_d30"].mean() - control["paid_d30"].mean()),
                  "true_d7_lift": float(ltw["retained_d7"].mean() - c_d7), "cost_per_user": float(ltw["cost"].mean()),
                  "calibration": tab.to_dict(orient="records")}
    print(f"LTV fit {ltv_fit:.1f}s: R2 {lm['r2']:.3f}, MAE {lm['mae']:.3f} (mean {lm['mean_actual']:.3f}); "
          f"allocation: net value {res['ltv']['true_net_value_lift']:+.4f}/user, pay D30 "
          f"{res['ltv']['true_paid_d30_lift']:+.4f}, D7 {res['ltv']['true_d7_lift']:+.4f}, cost "
          f"{res['ltv']['cost_per_user']:.4f}; split {lp.last_split_}")

    # ---- observable ceiling
    if not a.no_ceiling:
        t = time.perf_counter()
        ac = observable_ceiling(feats[list(FEATURES)].to_numpy(np.float64), expected.effects("retained_d7"),
                                commit, B, a.eval_seed, a.n_jobs)
        cv = value_of(ac)
        res["observable_ceiling"] = {**cv, "share_of_oracle": cv["incremental_d7_users"] / inc_o,
                                     "s": time.perf_counter() - t}
        print(f"observable ceiling: +{cv['incremental_d7_users']:.0f} D7 users = "
              f"{cv['incremental_d7_users'] / inc_o:.1%} of oracle")
    # consistency: oracle allocation read off the realised twins equals its simulated twin
    res["truth_readoff_check"] = bool(abs(value_of(oracle_allocation(expected, commit, B))["incremental_d7_users"]
                                          - inc_o) < 0.5)
    res["loadavg_end"] = os.getloadavg()[0]

    u = res["uplift"][next(iter(res["uplift"]))]["budgeted"]
    floors = {
        "uplift_share_of_oracle >= 0.60": u["share_of_oracle"],
        "beats_every_blanket_cost_matched": all(r["beats_cost_matched"] for r in res["blanket"]),
        "true_auuc_ci_excludes_random": m["retained_d7_true_qini_ci_low"] > 0,
        "ltv_r2 >= 0.3": lm["r2"],
    }
    res["floors"] = floors
    print("floors:", json.dumps(floors))
    return _write(res, a.out)


def _write(res: dict, out: str | None) -> dict:
    if out:
        p = write_text_atomic(out, json.dumps(res, indent=1, default=float))
        print(f"wrote {p}")
    return res


if __name__ == "__main__":
    main()
