"""Two-tower recommender: model determinism, shapes, settings, persistence, allocation and metrics.

Small on purpose (12k logged users, a few epochs); the floors at full size are
in ``benchmarks/bench_recommender.py`` and the ``slow`` test at the end.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from experiments.collect import collect_logs
from policies import rec_metrics as RM
from policies.base import EvalContext, NotFittedError, Observation
from policies.recommender import RecommenderPolicy, response_allocation
from policies.registry import make_policy
from policies.two_tower import FEATURES, TwoTowerConfig, TwoTowerModel, item_features
from sim.catalogue import Catalogue
from sim.model import simulate
from sim.population import generate_cohort
from sim.scenario import load_scenario
from sim.twins import simulate_twin

FAST = dict(epochs=3, patience=2, batch_size=256, hidden=16, dim=4)


@pytest.fixture(scope="module")
def sc():
    return load_scenario("fanqie_newuser")


@pytest.fixture(scope="module")
def cat(sc):
    return Catalogue.from_scenario(sc)


@pytest.fixture(scope="module")
def logs(sc):
    return collect_logs(sc, n_users=12_000, seed=4242)


@pytest.fixture(scope="module")
def model(logs, cat):
    m = TwoTowerModel(seed=3, **FAST)
    return m.fit(logs[list(FEATURES)], logs["action"].to_numpy(), logs, catalogue=cat,
                 propensity=logs["propensity"].to_numpy())


@pytest.fixture(scope="module")
def policy(logs, sc):
    return RecommenderPolicy(n_models=2, **FAST).fit(logs, scenario=sc, seed=5)


def _obs(sc, cat, cohort, budget):
    feats = cohort.features()
    return Observation(day=1, user_ids=cohort.user_ids, features=feats, history={}, catalogue=cat,
                       budget_remaining=math.inf if budget is None else budget, budget_total=budget,
                       n_cohort=len(cohort))


# ---------------------------------------------------------------------------------------------- model
def test_same_seed_gives_identical_predictions_and_other_seed_differs(logs, cat, model):
    X = logs[list(FEATURES)].iloc[:500]
    again = TwoTowerModel(seed=3, **FAST).fit(logs[list(FEATURES)], logs["action"].to_numpy(), logs, catalogue=cat,
                                              propensity=logs["propensity"].to_numpy())
    p1, p2 = model.predict_proba(X), again.predict_proba(X)
    for t in p1:
        np.testing.assert_array_equal(p1[t], p2[t])
    assert model.history_ == again.history_
    other = TwoTowerModel(seed=4, **FAST).fit(logs[list(FEATURES)], logs["action"].to_numpy(), logs, catalogue=cat,
                                              propensity=logs["propensity"].to_numpy())
    assert not np.allclose(other.predict_proba(X)["retained_d7"], p1["retained_d7"])


def test_training_leaves_global_torch_state_alone(logs, cat):
    torch.set_num_threads(2)
    before_rng = torch.random.get_rng_state().clone()
    before_det = torch.are_deterministic_algorithms_enabled()
    TwoTowerModel(seed=1, n_threads=1, epochs=1).fit(logs[list(FEATURES)].iloc[:2000],
                                                      logs["action"].to_numpy()[:2000], logs.iloc[:2000],
                                                      catalogue=cat)
    assert torch.equal(torch.random.get_rng_state(), before_rng)
    assert torch.are_deterministic_algorithms_enabled() == before_det
    assert torch.get_num_threads() == 2


def test_prediction_shapes_and_ranges(logs, cat, model):
    X = logs[list(FEATURES)].iloc[:321]
    p = model.predict_proba(X)
    assert set(p) == {"retained_d7", "paid_d30"}
    for v in p.values():
        assert v.shape == (321, len(cat))
        assert np.all((v > 0) & (v < 1))
    z = model.predict_logits(X)
    assert z.shape == (321, len(cat), 2)
    lg = model.predict_logged(X, logs["action"].to_numpy()[:321])
    np.testing.assert_allclose(lg["paid_d30"], p["paid_d30"][np.arange(321), logs["action"].to_numpy()[:321]])
    assert model.best_epoch_ >= 1 and len(model.history_) >= model.best_epoch_
    assert len(model.train_index_) + len(model.val_index_) == len(logs)
    assert not set(model.train_index_) & set(model.val_index_)


def test_predictions_track_the_logged_base_rates(logs, model):
    # calibration-in-the-large on the model's own validation rows: within 4 binomial SEs
    v = logs.iloc[model.val_index_]
    p = model.predict_logged(v[list(FEATURES)], v["action"].to_numpy())
    for t in ("retained_d7", "paid_d30"):
        rate = v[t].mean()
        se = math.sqrt(rate * (1 - rate) / len(v))
        assert abs(p[t].mean() - rate) < 4 * se + 1e-3, (t, p[t].mean(), rate)


def test_unseen_category_codes_map_to_the_unknown_index(logs, model):
    X = logs[list(FEATURES)].iloc[:5].copy()
    X["genre"] = 99
    assert np.all(np.isfinite(model.predict_logits(X)))


def test_item_features_mark_none_as_an_item(cat):
    f = item_features(cat.types, cat.levels, cat.commit_costs)
    assert f.shape[0] == len(cat)
    assert f[0, 0] == 1 and f[0, 1:].sum() == 0  # none: type one-hot only


def test_save_load_round_trip(tmp_path, logs, model):
    X = logs[list(FEATURES)].iloc[:200]
    model.save(tmp_path / "tt")
    assert (tmp_path / "tt" / "weights.pt").is_file() and (tmp_path / "tt" / "config.json").is_file()
    assert not [p for p in (tmp_path / "tt").iterdir() if p.name.endswith(".tmp")]
    back = TwoTowerModel.load(tmp_path / "tt")
    for t, v in model.predict_proba(X).items():
        np.testing.assert_array_equal(back.predict_proba(X)[t], v)
    assert back.config_ == model.config_


def test_policy_fit_is_deterministic_and_averages_its_members(logs, sc, policy):
    X = logs[list(FEATURES)].iloc[:300]
    again = RecommenderPolicy(n_models=2, **FAST).fit(logs, scenario=sc, seed=5)
    for t, v in policy.predict(X).items():
        np.testing.assert_array_equal(again.predict(X)[t], v)
        members = [m.predict_proba(X)[t] for m in policy.models_]
        np.testing.assert_allclose(v, np.mean(members, axis=0))
        assert not np.array_equal(members[0], members[1])
    assert again.thresholds_ == policy.thresholds_


def test_policy_save_load_round_trip(tmp_path, sc, cat, policy):
    coh = generate_cohort(sc, 2000, seed=77)
    obs = _obs(sc, cat, coh, 0.3 * len(coh))
    policy.save(tmp_path / "rec")
    back = RecommenderPolicy.load(tmp_path / "rec")
    np.testing.assert_array_equal(back.act(1, obs), policy.act(1, obs))
    assert back.thresholds_ == policy.thresholds_


# ---------------------------------------------------------------------------------------------- errors
def test_unfitted_model_and_policy_raise_not_fitted(sc, cat):
    coh = generate_cohort(sc, 50, seed=1)
    with pytest.raises(NotFittedError, match="fit"):
        TwoTowerModel().predict_proba(coh.features())
    with pytest.raises(NotFittedError, match="fit"):
        RecommenderPolicy().act(1, _obs(sc, cat, coh, 10.0))
    with pytest.raises(NotFittedError, match="fit"):
        RecommenderPolicy().predict(coh.features())
    with pytest.raises(NotFittedError, match="fit"):
        TwoTowerModel().save("/nonexistent")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epochs=-1), "epochs"),
        (dict(epochs=0), "epochs"),
        (dict(epochs=2.5), "epochs"),
        (dict(patience=0), "patience"),
        (dict(batch_size=0), "batch_size"),
        (dict(lr=0.0), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(weight_decay=-1e-3), "weight_decay"),
        (dict(val_fraction=0.0), "val_fraction"),
        (dict(val_fraction=0.95), "val_fraction"),
        (dict(targets=()), "targets"),
        (dict(targets="retained_d7"), "targets"),
        (dict(targets=("retained_d7", "retained_d7")), "targets"),
        (dict(head_weights=(1.0,)), "head_weights"),
        (dict(head_weights=(1.0, -1.0)), r"head_weights\[1\]"),
        (dict(head_weights=(0.0, 0.0)), "head_weights"),
        (dict(hidden=0), "hidden"),
        (dict(dim=True), "dim"),
        (dict(seed=-1), "seed"),
        (dict(n_threads=0), "n_threads"),
        (dict(ips="yes"), "ips"),
    ],
)
def test_bad_model_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TwoTowerConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="bogus"), "mode"),
        (dict(mode=None), "mode"),
        (dict(objective="net_value"), "objective"),
        (dict(objective="mix"), "weights"),
        (dict(objective="mix", weights={"revenue": 1.0}), "weights.revenue"),
        (dict(objective="mix", weights={"paid_d30": float("inf")}), "weights.paid_d30"),
        (dict(weights={"paid_d30": 1.0}), "weights"),
        (dict(min_gain_per_yuan=-0.1), "min_gain_per_yuan"),
        (dict(threshold_rule="youden"), "threshold_rule"),
        (dict(heldout_fraction=0.9), "heldout_fraction"),
        (dict(heldout_fraction=-0.1), "heldout_fraction"),
        (dict(seed=-3), "seed"),
        (dict(n_models=0), "n_models"),
        (dict(uncertainty_penalty=-1.0), "uncertainty_penalty"),
        (dict(gain_shrinkage=1.5), "gain_shrinkage"),
        (dict(uncertainty_penalty=float("nan")), "uncertainty_penalty"),
        (dict(n_models=2.0), "n_models"),
        (dict(threshold_fraction=0.0), "threshold_fraction"),
        (dict(epochs=-1), "epochs"),
        (dict(lr=-1.0), "lr"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_bad_policy_settings_are_rejected_before_training(kwargs, match, logs, sc):
    with pytest.raises(ValueError, match=match):
        RecommenderPolicy(**kwargs).fit(logs.iloc[:300], scenario=sc, seed=0)


def test_bad_fit_inputs_are_rejected(logs, sc, cat):
    with pytest.raises(ValueError, match="logs"):
        RecommenderPolicy(**FAST).fit(None, scenario=sc)
    with pytest.raises(ValueError, match="retained_d7"):
        RecommenderPolicy(**FAST).fit(logs.drop(columns=["retained_d7"]), scenario=sc)
    with pytest.raises(ValueError, match="catalogue= or scenario="):
        RecommenderPolicy(**FAST).fit(logs)
    renamed = logs.iloc[:300].copy()
    renamed["action_name"] = "coins_1"
    with pytest.raises(ValueError, match="catalogue"):
        RecommenderPolicy(**FAST).fit(renamed, scenario=sc)
    with pytest.raises(ValueError, match="features"):
        TwoTowerModel(**FAST).fit(logs.drop(columns=["channel"]), logs["action"].to_numpy(), logs, catalogue=cat)
    with pytest.raises(ValueError, match="actions"):
        TwoTowerModel(**FAST).fit(logs[list(FEATURES)], logs["action"].to_numpy() + 100, logs, catalogue=cat)
    with pytest.raises(ValueError, match="propensity"):
        TwoTowerModel(**FAST).fit(logs[list(FEATURES)], logs["action"].to_numpy(), logs, catalogue=cat,
                                  propensity=np.zeros(len(logs)))


def test_act_rejects_another_catalogue(sc, policy):
    from sim.scenario import scenario_from_dict

    other = scenario_from_dict({"meta": {"name": "x"}, "incentives": {"coins": {"levels": [1.0]}}})
    ocat = Catalogue.from_scenario(other)
    coh = generate_cohort(sc, 20, seed=1)
    with pytest.raises(ValueError, match="catalogue"):
        policy.act(1, _obs(sc, ocat, coh, 10.0))


def test_registry_builds_both_modes_and_rejects_unknown_settings():
    assert make_policy("recommender").mode == "gain"
    assert make_policy("recommender", mode="response").mode == "response"
    with pytest.raises(ValueError, match="bad settings"):
        make_policy("recommender", modee="gain")


# ---------------------------------------------------------------------------------------------- allocation
@pytest.mark.parametrize("mode", ["gain", "response"])
@pytest.mark.parametrize("bpu", [0.0, 0.05, 0.3, 1.0])
def test_allocations_fit_the_commitment_budget(sc, cat, policy, mode, bpu):
    coh = generate_cohort(sc, 3000, seed=11)
    budget = bpu * len(coh)
    a = policy.with_mode(mode).act(1, _obs(sc, cat, coh, budget))
    assert a.shape == (len(coh),) and a.dtype == np.int64
    assert cat.commit_costs[a].sum() <= budget + 1e-9
    if bpu >= 0.05:
        assert (a > 0).any()


def test_unlimited_budget_gain_gives_only_positive_predicted_gains(sc, cat, policy):
    coh = generate_cohort(sc, 1000, seed=12)
    a = policy.act(1, _obs(sc, cat, coh, None))
    v = policy.gain_values(policy.predict_members(coh.features()))
    chosen = v[np.arange(len(coh)), a]
    assert np.all(chosen[a > 0] > 0)
    assert np.all(v[a == 0].max(axis=1) <= 1e-12)
    p = policy.predict(coh.features())["retained_d7"]
    r = policy.with_mode("response").act(1, _obs(sc, cat, coh, None))
    np.testing.assert_array_equal(r, 1 + np.argmax(p[:, 1:], axis=1))


def test_gain_values_shrink_toward_the_mean_gain_and_penalise_uncertainty(sc, policy):
    coh = generate_cohort(sc, 500, seed=14)
    members = policy.predict_members(coh.features())
    g = np.stack([m["retained_d7"] - m["retained_d7"][:, :1] for m in members])
    plain = policy.with_mode("gain")
    plain.uncertainty_penalty, plain.gain_shrinkage = 0.0, 1.0
    np.testing.assert_allclose(plain.gain_values(members), g.mean(0))
    plain.gain_shrinkage = 0.0
    np.testing.assert_allclose(plain.gain_values(members), np.broadcast_to(policy.gain_mean_, g.shape[1:]))
    lcb = policy.with_mode("gain")
    lcb.uncertainty_penalty, lcb.gain_shrinkage = 2.0, 0.5
    shrunk = policy.gain_mean_ + 0.5 * (g.mean(0) - policy.gain_mean_)
    se = 0.5 * g.std(0, ddof=1) / np.sqrt(len(members))
    np.testing.assert_allclose(lcb.gain_values(members), shrunk - 2.0 * se)
    assert policy.gain_mean_[0] == 0


def test_response_allocation_serves_highest_scores_first_and_skips_what_does_not_fit():
    scores = np.array([[0.9, 0.1, 0.5], [0.0, 0.8, 0.2], [0.0, 0.3, 0.7], [0.0, 0.6, 0.1]])
    costs = np.array([0.0, 1.0, 3.0])
    # best items: user0 -> 2 (0.5), user1 -> 1 (0.8), user2 -> 2 (0.7), user3 -> 1 (0.6); order 1, 2, 3, 0
    np.testing.assert_array_equal(response_allocation(scores, costs, 4.0), [0, 1, 2, 0])
    np.testing.assert_array_equal(response_allocation(scores, costs, 2.0), [0, 1, 0, 1])
    np.testing.assert_array_equal(response_allocation(scores, costs, None), [2, 1, 2, 1])


def test_policy_runs_in_the_simulator_without_refusals(sc, policy):
    coh = generate_cohort(sc, 4000, seed=13)
    budget = 0.3 * len(coh)
    m = simulate(sc, policy, cohort=coh, seed=13, budget=budget)
    assert m.ledger.refused == 0
    assert m.ledger.spent + m.ledger.reserved <= budget + 1e-6
    assert m.ledger.grants > 0


# ---------------------------------------------------------------------------------------------- metrics
def test_classification_metrics_by_hand():
    y = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.1, 0.05, 0.2, 0.1, 0.0])
    m = RM.classification_metrics(y, p, 0.5)
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["accuracy"] == 0.8
    assert m["base_rate"] == 0.2 and m["accuracy_all_negative"] == 0.8
    assert m["roc_auc"] == pytest.approx(15 / 16)  # 0.9 beats all 8 negatives, 0.3 beats 7


def test_accuracy_is_meaningless_under_imbalance():
    # a rare outcome: saying "no" to everyone is more accurate than a useful ranker that finds most positives
    g = np.random.default_rng(0)
    y = (g.random(20_000) < 0.02).astype(float)
    p = np.clip(0.02 + 0.3 * y + 0.1 * g.standard_normal(20_000), 0, 1)
    m = RM.classification_metrics(y, p, RM.choose_threshold(y, p, "f1"))
    assert m["recall"] > 0.5 and m["pr_auc"] > 5 * m["base_rate"]
    assert m["accuracy_all_negative"] == pytest.approx(1 - y.mean())


def test_base_rate_threshold_flags_as_many_as_there_are_positives():
    g = np.random.default_rng(1)
    y = (g.random(5000) < 0.1).astype(float)
    p = g.random(5000)
    thr = RM.choose_threshold(y, p, "base_rate")
    assert (p >= thr).sum() == y.sum()
    with pytest.raises(ValueError, match="threshold_rule"):
        RM.choose_threshold(y, p, "max")


def test_calibration_table_and_ips(logs):
    y = logs["retained_d7"].to_numpy(float)
    t = RM.calibration_table(y, np.full(y.size, y.mean()) + np.linspace(0, 1e-6, y.size), 5)
    assert t["n"].sum() == y.size and len(t) == 5
    # IPS lift of "none for everyone" is exactly zero; of a logged arm it matches the arm difference in means
    a = logs["action"].to_numpy()
    prop = logs["propensity"].to_numpy()
    assert RM.ips_lift(np.zeros_like(a), a, prop, y)["lift"] == 0.0
    r = RM.ips_lift(np.full_like(a, 5), a, prop, y)
    diff = y[a == 5].mean() - y[a == 0].mean()
    assert abs(r["lift"] - diff) < 4 * r["se"]
    with pytest.raises(ValueError, match="same users"):
        RM.twin_value(pd.DataFrame({"x": [1]}, index=[0]), pd.DataFrame({"x": [1]}, index=[1]))


def test_heldout_metrics_are_computed_on_rows_never_trained_on(policy, logs):
    n = policy.n_logs_
    assert n["train"] + n["threshold"] + n["heldout"] == len(logs)
    assert len(policy.models_) == 2
    for m in policy.models_:
        assert len(m.train_index_) + len(m.val_index_) == n["train"]
    lm = policy.log_metrics_
    for t in ("retained_d7", "paid_d30"):
        m = lm["classification"][t]
        assert m["n"] == n["heldout"]
        assert 0.5 < m["roc_auc"] <= 1.0
        assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1


def test_report_has_metrics_markdown_and_figures(tmp_path, sc, policy):
    coh = generate_cohort(sc, 1500, seed=21)
    ctl = simulate_twin(sc, coh, None, seed=21)
    ctx = EvalContext(scenario=sc, cohort=coh, seed=21, budget_per_user=0.3, arm_users=coh.user_ids,
                      arm_outcomes=ctl, control_outcomes=ctl, truth=None, policy_twin=None, control_twin=ctl,
                      oracle_twin=None, out_dir=tmp_path)
    rep = policy.report(ctx)
    m = rep["metrics"]
    for k in ("heldout_retained_d7_roc_auc", "heldout_paid_d30_pr_auc", "gain_true_incremental_d7_per_yuan",
              "response_true_d7_lift", "gain_true_regret_vs_oracle", "blanket_trial_7d_true_incremental_d7_per_yuan"):
        assert k in m and np.isfinite(m[k]), k
    assert m["gain_true_regret_vs_oracle"] == pytest.approx(
        (m["oracle_true_d7_lift"] - m["gain_true_d7_lift"]) * len(coh))
    assert "accuracy_all_negative" in rep["markdown"] and "Calibration" in rep["markdown"]
    # grants by action add up to the treated share of the cohort
    for arm in ("gain", "response"):
        n_granted = sum(v for k, v in m.items() if k.startswith(f"{arm}_grants_"))
        assert n_granted == pytest.approx(m[f"{arm}_true_treated_share"] * len(coh))
    assert len(rep["figures"]) == 3
    for f in rep["figures"]:
        assert (tmp_path / f.split("/")[-1]).stat().st_size > 1000


# ---------------------------------------------------------------------------------------------- floors (slow)
@pytest.mark.slow
def test_gain_mode_beats_every_blanket_arm_per_yuan_at_full_size(sc):
    """Floor at the default scenario and budget: 100k logs, 100k evaluation users (~30 s to a few minutes)."""
    from sim.twins import static_action_outcomes

    logs = collect_logs(sc, n_users=100_000, seed=1001)
    pol = RecommenderPolicy().fit(logs, scenario=sc, seed=0)
    coh = generate_cohort(sc, 100_000, seed=2026)
    bpu = sc.meta.default_budget_per_user
    ctl = simulate_twin(sc, coh, None, seed=2026)
    out = simulate_twin(sc, coh, pol, budget_per_user=bpu, seed=2026)
    v = RM.twin_value(out, ctl)
    truth = static_action_outcomes(sc, coh, seed=2026)
    y, c = truth.outcomes["retained_d7"], truth.outcomes["cost"]
    for k, name in enumerate(truth.catalogue.names[1:], start=1):
        d = y[:, k] - y[:, 0]
        blanket = d.sum() / c[:, k].sum()
        se = d.std(ddof=1) * math.sqrt(d.size) / c[:, k].sum()
        assert v["incremental_d7_per_yuan"] > blanket, (name, v["incremental_d7_per_yuan"], blanket, se)
