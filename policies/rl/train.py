"""Train the ``rl`` agent from the command line and save it.

    python -m policies.rl.train --scenario fanqie_newuser --timesteps 1000000 --out results/rl --seed 0

Writes to ``--out``: ``model.zip`` (stable-baselines3 format), ``settings.json``
(every setting, the training world's seed, training time and the lambda tuned
to the budget), ``rl_curve.csv`` and ``rl_curve.png`` (mean episode reward and
commitment spend against timesteps).  The agent trains on a world whose seed
is derived from ``--seed`` (never the evaluation cohort of that seed).  Load
it with ``policies.rl.policy.RLPolicy.load(DIR)``.
"""

from __future__ import annotations

import argparse
import time

from policies.rl.policy import RLPolicy
from sim.scenario import load_scenario


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="fanqie_newuser", help="scenario name or path to a .toml file")
    ap.add_argument("--timesteps", type=int, default=1_000_000, help="environment steps (user-days) of training")
    ap.add_argument("--out", required=True, help="output directory for the model, settings and training curve")
    ap.add_argument("--algo", choices=("ppo", "dqn"), default="ppo", help="stable-baselines3 algorithm")
    ap.add_argument("--seed", type=int, default=0, help="run seed; the training world's seed is derived from it")
    ap.add_argument("--lam", type=float, default=None,
                    help="fixed cost penalty lambda (skips lambda conditioning and budget tuning)")
    ap.add_argument("--lam-min", type=float, default=None, help="lowest lambda of the training range")
    ap.add_argument("--lam-max", type=float, default=None, help="highest lambda of the training range")
    ap.add_argument("--budget", type=float, default=None,
                    help="budget per user (yuan, commitment basis) to tune lambda to; default: the scenario's")
    ap.add_argument("--value", default=None, help="reward value: retention | active_days | revenue | net_value")
    ap.add_argument("--cost-basis", default=None, help="cost in the reward: realised | commit")
    ap.add_argument("--horizon", type=int, default=None, help="days the agent acts on (episode length)")
    ap.add_argument("--act-days", type=int, default=None, help="grant only on days 1..ACT_DAYS (1 = static)")
    ap.add_argument("--n-envs", type=int, default=None, help="users simulated at once in the vectorised env")
    args = ap.parse_args(argv)

    sc = load_scenario(args.scenario)
    kwargs = {"algo": args.algo, "timesteps": args.timesteps, "lam": args.lam}
    defaults = RLPolicy().get_params()
    if args.lam_min is not None or args.lam_max is not None:
        lo, hi = defaults["lam_range"]
        kwargs["lam_range"] = (args.lam_min if args.lam_min is not None else lo,
                               args.lam_max if args.lam_max is not None else hi)
    for name in ("value", "cost_basis", "horizon", "act_days", "n_envs"):
        v = getattr(args, name)
        if v is not None:
            kwargs[name] = v
    policy = RLPolicy(**kwargs)
    budget = args.budget if args.budget is not None else sc.meta.default_budget_per_user
    t0 = time.perf_counter()
    policy.fit(scenario=sc, seed=args.seed, budget_per_user=budget)
    print(f"trained {args.algo} for {args.timesteps:,} timesteps in {policy.train_seconds_:.1f} s "
          f"(training world seed {policy.world_seed_}); fit incl. tuning {time.perf_counter() - t0:.1f} s")
    tuned = policy.lam_by_budget_.get(round(float(budget), 9))
    if tuned:
        print(f"lambda tuned to {tuned['lam']:.4g}: planned spend {tuned['spend_per_user']:.3f} yuan/user "
              f"(budget {budget:g}, target {tuned['target']:.3f}), D{policy.horizon} retention on validation "
              f"users {tuned['retained']:.4f}")
    for k, p in policy.save(args.out).items():
        print(f"wrote {k}: {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
