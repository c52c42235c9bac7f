"""The Mesa model: one step is one day of one arm's cohort.

Each day the model (1) shows the policy what the platform sees about the users
still installed, (2) passes the policy's requested grants through the arm's
ledger, which refuses any grant whose commitment would exceed the budget,
(3) lets its agents advance their users through the behaviour kernel, and
(4) settles the ledger and collects the day's aggregates with a Mesa
``DataCollector``.

Randomness: the model owns ``self.rng`` (Mesa's generator, seeded from the
run seed's ``DOMAIN_POLICY`` stream; nothing in the world dynamics uses it),
while every behavioural draw comes from counter-based streams keyed by
(seed, user, day, purpose); see :mod:`sim.rng`.
"""

from __future__ import annotations

from typing import Literal

import mesa
import numpy as np
import pandas as pd

from policies.base import Observation, Policy, check_actions
from sim import kernel as K
from sim import rng as R
from sim.agents import CohortAgent, UserAgent
from sim.catalogue import Catalogue
from sim.ledger import Ledger
from sim.population import Cohort, generate_cohort
from sim.scenario import Scenario, load_scenario

RETENTION_DAYS = (1, 7, 14, 30)
DAILY_COLUMNS = (
    "day",
    "active_users",
    "retention",
    "alive_users",
    "revenue",
    "ad_revenue",
    "pay_revenue",
    "cost",
    "cost_coins",
    "cost_trial",
    "cost_unlock",
    "grants",
    "grants_coins",
    "grants_trial",
    "grants_unlock",
    "refused",
    "new_payers",
    "reserved",
)


