"""The oracle: reads the hidden truth.  An upper bound for static allocation, not a policy
any platform could run.

It knows every user's hidden traits, so it can compute each user's *expected*
outcome under each day-1 action by simulating the same users with fresh daily
luck (replications 1..R of :func:`sim.twins.static_action_outcomes`; the
world the experiment runs in is replication 0, which the oracle does not
see).  It then allocates the arm's budget with the shared solver, on the
ledger's commitment costs so that no grant is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from policies.base import NotFittedError, Observation, Policy
from policies.solver import allocate, objective_values
from sim.population import generate_cohort
from sim.scenario import load_scenario
from sim.twins import StaticEffects, static_action_outcomes


def expected_static_effects(scenario, cohort, seed: int, replications: int = 4):
    """Per-user expected outcomes of each day-1 action (truth known only to the simulator)."""
    return static_action_outcomes(scenario, cohort, seed=seed, replications=replications)


def oracle_allocation(
    effects,
    commit_costs: np.ndarray,
    budget: float | None,
    objective: str = "d7_retention",
    weights: dict[str, float] | None = None,
) -> np.ndarray:
    """Best day-1 action per user from known expected effects, within the budget."""
    preds = {m: effects.effects(m) for m in effects.outcomes}
    if "p_retained_d7" in preds:
        # Rao-Blackwellised D7 retention: same expectation, less replication noise
        preds["retained_d7"] = preds["p_retained_d7"]
    values = objective_values(preds, objective, weights)
    return allocate(values, commit_costs, budget)


class OraclePolicy(Policy):
    """Allocates on the true expected effects (reads hidden traits).  Labelled upper bound.

    Parameters
    ----------
    objective : str
        ``d7_retention`` | ``first_payment`` | ``net_value`` | ``mix``.
    weights : dict, optional
        Metric weights for ``mix``.
    replications : int
        Fresh-luck replications averaged to estimate expected effects.
    """

    name = "oracle"
    static = True
    needs_logs = False
    reads_truth = True

    def __init__(self, objective: str = "d7_retention", weights: dict[str, float] | None = None,
                 replications: int = 4) -> None:
        self.objective = objective
        self.weights = weights
        self.replications = replications

    def fit(self, logs: Any = None, *, scenario=None, seed: int | None = None, **context: Any) -> OraclePolicy:
        """Bind the oracle to the world it reads (scenario and run seed); logs are ignored."""
        if scenario is None or seed is None:
            raise ValueError("oracle.fit: needs scenario= and seed= (the world whose truth it reads)")
        if not isinstance(self.replications, int) or self.replications < 1:
            raise ValueError(f"oracle.replications: expected an integer >= 1, got {self.replications!r}")
        self.scenario_ = load_scenario(scenario)
        self.seed_ = int(seed)
        self._cache = None  # largest expected-effects table computed so far in this world
        return self

    def _expected(self, user_ids: np.ndarray) -> StaticEffects:
        """Expected effects of these users.  Each user's are a pure function of (world, seed, user),
        so a table computed earlier for a superset of users (e.g. the whole cohort's twin) is reused."""
        c = getattr(self, "_cache", None)
        if c is not None and len(c.user_ids):
            pos = np.minimum(np.searchsorted(c.user_ids, user_ids), len(c.user_ids) - 1)
            if np.array_equal(c.user_ids[pos], user_ids):
                return StaticEffects(c.user_ids[pos], c.catalogue, {k: v[pos] for k, v in c.outcomes.items()},
                                     c.replications)
        cohort = generate_cohort(self.scenario_, seed=self.seed_, user_ids=user_ids)
        eff = expected_static_effects(self.scenario_, cohort, self.seed_, self.replications)
        if c is None or len(eff.user_ids) > len(c.user_ids):
            self._cache = eff
        return eff

    def act(self, day: int, obs: Observation) -> np.ndarray:
        if not hasattr(self, "scenario_"):
            raise NotFittedError("oracle: call fit(scenario=..., seed=...) before act()")
        if len(obs) == 0:
            return np.zeros(0, dtype=np.int64)
        eff = self._expected(obs.user_ids)
        budget = None if not np.isfinite(obs.budget_remaining) else obs.budget_remaining
        self.effects_ = eff
        return oracle_allocation(eff, obs.catalogue.commit_costs, budget, self.objective, self.weights)
