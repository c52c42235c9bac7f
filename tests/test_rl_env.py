"""The RL environments: checkers, reproducibility, same kernel as the Mesa model, budget, bad settings."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import policies.rl  # noqa: F401  (registers IncentiveSim-v0)
from policies.base import Policy
from policies.baselines import BlanketPolicy, ControlPolicy
from policies.rl.env import EnvSettings, IncentiveEnv
from policies.rl.features import FeatureEncoder, history_from_state
from policies.rl.vec_env import IncentiveVecEnv, rollout_cohort
from sim import kernel as K
from sim.model import IncentiveModel, simulate
from sim.population import generate_cohort
from sim.scenario import available_scenarios, load_scenario

SC = load_scenario("fanqie_newuser")


@pytest.fixture(scope="module")
def env():
    return IncentiveEnv(SC, world_seed=11, n_pool=2048)


def test_gymnasium_and_sb3_checkers_pass(env):
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)
    lam_env = IncentiveEnv(SC, world_seed=11, n_pool=512, lam_range=(0.01, 1.0), value="active_days",
                           cost_basis="realised")
    gym_check_env(lam_env, skip_render_check=True)
    sb3_check_env(lam_env, warn=True)


@pytest.mark.parametrize("name", available_scenarios())
def test_every_shipped_scenario_passes_the_checker(name):
    gym_check_env(IncentiveEnv(name, world_seed=1, n_pool=256), skip_render_check=True)


def test_registered_id_makes_the_env():
    e = gym.make(policies.rl.ENV_ID, scenario="fanqie_newuser", world_seed=2, n_pool=256)
    obs, info = e.reset(seed=4)
    assert e.observation_space.contains(obs)
    assert 0 <= info["user_id"] < 256


def _trajectory(env, seed, actions):
    obs, info = env.reset(seed=seed)
    out = [obs]
    rewards = []
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        out.append(obs)
        rewards.append(r)
        if term:
            break
    return info["user_id"], np.array(out), np.array(rewards)


def test_reset_seed_is_reproducible(env):
    acts = [2, 0, 6, 0, 0, 1, 0]
    u1, o1, r1 = _trajectory(env, 123, acts)
    u2, o2, r2 = _trajectory(env, 123, acts)
    assert u1 == u2
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(r1, r2)
    users = {_trajectory(env, s, [0])[0] for s in range(20)}
    assert len(users) > 10  # different seeds draw different users


def test_env_user_lives_the_same_life_as_in_the_mesa_model():
    """Same user, same grant, same world seed: the env and the Mesa model agree day by day."""
    e = IncentiveEnv(SC, world_seed=5, n_pool=4096, horizon=7, value="active_days", lam=0.0)
    for seed in range(12):
        _, info = e.reset(seed=seed)
        uid = info["user_id"]
        env_active = []
        for t in range(1, 8):
            _, r, term, _, inf = e.step(7 if t == 1 else 0)  # unlock_20 on day 1
            env_active.append(int(inf["active"]))
            if term:
                break
        coh = generate_cohort(SC, seed=5, user_ids=[uid])
        m = simulate(SC, BlanketPolicy("unlock_20"), cohort=coh, seed=5, days=7)
        mesa_active = [int((m.mask[0] >> t) & 1) for t in range(1, len(env_active) + 1)]
        assert env_active == mesa_active


class _HistoryProbe(Policy):
    """Checks, every day, that features.history_from_state reproduces the Mesa observation."""

    static = False

    def __init__(self):
        self.model = None
        self.checked = 0

    def act(self, day, obs):
        rows = np.flatnonzero(self.model.I[K.I_ALIVE])
        hist = history_from_state(self.model.F, self.model.I, rows, day)
        for k, v in obs.history.items():
            np.testing.assert_array_equal(hist[k], v, err_msg=k)
        enc = FeatureEncoder(SC, 7)
        x_obs = enc.encode(enc.encode_static(obs.features), min(day, 7), obs.history)
        x_state = enc.encode(enc.encode_static(self.model.cohort.features().iloc[rows]), min(day, 7), hist)
        np.testing.assert_array_equal(x_obs, x_state)
        assert x_obs.min() >= 0.0 and x_obs.max() <= 1.0
        self.checked += 1
        u = obs.uniform(1)
        return np.where(u < 0.1, 6, np.where(u < 0.15, 4, 0)).astype(np.int64)


def test_history_encoding_matches_the_mesa_observation():
    probe = _HistoryProbe()
    m = IncentiveModel(SC, policy=probe, n_users=400, seed=9, days=10)
    probe.model = m
    m.run()
    assert probe.checked == 10


def test_rollout_cohort_uses_the_same_kernel_as_mesa():
    coh = generate_cohort(SC, 3000, seed=21)
    s = EnvSettings(horizon=7, act_days=1, lam=0.0)
    r = rollout_cohort(lambda x: np.full(x.shape[0], 7), SC, coh, 21, s, 0.0)
    o = simulate(SC, BlanketPolicy("unlock_20"), cohort=coh, seed=21).outcomes()
    np.testing.assert_array_equal(r["retained"], o["retained_d7"].to_numpy())
    r0 = rollout_cohort(lambda x: np.zeros(x.shape[0], dtype=np.int64), SC, coh, 21, s, 0.0)
    o0 = simulate(SC, ControlPolicy(), cohort=coh, seed=21).outcomes()
    np.testing.assert_array_equal(r0["retained"], o0["retained_d7"].to_numpy())
    assert r0["commit"].sum() == 0
    np.testing.assert_allclose(r["commit"], SC.incentives.chapter_unlock.levels[-1] * SC.economy.royalty_per_chapter)


def _vec(**kw):
    args = dict(n_envs=64, world_seed=3, seed=7, n_pool=2048, lam_range=(0.01, 1.0))
    args.update(kw)
    return IncentiveVecEnv(SC, **args)


def test_vec_env_is_deterministic_and_in_space():
    rng = np.random.default_rng(0)
    acts = rng.integers(0, 8, size=(40, 64))
    runs = []
    for _ in range(2):
        v = _vec()
        obs = [v.reset()]
        rews, dones = [], []
        for a in acts:
            o, r, d, info = v.step(a)
            obs.append(o)
            rews.append(r)
            dones.append(d)
            assert v.observation_space.contains(o[0])
            for j in np.flatnonzero(d):
                assert "terminal_observation" in info[j] and "episode" in info[j]
        runs.append((np.array(obs), np.array(rews), np.array(dones)))
    for x, y in zip(runs[0], runs[1], strict=True):
        np.testing.assert_array_equal(x, y)
    assert runs[0][2].sum() > 64  # episodes end (uninstall / horizon) and sub-envs restart
    assert np.all(v.day <= 7)


def test_vec_env_respects_the_budget():
    bpu = 0.1
    v = _vec(budget_per_user=bpu, lam_range=None, lam=0.0)
    v.reset()
    for _ in range(30):
        v.step(np.full(64, 3))  # everyone asks for coins_2 every day
        assert v.committed <= v.budget_accrued + 1e-9
        assert v.budget_accrued == pytest.approx(bpu * v.users_started)
    assert v.refused > 0
    st = v.pop_episode_stats()
    assert st["spend"] <= 2 * bpu * 10  # grants were refused, so spend per episode stays bounded
    free = _vec(lam_range=None, lam=0.0)
    free.reset()
    for _ in range(5):
        free.step(np.full(64, 3))
    assert free.refused == 0


def test_vec_env_uses_only_observables():
    v = _vec()
    obs = v.reset()
    enc = v.encoder
    assert obs.shape == (64, enc.dim)
    # the observation is a function of (features, day, history, lambda): rebuilding it from these alone agrees
    rows = np.arange(64)
    feats = v.pool.features().iloc[[int(np.flatnonzero(v.pool.user_ids == u)[0]) for u in v.uids]]
    x = enc.encode(enc.encode_static(feats), 1, history_from_state(v.F, v.I, rows, 1), v.lam)
    np.testing.assert_array_equal(obs, x)


BAD_ENV = [
    ({"horizon": 0}, r"horizon: expected an integer"),
    ({"horizon": 61}, r"horizon: expected an integer"),
    ({"value": "profit"}, r"value: expected one of"),
    ({"cost_basis": "cash"}, r"cost_basis: expected one of"),
    ({"lam": -1.0}, r"lam: expected a finite cost penalty"),
    ({"lam": float("nan")}, r"lam: expected a finite cost penalty"),
    ({"lam_range": (1.0, 0.5)}, r"lam_range: expected \(low, high\)"),
    ({"lam_range": (0.0, 1.0)}, r"lam_range: expected \(low, high\)"),
    ({"act_days": 9}, r"act_days: expected None or an integer in \[1, horizon=7\]"),
    ({"world_seed": -3}, r"world_seed: expected a non-negative integer"),
    ({"n_pool": 0}, r"n_pool: expected a positive integer"),
    ({"render_mode": "human"}, r"render_mode: this environment does not render"),
]


@pytest.mark.parametrize("kwargs,match", BAD_ENV)
def test_env_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IncentiveEnv(SC, **{"n_pool": 16, **kwargs})


BAD_VEC = [
    ({"n_envs": 0}, r"n_envs: expected an integer"),
    ({"budget_per_user": -0.1}, r"budget_per_user: expected None or a finite number"),
    ({"budget_per_user": float("inf")}, r"budget_per_user: expected None or a finite number"),
    ({"seed": -1}, r"seed: expected a non-negative integer"),
    ({"value": "clicks"}, r"value: expected one of"),
]


@pytest.mark.parametrize("kwargs,match", BAD_VEC)
def test_vec_env_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _vec(**{"n_pool": 16, **kwargs})


def test_env_rejects_bad_actions(env):
    with pytest.raises(RuntimeError, match="call reset"):
        IncentiveEnv(SC, world_seed=1, n_pool=8).step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action: expected an integer in \[0, 7\]"):
        env.step(8)
    v = _vec(n_pool=64)
    v.reset()
    with pytest.raises(ValueError, match=r"actions: expected 64 actions"):
        v.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"actions: expected integers in \[0, 7\]"):
        v.step(np.full(64, 9))
