"""The policy protocol: what a policy sees and what it must return.

A policy is asked once per day for the users still installed.  It sees an
:class:`Observation`: the users' observable day-0 features and their own
logged history so far.  Hidden traits are never in it.  It returns one
catalogue action index per listed user (0 = none).  Static policies act on
day 1 only (``static = True``); dynamic ones act every day.

Write your own by subclassing :class:`Policy` (or any class with the same
``act``/``fit`` methods and ``static`` attribute) and name it as
``module.path:ClassName`` in a config or on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sim import rng as R

if TYPE_CHECKING:
    from sim.catalogue import Catalogue

HISTORY_FIELDS = (
    "days_active",  # days opened so far, day 0 included
    "active_yesterday",  # 1 if opened on day - 1
    "days_since_active",  # day - last day opened
    "minutes_total",
    "chapters_total",
    "paid",  # 1 if any payment so far
    "n_payments",
    "revenue_total",
    "last_action",  # index of the last granted action (0 = none yet)
    "days_since_grant",  # day - last grant day, or -1 if never granted
    "grants_coins",
    "grants_trial",
    "grants_unlock",
    "in_trial",
    "coins_left",  # unredeemed coin balance (the platform's own books)
    "unlock_left",
)


class NotFittedError(RuntimeError):
    """A learned policy was used before ``fit``."""


@dataclass
class Observation:
    """What the platform sees on ``day`` about the users it may treat.

    ``features`` (DataFrame) and ``history`` (dict of arrays) are row-aligned
    with ``user_ids``.  ``budget_remaining`` is the arm's uncommitted budget
    (``inf`` if unlimited), ``n_cohort`` the arm's cohort size.
    """

    day: int
    user_ids: np.ndarray
    features: pd.DataFrame
    history: dict[str, np.ndarray]
    catalogue: Catalogue
    budget_remaining: float
    budget_total: float | None
    n_cohort: int
    policy_key: np.uint64 = field(repr=False, default=np.uint64(0))

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    def uniform(self, purpose: int = 0) -> np.ndarray:
        """Per-user U(0,1) draws keyed by (policy seed, user, day, purpose).

        Use these for randomised policies: they do not depend on which other
        users are in the cohort, so randomised assignment is reproducible.
        """
        return R.uniform_array(self.policy_key, self.user_ids, self.day, 1000 + int(purpose))

    def history_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.history, index=self.features.index)


class Policy:
    """Base class: a static policy that gives nothing.  Override ``act``.

    Attributes
    ----------
    name : str
        Registry name.
    static : bool
        If True, :meth:`act` is only called on day 1.
    needs_logs : bool
        If True, :meth:`fit` must be called with logged data before use.
    """

    name = "policy"
    static = True
    needs_logs = False

    def fit(self, logs: Any = None, **context: Any) -> Policy:
        return self

    def act(self, day: int, obs: Observation) -> np.ndarray:
        return np.zeros(len(obs), dtype=np.int64)

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and not k.endswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def check_actions(actions: Any, obs: Observation, policy_name: str) -> np.ndarray:
    """Validate a policy's output: one integer action in the catalogue per listed user."""
    a = np.asarray(actions)
    if a.shape != (len(obs),):
        raise ValueError(
            f"policy {policy_name!r}: act() must return one action per user, shape ({len(obs)},); got shape {a.shape}"
        )
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"policy {policy_name!r}: act() must return integer action indices, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    if a.size and (a.min() < 0 or a.max() >= len(obs.catalogue)):
        raise ValueError(
            f"policy {policy_name!r}: action indices must be in [0, {len(obs.catalogue) - 1}], "
            f"got range [{a.min()}, {a.max()}]"
        )
    return a


@dataclass
class EvalContext:
    """Ground truth handed to a policy's optional ``report(ctx)`` after an A/B run.

    A policy may define ``report(self, ctx: EvalContext) -> dict`` returning
    ``{"metrics": {name: float}, "markdown": str, "figures": [paths]}``; the
    runner writes the metrics into ``quality.csv`` / ``report.md``.  Only
    evaluation code reads the truth here; ``act`` never sees it.

    ``arm_outcomes``: per-user realised outcomes of the arm's own users.
    ``truth``: realised twins of the *whole evaluation cohort* under each
    static day-1 action (``sim.twins.StaticEffects``; column 0 = none), or None.
    ``policy_twin``: per-user outcomes of the whole cohort under this policy at
    the arm's budget per user; ``control_twin`` the same under control.
    """

    scenario: Any
    cohort: Any
    seed: int
    budget_per_user: float | None
    arm_users: np.ndarray
    arm_outcomes: pd.DataFrame
    control_outcomes: pd.DataFrame
    truth: Any
    policy_twin: pd.DataFrame | None
    control_twin: pd.DataFrame | None
    oracle_twin: pd.DataFrame | None
    out_dir: Any
