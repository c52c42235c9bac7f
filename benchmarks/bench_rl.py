"""Benchmarks of the RL arm: environment throughput and the floors on the default scenario.

    python benchmarks/bench_rl.py --throughput
    python benchmarks/bench_rl.py --floors --users 50000
    python benchmarks/bench_rl.py --floors --variants --users 50000
    python benchmarks/bench_rl.py --floors --uplift --users 50000

``--throughput``: environment steps per second of (a) one Python gymnasium env
per user, raw and inside PPO rollouts (SB3 ``DummyVecEnv``), and (b) the
vectorised :class:`policies.rl.vec_env.IncentiveVecEnv`, raw and inside PPO
rollouts (``collect_rollouts`` timed alone, torch on one thread as in training).

``--floors``: trains the default ``rl`` agent (timed), then evaluates every
arm on the *same* evaluation cohort with twins (each arm simulated on the whole
cohort, same daily luck; ``sim.twins``): true D7 lift, realised cost, ledger
commitment and true incremental D7-retained users per yuan (with a
delta-method standard error).  Arms: control, random and the three blankets
(unlimited, as ``ab_test`` runs them, and at the default budget), the RL agent,
the same agent restricted to day-1 grants (a static learned policy at equal
budget), and the oracle's static allocation at equal budget (reads the truth:
the best any static day-1 allocation can do).  ``--variants`` adds the agent
trained on D7 retention (``value="retention"``) instead of active days;
``--uplift`` adds the best static *learned* policy (``policies.uplift``, X-learner on
100k exploration logs) at the budget and at the agent's realised spend.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from policies.baselines import BlanketPolicy, ControlPolicy, RandomPolicy
from policies.oracle import OraclePolicy, oracle_allocation
from policies.rl.env import IncentiveEnv
from policies.rl.policy import RLPolicy, isolated_global_rng
from policies.rl.vec_env import IncentiveVecEnv
from sim.model import IncentiveModel
from sim.population import generate_cohort
from sim.scenario import load_scenario


def _rollout_fps(env, n_steps: int, repeats: int = 3) -> float:
    """Env steps per second of PPO's ``collect_rollouts`` alone (no gradient steps)."""
    from stable_baselines3 import PPO

    with isolated_global_rng(threads=1):
        model = PPO("MlpPolicy", env, n_steps=n_steps, batch_size=min(2048, n_steps * env.num_envs), seed=0,
                    device="cpu", policy_kwargs={"net_arch": [64, 64]})
        _, cb = model._setup_learn(n_steps * env.num_envs * repeats, None)
        cb.on_training_start(locals(), globals())
        model.collect_rollouts(model.env, cb, model.rollout_buffer, n_rollout_steps=n_steps)  # warm-up
        best = 0.0
        for _ in range(repeats):
            t = time.perf_counter()
            model.collect_rollouts(model.env, cb, model.rollout_buffer, n_rollout_steps=n_steps)
            best = max(best, n_steps * env.num_envs / (time.perf_counter() - t))
    return best


def throughput(sc) -> None:
    from stable_baselines3.common.vec_env import DummyVecEnv

    print(f"== throughput (os.cpu_count()={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}) ==")
    env = IncentiveEnv(sc, world_seed=1, n_pool=1 << 14)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(500):
        if env.step(int(rng.integers(0, 8)))[2]:
            env.reset()
    n, t = 20_000, time.perf_counter()
    for _ in range(n):
        if env.step(int(rng.integers(0, 8)))[2]:
            env.reset()
    single_raw = n / (time.perf_counter() - t)
    print(f"python env per user, raw step():            {single_raw:10,.0f} steps/s")
    dummy = DummyVecEnv([lambda: IncentiveEnv(sc, world_seed=1, n_pool=1 << 14) for _ in range(16)])
    single_ppo = _rollout_fps(dummy, n_steps=256)
    print(f"python env x16 (DummyVecEnv), PPO rollouts: {single_ppo:10,.0f} steps/s")
    vec = IncentiveVecEnv(sc, 1024, world_seed=1, seed=0, lam_range=(0.05, 30.0), value="active_days",
                          cost_basis="realised")
    vec.reset()
    for _ in range(20):
        vec.step(rng.integers(0, 8, 1024))
    steps, t = 200, time.perf_counter()
    for _ in range(steps):
        vec.step(rng.integers(0, 8, 1024))
    vec_raw = steps * 1024 / (time.perf_counter() - t)
    print(f"IncentiveVecEnv(1024), raw step():          {vec_raw:10,.0f} steps/s")
    vec_ppo = _rollout_fps(vec, n_steps=64)
    print(f"IncentiveVecEnv(1024), PPO rollouts:        {vec_ppo:10,.0f} steps/s")
    print(f"ratio vec / python env in PPO rollouts:     {vec_ppo / single_ppo:10.1f} x")


