"""The ``rl`` policy: a stable-baselines3 agent that decides day by day who gets which incentive.

Training (``fit``) never sees the evaluation cohort: it simulates a *training
world* whose seed is derived from the run seed with
``SeedSequence(seed, spawn_key=(TRAIN_DOMAIN,))`` (so its users and their
daily luck differ from the evaluation cohort's), in the vectorised env
:class:`policies.rl.vec_env.IncentiveVecEnv`, through the same behaviour
kernel as the Mesa model.  The policy is *lambda-conditioned*: each training
episode draws the cost penalty lambda from ``lam_range`` and sees it in its
observation.  After training, lambda is tuned to the arm's budget by
bisection (in log lambda) on the commitment spend per user that the
deterministic policy asks for on a validation cohort of the training world
(users the agent did not train on); no retraining is needed for another
budget.  In the Mesa model the policy acts daily on days 1..horizon; if
its grants of the day would exceed the arm's uncommitted budget it keeps the
grants it prefers most per yuan (policy preference over "none" divided by the
commitment) so that the ledger refuses (almost) nothing.

Randomness: stable-baselines3 draws from the global ``random``/``numpy``/
``torch`` generators (``set_random_seed`` seeds all three).  Training runs
inside :func:`isolated_global_rng`, which saves those states, seeds them for
SB3 (via the algorithm's ``seed=``) with torch on one thread, and restores
them afterwards, so training is deterministic for a seed and leaves the rest
of the program's randomness untouched.

Saving / loading: ``save(dir)`` writes SB3's zip (``model.zip``), a plain JSON
of the settings (``settings.json``) and the training curve.  ``RLPolicy.load``
never deserialises the zip's ``data`` JSON (whose non-JSON entries SB3 stores
with cloudpickle, i.e. code); it rebuilds the network from ``settings.json``
and reads only the parameter tensors with
``stable_baselines3.common.save_util.load_from_zip_file(..., load_data=False)``,
which calls ``torch.load(..., weights_only=True)`` (verified in SB3 2.9's
``save_util.py``).  Load only files you wrote.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from policies.base import NotFittedError, Observation, Policy
from policies.rl.env import EnvSettings
from policies.rl.features import FeatureEncoder
from policies.rl.vec_env import IncentiveVecEnv, rollout_cohort
from sim.atomic import save_figure, write_bytes_atomic
from sim.population import generate_cohort
from sim.scenario import load_scenario

TRAIN_DOMAIN = 0x524C  # spawn key of the training world's seed ("RL")
ALGOS = ("ppo", "dqn")


def training_world_seed(seed: int) -> int:
    """The training world's seed: derived from, and never equal to, the run seed."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    s = int(np.random.SeedSequence(int(seed), spawn_key=(TRAIN_DOMAIN,)).generate_state(1, dtype=np.uint32)[0])
    return s if s != int(seed) else s + 1


@contextlib.contextmanager
def isolated_global_rng(threads: int = 1):
    """Let SB3 seed and use the global RNGs (python, numpy, torch) and restore them afterwards."""
    import torch

    py_state = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002 - SB3 uses the legacy global state; restored below
    th_state = torch.get_rng_state()
    n_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(n_threads)
        torch.set_rng_state(th_state)
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