class IncentiveModel(mesa.Model):
    """Simulate one arm: a cohort of new users under one policy and one budget.

    Parameters
    ----------
    scenario : Scenario or str
        The world (a shipped scenario name, a TOML path, or a validated Scenario).
    cohort : Cohort, optional
        The arm's users; by default users ``0..n_users-1`` of the scenario.
    policy : Policy, optional
        Who gets what; default: nobody gets anything.
    budget : float or None
        Total budget of the arm in yuan (None = unlimited).
    days : int, optional
        Horizon T (default: the scenario's).
    seed : int
        Run seed: population, behaviour and policy streams are derived from it.
    mode : "cohort" or "agents"
        "cohort": users in ``n_partitions`` vectorised CohortAgents (fast).
        "agents": one Mesa UserAgent per user (inspection; same results).
    """

    def __init__(
        self,
        scenario: Scenario | str = "fanqie_newuser",
        cohort: Cohort | None = None,
        policy: Policy | None = None,
        *,
        budget: float | None = None,
        days: int | None = None,
        seed: int = 0,
        n_users: int | None = None,
        mode: Literal["cohort", "agents"] = "cohort",
        n_partitions: int = 1,
        replication: int = 0,
    ) -> None:
        super().__init__(rng=np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(R.DOMAIN_POLICY,))))
        self.scenario = load_scenario(scenario)
        self.seed = int(seed)
        self.cohort = cohort if cohort is not None else generate_cohort(self.scenario, n_users, seed=seed)
        self.policy = policy if policy is not None else Policy()
        self.days = int(days if days is not None else self.scenario.cohort.days)
        if not 1 <= self.days <= 60:
            raise ValueError(f"days: expected an integer in [1, 60], got {days!r}")
        if mode not in ("cohort", "agents"):
            raise ValueError(f"mode: expected 'cohort' or 'agents', got {mode!r}")
        if not isinstance(n_partitions, int) or n_partitions < 1:
            raise ValueError(f"n_partitions: expected a positive integer, got {n_partitions!r}")
        self.catalogue = Catalogue.from_scenario(self.scenario)
        self.ledger = Ledger(budget)
        self.params = K.params_from_scenario(self.scenario)
        eco = self.scenario.economy
        self.daily_ad_cap = eco.ad_daily_cap_impressions * eco.ecpm_yuan / 1000.0
        self.royalty = eco.royalty_per_chapter
        # replication 0 is the world itself; r > 0 re-draws daily luck for the same users
        self.replication = int(replication)
        self.behaviour_key = (
            R.stream_key(self.seed, R.DOMAIN_BEHAVIOUR)
            if self.replication == 0
            else R.stream_key(self.seed, R.DOMAIN_BEHAVIOUR, self.replication)
        )
        self.policy_key = R.stream_key(self.seed, R.DOMAIN_POLICY)
        n = len(self.cohort)
        self.F, self.I, self.mask = K.new_state(n)
        self._cat_type = self.catalogue.types.astype(np.int64)
        self._cat_level = self.catalogue.levels
        self._commit = self.catalogue.commit_costs
        # users still installed at the start of the day: the only rows the kernel and the settle visit
        self._alive_rows = np.arange(n, dtype=np.int64)
        self._frozen = np.zeros(len(K.SETTLE_ROWS))  # final totals of users already uninstalled
        self._live = np.zeros(K.N_SETTLE)
        self._died = np.zeros(len(K.SETTLE_ROWS))
        self._totals_prev = np.zeros(len(K.SETTLE_ROWS))
        self.day = 0
        self.mode = mode
        if mode == "cohort":
            edges = np.linspace(0, n, min(n_partitions, n) + 1).astype(np.int64)
            for lo, hi in zip(edges[:-1], edges[1:], strict=True):
                CohortAgent(self, int(lo), int(hi))
        else:
            for row in range(n):
                UserAgent(self, row)
        # Mesa's class-level id counter (mesa.Agent._ids) holds a strong reference to every model
        # ever built, so finished models (and their state arrays) were never freed; agents are only
        # created above, so the counter can be released now.
        mesa.Agent._ids.pop(self, None)
        self._reset_daily()
        self.datacollector = mesa.DataCollector(model_reporters={c: c for c in DAILY_COLUMNS})

    # ------------------------------------------------------------------
    def _reset_daily(self) -> None:
        self.active_users = int(len(self.cohort))
        self.retention = 1.0
        self.alive_users = int(len(self.cohort))
        for c in DAILY_COLUMNS[4:]:
            setattr(self, c, 0.0 if c not in ("grants", "grants_coins", "grants_trial", "grants_unlock",
                                              "refused", "new_payers") else 0)

    def kernel_args(self):
        return (
            self.cohort.user_ids, self.day, self.behaviour_key, self.params, self._cat_type, self._cat_level,
            self.cohort.traits, self.cohort.segment, self.F, self.I, self.mask,
        )

    @property
    def n_users(self) -> int:
        return len(self.cohort)

    def observe(self) -> Observation:
        """What the platform sees today about the users still installed."""
        return self._observe()[0]

    def alive_rows_in(self, lo: int, hi: int) -> np.ndarray:
        """Rows in ``lo..hi-1`` of users still installed this morning (sorted)."""
        a = self._alive_rows
        return a[np.searchsorted(a, lo): np.searchsorted(a, hi)]

    def _observe(self) -> tuple[Observation, np.ndarray]:
        rows = self._alive_rows
        t = self.day
        I, F = self.I, self.F
        last = I[K.I_LAST_ACTIVE, rows]
        lgd = I[K.I_LAST_GRANT_DAY, rows]
        hist = {
            "days_active": I[K.I_DAYS_ACTIVE, rows] + 1,
            "active_yesterday": (last == t - 1).astype(np.int8),
            "days_since_active": (t - last).astype(np.int32),
            "minutes_total": F[K.F_MINUTES, rows],
            "chapters_total": I[K.I_CHAPTERS, rows],
            "paid": (I[K.I_FIRST_PAY_DAY, rows] >= 0).astype(np.int8),
            "n_payments": I[K.I_N_PAYMENTS, rows],
            "revenue_total": F[K.F_REVENUE, rows],
            "last_action": I[K.I_LAST_ACTION, rows],
            "days_since_grant": np.where(lgd >= 0, t - lgd, -1).astype(np.int32),
            "grants_coins": I[K.I_N_COINS, rows],
            "grants_trial": I[K.I_N_TRIAL, rows],
            "grants_unlock": I[K.I_N_UNLOCK, rows],
            "in_trial": (I[K.I_TRIAL_END, rows] > t).astype(np.int8),
            "coins_left": F[K.F_COINS, rows],
            "unlock_left": I[K.I_UNLOCK_LEFT, rows],
        }
        feats = self.cohort.features()
        if rows.shape[0] != len(self.cohort):
            feats = feats.iloc[rows]
        return Observation(
            day=t, user_ids=self.cohort.user_ids[rows], features=feats, history=hist, catalogue=self.catalogue,
            budget_remaining=self.ledger.available, budget_total=self.ledger.budget, n_cohort=len(self.cohort),
            policy_key=self.policy_key,
        ), rows

    def _grant(self) -> None:
        if self.policy.static and self.day != 1:
            self.grants = self.grants_coins = self.grants_trial = self.grants_unlock = self.refused = 0
            return
        obs, rows = self._observe()
        if len(rows) == 0:
            self.grants = self.grants_coins = self.grants_trial = self.grants_unlock = self.refused = 0
            return
        actions = check_actions(self.policy.act(self.day, obs), obs, getattr(self.policy, "name", "policy"))
        ok, _ = K.authorise(rows, actions, self._commit, self.I[K.I_ALIVE], self.ledger.available)
        granted_rows = rows[ok == 1]
        granted = actions[ok == 1]
        self.I[K.I_PENDING, granted_rows] = granted
        self.refused = int((ok == -1).sum())
        self.ledger.refused += self.refused
        self.ledger.record_grants(granted, self.catalogue)
        types = self._cat_type[granted]
        self.grants = int(granted.shape[0])
        self.grants_coins = int((types == 1).sum())
        self.grants_trial = int((types == 2).sum())
        self.grants_unlock = int((types == 3).sum())

    def _settle(self) -> None:
        t = self.day
        rows = self._alive_rows
        K.settle_rows(rows, t, self.F, self.I, self.mask, self.daily_ad_cap, self.royalty, self._live, self._died)
        nf = len(K.SETTLE_ROWS)
        totals = self._frozen + self._live[:nf]
        delta = totals - self._totals_prev
        self._totals_prev = totals
        self._frozen = self._frozen + self._died
        (self.revenue, self.ad_revenue, self.pay_revenue, self.cost, self.cost_coins, self.cost_trial,
         self.cost_unlock) = (float(x) for x in delta)
        self.active_users = int(self._live[K.S_ACTIVE])
        self.retention = self.active_users / len(self.cohort)
        self.alive_users = int(self._live[K.S_ALIVE])
        self.new_payers = int(self._live[K.S_NEW_PAYERS])
        self.reserved = float(self._live[K.S_RESERVED])
        self.ledger.settle(
            float(totals[3]),
            {"coins": float(totals[4]), "membership_trial": float(totals[5]), "chapter_unlock": float(totals[6])},
            self.reserved,
        )
        self._alive_rows = rows[self.I[K.I_ALIVE, rows] == 1]

    def step(self) -> None:
        if self.day >= self.days:
            self.running = False
            return
        self.day += 1
        self._grant()
        self.agents.do("step")
        self._settle()
        self.datacollector.collect(self)
        if self.day >= self.days:
            self.running = False

    def run(self, progress: bool = False) -> IncentiveModel:
        days = range(self.day, self.days)
        if progress:
            from tqdm.auto import tqdm

            days = tqdm(days, desc=f"simulating {self.n_users:,} users", unit="day")
        for _ in days:
            self.step()
        return self

    # ------------------------------------------------------------------
    def daily(self) -> pd.DataFrame:
        df = self.datacollector.get_model_vars_dataframe()
        return df.reset_index(drop=True)[list(DAILY_COLUMNS)]

    def outcomes(self, columns: tuple[str, ...] | list[str] | None = None) -> pd.DataFrame:
        """Per-user outcomes to the model's current day (one row per user).

        ``columns`` limits the frame to some of :func:`outcome_columns` (saves
        time and memory on very large cohorts).
        """
        cols = outcome_columns(self.days) if columns is None else tuple(columns)
        return pd.DataFrame(
            {c: outcome_array(c, self.F, self.I, self.mask, self.days) for c in cols},
            index=pd.Index(np.asarray(self.cohort.user_ids), name="user_id"),
        )


