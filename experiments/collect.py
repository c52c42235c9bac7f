"""Logged training data: a randomised exploration experiment on its own cohort.

Users of a *separate* cohort (its own seed, never the evaluation cohort) are
assigned on day 1 to a catalogue action (including none) at random with known
propensities, simulated to the horizon, and logged the way a platform logs
them: observable day-0 features, day-1 behaviour, the assignment and its
propensity, outcomes and realised cost.  Learned policies are fit on these
logs only.

    python -m experiments.collect --scenario fanqie_newuser --users 100000 --seed 1001 --out results/logs.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from policies.baselines import RandomPolicy
from sim import kernel as K
from sim.atomic import atomic_path
from sim.catalogue import Catalogue
from sim.model import IncentiveModel
from sim.population import OBSERVABLES, generate_cohort
from sim.scenario import load_scenario

DEFAULT_LOG_SEED = 1001
OUTCOME_COLUMNS = (
    "retained_d1",
    "retained_d7",
    "retained_d14",
    "retained_d30",
    "paid_d7",
    "paid_d30",
    "revenue",
    "cost",
    "net_value",
    "active_days",
)
LOG_COLUMNS = ("user_id", *OBSERVABLES, "action", "action_name", "propensity", *OUTCOME_COLUMNS)


def collect_logs(
    scenario="fanqie_newuser",
    *,
    n_users: int = 100_000,
    seed: int = DEFAULT_LOG_SEED,
    probs: dict[str, float] | None = None,
    days: int | None = None,
) -> pd.DataFrame:
    """Run a randomised exploration experiment and return its logs (one row per user).

    ``probs`` maps action names to assignment probabilities (default: uniform
    over the catalogue including none).  The ``propensity`` column is the
    probability of the action the user actually received.
    """
    sc = load_scenario(scenario)
    if not isinstance(n_users, (int, np.integer)) or n_users < 2:
        raise ValueError(f"users: expected an integer >= 2, got {n_users!r}")
    cat = Catalogue.from_scenario(sc)
    policy = RandomPolicy(probs)
    p = policy.probabilities(cat)
    cohort = generate_cohort(sc, int(n_users), seed=seed)
    m = IncentiveModel(sc, cohort, policy, budget=None, days=days, seed=seed).run()
    out = m.outcomes()
    # the assignment is what the policy drew on day 1 (no budget: never refused)
    action = m.I[K.I_LAST_ACTION].astype(np.int64)
    df = cohort.features().copy()
    df.insert(0, "user_id", cohort.user_ids)
    df["action"] = action
    df["action_name"] = np.asarray(cat.names, dtype=object)[action]
    df["propensity"] = p[action]
    for c in OUTCOME_COLUMNS:
        df[c] = out[c].to_numpy()
    df = df.reset_index(drop=True)
    df.attrs.update(scenario=sc.name, seed=int(seed), probs=[float(x) for x in p])
    return df


def write_atomic(df: pd.DataFrame, path: str | Path) -> Path:
    """Write CSV or Parquet (by suffix) through a temporary file and an atomic rename."""
    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"out: expected a .parquet or .csv path, got {str(path)!r}")
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
    return path


def load_logs(path: str | Path) -> pd.DataFrame:
    """Read logs written by :func:`collect_logs` and check their columns."""
    path = Path(path)
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    validate_logs(df)
    return df


def validate_logs(df: pd.DataFrame, required: tuple[str, ...] = LOG_COLUMNS) -> pd.DataFrame:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"logs: missing column(s) {missing}; expected at least {list(required)}")
    if len(df) == 0:
        raise ValueError("logs: no rows")
    if (df["action"] > 0).sum() == 0:
        raise ValueError("logs: no treated user (every logged action is 'none'); cannot estimate effects")
    if (df["action"] == 0).sum() == 0:
        raise ValueError("logs: no control user (no logged 'none' action); cannot estimate effects")
    return df


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="fanqie_newuser", help="shipped scenario name or TOML path")
    ap.add_argument("--users", type=int, default=100_000, help="users in the exploration cohort")
    ap.add_argument("--seed", type=int, default=DEFAULT_LOG_SEED, help="seed of the exploration cohort")
    ap.add_argument("--days", type=int, default=None, help="horizon (default: the scenario's)")
    ap.add_argument("--out", default="results/logs/exploration.parquet", help="output .parquet or .csv")
    args = ap.parse_args(argv)
    df = collect_logs(args.scenario, n_users=args.users, seed=args.seed, days=args.days)
    path = write_atomic(df, args.out)
    print(f"wrote {len(df):,} logged users to {path}")
    print(df.groupby("action_name")[["retained_d7", "paid_d30", "cost"]].mean().round(4).to_string())


if __name__ == "__main__":
    main()
