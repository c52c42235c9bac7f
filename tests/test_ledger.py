"""The cost ledger: the budget is never exceeded, whatever the catalogue, the budget or the policy; totals are exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.base import Observation, Policy
from policies.baselines import BlanketPolicy
from sim.catalogue import TYPE_NAMES
from sim.ledger import Ledger
from sim.model import IncentiveModel
from sim.population import generate_cohort
from sim.scenario import scenario_from_dict

TOL = 1e-9


class RecordingRandomPolicy(Policy):
    """Dynamic: every day each listed user asks for a random action with probability ``p``; requests are recorded."""

    name = "recording_random"
    static = False

    def __init__(self, p: float, weights: tuple[float, ...] | None = None) -> None:
        self.p = p
        self.weights = weights
        self.requested_ = 0

    def act(self, day: int, obs: Observation) -> np.ndarray:
        k = len(obs.catalogue)
        w = np.ones(k - 1) if self.weights is None else np.asarray(self.weights[: k - 1], dtype=float)
        cum = np.cumsum(w / w.sum())
        cum[-1] = 1.0 + 1e-12
        which = 1 + np.searchsorted(cum, obs.uniform(1), side="right")
        out = np.where(obs.uniform(0) < self.p, which, 0).astype(np.int64)
        self.requested_ += int((out > 0).sum())
        return out


def _levels(lo, hi, integer, max_size=4):
    elem = st.integers(lo, hi) if integer else st.floats(lo, hi).map(lambda x: round(x, 2))
    return st.lists(elem, min_size=1, max_size=max_size, unique=True).map(sorted)


@st.composite
def scenario_dicts(draw):
    return {
        "meta": {"name": "ledger_world"},
        "economy": {
            "ecpm_yuan": draw(st.floats(1.0, 40.0)),
            "ad_daily_cap_impressions": draw(st.floats(5.0, 80.0)),
            "ad_impressions_per_minute": draw(st.floats(0.1, 2.0)),
            "royalty_per_chapter": draw(st.floats(0.0, 0.3)),
        },
        "incentives": {
            "coins": {
                "levels": draw(_levels(0.1, 5.0, integer=False)),
                "minutes_to_redeem_all": draw(st.floats(5.0, 200.0)),
                "expiry_days": draw(st.integers(1, 20)),
            },
            "membership_trial": {"levels": draw(_levels(1, 20, integer=True))},
            "chapter_unlock": {
                "levels": draw(_levels(1, 100, integer=True)),
                "expiry_days": draw(st.integers(1, 30)),
            },
        },
    }


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=scenario_dicts(),
    budget_per_user=st.one_of(st.just(0.0), st.floats(0.001, 3.0)),
    p=st.floats(0.02, 1.0),
    weights=st.lists(st.floats(0.01, 1.0), min_size=14, max_size=14).map(tuple),
    seed=st.integers(0, 2**31),
    days=st.integers(3, 20),
)
def test_budget_never_exceeded(data, budget_per_user, p, weights, seed, days):
    sc = scenario_from_dict(data)
    n = 200
    coh = generate_cohort(sc, n, seed=seed % 1000)
    budget = budget_per_user * n
    pol = RecordingRandomPolicy(p, weights)
    m = IncentiveModel(sc, coh, pol, budget=budget, days=days, seed=seed)
    for _ in range(days):
        m.step()
        led = m.ledger
        assert led.spent + led.reserved <= budget + TOL, (
            f"day {m.day}: spent {led.spent} + reserved {led.reserved} > budget {budget}"
        )
        assert led.available >= 0.0
    led = m.ledger
    o = m.outcomes()
    daily = m.daily()
    assert led.spent <= budget + TOL
    # ledger totals are exact sums of per-user realised costs, overall and per type
    assert math.isclose(led.spent, float(o["cost"].sum()), rel_tol=1e-12, abs_tol=1e-9)
    for tname, col in (("coins", "cost_coins"), ("membership_trial", "cost_trial"), ("chapter_unlock", "cost_unlock")):
        assert math.isclose(led.spent_by_type[tname], float(o[col].sum()), rel_tol=1e-12, abs_tol=1e-9)
    assert math.isclose(sum(led.spent_by_type.values()), led.spent, rel_tol=1e-12, abs_tol=1e-9)
    assert math.isclose(float(daily["cost"].sum()), led.spent, rel_tol=1e-9, abs_tol=1e-9)
    # every request is either granted or refused and counted
    assert led.grants + led.refused == pol.requested_
    assert led.refused == int(daily["refused"].sum())
    assert led.grants == int(daily["grants"].sum()) == int(o["n_grants"].sum())
    assert sum(led.grants_by_action.values()) == led.grants
    assert led.grants_by_type["coins"] == int(daily["grants_coins"].sum())
    assert led.grants_by_type["membership_trial"] == int(daily["grants_trial"].sum())
    assert led.grants_by_type["chapter_unlock"] == int(daily["grants_unlock"].sum())
    if budget == 0.0:  # only actions that commit nothing (e.g. unlocks at a zero royalty) fit in a zero budget
        free = {a.name for a in m.catalogue if a.commit_cost == 0.0}
        assert set(led.grants_by_action) <= free, led.grants_by_action


def test_grants_refused_once_budget_is_committed():
    sc = scenario_from_dict({"meta": {"name": "w"}})
    coh = generate_cohort(sc, 1_000, seed=0)
    commit = 2.0  # coins_2 commits its face value
    budget = 100.0
    m = IncentiveModel(sc, coh, BlanketPolicy("coins_2"), budget=budget, seed=0).run()
    assert m.ledger.grants == int(budget // commit)
    assert m.ledger.refused == 1_000 - int(budget // commit)
    assert m.ledger.grants_by_action == {"coins_2": int(budget // commit)}
    # a coin grant costs what is redeemed, never more than its face value
    o = m.outcomes()
    assert (o["cost_coins"] <= commit + 1e-12).all()
    assert 0 < m.ledger.spent <= budget


def test_unlimited_budget_grants_everyone():
    sc = scenario_from_dict({"meta": {"name": "w"}})
    coh = generate_cohort(sc, 500, seed=1)
    m = IncentiveModel(sc, coh, BlanketPolicy("trial_7d"), budget=None, seed=1).run()
    assert m.ledger.grants == 500 and m.ledger.refused == 0
    assert m.ledger.available == math.inf


@pytest.mark.parametrize("budget", [-1.0, math.nan, math.inf, -math.inf])
def test_bad_budget_rejected(budget):
    with pytest.raises(ValueError, match=r"budget: expected a finite non-negative"):
        Ledger(budget)


def test_ledger_records_per_type():
    from sim.catalogue import Catalogue

    sc = scenario_from_dict({"meta": {"name": "w"}})
    cat = Catalogue.from_scenario(sc)
    led = Ledger(10.0)
    acts = np.array([0, 1, 1, cat.index("trial_7d"), cat.index("unlock_5"), 0], dtype=np.int64)
    led.record_grants(acts, cat)
    assert led.grants == 4
    assert led.grants_by_type == {"coins": 2, "membership_trial": 1, "chapter_unlock": 1}
    assert set(led.grants_by_type) == set(TYPE_NAMES[1:])
    with pytest.raises(RuntimeError, match="ledger invariant broken"):
        led.settle(8.0, {"coins": 8.0, "membership_trial": 0.0, "chapter_unlock": 0.0}, 3.0)
