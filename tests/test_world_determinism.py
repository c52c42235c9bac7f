"""Reproducibility of the world: seeds, partitions, cohort composition, twins and the two agent modes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from policies.base import Observation, Policy
from policies.baselines import BlanketPolicy, ControlPolicy, RandomPolicy
from sim.model import simulate
from sim.population import generate_cohort
from sim.scenario import load_scenario
from sim.twins import simulate_twin, static_action_outcomes, twins

SC = load_scenario("fanqie_newuser")
N = 1_000
DAYS = 30


class DailyRandomPolicy(Policy):
    """Dynamic: every day, each listed user gets a random action with probability ``p`` (keyed draws)."""

    name = "daily_random"
    static = False

    def __init__(self, p: float = 0.15) -> None:
        self.p = p

    def act(self, day: int, obs: Observation) -> np.ndarray:
        k = len(obs.catalogue)
        give = obs.uniform(0) < self.p
        which = 1 + np.minimum((obs.uniform(1) * (k - 1)).astype(np.int64), k - 2)
        return np.where(give, which, 0).astype(np.int64)


class OddUsersPolicy(Policy):
    """Static: odd user ids get ``action`` on day 1, even ones nothing."""

    name = "odd_users"
    static = True

    def __init__(self, action: str = "coins_2") -> None:
        self.action = action

    def act(self, day: int, obs: Observation) -> np.ndarray:
        return np.where(obs.user_ids % 2 == 1, obs.catalogue.index(self.action), 0).astype(np.int64)


def _bytes(model) -> tuple[bytes, bytes]:
    return model.outcomes().to_csv().encode(), model.daily().to_csv().encode()


POLICIES = {
    "control": lambda: ControlPolicy(),
    "random": lambda: RandomPolicy(),
    "daily_random": lambda: DailyRandomPolicy(),
}


@pytest.mark.parametrize("pname", list(POLICIES))
def test_same_seed_byte_identical(pname):
    runs = [simulate(SC, POLICIES[pname](), n_users=3_000, seed=11, budget=600.0, days=DAYS) for _ in range(2)]
    a, b = _bytes(runs[0]), _bytes(runs[1])
    assert a[0] == b[0], "per-user outcomes differ between two runs with the same seed"
    assert a[1] == b[1], "daily tables differ between two runs with the same seed"
    assert runs[0].ledger.as_dict() == runs[1].ledger.as_dict()


def test_same_seed_same_cohort():
    c1, c2 = generate_cohort(SC, 2_000, seed=5), generate_cohort(SC, 2_000, seed=5)
    assert c1.features().to_csv() == c2.features().to_csv()
    assert c1.hidden().to_csv() == c2.hidden().to_csv()


def test_different_seeds_differ():
    a = simulate(SC, RandomPolicy(), n_users=3_000, seed=1)
    b = simulate(SC, RandomPolicy(), n_users=3_000, seed=2)
    oa, ob = a.outcomes(), b.outcomes()
    assert not oa.equals(ob)
    assert not a.daily().equals(b.daily())
    # the populations differ too, not only the daily luck
    fa, fb = generate_cohort(SC, 3_000, seed=1).features(), generate_cohort(SC, 3_000, seed=2).features()
    assert (fa["channel"].to_numpy() != fb["channel"].to_numpy()).mean() > 0.3


@pytest.mark.parametrize("pname", ["random", "daily_random"])
def test_partition_invariance(pname):
    kw = dict(n_users=5_000, seed=3, budget=800.0, days=DAYS)
    one = simulate(SC, POLICIES[pname](), n_partitions=1, **kw)
    three = simulate(SC, POLICIES[pname](), n_partitions=3, **kw)
    assert len(three.agents) == 3 and len(one.agents) == 1
    pd.testing.assert_frame_equal(one.outcomes(), three.outcomes(), check_exact=True)
    pd.testing.assert_frame_equal(one.daily(), three.daily(), check_exact=True)


def test_order_invariance_cohort_composition():
    """A user's outcomes do not depend on which other users are in the cohort."""
    full = generate_cohort(SC, N, seed=4)
    rng = np.random.default_rng(123)
    subset_ids = np.sort(rng.choice(np.arange(N, 3 * N), size=400, replace=False))
    subset_ids = np.union1d(subset_ids, np.arange(0, N, 7))  # shares every 7th user with `full`
    sub = generate_cohort(SC, seed=4, user_ids=subset_ids)
    shared = np.intersect1d(full.user_ids, sub.user_ids)
    assert shared.size > 100
    # same users, same observables and hidden traits
    pd.testing.assert_frame_equal(full.features().loc[shared], sub.features().loc[shared], check_exact=True)
    pd.testing.assert_frame_equal(full.hidden().loc[shared], sub.hidden().loc[shared], check_exact=True)
    for pol in (RandomPolicy, lambda: BlanketPolicy("trial_7d")):
        a = simulate(SC, pol(), cohort=full, seed=4).outcomes().loc[shared]
        b = simulate(SC, pol(), cohort=sub, seed=4).outcomes().loc[shared]
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_untreated_users_unaffected_by_others_grants():
    """What other users received does not change an untreated user's life (no interference)."""
    coh = generate_cohort(SC, 4_000, seed=6)
    ctrl = simulate(SC, ControlPolicy(), cohort=coh, seed=6).outcomes()
    treated = simulate(SC, OddUsersPolicy("coins_2"), cohort=coh, seed=6).outcomes()
    even = coh.user_ids[coh.user_ids % 2 == 0]
    odd = coh.user_ids[coh.user_ids % 2 == 1]
    pd.testing.assert_frame_equal(ctrl.loc[even], treated.loc[even], check_exact=True)
    assert (treated.loc[odd, "n_grants"] == 1).all()
    assert not ctrl.loc[odd].equals(treated.loc[odd]), "the grant changed nobody: the test cannot detect anything"