class _Fixed(ControlPolicy):
    """Static: the given day-1 action per user id (an allocation computed elsewhere)."""

    name = "fixed"

    def __init__(self, user_ids, actions):
        self.by_user = dict(zip(np.asarray(user_ids).tolist(), np.asarray(actions).tolist(), strict=True))

    def act(self, day, obs):
        return np.array([self.by_user.get(int(u), 0) for u in obs.user_ids], dtype=np.int64)


def _arm(sc, coh, pol, bpu, seed, ctrl):
    m = IncentiveModel(sc, coh, pol, budget=None if bpu is None else bpu * len(coh), seed=seed).run()
    out = m.outcomes()
    d = out["retained_d7"].to_numpy(dtype=float) - (ctrl["retained_d7"].to_numpy(dtype=float) if ctrl is not None
                                                      else 0.0)
    c = out["cost"].to_numpy(dtype=float)
    cat = m.catalogue
    commit = sum(cnt * cat[cat.index(name)].commit_cost for name, cnt in m.ledger.grants_by_action.items())
    r = d.sum() / c.sum() if c.sum() > 0 else 0.0
    se = np.sqrt(np.var(d - r * c, ddof=1) * len(d)) / c.sum() if c.sum() > 0 else float("nan")
    d14 = 100 * (out["retained_d14"].mean() - ctrl["retained_d14"].mean()) if ctrl is not None else 0.0
    return out, {"d7_lift_pp": 100 * d.mean(), "d14_lift_pp": d14,
                 "cost": c.mean(), "commit": commit / len(coh), "per_yuan": r, "se": se,
                 "refused": m.ledger.refused}


