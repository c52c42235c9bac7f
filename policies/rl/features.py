"""Observation encoding shared by the gymnasium env, the vectorised env and the deployed policy.

An observation is what the platform can see on the morning of day ``t``
about one user: the observable day-0 features (channel, device, city, age,
gender, genre, install hour, OS, day-0 minutes and chapters), the day, and
the user's *own* logged history so far (days active, minutes and chapters
read, payments, the last incentive and days since it, grants so far, live
trial / coins / unlocks), plus the cost penalty lambda the policy is asked to
act under.  Hidden traits and segments are never part of it.

Every component is scaled into [0, 1] so the observation space is a bounded
``Box``.  The same :class:`FeatureEncoder` turns (a) the simulator's state
arrays in the environments (via :func:`history_from_state`, which computes
exactly the fields of ``policies.base.HISTORY_FIELDS`` the Mesa model shows a
policy) and (b) an ``Observation`` in the Mesa model into identical vectors;
``tests/test_rl_env.py`` checks that they agree.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sim import kernel as K
from sim.catalogue import Catalogue
from sim.scenario import CHANNELS, Scenario

DSA_CAP = 7  # days since last active / since last grant are capped at this


def history_from_state(F: np.ndarray, I: np.ndarray, rows: np.ndarray, t: int | np.ndarray) -> dict[str, np.ndarray]:  # noqa: E741
    """The logged history of users ``rows`` on the morning of day ``t`` (same fields as the Mesa model).

    ``t`` may be one day for all rows or one day per row.
    """
    last = I[K.I_LAST_ACTIVE, rows]
    lgd = I[K.I_LAST_GRANT_DAY, rows]
    return {
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


def _scaled_log(x, cap: float) -> np.ndarray:
    return np.minimum(np.log1p(np.maximum(np.asarray(x, dtype=np.float64), 0.0)) / math.log1p(cap), 1.0)


class FeatureEncoder:
    """Encode (observable features, day, history, lambda) into a float32 vector in [0, 1].

    Parameters
    ----------
    scenario : Scenario
        Fixes the category counts (genres), the catalogue and scale caps.
    horizon : int
        Last day the policy acts on (the day one-hot has this many slots).
    lam_range : (float, float) or None
        If given, the log-scaled cost penalty lambda is the last component
        (the policy is conditioned on it); None leaves it out.
    """

    def __init__(self, scenario: Scenario, horizon: int, lam_range: tuple[float, float] | None = None) -> None:
        if not isinstance(horizon, (int, np.integer)) or not 1 <= horizon <= 60:
            raise ValueError(f"horizon: expected an integer in [1, 60], got {horizon!r}")
        if lam_range is not None:
            lo, hi = lam_range
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
                raise ValueError(f"lam_range: expected (low, high) with 0 < low < high, got {lam_range!r}")
        self.scenario = scenario
        self.horizon = int(horizon)
        self.lam_range = None if lam_range is None else (float(lam_range[0]), float(lam_range[1]))
        self.catalogue = Catalogue.from_scenario(scenario)
        self.n_actions = len(self.catalogue)
        self.n_genres = int(scenario.population.n_genres)
        self.max_minutes = float(scenario.behaviour.max_minutes)
        inc = scenario.incentives
        self.max_coins = float(max(inc.coins.levels))
        self.max_unlock = float(max(inc.chapter_unlock.levels))
        self.static_dim = len(CHANNELS) + 3 + 4 + 5 + 1 + self.n_genres + 2 + 1 + 2
        self.dynamic_dim = self.horizon + 1 + 3 + 2 + 3 + 1 + self.n_actions + 2 + 3 + 2
        self.dim = self.static_dim + self.dynamic_dim + (1 if self.lam_range else 0)

    # ------------------------------------------------------------------
    def encode_static(self, features: pd.DataFrame) -> np.ndarray:
        """Day-0 observables -> (n, static_dim) float32."""
        missing = [c for c in ("channel", "device_tier", "city_tier", "age_band", "gender", "genre",
                               "install_hour", "os", "d0_minutes", "d0_chapters") if c not in features]
        if missing:
            raise ValueError(f"features: missing observable columns {missing}")
        n = len(features)
        out = np.zeros((n, self.static_dim), dtype=np.float32)
        r = np.arange(n)
        col = 0
        for name, k in (("channel", len(CHANNELS)), ("device_tier", 3), ("city_tier", 4), ("age_band", 5)):
            v = np.clip(features[name].to_numpy(dtype=np.int64), 0, k - 1)
            out[r, col + v] = 1.0
            col += k
        out[:, col] = features["gender"].to_numpy(dtype=np.float32)
        col += 1
        g = np.clip(features["genre"].to_numpy(dtype=np.int64), 0, self.n_genres - 1)
        out[r, col + g] = 1.0
        col += self.n_genres
        hour = features["install_hour"].to_numpy(dtype=np.float64)
        out[:, col] = hour < 6
        out[:, col + 1] = np.clip(hour / 23.0, 0, 1)
        col += 2
        out[:, col] = features["os"].to_numpy(dtype=np.float32)
        col += 1
        out[:, col] = _scaled_log(features["d0_minutes"].to_numpy(), self.max_minutes)
        out[:, col + 1] = _scaled_log(features["d0_chapters"].to_numpy(), 200.0)
        return out

    def lam_feature(self, lam) -> np.ndarray:
        lo, hi = self.lam_range
        lam = np.clip(np.asarray(lam, dtype=np.float64), lo, hi)
        return (np.log(lam) - math.log(lo)) / (math.log(hi) - math.log(lo))

    def encode(self, static: np.ndarray, day, history: dict[str, np.ndarray], lam=None) -> np.ndarray:
        """Full observation (n, dim) from encoded statics, the day(s), the history and lambda."""
        n = static.shape[0]
        out = np.zeros((n, self.dim), dtype=np.float32)
        out[:, : self.static_dim] = static
        col = self.static_dim
        day = np.broadcast_to(np.asarray(day, dtype=np.int64), (n,))
        r = np.arange(n)
        d = np.clip(day, 1, self.horizon)
        out[r, col + d - 1] = 1.0
        out[:, col + self.horizon] = np.clip(day / self.horizon, 0, 1)
        col += self.horizon + 1
        h = history
        out[:, col] = np.clip(h["days_active"] / np.maximum(day, 1), 0, 1)
        out[:, col + 1] = h["active_yesterday"]
        out[:, col + 2] = np.clip(h["days_since_active"], 0, DSA_CAP) / DSA_CAP
        col += 3
        out[:, col] = _scaled_log(h["minutes_total"], self.max_minutes * self.horizon)
        out[:, col + 1] = _scaled_log(h["chapters_total"], 50.0 * self.horizon)
        col += 2
        out[:, col] = h["paid"]
        out[:, col + 1] = np.clip(h["n_payments"], 0, 5) / 5.0
        out[:, col + 2] = _scaled_log(h["revenue_total"], 100.0)
        col += 3
        out[:, col] = h["in_trial"]
        col += 1
        la = np.clip(np.asarray(h["last_action"], dtype=np.int64), 0, self.n_actions - 1)
        out[r, col + la] = 1.0
        col += self.n_actions
        dsg = np.asarray(h["days_since_grant"])
        out[:, col] = dsg < 0
        out[:, col + 1] = np.where(dsg < 0, 1.0, np.clip(dsg, 0, DSA_CAP) / DSA_CAP)
        col += 2
        for k, name in enumerate(("grants_coins", "grants_trial", "grants_unlock")):
            out[:, col + k] = np.clip(h[name], 0, 3) / 3.0
        col += 3
        out[:, col] = np.clip(h["coins_left"] / self.max_coins, 0, 1)
        out[:, col + 1] = np.clip(h["unlock_left"] / self.max_unlock, 0, 1)
        col += 2
        if self.lam_range is not None:
            if lam is None:
                raise ValueError("lam: this encoder is lambda-conditioned; pass the cost penalty lambda")
            out[:, col] = self.lam_feature(lam)
        return out
