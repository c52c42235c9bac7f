"""Budgeted allocation: the multiple-choice knapsack shared by every allocating policy.

Given each user's value of each action (``values[i, k]``, column 0 = "none"
with value 0 after centring) and each action's cost (``costs[k]`` or
``costs[i, k]``), choose at most one action per user to maximise total value
with total cost <= budget.

Method: the greedy on each user's upper convex hull (Sinha & Zoltners, 1979).
For each user, the dominated actions are dropped and the remaining ones form
a concave value-cost frontier whose increments have decreasing value per
yuan.  All users' increments are taken in order of value per yuan while they
fit.  This solves the LP relaxation up to one fractional item, so it is
within ``max_i max_k values[i, k]`` of the integer optimum; tests check it
against brute force on small instances.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

OBJECTIVES = ("d7_retention", "first_payment", "net_value", "mix")


@njit(cache=True)
def _hulls(values, costs, max_k):
    n, K = values.shape
    # increments: user, from action, to action, d_cost, d_value
    inc_user = np.empty(n * max_k, dtype=np.int64)
    inc_to = np.empty(n * max_k, dtype=np.int64)
    inc_dc = np.empty(n * max_k, dtype=np.float64)
    inc_dv = np.empty(n * max_k, dtype=np.float64)
    m = 0
    order = np.empty(K, dtype=np.int64)
    hull = np.empty(K, dtype=np.int64)
    for i in range(n):
        # sort actions by cost, then by value descending
        for k in range(K):
            order[k] = k
        for a in range(1, K):  # insertion sort (K is small)
            x = order[a]
            b = a - 1
            while b >= 0 and (
                costs[i, order[b]] > costs[i, x]
                or (costs[i, order[b]] == costs[i, x] and values[i, order[b]] < values[i, x])
            ):
                order[b + 1] = order[b]
                b -= 1
            order[b + 1] = x
        # start at the cheapest action with the best value among the zero-cost ones (none)
        h = 0
        for q in range(K):
            k = order[q]
            if h == 0:
                hull[0] = k
                h = 1
                continue
            if values[i, k] <= values[i, hull[h - 1]]:
                continue  # dominated: costs at least as much, worth no more
            if costs[i, k] == costs[i, hull[h - 1]]:
                continue
            while h >= 2:
                a0, a1 = hull[h - 2], hull[h - 1]
                e1 = (values[i, a1] - values[i, a0]) / (costs[i, a1] - costs[i, a0])
                e2 = (values[i, k] - values[i, a1]) / (costs[i, k] - costs[i, a1])
                if e2 >= e1:
                    h -= 1
                else:
                    break
            hull[h] = k
            h += 1
        for q in range(1, h):
            a0, a1 = hull[q - 1], hull[q]
            inc_user[m] = i
            inc_to[m] = a1
            inc_dc[m] = costs[i, a1] - costs[i, a0]
            inc_dv[m] = values[i, a1] - values[i, a0]
            m += 1
    return inc_user[:m], inc_to[:m], inc_dc[:m], inc_dv[:m]


@njit(cache=True)
def _take(order, inc_user, inc_to, inc_dc, budget, start_action, n):
    choice = start_action.copy()
    blocked = np.zeros(n, dtype=np.bool_)
    spent = 0.0
    for q in range(order.shape[0]):
        k = order[q]
        i = inc_user[k]
        if blocked[i]:
            continue
        if spent + inc_dc[k] <= budget * (1.0 + 1e-12):
            spent += inc_dc[k]
            choice[i] = inc_to[k]
        else:
            blocked[i] = True  # later increments of this user have lower efficiency
    return choice, spent


def allocate(
    values: np.ndarray,
    costs: np.ndarray,
    budget: float | None,
    *,
    min_gain_per_yuan: float = 0.0,
) -> np.ndarray:
    """Choose one action per user (index into the columns) maximising value under the budget.

    Parameters
    ----------
    values : (n, K) array
        Estimated value of each action for each user.  Only differences
        between columns matter; column 0 should be "none".
    costs : (K,) or (n, K) array
        Expected cost (or commitment) of each action; column 0 must be 0.
    budget : float or None
        Total budget; None means unlimited (every user gets the best action
        with positive gain).
    min_gain_per_yuan : float
        Increments worth less than this per yuan are never taken.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] < 1:
        raise ValueError(f"values: expected a 2-D (users, actions) array, got shape {v.shape}")
    n, K = v.shape
    c = np.asarray(costs, dtype=np.float64)
    if c.ndim == 1:
        if c.shape[0] != K:
            raise ValueError(f"costs: expected {K} action costs, got {c.shape[0]}")
        c = np.broadcast_to(c, (n, K))
    if c.shape != (n, K):
        raise ValueError(f"costs: expected shape ({n}, {K}), got {c.shape}")
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(c))):
        raise ValueError("values/costs: must be finite (no NaN or inf)")
    if np.any(c < 0):
        raise ValueError("costs: must be non-negative")
    if budget is not None and (not math.isfinite(budget) or budget < 0):
        raise ValueError(f"budget: expected a finite number >= 0 or None, got {budget!r}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    v = v - v[:, :1]
    c = np.ascontiguousarray(c)
    inc_user, inc_to, inc_dc, inc_dv = _hulls(np.ascontiguousarray(v), c, K)
    with np.errstate(divide="ignore", invalid="ignore"):
        eff = np.where(inc_dc > 0, inc_dv / np.where(inc_dc > 0, inc_dc, 1.0), np.inf)
    keep = (inc_dv > 0) & ((inc_dc <= 0) | (eff >= min_gain_per_yuan))
    # zero-cost increments with positive value are always taken
    order = np.lexsort((inc_user[keep], -eff[keep]))  # most value per yuan first; ties by user
    idx = np.flatnonzero(keep)[order]
    start = np.zeros(n, dtype=np.int64)
    b = np.inf if budget is None else float(budget)
    choice, _ = _take(idx, inc_user, inc_to, inc_dc, b, start, n)
    return choice


def objective_values(
    predictions: dict[str, np.ndarray],
    objective: str = "d7_retention",
    weights: dict[str, float] | None = None,
) -> np.ndarray:
    """Combine per-metric predicted effects (each (n, K)) into one value matrix.

    ``objective``: ``d7_retention`` uses ``predictions["retained_d7"]``,
    ``first_payment`` uses ``predictions["paid_d30"]``, ``net_value`` uses
    ``predictions["net_value"]`` (yuan), ``mix`` a weighted sum with
    ``weights`` keyed by those metric names.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {list(OBJECTIVES)}, got {objective!r}")
    key = {"d7_retention": "retained_d7", "first_payment": "paid_d30", "net_value": "net_value"}
    if objective != "mix":
        if key[objective] not in predictions:
            raise ValueError(f"objective {objective!r} needs predictions for {key[objective]!r}")
        return np.asarray(predictions[key[objective]], dtype=np.float64)
    if not weights:
        raise ValueError("objective 'mix' needs weights, e.g. {'retained_d7': 1.0, 'paid_d30': 2.0}")
    out = None
    for k, w in weights.items():
        if k not in predictions:
            raise ValueError(f"weights.{k}: no predictions for {k!r}; available {sorted(predictions)}")
        term = float(w) * np.asarray(predictions[k], dtype=np.float64)
        out = term if out is None else out + term
    return out
