"""Counterfactual twins: every user simulated under every arm with the same draws.

Because each draw is keyed by (seed, user, day, purpose), simulating the same
cohort under two policies gives two potential outcomes of *the same lives*:
they differ only where an incentive changed something.  The "none" twin is
the control simulation, exactly.

Two kinds of truth are exposed:

* **realised twins** (replication 0, the world the experiment actually runs
  in): per-user potential outcomes under each arm; the true value of any
  policy on a cohort is its twin's mean outcome;
* **expected individual effects** of static day-1 actions (``replications``
  > 0): the mean over fresh behaviour streams (same users, same hidden
  traits, independent daily luck) of each action's effect.  This is what an
  oracle that knows every hidden trait, but not the future, can know.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from policies.base import Policy
from policies.baselines import BlanketPolicy, ControlPolicy
from sim.catalogue import Catalogue
from sim.model import IncentiveModel, outcome_array, outcome_columns
from sim.population import Cohort
from sim.scenario import Scenario, load_scenario

OUTCOME_COLUMNS = (
    "retained_d1",
    "retained_d7",
    "retained_d14",
    "retained_d30",
    "p_retained_d7",
    "paid_d7",
    "paid_d30",
    "revenue",
    "cost",
    "net_value",
)


def _replicated_model(scenario, cohort, policy, *, budget, days, seed, replication):
    return IncentiveModel(scenario, cohort, policy, budget=budget, days=days, seed=seed, replication=replication)


def simulate_twin(
    scenario: Scenario | str,
    cohort: Cohort,
    policy: Policy | None,
    *,
    budget_per_user: float | None = None,
    days: int | None = None,
    seed: int = 0,
    replication: int = 0,
) -> pd.DataFrame:
    """Per-user outcomes of ``cohort`` under ``policy`` (budget scaled to the cohort)."""
    budget = None if budget_per_user is None else budget_per_user * len(cohort)
    m = _replicated_model(
        scenario, cohort, policy, budget=budget, days=days, seed=seed, replication=replication
    ).run()
    return m.outcomes()


def twins(
    scenario: Scenario | str,
    cohort: Cohort,
    arms: Mapping[str, Policy | None],
    *,
    budget_per_user: float | Mapping[str, float | None] | None = None,
    days: int | None = None,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Potential outcomes of every user under every arm: ``{arm: per-user outcomes}``.

    ``budget_per_user`` may be one value for all arms or a mapping by arm name.
    Cost: one simulation per arm.
    """
    sc = load_scenario(scenario)
    out = {}
    for name, pol in arms.items():
        b = budget_per_user.get(name) if isinstance(budget_per_user, Mapping) else budget_per_user
        out[name] = simulate_twin(sc, cohort, pol, budget_per_user=b, days=days, seed=seed)
    return out


@dataclass
class StaticEffects:
    """Per-user outcomes of each static day-1 action, and their effects against "none".

    ``outcomes[metric]`` is an (n_users, n_actions) array; column 0 is "none".
    ``effects(metric)`` subtracts column 0.
    """

    user_ids: np.ndarray
    catalogue: Catalogue
    outcomes: dict[str, np.ndarray]
    replications: tuple[int, ...]

    def effects(self, metric: str = "retained_d7") -> np.ndarray:
        y = self.outcomes[metric]
        return y - y[:, :1]

    def frame(self, metric: str = "retained_d7") -> pd.DataFrame:
        return pd.DataFrame(
            self.effects(metric), index=pd.Index(self.user_ids, name="user_id"), columns=self.catalogue.names
        )


def static_action_outcomes(
    scenario: Scenario | str,
    cohort: Cohort,
    *,
    seed: int = 0,
    replications: int | tuple[int, ...] = 0,
    days: int | None = None,
    metrics: tuple[str, ...] = OUTCOME_COLUMNS,
) -> StaticEffects:
    """Outcomes of giving each catalogue action to every user on day 1 (no budget).

    ``replications=0`` gives the realised twins (the experiment's own world);
    an int ``R > 0`` averages replications ``1..R`` (fresh luck, same users),
    i.e. expected individual outcomes; a tuple lists replications explicitly.
    Cost: ``n_actions x len(replications)`` simulations.
    """
    sc = load_scenario(scenario)
    cat = Catalogue.from_scenario(sc)
    reps = (0,) if replications == 0 else (tuple(range(1, replications + 1)) if isinstance(replications, int)
                                          else tuple(replications))
    n = len(cohort)
    horizon = sc.cohort.days if days is None else days
    metrics = tuple(k for k in metrics if k in outcome_columns(horizon))
    # (K, n) while accumulating: each arm writes contiguous rows straight from the model state
    acc = {k: np.zeros((len(cat), n), dtype=np.float64) for k in metrics}
    for r in reps:
        for a in cat:
            pol = ControlPolicy() if a.index == 0 else BlanketPolicy(a.name)
            m = _replicated_model(sc, cohort, pol, budget=None, days=days, seed=seed, replication=r).run()
            for k in metrics:
                acc[k][a.index] += outcome_array(k, m.F, m.I, m.mask, m.days)
    out = {}
    for k in metrics:
        v = acc.pop(k)
        if len(reps) > 1:
            v /= len(reps)
        out[k] = np.ascontiguousarray(v.T)
    return StaticEffects(cohort.user_ids, cat, out, reps)


def policy_value(outcomes: pd.DataFrame, control: pd.DataFrame) -> dict[str, float]:
    """True effect of a policy on a cohort: mean twin outcome minus mean control twin outcome."""
    res = {}
    for c in OUTCOME_COLUMNS:
        if c in outcomes and c in control:
            res[f"true_{c}_lift"] = float(outcomes[c].mean() - control[c].mean())
    res["true_cost_per_user"] = float(outcomes["cost"].mean())
    inc = float(outcomes["retained_d7"].sum() - control["retained_d7"].sum()) if "retained_d7" in outcomes else 0.0
    res["true_incremental_d7_users"] = inc
    res["true_incremental_d7_per_yuan"] = inc / float(outcomes["cost"].sum()) if outcomes["cost"].sum() > 0 else 0.0
    return res
