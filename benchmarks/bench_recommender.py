"""Benchmark of the two-tower recommender: training time, held-out metrics, true value of both modes.

    python benchmarks/bench_recommender.py                       # default scenario, 100k logs, 100k evaluation users
    python benchmarks/bench_recommender.py --log-users 20000 --eval-users 20000   # quick look

Steps, top to bottom:
1. collect logged exploration data (its own seed, never the evaluation cohort);
2. train the recommender on it, timed, with torch fixed to ``--threads`` CPU threads;
3. print the held-out prediction metrics (ROC-AUC, PR-AUC, calibration, precision/recall at the
   operating threshold, accuracy beside the base rate);
4. simulate the evaluation cohort under control, both modes, the oracle and every blanket arm
   (twins: same users, same luck) and print D7 lift, first-pay lift, net value, cost, incremental
   D7-retained users per yuan and regret against the oracle;
5. check the floor (gain mode beats every blanket arm per yuan) and write the report and figures.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.collect import DEFAULT_LOG_SEED, collect_logs
from policies import rec_metrics as RM
from policies.base import EvalContext
from policies.recommender import RecommenderPolicy
from sim.atomic import atomic_path, write_text_atomic
from sim.population import generate_cohort
from sim.scenario import load_scenario
from sim.twins import simulate_twin, static_action_outcomes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="fanqie_newuser", help="shipped scenario name or TOML path")
    ap.add_argument("--log-users", type=int, default=100_000, help="users in the logged exploration cohort")
    ap.add_argument("--log-seed", type=int, default=DEFAULT_LOG_SEED, help="seed of the exploration cohort")
    ap.add_argument("--eval-users", type=int, default=100_000, help="users in the evaluation cohort")
    ap.add_argument("--eval-seed", type=int, default=2026, help="seed of the evaluation cohort (not the logs')")
    ap.add_argument("--budget", type=float, default=None,
                    help="budget per user in yuan (commitment basis); default: the scenario's")
    ap.add_argument("--fit-seed", type=int, default=0, help="training seed of the recommender (full report)")
    ap.add_argument("--extra-fit-seeds", default="",
                    help="comma-separated further training seeds: refit and re-check the floor for each "
                         "(seed-to-seed spread of the gain mode), e.g. '1,2'")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads while training and predicting")
    ap.add_argument("--time-threads", default="",
                    help="comma-separated thread counts to time training with, e.g. '1,2' (extra fits)")
    ap.add_argument("--out-dir", default="results/recommender",
                    help="where report.md, metrics.csv and the figures are written")
    args = ap.parse_args(argv)

    sc = load_scenario(args.scenario)
    bpu = sc.meta.default_budget_per_user if args.budget is None else args.budget
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # 1. logs
    t = time.perf_counter()
    logs = collect_logs(sc, n_users=args.log_users, seed=args.log_seed)
    print(f"[1] logged {len(logs):,} users (seed {args.log_seed}) in {time.perf_counter() - t:.1f} s; "
          f"D7 {logs['retained_d7'].mean():.4f}, paid_d30 {logs['paid_d30'].mean():.4f}")

    # 2. training time
    for thr in [int(x) for x in args.time_threads.split(",") if x.strip()]:
        p = RecommenderPolicy(n_threads=thr).fit(logs, scenario=sc, seed=args.fit_seed)
        print(f"[2] fit with {thr} thread(s): {p.fit_seconds_:.1f} s for {len(p.models_)} two-towers, "
              f"epochs {[len(x.history_) for x in p.models_]} (best {[x.best_epoch_ for x in p.models_]})")
    pol = RecommenderPolicy(n_threads=args.threads).fit(logs, scenario=sc, seed=args.fit_seed)
    print(f"[2] fit ({args.threads} thread(s)) on {pol.n_logs_['train']:,} rows "
          f"(+{pol.n_logs_['threshold']:,} threshold split, {pol.n_logs_['heldout']:,} held out): "
          f"{pol.fit_seconds_:.1f} s for an ensemble of {len(pol.models_)}, "
          f"epochs {[len(x.history_) for x in pol.models_]}, best {[x.best_epoch_ for x in pol.models_]}, "
          f"best validation loss {[round(x.best_val_loss_, 5) for x in pol.models_]}")

    # 3. held-out metrics
    lm = pol.log_metrics_
    cls = pd.DataFrame(lm["classification"]).T
    cols = ["base_rate", "mean_predicted", "roc_auc", "pr_auc", "ece", "threshold", "flagged_share", "precision",
            "recall", "f1", "accuracy", "accuracy_all_negative", "accuracy_at_0.5", "recall_at_0.5"]
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(f"[3] held-out metrics (threshold rule: {pol.threshold_rule}, "
              "chosen on the threshold split, never trained on)")
        print(cls[cols].round(4).to_string())
        for tname, tab in lm["calibration"].items():
            print(f"    calibration {tname}:")
            print(tab[["n", "mean_predicted", "observed", "observed_se"]].round(4).to_string())
        print("    IPS lift on held-out logs:", {k: (round(v["lift"], 4), round(v["se"], 4))
                                                 for k, v in lm["ips"].items()})

    # 4. twins of the evaluation cohort
    t = time.perf_counter()
    coh = generate_cohort(sc, args.eval_users, seed=args.eval_seed)
    control = simulate_twin(sc, coh, None, seed=args.eval_seed)
    truth = static_action_outcomes(sc, coh, seed=args.eval_seed, replications=0)
    ctx = EvalContext(scenario=sc, cohort=coh, seed=args.eval_seed, budget_per_user=bpu, arm_users=coh.user_ids,
                      arm_outcomes=control, control_outcomes=control, truth=truth, policy_twin=None,
                      control_twin=control, oracle_twin=None, out_dir=out_dir)
    rep = pol.report(ctx)
    print(f"[4] twins of {len(coh):,} evaluation users (seed {args.eval_seed}) at {bpu:g} yuan/user "
          f"in {time.perf_counter() - t:.1f} s")
    mt = rep["metrics"]
    rows = {}
    for arm in ("gain", "response", "oracle"):
        rows[arm] = {k: mt.get(f"{arm}_true_{k}", math.nan) for k in (
            "treated_share", "cost_per_user", "d7_lift", "paid_d30_lift", "net_value_lift", "incremental_d7_users",
            "incremental_d7_per_yuan", "incremental_d7_per_yuan_se", "treated_control_d7", "treated_d7_lift",
            "treated_cost", "regret_vs_oracle")}
    y7, cost = truth.outcomes["retained_d7"], truth.outcomes["cost"]
    blanket = {}
    for k, name in enumerate(truth.catalogue.names):
        if k == 0:
            continue
        d = y7[:, k] - y7[:, 0]
        c = float(cost[:, k].sum())
        p30 = truth.outcomes["paid_d30"][:, k] - truth.outcomes["paid_d30"][:, 0]
        nv = truth.outcomes["net_value"][:, k] - truth.outcomes["net_value"][:, 0]
        blanket[name] = c
        rows[f"blanket {name}"] = {
            "treated_share": 1.0, "cost_per_user": c / d.size, "d7_lift": d.mean(), "paid_d30_lift": p30.mean(),
            "net_value_lift": nv.mean(), "incremental_d7_users": d.sum(), "incremental_d7_per_yuan": d.sum() / c,
            "incremental_d7_per_yuan_se": d.std(ddof=1) * math.sqrt(d.size) / c,
            "treated_control_d7": y7[:, 0].mean(), "treated_d7_lift": d.mean(), "treated_cost": c / d.size,
            "regret_vs_oracle": math.nan}
    table = pd.DataFrame(rows).T
    table.index.name = "arm"
    with pd.option_context("display.width", 220, "display.max_columns", 30):
        print(table.round(4).to_string())
    comp = pd.DataFrame({a: {k.split("_treated_segment_")[1]: v for k, v in mt.items()
                             if k.startswith(f"{a}_treated_segment_")} for a in ("gain", "response", "oracle")}).T
    print("    treated users by hidden segment (truth, evaluation only):")
    print(comp.round(3).to_string())

    # 5. floor and files
    g = rows["gain"]["incremental_d7_per_yuan"]
    g_se = rows["gain"]["incremental_d7_per_yuan_se"]
    ok = True
    for name in blanket:
        b = rows[f"blanket {name}"]
        margin = g - b["incremental_d7_per_yuan"]
        se = math.hypot(g_se, b["incremental_d7_per_yuan_se"])
        passed = margin > 0
        ok &= passed
        print(f"[5] gain {g:.4f} vs blanket {name} {b['incremental_d7_per_yuan']:.4f}: margin {margin:+.4f} "
              f"(~{margin / se if se > 0 else math.inf:.1f} SE) {'PASS' if passed else 'FAIL'}")
    print(f"[5] floor (gain mode beats every blanket arm on incremental D7-retained users per yuan): "
          f"{'PASS' if ok else 'FAIL'}")
    extra = [int(x) for x in args.extra_fit_seeds.split(",") if x.strip()]
    spread = {args.fit_seed: (rows["gain"]["incremental_d7_per_yuan"], rows["gain"]["incremental_d7_users"],
                              rows["response"]["incremental_d7_per_yuan"])}
    best_blanket = max(blanket, key=lambda k: rows[f"blanket {k}"]["incremental_d7_per_yuan"])
    for s in extra:
        p = RecommenderPolicy(n_threads=args.threads).fit(logs, scenario=sc, seed=s)
        vals = {}
        for mode in ("gain", "response"):
            tw = simulate_twin(sc, coh, p.with_mode(mode), budget_per_user=bpu, seed=args.eval_seed)
            vals[mode] = RM.twin_value(tw, control)
        spread[s] = (vals["gain"]["incremental_d7_per_yuan"], vals["gain"]["incremental_d7_users"],
                     vals["response"]["incremental_d7_per_yuan"])
        ok_s = all(vals["gain"]["incremental_d7_per_yuan"] > rows[f"blanket {k}"]["incremental_d7_per_yuan"]
                   for k in blanket)
        ok &= ok_s
        print(f"[5] fit seed {s}: gain {vals['gain']['incremental_d7_per_yuan']:.4f} per yuan "
              f"({vals['gain']['incremental_d7_users']:.0f} users), response "
              f"{vals['response']['incremental_d7_per_yuan']:.4f}; best blanket {best_blanket} "
              f"{rows[f'blanket {best_blanket}']['incremental_d7_per_yuan']:.4f}: {'PASS' if ok_s else 'FAIL'}")
    if extra:
        g_all = np.array([v[0] for v in spread.values()])
        print(f"[5] gain per yuan over {len(spread)} fit seeds: mean {g_all.mean():.4f}, "
              f"min {g_all.min():.4f}, max {g_all.max():.4f}; floor over all seeds: {'PASS' if ok else 'FAIL'}")
    md = "\n".join([f"# Recommender benchmark ({sc.name}, {bpu:g} yuan/user)", "",
                    f"Command: `python benchmarks/bench_recommender.py --log-users {args.log_users} "
                    f"--eval-users {args.eval_users} --eval-seed {args.eval_seed} --fit-seed {args.fit_seed}`", "",
                    "## All arms (twins)", "", RM.markdown_table(table, ".4g"), "", rep["markdown"], ""])
    write_text_atomic(out_dir / "report.md", md)
    with atomic_path(out_dir / "metrics.csv") as tmp:
        pd.Series(rep["metrics"], name="value").rename_axis("metric").to_csv(tmp)
    print(f"wrote {out_dir / 'report.md'}, {out_dir / 'metrics.csv'} and figures {rep['figures']}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
