"""The shared budgeted allocation solver against brute force, and its input checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from policies.solver import OBJECTIVES, allocate, objective_values


def brute_force(values: np.ndarray, costs: np.ndarray, budget: float) -> float:
    n, K = values.shape
    c = np.broadcast_to(costs, (n, K))
    best = -np.inf
    for choice in itertools.product(range(K), repeat=n):
        idx = np.arange(n), np.array(choice)
        if c[idx].sum() <= budget + 1e-9:
            best = max(best, values[idx].sum())
    return float(best)


def instance(seed: int):
    g = np.random.default_rng(seed)
    n, K = int(g.integers(1, 6)), int(g.integers(2, 5))
    values = g.normal(0.0, 1.0, (n, K))
    values[:, 0] = 0.0
    per_user = bool(g.integers(0, 2))
    costs = g.uniform(0.1, 2.0, (n, K) if per_user else K)
    costs[..., 0] = 0.0
    budget = float(g.uniform(0.0, 1.2) * np.broadcast_to(costs, (n, K)).max(axis=1).sum())
    return values, costs, budget


@pytest.mark.parametrize("seed", range(200))
def test_greedy_is_feasible_and_within_one_item_of_brute_force(seed):
    values, costs, budget = instance(seed)
    n, K = values.shape
    choice = allocate(values, costs, budget)
    c = np.broadcast_to(costs, (n, K))
    idx = np.arange(n), choice
    assert choice.shape == (n,) and choice.min() >= 0 and choice.max() < K
    assert c[idx].sum() <= budget + 1e-9
    got = values[idx].sum()
    opt = brute_force(values, costs, budget)
    assert got <= opt + 1e-9
    # the hull greedy solves the LP relaxation up to one fractional item
    assert got >= opt - max(values.max(), 0.0) - 1e-9


@pytest.mark.parametrize("seed", range(30))
def test_unlimited_budget_gives_each_user_their_best_positive_action(seed):
    values, costs, _ = instance(seed)
    choice = allocate(values, costs, None)
    best = np.where(values.max(axis=1) > 0, values.argmax(axis=1), 0)
    np.testing.assert_allclose(values[np.arange(len(values)), choice], values[np.arange(len(values)), best])


def test_exact_when_costs_are_uniform_and_items_are_unit():
    # one action of cost 1: the optimum is the top-B users by value, which the greedy finds exactly
    g = np.random.default_rng(3)
    v = np.column_stack([np.zeros(50), g.normal(size=50)])
    choice = allocate(v, np.array([0.0, 1.0]), 7.0)
    top = np.argsort(-v[:, 1])[:7]
    expected = np.zeros(50, dtype=int)
    expected[top[v[top, 1] > 0]] = 1
    np.testing.assert_array_equal(choice, expected)


def test_zero_budget_and_min_gain():
    v = np.array([[0.0, 1.0, 2.0], [0.0, 0.5, 0.1]])
    c = np.array([0.0, 1.0, 3.0])
    assert allocate(v, c, 0.0).tolist() == [0, 0]
    assert allocate(v, c, None, min_gain_per_yuan=0.6).tolist() == [1, 0]
    # values are centred on column 0: shifting a user's row changes nothing
    assert allocate(v + np.array([[5.0], [-3.0]]), c, 2.0).tolist() == allocate(v, c, 2.0).tolist()


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.zeros(3), np.zeros(3), 1.0), "values: expected a 2-D"),
        ((np.zeros((2, 3)), np.zeros(4), 1.0), "costs: expected 3 action costs"),
        ((np.zeros((2, 3)), np.zeros((3, 3)), 1.0), r"costs: expected shape \(2, 3\)"),
        ((np.array([[0.0, np.nan]]), np.zeros(2), 1.0), "finite"),
        ((np.zeros((1, 2)), np.array([0.0, np.inf]), 1.0), "finite"),
        ((np.zeros((1, 2)), np.array([0.0, -1.0]), 1.0), "costs: must be non-negative"),
        ((np.zeros((1, 2)), np.array([0.0, 1.0]), -1.0), "budget: expected a finite number >= 0"),
        ((np.zeros((1, 2)), np.array([0.0, 1.0]), float("inf")), "budget"),
        ((np.zeros((1, 2)), np.array([0.0, 1.0]), float("nan")), "budget"),
    ],
)
def test_allocate_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        allocate(*args)


def test_objective_values():
    preds = {"retained_d7": np.ones((2, 3)), "paid_d30": 2 * np.ones((2, 3)), "net_value": 3 * np.ones((2, 3))}
    assert objective_values(preds, "d7_retention")[0, 0] == 1
    assert objective_values(preds, "first_payment")[0, 0] == 2
    assert objective_values(preds, "net_value")[0, 0] == 3
    assert objective_values(preds, "mix", {"retained_d7": 1.0, "paid_d30": 0.5})[0, 0] == 2
    assert set(OBJECTIVES) == {"d7_retention", "first_payment", "net_value", "mix"}


@pytest.mark.parametrize(
    "objective, weights, preds, match",
    [
        ("revenue", None, {"retained_d7": np.ones((1, 2))}, "objective: expected one of"),
        ("mix", None, {"retained_d7": np.ones((1, 2))}, "needs weights"),
        ("mix", {"paid_d7": 1.0}, {"retained_d7": np.ones((1, 2))}, r"weights\.paid_d7"),
        ("net_value", None, {"retained_d7": np.ones((1, 2))}, "needs predictions for 'net_value'"),
    ],
)
def test_objective_values_bad_inputs(objective, weights, preds, match):
    with pytest.raises(ValueError, match=match):
        objective_values(preds, objective, weights)