def floors(sc, n_users: int, seed: int, variants: bool, uplift: bool = False) -> None:
    bpu = float(sc.meta.default_budget_per_user)
    print(f"== floors: scenario {sc.name}, evaluation cohort {n_users:,} users (seed {seed}), "
          f"budget {bpu} yuan/user ==")
    coh = generate_cohort(sc, n_users, seed=seed)
    ctrl_out, _ = _arm(sc, coh, ControlPolicy(), None, seed, None)
    rows = []

    def add(name, pol, b):
        t = time.perf_counter()
        _, r = _arm(sc, coh, pol, b, seed, ctrl_out)
        rows.append((name, "unlimited" if b is None else f"{b:g}", r, time.perf_counter() - t))

    add("random", RandomPolicy(), None)
    for a in ("coins_1", "trial_7d", "unlock_20"):
        add(f"blanket_{a}", BlanketPolicy(a), None)
    add("random", RandomPolicy(), bpu)
    for a in ("coins_1", "trial_7d", "unlock_20"):
        add(f"blanket_{a}", BlanketPolicy(a), bpu)
    trained = {}
    specs = [("rl (default: active days, daily)", {}), ("rl static (act_days=1)", {"act_days": 1})]
    if variants:
        specs.append(("rl D7-retention reward", {"value": "retention", "lam_range": (0.005, 3.0)}))
    for name, kw in specs:
        t = time.perf_counter()
        pol = RLPolicy(**kw).fit(scenario=sc, seed=seed)
        fit_s = time.perf_counter() - t
        trained[name] = pol
        print(f"trained {name}: {pol.timesteps:,} timesteps, learn() {pol.train_seconds_:.1f} s, fit {fit_s:.1f} s")
        t = time.perf_counter()
        pol.tune(bpu)
        print(f"  lambda tuned to {pol.lam_:.4g} in {time.perf_counter() - t:.1f} s: "
              f"{pol.lam_by_budget_[round(bpu, 9)]}")
        add(name, pol, bpu)
        days = {}
        for r in pol.day_log_:
            days[r["day"]] = days.get(r["day"], 0) + r["grants"]
        print(f"  grants by day: {days}; grants capped by the policy: {pol.n_capped_}")
    t = time.perf_counter()
    oracle = OraclePolicy().fit(scenario=sc, seed=seed)
    add("oracle static (reads truth)", oracle, bpu)
    print(f"oracle: {time.perf_counter() - t:.1f} s")
    # the oracle's static allocation at the *realised* spend of the default agent: bisection on its budget
    rl_cost = rows[[r[0] for r in rows].index(specs[0][0])][2]["cost"]
    lo, hi = 0.0, bpu
    best = None
    for _ in range(10):
        mid = 0.5 * (lo + hi)
        acts = oracle_allocation(oracle.effects_, oracle.effects_.catalogue.commit_costs, mid * len(coh))
        _, r = _arm(sc, coh, _Fixed(coh.user_ids, acts), None, seed, ctrl_out)
        if r["cost"] > rl_cost:
            hi = mid
        else:
            lo, best = mid, (mid, acts)
    if best is not None:
        add(f"oracle static at the agent's realised spend (budget {best[0]:.3f})", _Fixed(coh.user_ids, best[1]), None)
    if uplift:
        # the best static *learned* policy: uplift X-learner on 100k exploration logs (as ab_test fits it)
        from experiments.ab_test import log_seed
        from experiments.collect import collect_logs
        from policies.uplift import UpliftPolicy

        t = time.perf_counter()
        logs = collect_logs(sc, n_users=100_000, seed=log_seed(seed))
        up = UpliftPolicy(learner="x", objective="d7_retention").fit(logs, scenario=sc, seed=seed)
        print(f"uplift: logs + fit {time.perf_counter() - t:.1f} s")
        add("uplift X (static learned, 100k logs)", up, bpu)
        lo, hi = 0.0, bpu
        for _ in range(8):
            mid = 0.5 * (lo + hi)
            _, r = _arm(sc, coh, up, mid, seed, ctrl_out)
            if r["cost"] > rl_cost:
                hi = mid
            else:
                lo = mid
        if lo > 0:
            add(f"uplift X at the agent's realised spend (budget {lo:.4f})", up, lo)
    print()
    print("| arm | budget/user | true D7 lift (pp) | true D14 lift (pp) | realised cost/user | commitment/user | "
          "incremental D7 users per yuan (+- se) | refused | sim s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, b, r, s in rows:
        print(f"| {name} | {b} | {r['d7_lift_pp']:.2f} | {r['d14_lift_pp']:.2f} | {r['cost']:.4f} | "
              f"{r['commit']:.3f} | {r['per_yuan']:.3f} +- {r['se']:.3f} | {r['refused']} | {s:.1f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="fanqie_newuser", help="scenario name or .toml path")
    ap.add_argument("--throughput", action="store_true", help="measure env and PPO-rollout steps per second")
    ap.add_argument("--floors", action="store_true", help="train the default agent and evaluate the floors")
    ap.add_argument("--variants", action="store_true", help="with --floors: also the D7-retention-reward agent")
    ap.add_argument("--uplift", action="store_true",
                    help="with --floors: also the uplift X policy (static learned) at the budget and at equal spend")
    ap.add_argument("--users", type=int, default=50_000, help="evaluation cohort size for --floors")
    ap.add_argument("--seed", type=int, default=0, help="run seed (evaluation cohort; training world derived)")
    args = ap.parse_args(argv)
    sc = load_scenario(args.scenario)
    if not (args.throughput or args.floors):
        ap.error("choose --throughput and/or --floors")
    if args.throughput:
        throughput(sc)
    if args.floors:
        floors(sc, args.users, args.seed, args.variants, args.uplift)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