_F_OUTCOMES = {
    "revenue": K.F_REVENUE, "ad_revenue": K.F_ADREV, "pay_revenue": K.F_PAYREV, "cost": K.F_COST,
    "cost_coins": K.F_COST_COINS, "cost_trial": K.F_COST_TRIAL, "cost_unlock": K.F_COST_UNLOCK,
    "minutes": K.F_MINUTES,
    # P(open that day | the user's state that morning), 0 once uninstalled: same mean as
    # retained_dX with less noise; ground truth only, never shown to policies
    "p_retained_d1": K.F_P_D1, "p_retained_d7": K.F_P_D7, "p_retained_d14": K.F_P_D14, "p_retained_d30": K.F_P_D30,
}
_I_OUTCOMES = {"first_pay_day": K.I_FIRST_PAY_DAY, "active_days": K.I_DAYS_ACTIVE, "churn_day": K.I_CHURN_DAY}


def outcome_columns(days: int) -> tuple[str, ...]:
    """Names of the per-user outcomes of a run with horizon ``days``."""
    ret = tuple(f"retained_d{d}" for d in RETENTION_DAYS if d <= days)
    p_ret = tuple(f"p_retained_d{d}" for d in K.P_DAYS if d <= days)
    return (*ret, *p_ret, "paid_d7", "paid_d30", "first_pay_day", "active_days", "revenue", "ad_revenue",
            "pay_revenue", "cost", "cost_coins", "cost_trial", "cost_unlock", "net_value", "minutes", "n_grants",
            "churn_day")


