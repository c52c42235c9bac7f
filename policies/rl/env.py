"""A single-user gymnasium environment over the simulated world.

One episode is one new user's first days after install; every step is one
day, advanced by the behaviour kernel (:mod:`sim.kernel`), the same code the
Mesa model runs.  See :class:`IncentiveEnv` for spaces, reward and episode end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from policies.rl.features import FeatureEncoder, history_from_state
from sim import kernel as K
from sim import rng as R
from sim.catalogue import Catalogue
from sim.population import generate_cohort
from sim.scenario import Scenario, load_scenario

VALUES = ("retention", "active_days", "revenue", "net_value")
COST_BASES = ("commit", "realised")


@dataclass(frozen=True)
class EnvSettings:
    """Settings shared by :class:`IncentiveEnv` and :class:`policies.rl.vec_env.IncentiveVecEnv`.

    Parameters
    ----------
    horizon : int
        Days per episode (days 1..horizon); with ``value="retention"`` the
        reward is retention on day ``horizon`` (7 = D7 retention).
    value : str
        ``retention`` (1 if active on day ``horizon``), ``active_days`` (1 per
        active day), ``revenue`` (yuan earned that day) or ``net_value``
        (revenue minus realised subsidy cost that day).
    cost_basis : str
        ``commit``: the grant's commitment cost, charged on the grant day (what
        the ledger reserves and the budget is defined on); ``realised``: the
        cost actually incurred each day.
    lam : float
        Cost penalty lambda (reward units per yuan) when ``lam_range`` is None.
    lam_range : (float, float) or None
        If given, each episode draws lambda log-uniformly from this range and
        lambda is part of the observation (a lambda-conditioned policy, tuned
        to a budget after training without retraining).
    act_days : int or None
        Grants are possible on days 1..act_days only (1 = a static day-1
        policy); None = every day of the horizon.
    """

    horizon: int = 7
    value: str = "retention"
    cost_basis: str = "commit"
    lam: float = 0.1
    lam_range: tuple[float, float] | None = None
    act_days: int | None = None

    def __post_init__(self) -> None:
        h = self.horizon
        if not isinstance(h, (int, np.integer)) or isinstance(h, bool) or not 1 <= h <= 60:
            raise ValueError(f"horizon: expected an integer number of days in [1, 60], got {self.horizon!r}")
        if self.value not in VALUES:
            raise ValueError(f"value: expected one of {list(VALUES)}, got {self.value!r}")
        if self.cost_basis not in COST_BASES:
            raise ValueError(f"cost_basis: expected one of {list(COST_BASES)}, got {self.cost_basis!r}")
        if not isinstance(self.lam, (int, float)) or not math.isfinite(self.lam) or self.lam < 0:
            raise ValueError(f"lam: expected a finite cost penalty >= 0 (reward per yuan), got {self.lam!r}")
        if self.lam_range is not None:
            lr = tuple(self.lam_range)
            if len(lr) != 2 or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in lr) \
                    or not 0 < lr[0] < lr[1]:
                raise ValueError(f"lam_range: expected (low, high) with 0 < low < high, got {self.lam_range!r}")
            object.__setattr__(self, "lam_range", (float(lr[0]), float(lr[1])))
        if self.act_days is not None and (
            not isinstance(self.act_days, (int, np.integer)) or isinstance(self.act_days, bool)
            or not 1 <= self.act_days <= self.horizon
        ):
            raise ValueError(
                f"act_days: expected None or an integer in [1, horizon={self.horizon}], got {self.act_days!r}"
            )

    def as_dict(self) -> dict:
        return {"horizon": int(self.horizon), "value": self.value, "cost_basis": self.cost_basis,
                "lam": float(self.lam),
                "lam_range": None if self.lam_range is None else list(self.lam_range),
                "act_days": None if self.act_days is None else int(self.act_days)}


def day_value(value: str, active: np.ndarray, t, horizon: int, d_revenue: np.ndarray, d_cost: np.ndarray) -> np.ndarray:
    """The value part of the reward for one day (before the cost penalty)."""
    if value == "retention":
        return (active & (np.asarray(t) == horizon)).astype(np.float64)
    if value == "active_days":
        return active.astype(np.float64)
    if value == "revenue":
        return np.asarray(d_revenue, dtype=np.float64)
    return np.asarray(d_revenue - d_cost, dtype=np.float64)


class WorldArrays:
    """The scenario's kernel inputs (parameters, catalogue arrays, behaviour stream key)."""

    def __init__(self, scenario: Scenario, world_seed: int) -> None:
        if not isinstance(world_seed, (int, np.integer)) or isinstance(world_seed, bool) or world_seed < 0:
            raise ValueError(f"world_seed: expected a non-negative integer, got {world_seed!r}")
        self.scenario = scenario
        self.world_seed = int(world_seed)
        self.params = K.params_from_scenario(scenario)
        self.catalogue = Catalogue.from_scenario(scenario)
        self.cat_type = self.catalogue.types.astype(np.int64)
        self.cat_level = self.catalogue.levels
        self.commit = self.catalogue.commit_costs
        self.key = R.stream_key(self.world_seed, R.DOMAIN_BEHAVIOUR)