class RLPolicy(Policy):
    """PPO (or DQN) agent acting daily on observables and each user's own history.

    Parameters
    ----------
    algo : str
        ``ppo`` (default) or ``dqn``.
    timesteps : int
        Environment steps (user-days) of training.
    n_envs : int
        Users simulated at once in the vectorised env.
    horizon : int
        The agent acts on days 1..horizon (default 7: the first week).
    value : str
        Reward value: ``active_days`` (default: 1 per day the user opens the
        app, days 1..horizon) | ``retention`` (1 if active on day ``horizon``;
        see docs/rl.md: the agent learns to time grants just before that
        day) | ``revenue`` | ``net_value``.
    cost_basis : str
        ``realised`` (default: the subsidy cost actually incurred, as in the
        per-yuan metrics) or ``commit`` (the ledger's reservation).  The budget
        is always met on the commitment basis (lambda tuning + cap).
    lam_range : (float, float)
        Range of the cost penalty lambda the agent is trained over.
    lam : float or None
        Fixed lambda: skip the budget tuning and deploy with this lambda.
    act_days : int or None
        Grants on days 1..act_days only (1 = a static day-1 agent).
    budget_safety : float
        Tune lambda to this share of the budget (the rest absorbs the gap
        between validation and evaluation cohorts).
    n_val : int
        Validation users (training world, not trained on) for the tuning.
    net_arch : list of int
        Hidden layer sizes of the policy (and value) network.
    learning_rate, n_steps, batch_size, n_epochs, ent_coef, gamma :
        PPO settings (DQN uses learning_rate, batch_size, gamma).
    """

    name = "rl"
    static = False
    needs_logs = False

    def __init__(self, algo: str = "ppo", timesteps: int = 1_000_000, n_envs: int = 1024, horizon: int = 7,
                 value: str = "active_days", cost_basis: str = "realised",
                 lam_range: tuple[float, float] = (0.05, 30.0), lam: float | None = None, act_days: int | None = None,
                 budget_safety: float = 0.95, n_val: int = 10_000, n_pool: int = 1 << 18,
                 net_arch: tuple[int, ...] = (64, 64),
                 learning_rate: float = 3e-4, n_steps: int = 16, batch_size: int = 2048, n_epochs: int = 4,
                 ent_coef: float = 0.01, gamma: float = 1.0, verbose: int = 0) -> None:
        self.algo = algo
        self.timesteps = timesteps
        self.n_envs = n_envs
        self.horizon = horizon
        self.value = value
        self.cost_basis = cost_basis
        self.lam_range = lam_range
        self.lam = lam
        self.act_days = act_days
        self.budget_safety = budget_safety
        self.n_val = n_val
        self.n_pool = n_pool
        self.net_arch = net_arch
        self.learning_rate = learning_rate
        self.n_steps = n_steps
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.ent_coef = ent_coef
        self.gamma = gamma
        self.verbose = verbose

    # ------------------------------------------------------------------ validation
    def _check(self) -> EnvSettings:
        if self.algo not in ALGOS:
            raise ValueError(f"rl.algo: expected one of {list(ALGOS)}, got {self.algo!r}")
        for name, lo in (("timesteps", 1), ("n_envs", 1), ("n_val", 100), ("n_pool", 1), ("n_steps", 1),
                         ("batch_size", 2), ("n_epochs", 1)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                raise ValueError(f"rl.{name}: expected an integer >= {lo}, got {v!r}")
        for name in ("learning_rate", "ent_coef", "gamma"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"rl.{name}: expected a finite number >= 0, got {v!r}")
        if self.gamma > 1:
            raise ValueError(f"rl.gamma: expected a discount in [0, 1], got {self.gamma!r}")
        if not isinstance(self.budget_safety, (int, float)) or not 0 < self.budget_safety <= 1:
            raise ValueError(f"rl.budget_safety: expected a share in (0, 1], got {self.budget_safety!r}")
        arch = list(self.net_arch) if isinstance(self.net_arch, (list, tuple)) else None
        if not arch or not all(isinstance(x, (int, np.integer)) and x >= 1 for x in arch):
            raise ValueError(f"rl.net_arch: expected a non-empty list of positive layer sizes, got {self.net_arch!r}")
        try:
            lam_range = tuple(self.lam_range) if self.lam_range is not None else None
            return EnvSettings(horizon=self.horizon, value=self.value, cost_basis=self.cost_basis,
                               lam=0.0 if self.lam is None else self.lam,
                               lam_range=None if self.lam is not None else lam_range, act_days=self.act_days)
        except (TypeError, ValueError) as err:
            raise ValueError(f"rl: {err}") from None

    # ------------------------------------------------------------------ training
    def _make_algo(self, env, seed: int):
        from stable_baselines3 import DQN, PPO

        arch = [int(x) for x in self.net_arch]
        if self.algo == "ppo":
            return PPO("MlpPolicy", env, learning_rate=self.learning_rate, n_steps=int(self.n_steps),
                       batch_size=int(self.batch_size), n_epochs=int(self.n_epochs), gamma=float(self.gamma),
                       gae_lambda=0.95, ent_coef=float(self.ent_coef), policy_kwargs={"net_arch": arch},
                       seed=int(seed), device="cpu", verbose=self.verbose)
        return DQN("MlpPolicy", env, learning_rate=self.learning_rate, buffer_size=200_000, learning_starts=10_000,
                   batch_size=int(self.batch_size), gamma=float(self.gamma), train_freq=1, gradient_steps=4,
                   target_update_interval=2_000, exploration_fraction=0.3, exploration_final_eps=0.02,
                   policy_kwargs={"net_arch": arch}, seed=int(seed), device="cpu", verbose=self.verbose)

    def fit(self, logs: Any = None, *, scenario=None, seed: int | None = None, budget_per_user: float | None = None,
            **context: Any) -> RLPolicy:
        """Train on a training world derived from ``seed`` (logs are not used).

        ``budget_per_user`` (optional): tune lambda now; otherwise lambda is
        tuned on the first ``act`` from the arm's budget.
        """
        from stable_baselines3.common.callbacks import BaseCallback

        if scenario is None or seed is None:
            raise ValueError("rl.fit: needs scenario= and seed= (the run seed; training uses a world derived from it)")
        settings = self._check()
        sc = load_scenario(scenario)
        self.scenario_ = sc
        self.settings_ = settings
        self.seed_ = int(seed)
        self.world_seed_ = training_world_seed(int(seed))
        self.encoder_ = FeatureEncoder(sc, settings.horizon, settings.lam_range)
        env = IncentiveVecEnv(sc, int(self.n_envs), world_seed=self.world_seed_, seed=self.seed_,
                              n_pool=int(self.n_pool), **settings.as_dict())
        curve: list[dict[str, float]] = []
        t0 = time.perf_counter()

        class _Curve(BaseCallback):
            def _on_step(self) -> bool:
                return True

            def _on_rollout_end(self) -> None:
                st = env.pop_episode_stats()
                if st["episodes"]:
                    curve.append({"timesteps": int(self.num_timesteps), "seconds": time.perf_counter() - t0, **st})

        with isolated_global_rng(threads=1):
            model = self._make_algo(env, self.seed_)
            model.learn(total_timesteps=int(self.timesteps), callback=_Curve())
        self.train_seconds_ = time.perf_counter() - t0
        self.model_ = model
        self.curve_ = curve
        self.lam_by_budget_: dict[float, dict[str, float]] = {}
        self.n_capped_ = 0
        self.day_log_: list[dict[str, Any]] = []
        if budget_per_user is not None:
            self.tune(budget_per_user)
        return self

    # ------------------------------------------------------------------ decisions
    def _scores(self, obs: np.ndarray) -> np.ndarray:
        """Policy preference of each action (PPO: logits; DQN: Q-values), shape (n, K)."""
        import torch

        out = np.empty((obs.shape[0], self.encoder_.n_actions), dtype=np.float64)
        pol = self.model_.policy
        n_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small MLP: one thread is faster and deterministic on a shared machine
        try:
            self._forward(pol, obs, out)
        finally:
            torch.set_num_threads(n_threads)
        return out

    def _forward(self, pol, obs: np.ndarray, out: np.ndarray) -> None:
        import torch

        with torch.no_grad():
            for lo in range(0, obs.shape[0], 65536):
                x = torch.as_tensor(obs[lo:lo + 65536])
                if self.algo == "ppo":
                    s = pol.get_distribution(x).distribution.logits
                else:
                    s = pol.q_net(x)
                out[lo:lo + 65536] = s.numpy()

    def decide(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic action for each encoded observation."""
        return self._scores(obs).argmax(axis=1).astype(np.int64)

    def _validation(self):
        if not hasattr(self, "val_cohort_"):
            ids = np.arange(int(self.n_pool), int(self.n_pool) + int(self.n_val), dtype=np.int64)
            self.val_cohort_ = generate_cohort(self.scenario_, seed=self.world_seed_, user_ids=ids)
            self.val_static_ = self.encoder_.encode_static(self.val_cohort_.features())
        return self.val_cohort_, self.val_static_

    def planned(self, lam: float) -> dict[str, float]:
        """What the deterministic policy does at ``lam`` on the validation cohort (no budget)."""
        coh, st = self._validation()
        r = rollout_cohort(self.decide, self.scenario_, coh, self.world_seed_, self.settings_, lam,
                           encoder=self.encoder_, static=st)
        return {"lam": float(lam), "spend_per_user": float(r["commit"].mean()),
                "retained": float(r["retained"].mean()), "value": float(r["value"].mean()),
                "grants_per_user": float(r["grants"].mean())}

    def tune(self, budget_per_user: float | None) -> float:
        """Set ``lam_`` so the planned commitment spend per user meets ``budget_safety x budget_per_user``."""
        self._require_fit()
        if budget_per_user is not None and (not isinstance(budget_per_user, (int, float))
                                            or not math.isfinite(budget_per_user) or budget_per_user < 0):
            raise ValueError(f"budget_per_user: expected None or a finite number of yuan >= 0, got {budget_per_user!r}")
        s = self.settings_
        if s.lam_range is None:
            self.lam_ = float(s.lam)
            return self.lam_
        lo, hi = s.lam_range
        if budget_per_user is None:
            self.lam_ = lo
            return lo
        key = round(float(budget_per_user), 9)
        if key in self.lam_by_budget_:
            self.lam_ = self.lam_by_budget_[key]["lam"]
            return self.lam_
        target = self.budget_safety * float(budget_per_user)
        p_lo = self.planned(lo)
        if p_lo["spend_per_user"] <= target:
            best = p_lo
        else:
            p_hi = self.planned(hi)
            best = p_hi
            if p_hi["spend_per_user"] <= target:
                a, b = math.log(lo), math.log(hi)  # spend(a) > target >= spend(b)
                for _ in range(12):
                    m = 0.5 * (a + b)
                    pm = self.planned(math.exp(m))
                    if pm["spend_per_user"] > target:
                        a = m
                    else:
                        b, best = m, pm
        best = {**best, "budget_per_user": float(budget_per_user), "target": target}
        self.lam_by_budget_[key] = best
        self.lam_ = best["lam"]
        return self.lam_

    def _require_fit(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("rl: call fit(scenario=..., seed=...) (or RLPolicy.load(dir)) before act()")

    def act(self, day: int, obs: Observation) -> np.ndarray:
        self._require_fit()
        n = len(obs)
        out = np.zeros(n, dtype=np.int64)
        s = self.settings_
        if n == 0 or day > s.horizon or (s.act_days is not None and day > s.act_days):
            return out
        if not hasattr(self, "lam_") or getattr(self, "_tuned_for_", None) != obs.budget_total:
            bpu = None if obs.budget_total is None or obs.n_cohort <= 0 else obs.budget_total / obs.n_cohort
            self.tune(bpu)
            self._tuned_for_ = obs.budget_total
        static = self.encoder_.encode_static(obs.features)
        x = self.encoder_.encode(static, day, obs.history,
                                 np.full(n, self.lam_) if s.lam_range is not None else None)
        sc = self._scores(x)
        a = sc.argmax(axis=1).astype(np.int64)
        commit = obs.catalogue.commit_costs
        cost = commit[a]
        capped = 0
        if np.isfinite(obs.budget_remaining) and cost.sum() > obs.budget_remaining + 1e-12:
            gain = sc[np.arange(n), a] - sc[:, 0]
            prio = np.where(cost > 0, gain / np.where(cost > 0, cost, 1.0), np.inf)
            order = np.argsort(-prio, kind="stable")
            keep = np.cumsum(cost[order]) <= obs.budget_remaining + 1e-12
            drop = order[~keep]
            capped = int((a[drop] > 0).sum())
            a[drop] = 0
        self.n_capped_ = getattr(self, "n_capped_", 0) + capped
        self.day_log_ = getattr(self, "day_log_", [])
        self.day_log_.append({"day": int(day), "users": n, "grants": int((a > 0).sum()),
                              "commit": float(commit[a].sum()), "capped": capped,
                              **{f"n_{nm}": int((a == k).sum()) for k, nm in enumerate(obs.catalogue.names) if k}})
        return a

    # ------------------------------------------------------------------ persistence
    def settings_dict(self) -> dict[str, Any]:
        p = self.get_params()
        p["lam_range"] = None if p["lam_range"] is None else list(p["lam_range"])
        p["net_arch"] = [int(x) for x in p["net_arch"]]
        return p

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``model.zip`` (SB3 format), ``settings.json``, ``curve.csv`` and ``curve.png`` atomically."""
        self._require_fit()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            self.model_.save(Path(tmp) / "model.zip")
            os.replace(Path(tmp) / "model.zip", out / "model.zip")
        meta = {"policy": self.settings_dict(), "scenario": self.scenario_.model_dump(mode="json"),
                "seed": self.seed_, "training_world_seed": self.world_seed_,
                "train_seconds": self.train_seconds_, "lam_by_budget": {str(k): v for k, v in
                                                                        self.lam_by_budget_.items()}}
        write_bytes_atomic(out / "settings.json", json.dumps(meta, indent=2).encode())
        paths = {"model": out / "model.zip", "settings": out / "settings.json"}
        paths.update(self.write_curve(out))
        return paths

    def write_curve(self, out_dir: str | Path) -> dict[str, Path]:
        """Training curve (mean episode reward and commitment spend against timesteps): CSV + PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cols = ("timesteps", "seconds", "episodes", "reward", "spend", "value", "refused")
        lines = [",".join(cols)] + [",".join(f"{r[c]:.6g}" for c in cols) for r in self.curve_]
        write_bytes_atomic(out / "rl_curve.csv", ("\n".join(lines) + "\n").encode())
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
        ts = [r["timesteps"] for r in self.curve_]
        ax[0].plot(ts, [r["reward"] for r in self.curve_], label="reward (value - lambda x cost)")
        ax[0].plot(ts, [r["value"] for r in self.curve_], label="value")
        ax[0].set_xlabel("timesteps")
        ax[0].set_ylabel("mean per episode")
        ax[0].legend(fontsize=7)
        ax[1].plot(ts, [r["spend"] for r in self.curve_], color="C3")
        ax[1].set_xlabel("timesteps")
        ax[1].set_ylabel("commitment spend per episode (yuan)")
        fig.suptitle(f"rl ({self.algo}) training curve; lambda drawn from {self.settings_.lam_range}", fontsize=9)
        fig.tight_layout()
        save_figure(fig, out / "rl_curve.png", dpi=110)
        plt.close(fig)
        return {"curve_csv": out / "rl_curve.csv", "curve_png": out / "rl_curve.png"}

    @classmethod
    def load(cls, model_dir: str | Path) -> RLPolicy:
        """Load a policy saved by :meth:`save` without unpickling anything (parameters only)."""
        from stable_baselines3.common.save_util import load_from_zip_file

        d = Path(model_dir)
        for f in ("settings.json", "model.zip"):
            if not (d / f).exists():
                raise ValueError(f"model_dir: expected {f} in {d} (written by RLPolicy.save)")
        meta = json.loads((d / "settings.json").read_text(encoding="utf-8"))
        pol = cls(**meta["policy"])
        settings = pol._check()
        from sim.scenario import scenario_from_dict

        sc = scenario_from_dict(meta["scenario"], source=str(d / "settings.json"))
        pol.scenario_, pol.settings_ = sc, settings
        pol.seed_, pol.world_seed_ = int(meta["seed"]), int(meta["training_world_seed"])
        pol.encoder_ = FeatureEncoder(sc, settings.horizon, settings.lam_range)
        _, params, _ = load_from_zip_file(d / "model.zip", device="cpu", load_data=False)
        from gymnasium import spaces

        obs_space = spaces.Box(0.0, 1.0, shape=(pol.encoder_.dim,), dtype=np.float32)
        act_space = spaces.Discrete(pol.encoder_.n_actions)
        arch = [int(x) for x in pol.net_arch]
        if pol.algo == "ppo":
            from stable_baselines3.common.policies import ActorCriticPolicy

            net = ActorCriticPolicy(obs_space, act_space, lambda _: 0.0, net_arch=arch)
        else:
            from stable_baselines3.dqn.policies import DQNPolicy

            net = DQNPolicy(obs_space, act_space, lambda _: 0.0, net_arch=arch)
        net.load_state_dict(params["policy"])
        net.set_training_mode(False)

        class _Holder:  # the only part of an SB3 algorithm act() uses
            policy = net

        pol.model_ = _Holder()
        pol.curve_ = []
        pol.train_seconds_ = float(meta.get("train_seconds", math.nan))
        pol.lam_by_budget_ = {}
        pol.n_capped_ = 0
        pol.day_log_ = []
        return pol

    # ------------------------------------------------------------------ report
    def report(self, ctx) -> dict[str, Any]:
        """Training and deployment summary for the A/B report (the truth here comes from ctx, after the run)."""
        self._require_fit()
        figures = []
        if self.curve_ and ctx.out_dir is not None:
            figures.append(str(self.write_curve(ctx.out_dir)["curve_png"]))
        tuned = self.lam_by_budget_.get(round(float(ctx.budget_per_user), 9)) if ctx.budget_per_user is not None \
            else None
        arm_cost = float(ctx.arm_outcomes["cost"].mean()) if len(ctx.arm_outcomes) else math.nan
        metrics = {
            "train_seconds": float(self.train_seconds_),
            "timesteps": float(self.timesteps),
            "lambda": float(getattr(self, "lam_", math.nan)),
            "planned_spend_per_user": float(tuned["spend_per_user"]) if tuned else math.nan,
            "realised_cost_per_user": arm_cost,
            "grants_capped_by_policy": float(getattr(self, "n_capped_", 0)),
        }
        if ctx.policy_twin is not None and ctx.control_twin is not None:
            inc = float(ctx.policy_twin["retained_d7"].sum() - ctx.control_twin["retained_d7"].sum())
            cost = float(ctx.policy_twin["cost"].sum())
            metrics["true_incremental_d7_per_yuan"] = inc / cost if cost > 0 else 0.0
        days = {}
        for r in getattr(self, "day_log_", []):
            days.setdefault(r["day"], {"grants": 0, "commit": 0.0})
            days[r["day"]]["grants"] += r["grants"]
            days[r["day"]]["commit"] += r["commit"]
        rows = "\n".join(f"| {d} | {v['grants']} | {v['commit']:.1f} |" for d, v in sorted(days.items()))
        md = (
            f"RL agent ({self.algo.upper()}, {self.timesteps:,} timesteps, {self.train_seconds_:.0f} s) trained on a "
            f"training world (seed {self.world_seed_}, derived from run seed {self.seed_}); lambda tuned to "
            f"{metrics['lambda']:.4g}.  Grants it decided by day (all sub-runs of this policy object):\n\n"
            "| day | grants | commitment (yuan) |\n|---|---|---|\n" + rows + "\n"
        )
        return {"metrics": metrics, "markdown": md, "figures": figures}

