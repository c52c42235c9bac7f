"""A vectorised stable-baselines3 environment: every sub-environment is one user.

:class:`IncentiveVecEnv` keeps the kernel state of ``n_envs`` users in the
kernel's own arrays (``sim.kernel.new_state``) and advances all of them one
day per ``step`` through :func:`sim.kernel.step_rows`, grouped by the day each
user is on (users start at different times because an episode ends at
uninstall and its slot is refilled with a new user at once).  Nothing of the
dynamics is re-implemented here: rewards are read off the kernel's state.

Users are drawn (with the env's own generator) from a pool of the training
world, ``generate_cohort(scenario, n_pool, seed=world_seed)``, so a user's
traits and daily luck are keyed by (world seed, user, day, purpose) exactly as
in the Mesa model.

Budget (optional, ``budget_per_user``): the env keeps a ledger on the
commitment basis.  Each user that starts an episode adds ``budget_per_user``
to the pooled budget; each grant reserves its commitment cost, and
:func:`sim.kernel.authorise` refuses (turns into "none") any grant whose
commitment does not fit, in sub-env order, as the Mesa model's ledger does.
Commitments are never released here, so the env never spends more than the
ledger would allow.

:func:`rollout_cohort` runs a fixed cohort synchronously through days
1..horizon under a decision function: it is how the policy's spend is
measured when lambda is tuned to a budget.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from policies.rl.env import EnvSettings, WorldArrays, day_value
from policies.rl.features import FeatureEncoder, history_from_state
from sim import kernel as K
from sim.population import generate_cohort
from sim.scenario import Scenario, load_scenario

PARALLEL_MIN_ROWS = 8192


class IncentiveVecEnv(VecEnv):
    """``n_envs`` users advanced together through the behaviour kernel.

    Parameters
    ----------
    scenario : Scenario or str
        The world.
    n_envs : int
        Number of users simulated at once (sub-environments).
    world_seed : int
        Seed of the (training) world: population and daily luck.
    seed : int
        Seed of the env's own generator: which pool user each episode gets and
        its lambda (when lambda-conditioned).
    n_pool : int
        Users ``0..n_pool-1`` of the world form the pool episodes draw from.
    budget_per_user : float or None
        Pooled commitment budget per started user (None = no ledger).
    **settings
        :class:`policies.rl.env.EnvSettings` fields (horizon, value,
        cost_basis, lam, lam_range, act_days).
    """

    def __init__(self, scenario: Scenario | str = "fanqie_newuser", n_envs: int = 1024, *, world_seed: int = 0,
                 seed: int = 0, n_pool: int = 1 << 18, budget_per_user: float | None = None, **settings: Any) -> None:
        if not isinstance(n_envs, (int, np.integer)) or isinstance(n_envs, bool) or not 1 <= n_envs <= 1_000_000:
            raise ValueError(f"n_envs: expected an integer in [1, 1000000], got {n_envs!r}")
        if not isinstance(n_pool, (int, np.integer)) or isinstance(n_pool, bool) or n_pool < 1:
            raise ValueError(f"n_pool: expected a positive integer number of users, got {n_pool!r}")
        if budget_per_user is not None and (
            not isinstance(budget_per_user, (int, float)) or not math.isfinite(budget_per_user) or budget_per_user < 0
        ):
            raise ValueError(f"budget_per_user: expected None or a finite number of yuan >= 0, got {budget_per_user!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
        self.settings = EnvSettings(**settings)
        self.world = WorldArrays(load_scenario(scenario), world_seed)
        self.encoder = FeatureEncoder(self.world.scenario, self.settings.horizon, self.settings.lam_range)
        self.budget_per_user = budget_per_user
        self.pool = generate_cohort(self.world.scenario, int(n_pool), seed=self.world.world_seed)
        self.pool_static = self.encoder.encode_static(self.pool.features())
        n = int(n_envs)
        self._seed = int(seed)
        self.rng = np.random.default_rng(np.random.SeedSequence(self._seed))
        self.render_mode = None
        super().__init__(n, spaces.Box(0.0, 1.0, shape=(self.encoder.dim,), dtype=np.float32),
                         spaces.Discrete(len(self.world.catalogue)))
        self._alloc()
        self._actions = np.zeros(n, dtype=np.int64)

    # ------------------------------------------------------------------ state
    def _alloc(self) -> None:
        n = self.num_envs
        self.F, self.I, self.mask = K.new_state(n)
        self._fresh_F, self._fresh_I, _ = K.new_state(1)
        self.uids = np.zeros(n, dtype=np.int64)
        self.traits = np.zeros((self.pool.traits.shape[0], n), dtype=self.pool.traits.dtype)
        self.seg = np.zeros(n, dtype=self.pool.segment.dtype)
        self.static = np.zeros((n, self.encoder.static_dim), dtype=np.float32)
        self.day = np.ones(n, dtype=np.int64)
        self.lam = np.full(n, float(self.settings.lam))
        self.ep_ret = np.zeros(n)
        self.ep_len = np.zeros(n, dtype=np.int64)
        self.ep_commit = np.zeros(n)
        self.ep_value = np.zeros(n)
        self.ep_refused = np.zeros(n, dtype=np.int64)
        # ledger (commitment basis, pooled over started users)
        self.budget_accrued = 0.0
        self.committed = 0.0
        self.refused = 0
        self.users_started = 0
        self._stats: list[tuple[float, float, float, int]] = []

    def _start(self, rows: np.ndarray) -> None:
        """Refill ``rows`` with fresh users drawn from the pool."""
        if rows.size == 0:
            return
        idx = self.rng.integers(0, len(self.pool), size=rows.size)
        self.F[:, rows] = self._fresh_F
        self.I[:, rows] = self._fresh_I
        self.mask[rows] = 1
        self.uids[rows] = self.pool.user_ids[idx]
        self.traits[:, rows] = self.pool.traits[:, idx]
        self.seg[rows] = self.pool.segment[idx]
        self.static[rows] = self.pool_static[idx]
        self.day[rows] = 1
        s = self.settings
        if s.lam_range is not None:
            lo, hi = s.lam_range
            self.lam[rows] = np.exp(self.rng.uniform(math.log(lo), math.log(hi), size=rows.size))
        self.ep_ret[rows] = 0.0
        self.ep_len[rows] = 0
        self.ep_commit[rows] = 0.0
        self.ep_value[rows] = 0.0
        self.ep_refused[rows] = 0
        self.users_started += int(rows.size)
        if self.budget_per_user is not None:
            self.budget_accrued += self.budget_per_user * rows.size

    def _encode(self, rows: np.ndarray | None = None) -> np.ndarray:
        if rows is None:
            rows = np.arange(self.num_envs)
        t = np.minimum(self.day[rows], self.settings.horizon)
        hist = history_from_state(self.F, self.I, rows, t)
        lam = self.lam[rows] if self.settings.lam_range is not None else None
        return self.encoder.encode(self.static[rows], t, hist, lam)

    # ------------------------------------------------------------------ VecEnv API
    def reset(self):
        if self._seeds[0] is not None:
            self._seed = int(self._seeds[0])
            self.rng = np.random.default_rng(np.random.SeedSequence(self._seed))
        self._reset_seeds()
        self._reset_options()
        self._alloc()
        self._start(np.arange(self.num_envs))
        return self._encode()

    def step_async(self, actions: np.ndarray) -> None:
        a = np.asarray(actions).reshape(-1)
        if a.shape[0] != self.num_envs:
            raise ValueError(
                f"actions: expected {self.num_envs} actions (one per sub-env), got shape {np.shape(actions)}"
            )
        if a.size and (a.min() < 0 or a.max() >= self.action_space.n):
            raise ValueError(f"actions: expected integers in [0, {self.action_space.n - 1}], got range "
                             f"[{a.min()}, {a.max()}]")
        self._actions = a.astype(np.int64)

    def step_wait(self):
        s, w = self.settings, self.world
        F, I, mask = self.F, self.I, self.mask
        n = self.num_envs
        a = self._actions.copy()
        if s.act_days is not None:
            a[self.day > s.act_days] = 0
        refused = np.zeros(n, dtype=bool)
        if self.budget_per_user is not None:
            rows = np.flatnonzero(a > 0)
            ok, reserved = K.authorise(rows, a[rows], w.commit, I[K.I_ALIVE], self.budget_accrued - self.committed)
            refused[rows[ok == -1]] = True
            a[rows[ok != 1]] = 0
            self.committed += float(reserved)
            self.refused += int((ok == -1).sum())
        I[K.I_PENDING] = a
        rev0 = F[K.F_REVENUE].copy()
        cost0 = F[K.F_COST].copy()
        days = self.day
        for t in np.unique(days):
            rows = np.flatnonzero(days == t)
            # small groups: the serial twin avoids a thread launch per day group (same kernel, same results)
            step = K.step_rows if rows.size >= PARALLEL_MIN_ROWS else K.step_rows_serial
            step(rows, self.uids, int(t), w.key, w.params, w.cat_type, w.cat_level, self.traits, self.seg,
                        F, I, mask)
        active = ((mask >> days) & 1).astype(bool)
        d_rev = F[K.F_REVENUE] - rev0
        d_cost = F[K.F_COST] - cost0
        v = day_value(s.value, active, days, s.horizon, d_rev, d_cost)
        commit = w.commit[a]
        cost = commit if s.cost_basis == "commit" else d_cost
        rew = (v - self.lam * cost).astype(np.float32)
        self.ep_ret += rew
        self.ep_len += 1
        self.ep_commit += commit
        self.ep_value += v
        self.ep_refused += refused
        dones = (I[K.I_ALIVE] == 0) | (days >= s.horizon)
        infos: list[dict] = [{} for _ in range(n)]
        done_rows = np.flatnonzero(dones)
        if done_rows.size:
            self.day[done_rows] += 1
            term_obs = self._encode(done_rows)
            for k, j in enumerate(done_rows):
                infos[j] = {
                    "terminal_observation": term_obs[k],
                    "TimeLimit.truncated": False,
                    "episode": {"r": float(self.ep_ret[j]), "l": int(self.ep_len[j]), "t": 0.0,
                                "commit": float(self.ep_commit[j]), "value": float(self.ep_value[j])},
                }
                self._stats.append((float(self.ep_ret[j]), float(self.ep_commit[j]), float(self.ep_value[j]),
                                    int(self.ep_refused[j])))
            self._start(done_rows)
        live = np.flatnonzero(~dones)
        self.day[live] += 1
        return self._encode(), rew, dones, infos

    def pop_episode_stats(self) -> dict[str, float]:
        """Mean return, commitment spend, value and refusals of episodes finished since the last call."""
        st = np.array(self._stats, dtype=np.float64).reshape(-1, 4)
        self._stats = []
        if st.shape[0] == 0:
            return {"episodes": 0, "reward": math.nan, "spend": math.nan, "value": math.nan, "refused": math.nan}
        return {"episodes": int(st.shape[0]), "reward": float(st[:, 0].mean()), "spend": float(st[:, 1].mean()),
                "value": float(st[:, 2].mean()), "refused": float(st[:, 3].mean())}

    def close(self) -> None:
        return None

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        return [getattr(self, method_name)(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]


def rollout_cohort(decide, scenario: Scenario, cohort, world_seed: int, settings: EnvSettings, lam: float,
                   encoder: FeatureEncoder | None = None, static: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Run ``cohort`` of world ``world_seed`` through days 1..horizon under ``decide(obs) -> actions``.

    No budget is applied (this measures what the policy *asks* for).  Returns
    per-user arrays: ``commit`` (commitment of all grants), ``value`` (sum of
    the reward's value part), ``retained`` (active on the horizon day) and
    ``grants``.
    """
    w = WorldArrays(scenario, world_seed)
    enc = encoder if encoder is not None else FeatureEncoder(scenario, settings.horizon, settings.lam_range)
    st = static if static is not None else enc.encode_static(cohort.features())
    n = len(cohort)
    F, I, mask = K.new_state(n)
    commit = np.zeros(n)
    value = np.zeros(n)
    grants = np.zeros(n, dtype=np.int64)
    lam_arr = np.full(n, float(lam))
    for t in range(1, settings.horizon + 1):
        rows = np.flatnonzero(I[K.I_ALIVE])
        if rows.size == 0:
            break
        a = np.zeros(n, dtype=np.int64)
        if settings.act_days is None or t <= settings.act_days:
            hist = history_from_state(F, I, rows, t)
            obs = enc.encode(st[rows], t, hist, lam_arr[rows] if settings.lam_range is not None else None)
            a[rows] = np.asarray(decide(obs), dtype=np.int64)
        I[K.I_PENDING] = a
        commit += w.commit[a]
        grants += a > 0
        rev0, cost0 = F[K.F_REVENUE].copy(), F[K.F_COST].copy()
        K.step_range(0, n, cohort.user_ids, t, w.key, w.params, w.cat_type, w.cat_level, cohort.traits,
                     cohort.segment, F, I, mask)
        active = ((mask >> np.int64(t)) & 1).astype(bool)
        value += day_value(settings.value, active, t, settings.horizon, F[K.F_REVENUE] - rev0, F[K.F_COST] - cost0)
    retained = ((mask >> np.int64(settings.horizon)) & 1).astype(np.int8)
    return {"commit": commit, "value": value, "retained": retained, "grants": grants}