class IncentiveEnv(gym.Env):
    """One new user's first days in the web-novel app; the agent decides each day's incentive.

    ## Description

    Each episode samples a new user (a user id in ``0..n_pool-1`` drawn from
    the env's ``np_random``) of the world ``(scenario, world_seed)``: the user's hidden
    traits and daily luck are keyed by (world seed, user, day, purpose), so
    the same user lives the same life whenever given the same incentives.
    Each step is one day (day 1 is the day after install): the chosen grant
    takes effect, then the user may open the app, read, pay and uninstall,
    all through the behaviour kernel :mod:`sim.kernel`.

    ## Action Space

    ``Discrete(K)`` over the scenario's catalogue: 0 is ``none``, then every
    level of coins, membership trial and chapter unlock (default catalogue:
    none, coins_0.5, coins_1, coins_2, trial_3d, trial_7d, unlock_5,
    unlock_20).  On days after ``act_days`` every action is treated as none.

    ## Observation Space

    ``Box(0, 1, (d,), float32)`` built by
    :class:`policies.rl.features.FeatureEncoder`: one-hot observable day-0
    features (channel, device tier, city tier, age band, genre), gender,
    install hour, OS, scaled day-0 minutes and chapters; the day (one-hot and
    scaled); the user's own history (share of days active, active yesterday,
    days since active, minutes and chapters read, paid, payments, revenue,
    in trial, last incentive (one-hot) and days since, grants per type, coins
    and unlocks left); and, for a lambda-conditioned env, the log-scaled cost
    penalty.  No hidden trait is observed.

    ## Rewards

    ``value - lam * cost`` each day, with ``value`` one of ``retention`` (1
    if the user is active on day ``horizon``, else 0), ``active_days`` (1 per
    active day), ``revenue`` or ``net_value`` (yuan); ``cost`` is the grant's
    commitment cost on the grant day (``cost_basis="commit"``, the ledger's
    basis) or the realised subsidy cost of the day (``"realised"``).

    ## Starting State

    The morning of day 1 for a freshly installed user (active on day 0).

    ## Episode End

    ``terminated`` when the user uninstalls, or after day ``horizon`` (the
    day is part of the observation, so the horizon is part of the task, not a
    time limit).  ``truncated`` is always False.

    ## Arguments

    ``scenario`` (name, path or Scenario), ``world_seed`` (the world's seed),
    ``n_pool`` (users the episodes draw from), and the :class:`EnvSettings` fields ``horizon``, ``value``,
    ``cost_basis``, ``lam``, ``lam_range``, ``act_days``.
    """

    metadata = {"render_modes": []}

    def __init__(self, scenario: Scenario | str = "fanqie_newuser", *, world_seed: int = 0, horizon: int = 7,
                 value: str = "retention", cost_basis: str = "commit", lam: float = 0.1,
                 lam_range: tuple[float, float] | None = None, act_days: int | None = None,
                 n_pool: int = 1 << 16, render_mode: str | None = None) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode: this environment does not render; expected None, got {render_mode!r}")
        self.render_mode = None
        self.settings = EnvSettings(horizon=horizon, value=value, cost_basis=cost_basis, lam=lam,
                                    lam_range=lam_range, act_days=act_days)
        self.world = WorldArrays(load_scenario(scenario), world_seed)
        self.encoder = FeatureEncoder(self.world.scenario, self.settings.horizon, self.settings.lam_range)
        if not isinstance(n_pool, (int, np.integer)) or isinstance(n_pool, bool) or n_pool < 1:
            raise ValueError(f"n_pool: expected a positive integer number of users, got {n_pool!r}")
        # users 0..n_pool-1 of the world; generated once (a user's row depends only on (world seed, user id))
        self.pool = generate_cohort(self.world.scenario, int(n_pool), seed=self.world.world_seed)
        self.pool_static = self.encoder.encode_static(self.pool.features())
        self.action_space = spaces.Discrete(len(self.world.catalogue))
        self.observation_space = spaces.Box(0.0, 1.0, shape=(self.encoder.dim,), dtype=np.float32)
        self._rows = np.zeros(1, dtype=np.int64)
        self._state = None

    def _obs(self) -> np.ndarray:
        F, I, _ = self._state
        t = min(self._day, self.settings.horizon)
        hist = history_from_state(F, I, self._rows, t)
        return self.encoder.encode(self._static, t, hist, self._lam if self.settings.lam_range else None)[0]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        j = int(self.np_random.integers(0, len(self.pool)))
        s = self.settings
        if s.lam_range is not None:
            lo, hi = s.lam_range
            self._lam = float(math.exp(self.np_random.uniform(math.log(lo), math.log(hi))))
        else:
            self._lam = float(s.lam)
        self._cohort = self.pool.subset(np.array([j]))
        self._static = self.pool_static[j:j + 1]
        uid = int(self._cohort.user_ids[0])
        self._state = K.new_state(1)
        self._day = 1
        return self._obs(), {"user_id": uid, "lam": self._lam}

    def step(self, action):
        if self._state is None:
            raise RuntimeError("IncentiveEnv.step: call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action: expected an integer in [0, {self.action_space.n - 1}], got {action!r}")
        s, w = self.settings, self.world
        F, I, mask = self._state
        t = self._day
        a = int(action)
        if s.act_days is not None and t > s.act_days:
            a = 0
        rev0, cost0 = F[K.F_REVENUE, 0], F[K.F_COST, 0]
        I[K.I_PENDING, 0] = a
        c = self._cohort
        K.step_rows_serial(self._rows, c.user_ids, t, w.key, w.params, w.cat_type, w.cat_level, c.traits,
                           c.segment, F, I, mask)
        active = np.array([(mask[0] >> np.int64(t)) & 1], dtype=np.int64).astype(bool)
        d_rev = F[K.F_REVENUE, 0] - rev0
        d_cost = F[K.F_COST, 0] - cost0
        v = float(day_value(s.value, active, t, s.horizon, np.array([d_rev]), np.array([d_cost]))[0])
        cost = float(w.commit[a]) if s.cost_basis == "commit" else float(d_cost)
        reward = v - self._lam * cost
        terminated = bool(I[K.I_ALIVE, 0] == 0 or t >= s.horizon)
        self._day = t + 1
        info = {"day": t, "granted": a, "commit_cost": float(w.commit[a]), "realised_cost": float(d_cost),
                "value": v, "active": bool(active[0])}
        return self._obs(), float(reward), terminated, False, info
