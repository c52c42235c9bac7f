"""Uplift policy: fit/act contract, determinism, bad inputs, budgets, persistence, and a statistical test
that the model's ranking beats random against the true effects (the test reads the truth; the policy does not)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.collect import collect_logs
from policies.base import NotFittedError, Observation
from policies.quality import true_uplift_scores
from policies.registry import make_policy
from policies.uplift import FEATURES, UpliftConfigError, UpliftPolicy
from sim.catalogue import Catalogue
from sim.population import generate_cohort
from sim.scenario import load_scenario
from sim.twins import static_action_outcomes

SMALL = dict(n_estimators=40, num_leaves=4, min_child_samples=200)


@pytest.fixture(scope="module")
def world():
    sc = load_scenario("fanqie_newuser")
    cat = Catalogue.from_scenario(sc)
    logs = collect_logs(sc, n_users=20_000, seed=11)
    cohort = generate_cohort(sc, 4_000, seed=12)
    return sc, cat, logs, cohort


@pytest.fixture(scope="module")
def fitted(world):
    sc, _, logs, _ = world
    return UpliftPolicy(**SMALL).fit(logs, scenario=sc, seed=3)


def obs_for(cohort, cat, budget: float) -> Observation:
    feats = cohort.features()
    return Observation(day=1, user_ids=cohort.user_ids, features=feats, history={}, catalogue=cat,
                       budget_remaining=budget, budget_total=budget, n_cohort=len(cohort))


def test_registry_builds_the_policy():
    p = make_policy("uplift", learner="t")
    assert isinstance(p, UpliftPolicy) and p.learner == "t" and p.needs_logs and p.static


def test_unfitted_policy_raises_a_clear_error(world):
    _, cat, _, cohort = world
    with pytest.raises(NotFittedError, match="not fitted.*fit\\(logs"):
        UpliftPolicy().act(1, obs_for(cohort, cat, 100.0))
    with pytest.raises(NotFittedError, match="not fitted"):
        UpliftPolicy().predict_effects(cohort.features())


@pytest.mark.parametrize("learner", ["x", "t", "dr"])
def test_same_seed_gives_identical_actions(world, learner):
    sc, cat, logs, cohort = world
    o = obs_for(cohort, cat, 0.3 * len(cohort))
    a1 = UpliftPolicy(learner=learner, **SMALL).fit(logs, scenario=sc, seed=5).act(1, o)
    a2 = UpliftPolicy(learner=learner, **SMALL).fit(logs, scenario=sc, seed=5).act(1, o)
    np.testing.assert_array_equal(a1, a2)
    assert (a1 > 0).any()


@pytest.mark.parametrize("learner", ["x", "t"])
def test_effects_equal_causalml_predict(world, learner):
    """The policy's extracted effect models give exactly causalml's own predictions."""
    from causalml.inference.meta import BaseTRegressor, BaseXRegressor

    sc, _, logs, cohort = world
    pol = UpliftPolicy(learner=learner, **SMALL).fit(logs, scenario=sc, seed=5)
    X = logs[list(FEATURES)].to_numpy(np.float64)
    Xe = cohort.features()[list(FEATURES)].to_numpy(np.float64)
    t, y = logs["action"].to_numpy(), logs["retained_d7"].to_numpy(np.float64)
    base = pol._base(5)
    if learner == "x":
        pg = {g: np.full(len(t), pol.assignment_probs_[g] / (pol.assignment_probs_[g] + pol.assignment_probs_[0]))
              for g in pol.groups_}
        ref = BaseXRegressor(learner=base, control_name=0).fit(X, treatment=t, y=y, p=pg)
        te = ref.predict(Xe, p={g: np.full(len(Xe), v[0]) for g, v in pg.items()})
    else:
        ref = BaseTRegressor(learner=base, control_name=0)
        ref.fit(X, treatment=t, y=y)
        te = ref.predict(Xe)
    np.testing.assert_allclose(pol.predict_effects(cohort.features())["retained_d7"][:, 1:], te, rtol=1e-10,
                               atol=1e-12)


def test_value_is_the_d7_effect_plus_the_weighted_surrogate_effect(world):
    sc, _, logs, cohort = world
    pol = UpliftPolicy(**SMALL).fit(logs, scenario=sc, seed=5)
    assert pol.metrics_ == ["retained_d7", "active_days"]
    eff = pol.predict_effects(cohort.features())
    np.testing.assert_allclose(pol.values(cohort.features()), eff["retained_d7"] + 0.05 * eff["active_days"])
    plain = UpliftPolicy(surrogate_weight=0, **SMALL).fit(logs, scenario=sc, seed=5)
    assert plain.metrics_ == ["retained_d7"]
    np.testing.assert_allclose(plain.values(cohort.features()), eff["retained_d7"])
    assert UpliftPolicy(objective="net_value", **SMALL).fit(logs, scenario=sc, seed=5).metrics_ == ["net_value"]


def _drop(col):
    return lambda df: df.drop(columns=[col])


BAD_LOGS = [
    (_drop("propensity"), "missing column.*propensity"),
    (_drop("d0_minutes"), "missing column.*d0_minutes"),
    (_drop("retained_d7"), "missing column.*retained_d7"),
    (_drop("cost"), "missing column.*cost"),
    (_drop("active_days"), "missing column.*active_days"),  # the default D7 surrogate
    (lambda df: df.assign(action=0), "no treated user"),
    (lambda df: df.assign(action=np.maximum(df["action"], 1)), "no control user"),
    (lambda df: df.iloc[:0], "no rows"),
    (lambda df: df.assign(action=np.where(np.arange(len(df)) == 0, 100, df["action"])),
     "logs.action: expected indices"),
    (lambda df: df.assign(retained_d7=np.nan), "logs.retained_d7: outcome values must be finite"),
    (lambda df: "not a frame", "logs: expected a pandas DataFrame"),
]


@pytest.mark.parametrize("mutate,match", BAD_LOGS)
def test_bad_logs_are_rejected(world, mutate, match):
    sc, _, logs, _ = world
    with pytest.raises(ValueError, match=match):
        UpliftPolicy(**SMALL).fit(mutate(logs.copy()), scenario=sc, seed=0)


BAD_SETTINGS = [
    (dict(learner="s"), "learner: expected one of"),
    (dict(base_learner="xgboost"), "base_learner: expected one of"),
    (dict(objective="revenue"), "objective: expected one of"),
    (dict(objective="mix"), "weights: objective 'mix' needs"),
    (dict(mode="greedy"), "mode: expected one of"),
    (dict(learner="uplift_rf", objective="net_value"), "uplift_rf.*binary"),
    (dict(n_estimators=0), "n_estimators: expected an integer >= 1"),
    (dict(learning_rate=2.0), "learning_rate: expected a number in"),
    (dict(cost_penalty=-1.0), "cost_penalty: expected a finite number >= 0"),
    (dict(seed=-3), "seed: expected an integer >= 0"),
    (dict(surrogate_weight=-0.1), "surrogate_weight: expected a finite number >= 0"),
    (dict(surrogate_weight=float("nan")), "surrogate_weight: expected a finite number >= 0"),
    (dict(surrogate_weight=0.05, objective="net_value"), "surrogate_weight: only the 'd7_retention' objective"),
    (dict(surrogate_weight=0.05, learner="uplift_rf"), "surrogate_weight: 'uplift_rf' models binary"),
]


@pytest.mark.parametrize("params,match", BAD_SETTINGS)
def test_bad_settings_are_rejected(world, params, match):
    sc, _, logs, _ = world
    with pytest.raises(UpliftConfigError, match=match):
        UpliftPolicy(**params).fit(logs, scenario=sc, seed=0)


def test_missing_feature_at_act_time(world, fitted):
    _, cat, _, cohort = world
    o = obs_for(cohort, cat, 100.0)
    o.features = o.features.drop(columns=["channel"])
    with pytest.raises(ValueError, match="features: missing column.*channel"):
        fitted.act(1, o)


@pytest.mark.parametrize("mode", ["budgeted", "cost_blind"])
def test_budget_zero_gives_no_grants_and_budgets_are_respected(world, fitted, mode):
    _, cat, _, cohort = world
    fitted.mode = mode
    try:
        assert not fitted.act(1, obs_for(cohort, cat, 0.0)).any()
        for b in (1.0, 0.05 * len(cohort), 0.3 * len(cohort)):
            a = fitted.act(1, obs_for(cohort, cat, b))
            assert cat.commit_costs[a].sum() <= b + 1e-9
            assert (a > 0).any()
    finally:
        fitted.mode = "budgeted"


def test_cost_blind_gives_each_granted_user_its_best_action(world, fitted):
    _, cat, _, cohort = world
    fitted.mode = "cost_blind"
    try:
        a = fitted.act(1, obs_for(cohort, cat, 0.3 * len(cohort)))
    finally:
        fitted.mode = "budgeted"
    v = fitted.values(cohort.features())
    best = np.argmax(v[:, 1:], axis=1) + 1
    g = a > 0
    np.testing.assert_array_equal(a[g], best[g])
    gain = v[np.arange(len(a)), best]
    # top-k: no ungranted user with a fitting best action has a higher gain than the granted ones' minimum
    assert gain[g].min() >= np.quantile(gain, 0.0)


def test_save_load_roundtrip_without_pickle(world, fitted, tmp_path):
    _, cat, _, cohort = world
    fitted.save(tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert "uplift.json" in files and all(f.endswith((".txt", ".json")) for f in files)
    loaded = UpliftPolicy.load(tmp_path / "m")
    o = obs_for(cohort, cat, 0.3 * len(cohort))
    np.testing.assert_array_equal(loaded.act(1, o), fitted.act(1, o))
    np.testing.assert_array_equal(loaded.predict_effects(cohort.features())["retained_d7"],
                                  fitted.predict_effects(cohort.features())["retained_d7"])


def test_sklearn_base_fits_but_refuses_unsafe_save(world, tmp_path):
    sc, cat, logs, cohort = world
    p = UpliftPolicy(learner="t", base_learner="sklearn", n_estimators=8, min_child_samples=200)
    p.fit(logs, scenario=sc, seed=0)
    assert p.act(1, obs_for(cohort, cat, 100.0)).shape == (len(cohort),)
    with pytest.raises(ValueError, match="save: only LightGBM base learners"):
        p.save(tmp_path / "s")


def test_load_rejects_a_directory_without_model(tmp_path):
    with pytest.raises(ValueError, match="no uplift.json"):
        UpliftPolicy.load(tmp_path)


def test_true_auuc_beats_random_on_a_small_cohort(world):
    """Statistical: the X-learner's ranking (fit on 20k logged users) has a true Qini above 0 by > 2 SE.

    True effects: expected effects of each user's recommended action (2 fresh-luck replications) on a
    separate 6k-user cohort.  SE from the bootstrap over users.
    """
    sc, _, logs, _ = world
    pol = UpliftPolicy(n_estimators=60, num_leaves=4, min_child_samples=300).fit(logs, scenario=sc, seed=1)
    coh = generate_cohort(sc, 6_000, seed=21)
    exp = static_action_outcomes(sc, coh, seed=21, replications=2, metrics=("retained_d7",))
    v = pol.values(coh.features())
    rec = np.argmax(v[:, 1:], axis=1) + 1
    score = v[np.arange(len(rec)), rec]
    tau = exp.effects("retained_d7")[np.arange(len(rec)), rec]
    s = true_uplift_scores(score, tau, n_bootstrap=100, seed=0)
    assert s["qini"] > 2 * s["qini_se"], s


def test_uplift_random_forest_option_fits_and_acts(world):
    sc, cat, logs, cohort = world
    p = UpliftPolicy(learner="uplift_rf", n_estimators=30, num_leaves=8, min_child_samples=200)
    p.fit(logs, scenario=sc, seed=0)
    a = p.act(1, obs_for(cohort, cat, 0.2 * len(cohort)))
    assert cat.commit_costs[a].sum() <= 0.2 * len(cohort) + 1e-9
    eff = p.predict_effects(cohort.features())["retained_d7"]
    assert eff.shape == (len(cohort), len(cat)) and np.all(eff[:, 0] == 0)


# ---------------------------------------------------------------------------------------------- floors (slow)
@pytest.mark.slow
def test_uplift_captures_60_percent_of_the_oracle_and_ltv_r2_at_full_size():
    """Issue 4's floors on the benchmark's cohorts (benchmarks/bench_uplift.py, RECORD_uplift.md):
    trained on 200k logged users, the budgeted uplift policy captures >= 60% of the oracle's true
    incremental D7-retained users at the default budget; the LTV model's R2 on D30 revenue >= 0.3."""
    from sklearn.metrics import r2_score

    from policies.baselines import ControlPolicy
    from policies.ltv import LTVPolicy
    from policies.oracle import OraclePolicy
    from sim.twins import simulate_twin

    sc = load_scenario("fanqie_newuser")
    bpu = sc.meta.default_budget_per_user
    logs = collect_logs(sc, n_users=200_000, seed=1001)
    cohort = generate_cohort(sc, 100_000, seed=2002)
    control = simulate_twin(sc, cohort, ControlPolicy(), seed=2002)
    oracle = OraclePolicy().fit(None, scenario=sc, seed=2002)
    inc_oracle = simulate_twin(sc, cohort, oracle, budget_per_user=bpu, seed=2002)["retained_d7"].sum() \
        - control["retained_d7"].sum()
    uplift = UpliftPolicy().fit(logs, scenario=sc, seed=1001)
    inc = simulate_twin(sc, cohort, uplift, budget_per_user=bpu, seed=2002)["retained_d7"].sum() \
        - control["retained_d7"].sum()
    assert inc_oracle > 0 and inc / inc_oracle >= 0.60, f"uplift: {inc:.0f} of {inc_oracle:.0f} oracle users"
    ltv = LTVPolicy().fit(logs, scenario=sc, seed=1001)
    r2 = r2_score(control["revenue"].to_numpy(), ltv.predict_ltv(cohort.features()))
    assert r2 >= 0.3, f"LTV R2 {r2:.3f}"
