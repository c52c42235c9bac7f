"""Run one simulation from the command line and write its daily table.

    python -m sim.run --scenario fanqie_newuser --users 100000 --days 30 --seed 0 \
        --policy blanket:coins_1 --budget-per-user 0.3 --out results/_scratch/run.csv

Policies: ``none`` (control), ``random`` (each user draws one catalogue action
on day 1, uniformly, keyed by user), ``blanket:ACTION`` (every user gets
``ACTION`` on day 1, e.g. ``blanket:coins_1``; see the scenario card for the
catalogue) and ``oracle`` (reads the hidden truth; an upper bound).  The CSV
has one row per day (``day, active_users, retention, revenue, cost, grants``
and the rest of :data:`sim.model.DAILY_COLUMNS`), written atomically.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from experiments.collect import write_atomic
from policies.base import Policy
from policies.baselines import BlanketPolicy, ControlPolicy, RandomPolicy
from sim.catalogue import Catalogue
from sim.model import simulate
from sim.population import generate_cohort
from sim.scenario import Scenario, ScenarioError, available_scenarios, load_scenario

FIRST_COLUMNS = ["day", "active_users", "retention", "revenue", "cost", "grants"]
POLICY_HELP = "none | random | blanket:ACTION (e.g. blanket:coins_1) | oracle (reads the hidden truth)"


def _positive_int(flag: str, lo: int = 1, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{flag}: expected an integer {rng}, got {v}")
        return v

    return parse


def _budget(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budget-per-user: expected a number of yuan, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"--budget-per-user: expected a finite number >= 0, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sim.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="fanqie_newuser",
                   help=f"shipped scenario name {available_scenarios()} or a path to a .toml file")
    p.add_argument("--users", type=_positive_int("--users", 1, 50_000_000), default=None,
                   help="cohort size (default: the scenario's cohort.users)")
    p.add_argument("--days", type=_positive_int("--days", 1, 60), default=None,
                   help="horizon in days, 1..60 (default: the scenario's cohort.days)")
    p.add_argument("--seed", type=_positive_int("--seed", 0), default=0, help="run seed (default 0)")
    p.add_argument("--policy", default="none", help=POLICY_HELP)
    p.add_argument("--budget-per-user", type=_budget, default=None,
                   help="arm budget in yuan per cohort user (default: unlimited)")
    p.add_argument("--mode", choices=("cohort", "agents"), default="cohort",
                   help="cohort: vectorised cohort agents (fast); agents: one Mesa agent per user (slow, inspection)")
    p.add_argument("--out", type=Path, default=None,
                   help="CSV of daily aggregates (default: results/_scratch/run_<scenario>_seed<S>.csv)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def make_run_policy(spec: str, scenario: Scenario, seed: int) -> Policy:
    """Turn a ``--policy`` value into a policy; raise ValueError naming the flag."""
    if spec == "none":
        return ControlPolicy()
    if spec == "random":
        return RandomPolicy()
    if spec == "oracle":
        from policies.oracle import OraclePolicy

        return OraclePolicy().fit(scenario=scenario, seed=seed)
    if spec.startswith("blanket:"):
        action = spec.partition(":")[2]
        cat = Catalogue.from_scenario(scenario)
        if action not in cat.names or action == "none":
            raise ValueError(f"--policy: unknown action {action!r} in {spec!r}; expected one of {cat.names[1:]}")
        return BlanketPolicy(action)
    raise ValueError(f"--policy: expected {POLICY_HELP}; got {spec!r}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        sc = load_scenario(args.scenario)
        policy = make_run_policy(args.policy, sc, args.seed)
    except (ScenarioError, ValueError) as err:
        parser.error(str(err))
    n = args.users if args.users is not None else sc.cohort.users
    days = args.days if args.days is not None else sc.cohort.days
    out = args.out if args.out is not None else Path("results/_scratch") / f"run_{sc.name}_seed{args.seed}.csv"
    if out.suffix != ".csv":
        parser.error(f"--out: expected a .csv path, got {str(out)!r}")
    budget = None if args.budget_per_user is None else args.budget_per_user * n

    t0 = time.perf_counter()
    cohort = generate_cohort(sc, n, seed=args.seed)
    model = simulate(sc, policy, cohort=cohort, budget=budget, days=days, seed=args.seed, mode=args.mode,
                     progress=not args.no_progress)
    wall = time.perf_counter() - t0
    daily = model.daily()
    daily = daily[FIRST_COLUMNS + [c for c in daily.columns if c not in FIRST_COLUMNS]]
    write_atomic(daily, out)

    o = model.outcomes()
    led = model.ledger
    lines = [
        f"scenario {sc.name}, {n:,} users x {days} days, seed {args.seed}, policy {args.policy}, "
        f"budget {'unlimited' if budget is None else f'{budget:,.2f} yuan'}, mode {args.mode}: {wall:.2f} s",
    ]
    ret = "  ".join(f"D{d} {o[f'retained_d{d}'].mean():.2%}" for d in (1, 7, 14, 30) if f"retained_d{d}" in o)
    lines.append(f"retention   {ret}")
    pay = f"by D7 {o['paid_d7'].mean():.2%}" + (f"  by D30 {o['paid_d30'].mean():.2%}" if days >= 30 else "")
    lines.append(f"first pay   {pay}")
    lines.append(
        f"per user    revenue {o['revenue'].mean():.4f}  cost {o['cost'].mean():.4f}  "
        f"net {o['net_value'].mean():.4f} yuan"
    )
    lines.append(f"ledger      grants {led.grants:,}  refused {led.refused:,}  spent {led.spent:,.2f}  "
                 f"reserved {led.reserved:,.2f} yuan")
    lines.append(f"wrote       {out} ({len(daily)} days)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
