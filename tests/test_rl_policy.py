"""The ``rl`` policy: protocol, determinism, budget, safe loading, CLI, bad settings; one slow quality check."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from policies.base import NotFittedError
from policies.registry import make_policy
from policies.rl.policy import RLPolicy, training_world_seed
from sim.model import IncentiveModel
from sim.population import generate_cohort
from sim.scenario import load_scenario

SC = load_scenario("fanqie_newuser")
TINY = dict(timesteps=2048, n_envs=128, n_steps=8, batch_size=256, n_epochs=2, n_pool=2048, n_val=1000)


@pytest.fixture(scope="module")
def tiny():
    return RLPolicy(**TINY).fit(scenario=SC, seed=5)


def _probe_obs(policy, n=500):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, size=(n, policy.encoder_.dim)).astype(np.float32)


def test_registry_builds_an_unfitted_dynamic_policy():
    p = make_policy("rl", timesteps=10)
    assert isinstance(p, RLPolicy)
    assert p.static is False and p.needs_logs is False
    m = IncentiveModel(SC, policy=p, n_users=50, seed=0, budget=10.0)
    with pytest.raises(NotFittedError, match=r"rl: call fit\(scenario=..., seed=...\)"):
        m.step()


def test_training_is_deterministic_and_leaves_global_rngs_alone(tiny):
    np_before = np.random.get_state()[1].copy()  # noqa: NPY002 - checking the global state is untouched
    py_before = random.getstate()
    th_before = torch.get_rng_state().clone()
    again = RLPolicy(**TINY).fit(scenario=SC, seed=5)
    np.testing.assert_array_equal(np.random.get_state()[1], np_before)  # noqa: NPY002
    assert random.getstate() == py_before
    assert torch.equal(torch.get_rng_state(), th_before)
    x = _probe_obs(tiny)
    np.testing.assert_array_equal(tiny._scores(x), again._scores(x))
    np.testing.assert_array_equal(tiny.decide(x), again.decide(x))
    other = RLPolicy(**TINY).fit(scenario=SC, seed=6)
    assert not np.array_equal(tiny._scores(x), other._scores(x))


def test_training_world_is_not_the_evaluation_world():
    seeds = [training_world_seed(s) for s in range(200)]
    assert all(t != s for s, t in enumerate(seeds))
    assert len(set(seeds)) == 200
    assert seeds == [training_world_seed(s) for s in range(200)]


def test_budget_is_respected_in_the_mesa_model(tiny):
    for bpu in (0.02, 0.3):
        tiny.n_capped_ = 0
        m = IncentiveModel(SC, policy=tiny, n_users=3000, seed=8, budget=bpu * 3000).run()
        assert m.ledger.spent + m.ledger.reserved <= bpu * 3000 + 1e-9
        assert m.ledger.refused == 0  # the policy caps its own grants to the uncommitted budget
        assert round(bpu, 9) in tiny.lam_by_budget_
        plan = tiny.lam_by_budget_[round(bpu, 9)]
        assert plan["spend_per_user"] <= plan["target"] + 1e-12 or plan["lam"] == tiny.settings_.lam_range[1]
    acts = [r["day"] for r in tiny.day_log_]
    assert max(acts) <= tiny.horizon  # acts daily, on days 1..horizon only


def test_lambda_tuning_is_monotone_in_the_budget(tiny):
    tiny.lam_by_budget_.clear()
    lams = [tiny.tune(b) for b in (0.01, 0.1, 1.0)]
    assert lams[0] >= lams[1] >= lams[2]
    with pytest.raises(ValueError, match="budget_per_user: expected None or a finite number"):
        tiny.tune(-1.0)


def test_static_variant_acts_on_day_one_only():
    p = RLPolicy(**TINY, act_days=1).fit(scenario=SC, seed=5, budget_per_user=0.3)
    IncentiveModel(SC, policy=p, n_users=500, seed=3, budget=150.0).run()
    assert [r["day"] for r in p.day_log_] == [1]


def test_save_and_load_reads_parameters_only(tiny, tmp_path):
    paths = tiny.save(tmp_path / "m")
    for k in ("model", "settings", "curve_csv", "curve_png"):
        assert paths[k].exists() and paths[k].stat().st_size > 0
    # corrupt the zip's "data" entry (SB3 would cloudpickle-load parts of it): loading must not read it
    src = tmp_path / "m" / "model.zip"
    bad = tmp_path / "bad"
    bad.mkdir()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad / "model.zip", "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, b"not json, never to be unpickled" if item.filename == "data" else data)
    (bad / "settings.json").write_bytes((tmp_path / "m" / "settings.json").read_bytes())
    x = _probe_obs(tiny)
    for d in (tmp_path / "m", bad):
        loaded = RLPolicy.load(d)
        np.testing.assert_array_equal(loaded._scores(x), tiny._scores(x))
    meta = json.loads((tmp_path / "m" / "settings.json").read_text())
    assert meta["training_world_seed"] == training_world_seed(5)
    with pytest.raises(ValueError, match=r"model_dir: expected settings.json in .*nothing_here"):
        RLPolicy.load(tmp_path / "nothing_here")


def test_report_has_metrics_markdown_and_curve(tiny, tmp_path):
    from policies.base import EvalContext

    coh = generate_cohort(SC, 400, seed=2)
    out = IncentiveModel(SC, coh, tiny, seed=2, budget=0.3 * 400).run().outcomes()
    ctx = EvalContext(scenario=SC, cohort=coh, seed=2, budget_per_user=0.3, arm_users=coh.user_ids,
                      arm_outcomes=out, control_outcomes=out, truth=None, policy_twin=out, control_twin=out,
                      oracle_twin=None, out_dir=tmp_path)
    rep = tiny.report(ctx)
    assert rep["metrics"]["true_incremental_d7_per_yuan"] == 0.0  # policy twin == control twin here
    assert rep["metrics"]["train_seconds"] > 0
    assert "lambda tuned" in rep["markdown"]
    assert all((tmp_path / f).exists() for f in ("rl_curve.png", "rl_curve.csv")) and rep["figures"]


BAD = [
    ({"algo": "a2c"}, r"rl\.algo: expected one of \['ppo', 'dqn'\]"),
    ({"timesteps": 0}, r"rl\.timesteps: expected an integer >= 1"),
    ({"n_envs": 1.5}, r"rl\.n_envs: expected an integer >= 1"),
    ({"gamma": 1.5}, r"rl\.gamma: expected a discount in \[0, 1\]"),
    ({"learning_rate": float("nan")}, r"rl\.learning_rate: expected a finite number"),
    ({"budget_safety": 0.0}, r"rl\.budget_safety: expected a share in \(0, 1\]"),
    ({"net_arch": []}, r"rl\.net_arch: expected a non-empty list"),
    ({"lam_range": (2.0, 1.0)}, r"rl: lam_range: expected \(low, high\)"),
    ({"horizon": 0}, r"rl: horizon: expected an integer"),
    ({"value": "likes"}, r"rl: value: expected one of"),
    ({"act_days": 8}, r"rl: act_days: expected None or an integer in \[1, horizon=7\]"),
    ({"lam": -0.5}, r"rl: lam: expected a finite cost penalty"),
]


@pytest.mark.parametrize("kwargs,match", BAD)
def test_bad_settings_are_rejected_before_training(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RLPolicy(**{**TINY, **kwargs}).fit(scenario=SC, seed=0)


def test_fit_needs_scenario_and_seed():
    with pytest.raises(ValueError, match=r"rl\.fit: needs scenario= and seed="):
        RLPolicy(**TINY).fit()


def test_train_cli_writes_model_settings_and_curve(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run(
        [sys.executable, "-m", "policies.rl.train", "--scenario", "fanqie_newuser", "--timesteps", "2048",
         "--n-envs", "256", "--out", str(out), "--seed", "3"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "lambda tuned" in r.stdout
    for f in ("model.zip", "settings.json", "rl_curve.png", "rl_curve.csv"):
        assert (out / f).exists()
    assert RLPolicy.load(out).settings_.horizon == 7


@pytest.mark.slow
def test_trained_agent_beats_random_and_blankets_per_yuan():
    """Default settings, default budget: true incremental D7 users per yuan (twins) above random and blankets."""
    from policies.baselines import BlanketPolicy, ControlPolicy, RandomPolicy
    from sim.twins import simulate_twin

    coh = generate_cohort(SC, 20_000, seed=0)
    bpu = SC.meta.default_budget_per_user
    ctrl = simulate_twin(SC, coh, ControlPolicy(), seed=0)
    rl = RLPolicy().fit(scenario=SC, seed=0)

    def per_yuan(out):
        d = out["retained_d7"].to_numpy() - ctrl["retained_d7"].to_numpy()
        c = out["cost"].to_numpy()
        # ratio estimate and its delta-method standard error over users
        r = d.sum() / c.sum()
        se = np.sqrt(np.var(d - r * c, ddof=1) * len(d)) / c.sum()
        return r, se

    r_rl, se_rl = per_yuan(simulate_twin(SC, coh, rl, budget_per_user=bpu, seed=0))
    for pol in (RandomPolicy(), BlanketPolicy("coins_1"), BlanketPolicy("trial_7d"), BlanketPolicy("unlock_20")):
        r, se = per_yuan(simulate_twin(SC, coh, pol, seed=0))
        assert r_rl - r > 2 * np.hypot(se_rl, se), (pol, r_rl, r)


def test_dqn_is_selectable_and_respects_the_budget():
    p = RLPolicy(**{**TINY, "algo": "dqn", "batch_size": 64}).fit(scenario=SC, seed=1, budget_per_user=0.3)
    m = IncentiveModel(SC, policy=p, n_users=1000, seed=4, budget=300.0).run()
    assert m.ledger.refused == 0
    assert m.ledger.spent + m.ledger.reserved <= 300.0 + 1e-9
    again = RLPolicy(**{**TINY, "algo": "dqn", "batch_size": 64}).fit(scenario=SC, seed=1)
    x = _probe_obs(p)
    np.testing.assert_array_equal(p._scores(x), again._scores(x))
