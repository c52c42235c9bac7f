"""Baseline policies: control, random and blanket."""

from __future__ import annotations

import math

import numpy as np

from policies.base import Observation, Policy


class ControlPolicy(Policy):
    """No incentive for anyone."""

    name = "control"
    static = True

    def act(self, day: int, obs: Observation) -> np.ndarray:
        return np.zeros(len(obs), dtype=np.int64)


class BlanketPolicy(Policy):
    """The same action for every user on day 1 (or on ``day``).

    Parameters
    ----------
    action : str
        Catalogue action name, e.g. ``"coins_1"``, ``"trial_7d"``, ``"unlock_5"``.
    day : int
        The day the grant is made (default 1).
    """

    name = "blanket"

    def __init__(self, action: str = "coins_1", day: int = 1) -> None:
        self.action = action
        self.day = day

    @property
    def static(self) -> bool:  # type: ignore[override]
        return self.day == 1

    def act(self, day: int, obs: Observation) -> np.ndarray:
        idx = obs.catalogue.index(self.action)
        if not isinstance(self.day, int) or self.day < 1:
            raise ValueError(f"blanket.day: expected an integer >= 1, got {self.day!r}")
        out = np.zeros(len(obs), dtype=np.int64)
        if day == self.day:
            out[:] = idx
        return out


class RandomPolicy(Policy):
    """Each user draws one action on day 1 (independently, keyed by user).

    Parameters
    ----------
    probs : dict[str, float] or None
        Probability of each catalogue action name (must sum to 1); missing
        actions get 0.  Default: uniform over the catalogue including none.
    """

    name = "random"
    static = True

    def __init__(self, probs: dict[str, float] | None = None) -> None:
        self.probs = probs

    def probabilities(self, catalogue) -> np.ndarray:
        if self.probs is None:
            return np.full(len(catalogue), 1.0 / len(catalogue))
        p = np.zeros(len(catalogue))
        for k, v in self.probs.items():
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"random.probs.{k}: expected a finite probability >= 0, got {v!r}")
            p[catalogue.index(k)] = float(v)
        if not math.isclose(p.sum(), 1.0, abs_tol=1e-9):
            raise ValueError(f"random.probs: probabilities must sum to 1, got {p.sum():.6g}")
        return p

    def act(self, day: int, obs: Observation) -> np.ndarray:
        cum = np.cumsum(self.probabilities(obs.catalogue))
        cum[-1] = 1.0 + 1e-12
        return np.searchsorted(cum, obs.uniform(0), side="right").astype(np.int64)