def test_none_twin_equals_control_exactly():
    coh = generate_cohort(SC, 3_000, seed=8)
    ctrl = simulate(SC, ControlPolicy(), cohort=coh, seed=8).outcomes()
    truth = static_action_outcomes(SC, coh, seed=8, metrics=("retained_d7", "paid_d30", "revenue", "cost"))
    for m in ("retained_d7", "paid_d30", "revenue", "cost"):
        np.testing.assert_array_equal(truth.outcomes[m][:, 0], ctrl[m].to_numpy(dtype=np.float64))
    pd.testing.assert_frame_equal(simulate_twin(SC, coh, None, seed=8), ctrl, check_exact=True)
    arms = twins(SC, coh, {"control": ControlPolicy(), "blanket": BlanketPolicy("unlock_20")}, seed=8)
    pd.testing.assert_frame_equal(arms["control"], ctrl, check_exact=True)
    # the blanket twin is the same world: its users' lives only differ where the grant changed something
    np.testing.assert_array_equal(truth.outcomes["retained_d7"][:, truth.catalogue.index("unlock_20")],
                                  arms["blanket"]["retained_d7"].to_numpy(dtype=np.float64))


@pytest.mark.parametrize(
    "make_policy,budget",
    [
        (ControlPolicy, None),
        (RandomPolicy, 150.0),  # budget binds: grants and refusals
        (DailyRandomPolicy, 400.0),  # a grant can land on any day
    ],
    ids=["control", "random_budgeted", "daily_random_budgeted"],
)
def test_fast_path_equals_per_user_agents(make_policy, budget):
    coh = generate_cohort(SC, N, seed=9)
    fast = simulate(SC, make_policy(), cohort=coh, seed=9, budget=budget, mode="cohort", n_partitions=2)
    slow = simulate(SC, make_policy(), cohort=coh, seed=9, budget=budget, mode="agents")
    assert len(slow.agents) == N
    pd.testing.assert_frame_equal(fast.outcomes(), slow.outcomes(), check_exact=True)
    pd.testing.assert_frame_equal(fast.daily(), slow.daily(), check_exact=True)
    assert fast.ledger.as_dict() == slow.ledger.as_dict()
    if budget is not None:
        assert fast.ledger.grants > 0
        if make_policy is RandomPolicy:
            assert fast.ledger.refused > 0


def test_activation_order_invariance():
    """Per-user agents stepped in a random order each day (Mesa's shuffle_do) give the same lives."""
    from sim.model import IncentiveModel

    coh = generate_cohort(SC, 500, seed=12)
    ordered = simulate(SC, DailyRandomPolicy(), cohort=coh, seed=12, budget=150.0, mode="agents")
    shuffled = IncentiveModel(SC, coh, DailyRandomPolicy(), seed=12, budget=150.0, mode="agents")
    agents = shuffled.agents
    calls = []

    def shuffled_do(method, *args, **kwargs):
        calls.append(method)
        return agents.shuffle_do(method, *args, **kwargs)

    agents.do = shuffled_do
    shuffled.run()
    assert calls == ["step"] * shuffled.days, "the model did not step its agents through AgentSet.do"
    pd.testing.assert_frame_equal(ordered.outcomes(), shuffled.outcomes(), check_exact=True)
    pd.testing.assert_frame_equal(ordered.daily(), shuffled.daily(), check_exact=True)


def test_parallel_kernel_equals_serial_kernel(monkeypatch):
    """Blocks of >= PARALLEL_MIN_ROWS installed users take numba's parallel kernel, smaller ones the serial one."""
    from sim import kernel as K
    from sim.agents import PARALLEL_MIN_ROWS

    parallel_calls = []
    parallel = K.step_rows

    def counting(*args):
        parallel_calls.append(args[0].shape[0])
        return parallel(*args)

    monkeypatch.setattr(K, "step_rows", counting)
    n = 9 * PARALLEL_MIN_ROWS // 4  # one block (parallel while >= the threshold are installed) vs three serial ones
    kw = dict(n_users=n, seed=13, budget=0.2 * n, days=DAYS)
    par = simulate(SC, DailyRandomPolicy(0.05), n_partitions=1, **kw)
    assert parallel_calls, "the parallel kernel was never used"
    parallel_calls.clear()
    ser = simulate(SC, DailyRandomPolicy(0.05), n_partitions=3, **kw)
    assert not parallel_calls, "three blocks of n/3 users should all take the serial kernel"
    pd.testing.assert_frame_equal(par.outcomes(), ser.outcomes(), check_exact=True)
    pd.testing.assert_frame_equal(par.daily(), ser.daily(), check_exact=True)
