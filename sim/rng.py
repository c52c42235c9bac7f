"""Counter-based random streams keyed by (seed, user, day, purpose).

Every random number in the world is a pure function of a 64-bit stream key
(derived from the run seed with :class:`numpy.random.SeedSequence`), the
user's global id, the day and a purpose code.  Nothing is consumed from a
stateful generator, so a user's draws do not depend on cohort partitioning,
agent activation order, or what other users received; under two policies the
same user sees the same draws on every (day, purpose), which is what makes
counterfactual twins exact (common random numbers).

The mixer is SplitMix64's finaliser, applied three times over the key, user
and (day, purpose) words; it passes BigCrush as a counter-based generator.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Purpose codes.  Never reuse a code for two different draws.
# Population (day = 0):
P_CHANNEL, P_DEVICE, P_CITY, P_AGE, P_GENDER, P_GENRE, P_HOUR, P_OS = 1, 2, 3, 4, 5, 6, 7, 8
P_SEGMENT, P_HABIT, P_PRICE, P_PAYPROP, P_ADTOL, P_BINGE, P_D0MIN, P_D0CH, P_MINMU, P_RESP = (
    10, 12, 14, 16, 18, 20, 22, 24, 26, 28,
)
# Daily behaviour (day = t):
P_OPEN, P_CHURN, P_MINUTES, P_PAY, P_PAYTYPE, P_CONVERT, P_DOGCHURN = 40, 41, 42, 44, 45, 46, 47

# Stream domains, used as SeedSequence spawn keys.
DOMAIN_POPULATION = 1
DOMAIN_BEHAVIOUR = 2
DOMAIN_ASSIGNMENT = 3
DOMAIN_POLICY = 4
DOMAIN_REFERENCE = 5

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_G = np.uint64(0x9E3779B97F4A7C15)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_S16 = np.uint64(16)
_INV53 = 1.0 / 9007199254740992.0


def stream_key(seed: int, domain: int, *extra: int) -> np.uint64:
    """A 64-bit stream key for ``domain`` derived from ``seed`` via SeedSequence."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    ss = np.random.SeedSequence(int(seed), spawn_key=(int(domain), *map(int, extra)))
    return ss.generate_state(1, dtype=np.uint64)[0]


@njit(inline="always", cache=True)
def _mix(z):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(inline="always", cache=True)
def hash3(key, user, day, purpose):
    h = _mix(key ^ (np.uint64(user) * _G))
    h = _mix(h + _G + (np.uint64(day) << _S16) + np.uint64(purpose))
    return _mix(h ^ key)


@njit(inline="always", cache=True)
def uniform(key, user, day, purpose):
    """U(0,1) in (0, 1): never exactly 0, so log() is safe."""
    return ((hash3(key, user, day, purpose) >> _S11).item() + 0.5) * _INV53


@njit(inline="always", cache=True)
def normal(key, user, day, purpose):
    """Standard normal by Box-Muller over purposes ``purpose`` and ``purpose + 1``."""
    u1 = uniform(key, user, day, purpose)
    u2 = uniform(key, user, day, purpose + 1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@njit(cache=True)
def uniform_array(key, users, day, purpose):
    out = np.empty(users.shape[0], dtype=np.float64)
    for i in range(users.shape[0]):
        out[i] = uniform(key, users[i], day, purpose)
    return out


@njit(cache=True)
def normal_array(key, users, day, purpose):
    out = np.empty(users.shape[0], dtype=np.float64)
    for i in range(users.shape[0]):
        out[i] = normal(key, users[i], day, purpose)
    return out