def outcome_array(name: str, F: np.ndarray, I: np.ndarray, mask: np.ndarray, days: int) -> np.ndarray:
    """One per-user outcome computed from the model's state arrays (a fresh array)."""
    if name not in outcome_columns(days):
        raise ValueError(f"outcome: unknown column {name!r} for a {days}-day run; expected one of "
                         f"{list(outcome_columns(days))}")
    if name.startswith("retained_d"):
        return ((mask >> np.int64(int(name[len("retained_d"):]))) & 1).astype(np.int8)
    if name in _F_OUTCOMES:
        return F[_F_OUTCOMES[name]].copy()
    if name in _I_OUTCOMES:
        return I[_I_OUTCOMES[name]].copy()
    fp = I[K.I_FIRST_PAY_DAY]
    if name == "paid_d7":
        return ((fp >= 0) & (fp <= 7)).astype(np.int8)
    if name == "paid_d30":
        return ((fp >= 0) & (fp <= 30)).astype(np.int8)
    if name == "net_value":
        return F[K.F_REVENUE] - F[K.F_COST]
    # n_grants
    return (I[K.I_N_COINS] + I[K.I_N_TRIAL] + I[K.I_N_UNLOCK]).astype(np.int32)


def simulate(
    scenario: Scenario | str = "fanqie_newuser",
    policy: Policy | None = None,
    *,
    n_users: int | None = None,
    cohort: Cohort | None = None,
    budget: float | None = None,
    days: int | None = None,
    seed: int = 0,
    mode: Literal["cohort", "agents"] = "cohort",
    n_partitions: int = 1,
    progress: bool = False,
) -> IncentiveModel:
    """Build an :class:`IncentiveModel`, run it to its horizon and return it."""
    m = IncentiveModel(
        scenario, cohort, policy, budget=budget, days=days, seed=seed, n_users=n_users, mode=mode,
        n_partitions=n_partitions,
    )
    return m.run(progress=progress)
