"""Population: observable day-0 features and hidden traits of a cohort of new users.

Observables are what the platform sees on install day (day 0).  Hidden traits
drive behaviour and are visible only to the simulator and the oracle.  Each
user's row is a pure function of (seed, user id): a cohort of users 0..N-1
contains exactly the same users as the first N of any larger cohort.

Correlations are deliberate: hidden segment membership is tilted by channel,
device, city, age and install hour, and day-0 reading is driven by the hidden
habit, so targeting is learnable from observables, but only imperfectly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
from numba import njit, prange

from sim import rng as R
from sim.scenario import CHANNELS, SEGMENTS, Scenario

OBSERVABLES = (
    "channel",
    "device_tier",
    "city_tier",
    "age_band",
    "gender",
    "genre",
    "install_hour",
    "os",
    "d0_minutes",
    "d0_chapters",
)
CATEGORICAL_OBSERVABLES = ("channel", "device_tier", "city_tier", "age_band", "gender", "genre", "os")

# Hidden trait rows of Cohort.traits
T_HABIT, T_PRICE, T_PAYPROP, T_ADTOL, T_BINGE, T_MINMU, T_RC, T_RM, T_RU = range(9)
TRAIT_NAMES = (
    "habit",
    "price_sensitivity",
    "pay_propensity",
    "ad_tolerance",
    "binge",
    "minutes_log_mean",
    "resp_coins",
    "resp_trial",
    "resp_unlock",
)
N_TRAITS = len(TRAIT_NAMES)
SEG_PERSUADABLE, SEG_SURE, SEG_LOST, SEG_DOG, SEG_HUNTER = range(5)
N_OBS = len(OBSERVABLES)


@njit(inline="always", cache=True)
def _cat(u, cum):
    for k in range(cum.shape[0] - 1):
        if u < cum[k]:
            return k
    return cum.shape[0] - 1


@njit(inline="always", cache=True)
def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


@njit(cache=True)
def _base_observables(key, uid, cum_channel, cum_device, cum_city, cum_age, female, n_genres, night):
    ch = _cat(R.uniform(key, uid, 0, R.P_CHANNEL), cum_channel)
    dev = _cat(R.uniform(key, uid, 0, R.P_DEVICE), cum_device)
    city = _cat(R.uniform(key, uid, 0, R.P_CITY), cum_city)
    age = _cat(R.uniform(key, uid, 0, R.P_AGE), cum_age)
    gender = 1 if R.uniform(key, uid, 0, R.P_GENDER) < female else 0
    genre = min(n_genres - 1, int(R.uniform(key, uid, 0, R.P_GENRE) * n_genres))
    if R.uniform(key, uid, 0, R.P_HOUR) < night:
        hour = min(5, int(R.uniform(key, uid, 1, R.P_HOUR) * 6))
    else:
        hour = 6 + min(17, int(R.uniform(key, uid, 1, R.P_HOUR) * 18))
    ios_p = 0.08 + 0.30 * (dev == 2)
    os = 1 if R.uniform(key, uid, 0, R.P_OS) < ios_p else 0
    return ch, dev, city, age, gender, genre, hour, os


@njit(inline="always", cache=True)
def _segment_scores(ch, dev, city, age, hour, os, tilt, out):
    night = 1.0 if hour < 6 else 0.0
    out[0] = tilt * (0.5 * (dev == 0) + 0.4 * (city >= 2) + 0.3 * (age <= 1) + 0.3 * (ch == 1))
    out[1] = tilt * (0.9 * (ch == 0) + 0.5 * (age >= 3) + 0.4 * (city == 0) + 0.4 * os)
    out[2] = tilt * (0.8 * (ch == 4) + 0.5 * (ch == 2))
    out[3] = tilt * (0.6 * (ch == 0) + 0.6 * os + 0.3 * (dev == 2))
    out[4] = tilt * (1.0 * ((ch == 1) or (ch == 3)) + 0.6 * (dev == 0) + 0.8 * night)


@njit(cache=True)
def _reference_scores(key, n, cum_channel, cum_device, cum_city, cum_age, female, n_genres, night, tilt):
    scores = np.empty((n, 5))
    buf = np.empty(5)
    for i in range(n):
        ch, dev, city, age, gender, genre, hour, os = _base_observables(
            key, i, cum_channel, cum_device, cum_city, cum_age, female, n_genres, night
        )
        _segment_scores(ch, dev, city, age, hour, os, tilt, buf)
        scores[i, :] = buf
    return scores


@njit(parallel=True, cache=True)
def _generate(
    key, uids, cum_channel, cum_device, cum_city, cum_age, female, n_genres, night, tilt, intercepts,
    habit_mu, habit_noise, resp_c, resp_m, resp_u, pref_boost, minutes_log_mean, max_minutes, minutes_per_chapter,
    tn, rn, d0_sig, d0_noise, obs_i, obs_f, seg_out, traits,
):
    for j in prange(uids.shape[0]):
        uid = uids[j]
        ch, dev, city, age, gender, genre, hour, os = _base_observables(
            key, uid, cum_channel, cum_device, cum_city, cum_age, female, n_genres, night
        )
        buf = np.empty(5)
        _segment_scores(ch, dev, city, age, hour, os, tilt, buf)
        tot = 0.0
        for s in range(5):
            buf[s] = math.exp(buf[s] + intercepts[s])
            tot += buf[s]
        u = R.uniform(key, uid, 0, R.P_SEGMENT) * tot
        seg = 4
        acc = 0.0
        for s in range(5):
            acc += buf[s]
            if u < acc:
                seg = s
                break
        hunter = 1.0 if seg == 4 else 0.0
        habit = (
            habit_mu[seg]
            + habit_noise * R.normal(key, uid, 0, R.P_HABIT)
            + 0.12 * (age - 2)
            + 0.2 * (city == 0)
            - 0.2 * (ch == 4)
        )
        price = _sigmoid(
            0.8 * tn * R.normal(key, uid, 0, R.P_PRICE) + 0.8 * (dev == 0) - 0.6 * (dev == 2) + 0.25 * (city - 1.5)
            + 1.2 * hunter
        )
        adtol = _sigmoid(
            0.9 * tn * R.normal(key, uid, 0, R.P_ADTOL) + 0.5 * (age >= 3) - 0.7 * os - 0.3 * (dev == 2) + 0.2
        )
        g_eff = 0.7 if genre < 3 else -0.4
        binge = _sigmoid(0.9 * tn * R.normal(key, uid, 0, R.P_BINGE) + g_eff)
        payprop = (
            0.8 * tn * R.normal(key, uid, 0, R.P_PAYPROP) + 1.0 * (dev == 2) + 0.6 * os + 0.4 * (city == 0)
            + 0.3 * ((age == 2) or (age == 3)) - 0.8 * price - 1.0 * hunter
        )
        minmu = (
            minutes_log_mean + 0.25 * (habit + 1.5) + 0.6 * (binge - 0.5) + 0.2 * R.normal(key, uid, 0, R.P_MINMU)
        )
        # responsiveness: segment multiplier x matching trait x unobservable noise
        rc = resp_c[seg] * price * (1.0 + rn * (2.0 * R.uniform(key, uid, 0, R.P_RESP) - 1.0))
        rm = resp_m[seg] * (1.0 - adtol) * (1.0 + rn * (2.0 * R.uniform(key, uid, 1, R.P_RESP) - 1.0))
        ru = resp_u[seg] * binge * (1.0 + rn * (2.0 * R.uniform(key, uid, 2, R.P_RESP) - 1.0))
        if seg == 0:
            # persuadables are won over mainly by one incentive type: the one matching their strongest trait
            top = max(rc, rm, ru)
            rc = rc * (pref_boost if rc == top else 1.0 / pref_boost)
            rm = rm * (pref_boost if rm == top else 1.0 / pref_boost)
            ru = ru * (pref_boost if ru == top else 1.0 / pref_boost)
        # day-0 behaviour: observable, driven by hidden habit and binge
        d0m = math.exp(minmu - 0.6 + d0_sig * habit + d0_noise * R.normal(key, uid, 0, R.P_D0MIN))
        d0m = min(max_minutes, d0m)
        mpc = minutes_per_chapter * (1.3 - 0.6 * binge)
        d0c = int(d0m / mpc + R.uniform(key, uid, 0, R.P_D0CH))
        obs_i[0, j] = ch
        obs_i[1, j] = dev
        obs_i[2, j] = city
        obs_i[3, j] = age
        obs_i[4, j] = gender
        obs_i[5, j] = genre
        obs_i[6, j] = hour
        obs_i[7, j] = os
        obs_i[8, j] = d0c
        obs_f[j] = d0m
        seg_out[j] = seg
        traits[T_HABIT, j] = habit
        traits[T_PRICE, j] = price
        traits[T_PAYPROP, j] = payprop
        traits[T_ADTOL, j] = adtol
        traits[T_BINGE, j] = binge
        traits[T_MINMU, j] = minmu
        traits[T_RC, j] = rc
        traits[T_RM, j] = rm
        traits[T_RU, j] = ru


def _cum(shares: list[float]) -> np.ndarray:
    c = np.cumsum(np.asarray(shares, dtype=np.float64))
    c[-1] = 1.0 + 1e-12
    return c


def _pop_args(sc: Scenario):
    p = sc.population
    return (
        _cum(p.channel_shares),
        _cum(p.device_tier_shares),
        _cum(p.city_tier_shares),
        _cum(p.age_band_shares),
        float(p.female_share),
        int(p.n_genres),
        float(p.night_install_share),
    )


@lru_cache(maxsize=32)
def _segment_intercepts_cached(sc_json: str) -> tuple[float, ...]:
    sc = Scenario.model_validate_json(sc_json)
    key = R.stream_key(0, R.DOMAIN_REFERENCE)
    scores = _reference_scores(key, 40_000, *_pop_args(sc), float(sc.segments.observable_tilt))
    shares = np.array([getattr(sc.segments, s) for s in SEGMENTS])
    a = np.log(np.maximum(shares, 1e-12))
    for _ in range(50):
        logits = scores + a
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        got = p.mean(axis=0)
        step = np.log(np.maximum(shares, 1e-12)) - np.log(np.maximum(got, 1e-12))
        a = a + step
        if np.max(np.abs(step)) < 1e-10:
            break
    a[shares <= 0] = -1e9
    return tuple(float(x) for x in a)


def segment_intercepts(sc: Scenario) -> np.ndarray:
    """Intercepts that make the expected segment shares equal the configured ones.

    Calibrated once per scenario on a fixed reference sample (seed-independent),
    so a user's segment never depends on who else is in the cohort.
    """
    return np.array(_segment_intercepts_cached(sc.model_dump_json()))


@dataclass
class Cohort:
    """Arrays describing a cohort; ``user_ids`` are global and sorted ascending."""

    seed: int
    user_ids: np.ndarray
    obs_int: np.ndarray  # (9, N) int16: categorical observables and d0_chapters
    d0_minutes: np.ndarray  # (N,) float32
    segment: np.ndarray  # (N,) int8, hidden
    traits: np.ndarray  # (N_TRAITS, N) float32, hidden
    _features: pd.DataFrame | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def n(self) -> int:
        return len(self)

    def features(self) -> pd.DataFrame:
        """Observable day-0 features (what a platform sees), one row per user."""
        if self._features is None:
            cols = {}
            for k, name in enumerate(OBSERVABLES[:8]):
                cols[name] = self.obs_int[k].astype(np.int8)
            cols["d0_minutes"] = self.d0_minutes.astype(np.float32)
            cols["d0_chapters"] = self.obs_int[8].astype(np.int16)
            self._features = pd.DataFrame(cols, index=pd.Index(self.user_ids, name="user_id"))
        return self._features

    def hidden(self) -> pd.DataFrame:
        """Hidden traits and segment.  Simulator and oracle only."""
        df = pd.DataFrame({n: self.traits[k] for k, n in enumerate(TRAIT_NAMES)})
        df.insert(0, "segment", pd.Categorical.from_codes(self.segment, categories=list(SEGMENTS)))
        df.index = pd.Index(self.user_ids, name="user_id")
        return df

    def subset(self, positions: np.ndarray) -> Cohort:
        positions = np.asarray(positions)
        return Cohort(
            seed=self.seed,
            user_ids=self.user_ids[positions],
            obs_int=self.obs_int[:, positions],
            d0_minutes=self.d0_minutes[positions],
            segment=self.segment[positions],
            traits=self.traits[:, positions],
        )


def generate_cohort(scenario: Scenario, n_users: int | None = None, seed: int = 0, *, user_ids=None) -> Cohort:
    """Generate users ``0..n_users-1`` (or the given global ``user_ids``) of a scenario."""
    if user_ids is None:
        n = scenario.cohort.users if n_users is None else n_users
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"users: expected a positive integer, got {n!r}")
        uids = np.arange(int(n), dtype=np.int64)
    else:
        uids = np.asarray(user_ids, dtype=np.int64)
        if uids.ndim != 1 or uids.size == 0 or np.any(np.diff(uids) <= 0) or uids[0] < 0:
            raise ValueError("user_ids: expected a non-empty, strictly increasing array of non-negative ids")
    key = R.stream_key(seed, R.DOMAIN_POPULATION)
    n = uids.shape[0]
    obs_i = np.empty((9, n), dtype=np.int16)
    obs_f = np.empty(n, dtype=np.float32)
    seg = np.empty(n, dtype=np.int8)
    traits = np.empty((N_TRAITS, n), dtype=np.float32)
    b, inc, pop = scenario.behaviour, scenario.incentives, scenario.population
    habit_mu = np.array([getattr(b.habit, s) for s in SEGMENTS], dtype=np.float64)
    resp = [
        np.array([getattr(x.responsiveness, s) for s in SEGMENTS], dtype=np.float64)
        for x in (inc.coins, inc.membership_trial, inc.chapter_unlock)
    ]
    _generate(
        key, uids, *_pop_args(scenario), float(scenario.segments.observable_tilt), segment_intercepts(scenario),
        habit_mu, float(b.habit_noise), resp[0], resp[1], resp[2], float(scenario.segments.persuadable_focus),
        float(b.minutes_log_mean), float(b.max_minutes),
        float(b.minutes_per_chapter), float(pop.trait_noise), float(pop.response_noise), float(pop.d0_habit_signal),
        float(pop.d0_minutes_noise), obs_i, obs_f, seg, traits,
    )
    return Cohort(seed=int(seed), user_ids=uids, obs_int=obs_i, d0_minutes=obs_f, segment=seg, traits=traits)


def channel_name(code: int) -> str:
    return CHANNELS[code]
