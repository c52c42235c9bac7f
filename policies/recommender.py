"""The ``recommender`` policy: a two-tower response model turned into day-1 incentive grants.

Two modes, same model:

* ``gain`` (default): each incentive's predicted *gain* over "none"
  (``p(y | x, a) - p(y | x, none)``; a lower confidence bound over an ensemble
  of two-towers) is allocated under the arm's budget by the shared solver
  (:func:`policies.solver.allocate`) on the ledger's commitment costs, i.e.
  most predicted gain per committed yuan first.
  This targets persuadables: users whose outcome the incentive changes.
* ``response``: what a plain recommender does.  Each user's incentive is
  the one with the highest predicted *response* ``p(y | x, a)`` ("none" is
  not recommended), and users are served in order of that predicted response
  while the commitment fits in the budget.  This targets sure things: users
  who would have retained (or paid) anyway.

The model is trained on logged exploration data only (``fit(logs, ...)``);
a share of the logs is held out from training and early stopping to measure
the model honestly (:mod:`policies.rec_metrics`).  ``report(ctx)`` adds the
true value of both modes' allocations from counterfactual twins.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from policies import rec_metrics as RM
from policies.base import EvalContext, NotFittedError, Observation, Policy
from policies.solver import allocate, objective_values
from policies.two_tower import FEATURES, TwoTowerModel
from sim.atomic import write_text_atomic

MODES = ("gain", "response")
OBJECTIVES = ("d7_retention", "first_payment", "mix")
TARGETS = ("retained_d7", "paid_d30")
_OBJ_TARGET = {"d7_retention": "retained_d7", "first_payment": "paid_d30"}


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def response_allocation(scores: np.ndarray, costs: np.ndarray, budget: float | None) -> np.ndarray:
    """A plain recommender's grants: each user's top-scoring incentive, users served by score while it fits.

    ``scores``: (n, K) predicted response, column 0 = none (never recommended).
    ``costs``: (K,) commitment costs.  Users whose incentive no longer fits are
    skipped (a cheaper later one may still fit).
    """
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(costs, dtype=np.float64)
    n, K = s.shape
    if K < 2:
        return np.zeros(n, dtype=np.int64)
    best = 1 + np.argmax(s[:, 1:], axis=1)
    top = s[np.arange(n), best]
    if budget is None or not math.isfinite(budget):
        return best.astype(np.int64)
    order = np.lexsort((np.arange(n), -top))  # highest predicted response first; ties by position
    out = np.zeros(n, dtype=np.int64)
    left = float(budget)
    cost_of = c[best]
    for i in order:
        if cost_of[i] <= left + 1e-9:
            out[i] = best[i]
            left -= cost_of[i]
    return out


def _mean_preds(members: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {t: np.mean([p[t] for p in members], axis=0) for t in members[0]}


class _Recording(Policy):
    """Wraps a static policy and keeps the actions it returned (for evaluation only)."""

    static = True

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", "policy")
        self.actions: np.ndarray | None = None
        self.user_ids: np.ndarray | None = None

    def act(self, day: int, obs: Observation) -> np.ndarray:
        a = self.inner.act(day, obs)
        if day == 1:
            self.actions = np.asarray(a, dtype=np.int64).copy()
            self.user_ids = obs.user_ids.copy()
        return a


class RecommenderPolicy(Policy):
    """Two-tower recommender of day-1 incentives (``gain`` or ``response`` mode).

    Parameters
    ----------
    mode : str
        ``"gain"`` (predicted gain over none per committed yuan, solver under the
        budget) or ``"response"`` (highest predicted response, cut off at the budget).
    objective : str
        ``"d7_retention"``, ``"first_payment"`` or ``"mix"`` (weighted sum of the
        heads' predictions, ``weights`` keyed by ``retained_d7`` / ``paid_d30``).
    weights : dict, optional
        Head weights for ``objective="mix"``.
    min_gain_per_yuan : float
        ``gain`` mode: increments worth less than this per committed yuan are not taken.
    uncertainty_penalty : float
        ``gain`` mode: allocate on the ensemble's mean predicted gain minus this many standard errors
        of that mean (a lower confidence bound; 0 = the plain mean).  Chosen on a development cohort
        (seed 99, never the benchmark's): 2, together with ``gain_shrinkage`` 0.5.
    gain_shrinkage : float
        ``gain`` mode: each user's predicted gain of an action is shrunk toward that action's mean
        predicted gain over the logged users, ``mean + gain_shrinkage * (gain - mean)`` (1 = no
        shrinkage).  Individual gains are noisy; the action's average effect is well estimated.
        0.5 (with ``uncertainty_penalty`` 2) chosen on the development cohort after the world's recalibration
        (8aeebc1); see benchmarks/RECORD_recommender.md.
    threshold_rule : str
        How the operating threshold of the held-out metrics is chosen on the
        threshold split (logs never trained on): ``"f1"`` (maximise F1) or ``"base_rate"``.
    heldout_fraction : float
        Share of the logs kept out of training and early stopping, for the metrics.
    threshold_fraction : float
        Share of the remaining logs kept out of training, on which the operating threshold is chosen.
    epochs, patience, batch_size, lr, weight_decay, hidden, dim, cat_dim, val_fraction, n_threads :
        Two-tower hyper-parameters (:class:`policies.two_tower.TwoTowerConfig`).
    n_models : int
        Size of the seed ensemble: that many two-towers trained on the same rows, each with its own
        early-stopping split, initial weights and batch order, whose predicted probabilities are
        averaged.  Gains are small differences of noisy predictions; averaging cuts their variance.
    seed : int, optional
        Training seed; default: the ``seed`` passed to ``fit`` (the run seed), else 0.
    """

    name = "recommender"
    static = True
    needs_logs = True

    def __init__(
        self,
        mode: str = "gain",
        objective: str = "d7_retention",
        weights: dict[str, float] | None = None,
        min_gain_per_yuan: float = 0.0,
        uncertainty_penalty: float = 2.0,
        gain_shrinkage: float = 0.5,
        threshold_rule: str = "f1",
        heldout_fraction: float = 0.1,
        threshold_fraction: float = 0.1,
        epochs: int = 60,
        patience: int = 6,
        batch_size: int = 1024,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        hidden: int = 64,
        dim: int = 16,
        cat_dim: int = 4,
        val_fraction: float = 0.2,
        n_threads: int = 1,
        n_models: int = 5,
        seed: int | None = None,
    ) -> None:
        self.mode = mode
        self.objective = objective
        self.weights = weights
        self.min_gain_per_yuan = min_gain_per_yuan
        self.uncertainty_penalty = uncertainty_penalty
        self.gain_shrinkage = gain_shrinkage
        self.threshold_rule = threshold_rule
        self.heldout_fraction = heldout_fraction
        self.threshold_fraction = threshold_fraction
        self.epochs = epochs
        self.patience = patience
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.hidden = hidden
        self.dim = dim
        self.cat_dim = cat_dim
        self.val_fraction = val_fraction
        self.n_threads = n_threads
        self.n_models = n_models
        self.seed = seed

    # ------------------------------------------------------------------
    def _model_params(self, seed: int) -> dict[str, Any]:
        return {
            "targets": TARGETS, "epochs": self.epochs, "patience": self.patience, "batch_size": self.batch_size,
            "lr": self.lr, "weight_decay": self.weight_decay, "hidden": self.hidden, "dim": self.dim,
            "cat_dim": self.cat_dim, "val_fraction": self.val_fraction, "n_threads": self.n_threads, "seed": seed,
        }

    def _validate(self) -> None:
        """Check the policy's own settings; raise a ValueError naming the field."""
        p = "recommender"
        if self.mode not in MODES:
            raise ValueError(f"{p}.mode: expected one of {list(MODES)}, got {self.mode!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"{p}.objective: expected one of {list(OBJECTIVES)} (the model predicts "
                             f"{list(TARGETS)}), got {self.objective!r}")
        if self.objective == "mix":
            if not isinstance(self.weights, dict) or not self.weights:
                raise ValueError(f"{p}.weights: objective 'mix' needs weights such as "
                                 f"{{'retained_d7': 1.0, 'paid_d30': 2.0}}, got {self.weights!r}")
            for k, v in self.weights.items():
                if k not in TARGETS:
                    raise ValueError(f"{p}.weights.{k}: unknown head; expected keys among {list(TARGETS)}")
                if not _is_num(v):
                    raise ValueError(f"{p}.weights.{k}: expected a finite number, got {v!r}")
        elif self.weights is not None:
            raise ValueError(f"{p}.weights: only used with objective 'mix', got {self.weights!r} "
                             f"with objective {self.objective!r}")
        if not _is_num(self.min_gain_per_yuan) or self.min_gain_per_yuan < 0:
            raise ValueError(f"{p}.min_gain_per_yuan: expected a finite number >= 0, got {self.min_gain_per_yuan!r}")
        if not _is_num(self.uncertainty_penalty) or self.uncertainty_penalty < 0:
            raise ValueError(f"{p}.uncertainty_penalty: expected a finite number >= 0, "
                             f"got {self.uncertainty_penalty!r}")
        if not _is_num(self.gain_shrinkage) or not 0 <= self.gain_shrinkage <= 1:
            raise ValueError(f"{p}.gain_shrinkage: expected a number in [0, 1], got {self.gain_shrinkage!r}")
        if self.threshold_rule not in RM.THRESHOLD_RULES:
            raise ValueError(f"{p}.threshold_rule: expected one of {list(RM.THRESHOLD_RULES)}, "
                             f"got {self.threshold_rule!r}")
        if not _is_num(self.heldout_fraction) or not 0 <= self.heldout_fraction <= 0.5:
            raise ValueError(f"{p}.heldout_fraction: expected a number in [0, 0.5], got {self.heldout_fraction!r}")
        if not _is_num(self.threshold_fraction) or not 0 < self.threshold_fraction <= 0.5:
            raise ValueError(f"{p}.threshold_fraction: expected a number in (0, 0.5], got {self.threshold_fraction!r}")
        if not _is_int(self.n_models) or not 1 <= self.n_models <= 32:
            raise ValueError(f"{p}.n_models: expected an integer in [1, 32], got {self.n_models!r}")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise ValueError(f"{p}.seed: expected a non-negative integer or None, got {self.seed!r}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "models_"):
            raise NotFittedError(
                "recommender: not fitted; call fit(logs, scenario=..., seed=...) with logged exploration data "
                "(experiments.collect.collect_logs) before act() or report()"
            )

    # ------------------------------------------------------------------
    def fit(self, logs: pd.DataFrame | None = None, *, scenario=None, catalogue=None, seed: int | None = None,
            **context: Any) -> RecommenderPolicy:
        """Train the two-tower model on logged exploration data (never on the evaluation cohort).

        ``catalogue`` (or ``scenario``, to build it) says what the logged action
        indices mean.  ``seed`` is the run seed, used when ``self.seed`` is None.
        """
        self._validate()
        from experiments.collect import validate_logs
        from sim.catalogue import Catalogue
        from sim.scenario import load_scenario

        if logs is None or not isinstance(logs, pd.DataFrame):
            raise ValueError(f"recommender.fit: logs: expected a DataFrame of logged exploration data "
                             f"(experiments.collect.collect_logs), got {type(logs).__name__}")
        validate_logs(logs, required=(*FEATURES, "action", "propensity", *TARGETS))
        sc = load_scenario(scenario) if scenario is not None else None
        if catalogue is None:
            if sc is None:
                raise ValueError("recommender.fit: needs catalogue= or scenario= to know what the logged actions are")
            catalogue = Catalogue.from_scenario(sc)
        if "action_name" in logs.columns:
            names = np.asarray(catalogue.names, dtype=object)
            a = logs["action"].to_numpy()
            if a.min() < 0 or a.max() >= len(names) or np.any(names[a] != logs["action_name"].to_numpy(dtype=object)):
                raise ValueError("logs: action indices do not match the catalogue's action names "
                                 f"({catalogue.names}); were the logs collected on another scenario?")
        run_seed = 0 if seed is None else int(seed)
        s = self.seed if self.seed is not None else run_seed
        if not _is_int(s) or s < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {s!r}")

        n = len(logs)
        perm = np.random.default_rng(np.random.SeedSequence(int(s), spawn_key=(2,))).permutation(n)
        n_hold = int(round(self.heldout_fraction * n))
        hold = np.sort(perm[:n_hold])
        train = np.sort(perm[n_hold:])
        tr_logs = logs.iloc[train].reset_index(drop=True)
        # rows for the operating threshold: never trained on, never used for early stopping
        tperm = np.random.default_rng(np.random.SeedSequence(int(s), spawn_key=(3,))).permutation(len(tr_logs))
        n_thr = max(1, int(round(self.threshold_fraction * len(tr_logs))))
        thr_logs = tr_logs.iloc[np.sort(tperm[:n_thr])].reset_index(drop=True)
        fit_logs = tr_logs.iloc[np.sort(tperm[n_thr:])].reset_index(drop=True)
        models = []
        for k in range(self.n_models):
            # each member: its own seed, hence its own early-stopping split, initial weights and batch order
            member_seed = int(np.random.SeedSequence(int(s), spawn_key=(4, k)).generate_state(1)[0] % (2**31))
            model = TwoTowerModel(**self._model_params(member_seed))
            model.fit(fit_logs[list(FEATURES)], fit_logs["action"].to_numpy(np.int64), fit_logs,
                      catalogue=catalogue, propensity=fit_logs["propensity"].to_numpy(np.float64))
            models.append(model)
        self.models_ = models
        self.model_ = models[0]
        self.fit_seconds_ = float(sum(m.fit_seconds_ for m in models))
        self.catalogue_ = catalogue
        self.action_names_ = list(catalogue.names)
        self.commit_costs_ = np.asarray(catalogue.commit_costs, dtype=np.float64)
        self.seed_ = int(s)
        self.budget_per_user_ = float(sc.meta.default_budget_per_user) if sc is not None else None
        self.n_logs_ = {"train": int(len(fit_logs)), "threshold": int(n_thr), "heldout": int(n_hold)}
        # operating thresholds: chosen on the threshold split, applied to the held-out split
        pv_all = self.predict(thr_logs[list(FEATURES)])
        ta = thr_logs["action"].to_numpy(np.int64)
        pv = {t: v[np.arange(len(ta)), ta] for t, v in pv_all.items()}
        gv = objective_values(pv_all, self.objective, self.weights)
        self.gain_mean_ = (gv - gv[:, :1]).mean(axis=0)  # each action's mean predicted gain (threshold split)
        self.thresholds_ = {t: RM.choose_threshold(thr_logs[t].to_numpy(), pv[t], self.threshold_rule)
                            for t in TARGETS}
        self.log_metrics_ = self._heldout_metrics(logs.iloc[hold].reset_index(drop=True)) if n_hold >= 20 else None
        return self

    def _heldout_metrics(self, hold: pd.DataFrame) -> dict[str, Any]:
        members = self.predict_members(hold[list(FEATURES)])
        p_all = _mean_preds(members)
        a = hold["action"].to_numpy(np.int64)
        rows = np.arange(len(hold))
        out: dict[str, Any] = {"classification": {}, "calibration": {}, "curves": {}, "ips": {}}
        for t in TARGETS:
            y = hold[t].to_numpy(np.float64)
            p = p_all[t][rows, a]
            out["classification"][t] = RM.classification_metrics(y, p, self.thresholds_[t])
            tab = RM.calibration_table(y, p, 10)
            out["calibration"][t] = tab
            out["classification"][t]["ece"] = RM.expected_calibration_error(tab)
            out["curves"][t] = (y, p)
        # offline (IPS) estimate of each mode's lift on the held-out logs, at the default budget per user
        bpu = self.budget_per_user_ if self.budget_per_user_ is not None else math.inf
        budget = None if not math.isfinite(bpu) else bpu * len(hold)
        for mode in MODES:
            acts = self._allocate(members, budget, mode)
            for t in TARGETS:
                r = RM.ips_lift(acts, a, hold["propensity"].to_numpy(np.float64), hold[t].to_numpy(np.float64))
                out["ips"][f"{mode}_{t}"] = r
        return out

    # ------------------------------------------------------------------
    def predict_members(self, features: pd.DataFrame) -> list[dict[str, np.ndarray]]:
        """Each ensemble member's predicted probabilities (see :meth:`predict`)."""
        self._check_fitted()
        return [m.predict_proba(features) for m in self.models_]

    def predict(self, features: pd.DataFrame) -> dict[str, np.ndarray]:
        """Predicted probability of each head under each action: ``{"retained_d7": (n, K), "paid_d30": (n, K)}``.

        The mean of the ensemble members' predictions.
        """
        return _mean_preds(self.predict_members(features))

    def gain_values(self, members: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Values the ``gain`` mode allocates: each action's predicted gain over none, made conservative.

        Per member, the objective's predicted gain ``v(x, a) - v(x, none)``; the ensemble mean, shrunk
        toward each action's mean gain by ``gain_shrinkage``, minus ``uncertainty_penalty`` standard
        errors of that mean.  Individual gains are small differences of noisy predictions; the solver,
        which ranks gain per yuan, would otherwise chase noise.
        """
        g = np.stack([objective_values(p, self.objective, self.weights) for p in members])
        g = g - g[:, :, :1]
        lam = float(self.gain_shrinkage)
        mu = self.gain_mean_ + lam * (g.mean(axis=0) - self.gain_mean_)
        if len(members) < 2 or self.uncertainty_penalty == 0:
            return mu
        se = lam * g.std(axis=0, ddof=1) / math.sqrt(len(members))
        return mu - float(self.uncertainty_penalty) * se

    def _allocate(self, members: list[dict[str, np.ndarray]], budget: float | None, mode: str) -> np.ndarray:
        if mode == "gain":
            return allocate(self.gain_values(members), self.commit_costs_, budget,
                            min_gain_per_yuan=float(self.min_gain_per_yuan))
        values = objective_values(_mean_preds(members), self.objective, self.weights)
        return response_allocation(values, self.commit_costs_, budget)

    def act(self, day: int, obs: Observation) -> np.ndarray:
        self._check_fitted()
        self._validate()
        if list(obs.catalogue.names) != self.action_names_:
            raise ValueError(f"recommender: the catalogue {list(obs.catalogue.names)} differs from the one the model "
                             f"was trained on {self.action_names_}")
        if len(obs) == 0:
            return np.zeros(0, dtype=np.int64)
        budget = None if not math.isfinite(obs.budget_remaining) else float(obs.budget_remaining)
        return self._allocate(self.predict_members(obs.features), budget, self.mode)

    def with_mode(self, mode: str) -> RecommenderPolicy:
        """A copy in another mode that shares the fitted model (no retraining)."""
        if mode not in MODES:
            raise ValueError(f"recommender.mode: expected one of {list(MODES)}, got {mode!r}")
        other = copy.copy(self)
        other.mode = mode
        return other

    # ------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Save each ensemble member (``model_k/weights.pt`` + ``config.json``) and ``policy.json`` under ``path``."""
        self._check_fitted()
        d = Path(path)
        for k, m in enumerate(self.models_):
            m.save(d / f"model_{k}")
        meta = {
            "params": self.get_params(),
            "seed_": self.seed_,
            "thresholds_": self.thresholds_,
            "gain_mean_": [float(x) for x in self.gain_mean_],
            "budget_per_user_": self.budget_per_user_,
            "n_logs_": self.n_logs_,
            "catalogue": self.model_.item_meta_,
        }
        write_text_atomic(d / "policy.json", json.dumps(meta, indent=2))
        return d

    @classmethod
    def load(cls, path: str | Path) -> RecommenderPolicy:
        """Load a policy written by :meth:`save` (held-out metrics are not saved; ``report`` needs a fresh fit)."""
        from sim.catalogue import Action, Catalogue

        d = Path(path)
        if not (d / "policy.json").is_file():
            raise ValueError(f"path: expected a saved recommender directory with policy.json, not found in {d}")
        meta = json.loads((d / "policy.json").read_text())
        pol = cls(**meta["params"])
        pol._validate()
        pol.models_ = [TwoTowerModel.load(d / f"model_{k}") for k in range(pol.n_models)]
        pol.model_ = pol.models_[0]
        it = meta["catalogue"]
        pol.catalogue_ = Catalogue(tuple(
            Action(i, n, int(t), float(lv), float(c))
            for i, (n, t, lv, c) in enumerate(zip(it["names"], it["types"], it["levels"], it["costs"]))
        ))
        pol.action_names_ = list(it["names"])
        pol.commit_costs_ = np.asarray(it["costs"], dtype=np.float64)
        pol.seed_ = int(meta["seed_"])
        pol.thresholds_ = {k: float(v) for k, v in meta["thresholds_"].items()}
        pol.gain_mean_ = np.asarray(meta["gain_mean_"], dtype=np.float64)
        pol.budget_per_user_ = meta["budget_per_user_"]
        pol.n_logs_ = meta["n_logs_"]
        pol.log_metrics_ = None
        return pol

    # ------------------------------------------------------------------
    def evaluate_modes(self, ctx: EvalContext) -> dict[str, Any]:
        """True value of both modes' allocations, the oracle's and every blanket arm's, from twins.

        Evaluation code: reads the simulator's truth (twins, hidden segments), never used by ``act``.
        """
        from policies.oracle import OraclePolicy
        from sim.twins import simulate_twin, static_action_outcomes

        self._check_fitted()
        sc, coh, seed, bpu = ctx.scenario, ctx.cohort, int(ctx.seed), ctx.budget_per_user
        control = ctx.control_twin
        if control is None:
            control = simulate_twin(sc, coh, None, budget_per_user=None, seed=seed)
        arms: dict[str, tuple[pd.DataFrame, np.ndarray]] = {}
        for mode in MODES:
            rec = _Recording(self.with_mode(mode))
            out = simulate_twin(sc, coh, rec, budget_per_user=bpu, seed=seed)
            acts = np.zeros(len(coh), dtype=np.int64)
            if rec.actions is not None:
                acts[np.searchsorted(coh.user_ids, rec.user_ids)] = rec.actions
            arms[mode] = (out, acts)
        oracle = OraclePolicy(objective=self.objective, weights=self.weights).fit(scenario=sc, seed=seed)
        rec = _Recording(oracle)  # simulated here (not ctx.oracle_twin) to know whom it treats
        out = simulate_twin(sc, coh, rec, budget_per_user=bpu, seed=seed)
        acts = np.zeros(len(coh), dtype=np.int64)
        if rec.actions is not None:
            acts[np.searchsorted(coh.user_ids, rec.user_ids)] = rec.actions
        arms["oracle"] = (out, acts)

        truth = ctx.truth if ctx.truth is not None else static_action_outcomes(sc, coh, seed=seed, replications=0)
        y7, cost = truth.outcomes["retained_d7"], truth.outcomes["cost"]
        blanket = {}
        for k, name in enumerate(truth.catalogue.names):
            if k == 0:
                continue
            c = float(cost[:, k].sum())
            blanket[name] = float((y7[:, k] - y7[:, 0]).sum()) / c if c > 0 else math.nan

        seg = coh.hidden()["segment"]  # truth: evaluation only
        values, comp = {}, {}
        c7 = control["retained_d7"].to_numpy(np.float64)
        for arm, (out, acts) in arms.items():
            v = RM.twin_value(out, control)
            treated = acts > 0
            v["treated_share"] = float(treated.mean())
            d7 = out["retained_d7"].to_numpy(np.float64)
            v["treated_control_d7"] = float(c7[treated].mean()) if treated.any() else math.nan
            v["treated_d7_lift"] = float((d7 - c7)[treated].mean()) if treated.any() else math.nan
            v["treated_cost"] = float(out["cost"].to_numpy(np.float64)[treated].mean()) if treated.any() else math.nan
            v["grants_by_action"] = {n: int((acts == k).sum()) for k, n in enumerate(self.action_names_) if k > 0}
            values[arm] = v
            comp[arm] = (seg[treated].value_counts(normalize=True) if treated.any()
                         else pd.Series(0.0, index=seg.cat.categories))
        composition = pd.DataFrame(comp).T.fillna(0.0)[list(seg.cat.categories)]
        key = {"d7_retention": "d7_lift", "first_payment": "paid_d30_lift"}.get(self.objective, "d7_lift")
        for arm in MODES:
            values[arm]["regret_vs_oracle"] = (values["oracle"][key] - values[arm][key]) * len(coh)
            values[arm]["share_of_oracle"] = (values[arm][key] / values["oracle"][key]
                                              if values["oracle"][key] != 0 else math.nan)
        return {"values": values, "composition": composition, "blanket_d7_per_yuan": blanket,
                "regret_metric": key}

    def report(self, ctx: EvalContext) -> dict[str, Any]:
        """Model quality on held-out logs and the true value of both modes (twins), with figures."""
        self._check_fitted()
        ev = self.evaluate_modes(ctx)
        metrics: dict[str, float] = {}
        md = [f"### Two-tower recommender (mode `{self.mode}`, objective `{self.objective}`)", ""]
        md.append(f"Trained on logged exploration data only: an ensemble of {len(self.models_)} two-towers on "
                  f"{self.n_logs_['train']:,} rows (each stops early on its own {self.val_fraction:.0%} of them; "
                  f"best epochs {[m.best_epoch_ for m in self.models_]}; "
                  f"{getattr(self, 'fit_seconds_', math.nan):.1f} s), {self.n_logs_['threshold']:,} rows to choose "
                  f"the operating threshold, {self.n_logs_['heldout']:,} held out for the metrics below.")
        md.append("")
        figures = []
        lm = self.log_metrics_
        if lm is not None:
            rows = {}
            for t, m in lm["classification"].items():
                rows[t] = m
                for k, v in m.items():
                    metrics[f"heldout_{t}_{k}"] = float(v)
            tab = pd.DataFrame(rows).T[["n", "base_rate", "roc_auc", "pr_auc", "ece", "threshold", "flagged_share",
                                        "precision", "recall", "f1", "accuracy", "accuracy_all_negative",
                                        "accuracy_at_0.5", "recall_at_0.5"]]
            tab.index.name = "head"
            rule = ("maximises F1 on the threshold split (logs never trained on)" if self.threshold_rule == "f1"
                    else "flags as many threshold-split users as there are positives (base-rate matching)")
            md += ["**Prediction quality on held-out logs** (each user's response to the incentive they were "
                   f"logged with).  Operating threshold: the one that {rule}.  `accuracy_all_negative` is the "
                   "accuracy of saying 'no' to everyone: under this imbalance accuracy is not a measure of the "
                   "model; read recall, precision and PR-AUC (a random ranker's PR-AUC is the base rate).", "",
                   RM.markdown_table(tab, ".3f"), ""]
            for t, tb in lm["calibration"].items():
                md += [f"Calibration of `{t}` (deciles of the prediction, held-out logs):", "",
                       RM.markdown_table(tb.set_index("bin")[["n", "mean_predicted", "observed", "observed_se"]],
                                         ".4f"), ""]
            ips = pd.DataFrame(lm["ips"]).T
            ips.index.name = "mode_head"
            for k, r in lm["ips"].items():
                metrics[f"heldout_ips_{k}_lift"] = r["lift"]
                metrics[f"heldout_ips_{k}_lift_se"] = r["se"]
            md += ["Offline check without the simulator's truth: IPS estimate of each mode's lift over none on the "
                   "held-out (randomised) logs, at the default budget per user (noisy: only users whose logged "
                   "action matches the policy's count):", "", RM.markdown_table(ips, ".4f"), ""]
            if ctx.out_dir is not None:
                out_dir = Path(ctx.out_dir)
                figures.append(str(RM.calibration_figure(lm["calibration"], out_dir / "recommender_calibration.png")))
                curves = {t: (*lm["curves"][t], lm["classification"][t]) for t in TARGETS}
                figures.append(str(RM.pr_figure(curves, out_dir / "recommender_pr.png")))
        else:
            md += ["No held-out logs (heldout_fraction = 0 or a loaded model): prediction metrics skipped.", ""]

        vals = ev["values"]
        cols = ["treated_share", "cost_per_user", "d7_lift", "d7_lift_se", "paid_d30_lift", "net_value_lift",
                "incremental_d7_users", "incremental_d7_per_yuan", "incremental_d7_per_yuan_se",
                "treated_control_d7", "treated_d7_lift", "treated_cost"]
        vt = pd.DataFrame({a: {c: v[c] for c in cols} for a, v in vals.items()}).T
        vt["regret_vs_oracle"] = [vals[a].get("regret_vs_oracle", 0.0) for a in vt.index]
        vt.index.name = "allocation"
        for arm, v in vals.items():
            for c in [*cols, "regret_vs_oracle", "share_of_oracle", "incremental_payers"]:
                if c in v:
                    metrics[f"{arm}_true_{c}"] = float(v[c])
        for arm, row in ev["composition"].iterrows():
            for seg_name, share in row.items():
                metrics[f"{arm}_treated_segment_{seg_name}"] = float(share)
        grants = pd.DataFrame({a: v["grants_by_action"] for a, v in vals.items()}).T.astype(np.int64)
        grants.index.name = "allocation"
        for arm, row in grants.iterrows():
            for act_name, cnt in row.items():
                metrics[f"{arm}_grants_{act_name}"] = float(cnt)
        best_blanket = max(ev["blanket_d7_per_yuan"].items(), key=lambda kv: kv[1])
        for k, v in ev["blanket_d7_per_yuan"].items():
            metrics[f"blanket_{k}_true_incremental_d7_per_yuan"] = float(v)
        budget_txt = "unlimited" if ctx.budget_per_user is None else f"{ctx.budget_per_user:g} yuan/user"
        md += [f"**True value of each mode's allocation** (twins of the whole evaluation cohort of {len(ctx.cohort):,} "
               f"users at {budget_txt}; lifts per user against the control twin; regret in "
               f"{ev['regret_metric'].replace('_lift', '')} users against the oracle at the same budget):", "",
               RM.markdown_table(vt, ".4g"), "",
               f"Best blanket arm (unlimited budget) on incremental D7-retained users per yuan: `{best_blanket[0]}` "
               f"at {best_blanket[1]:.4f}; gain mode: {vals['gain']['incremental_d7_per_yuan']:.4f}, response mode: "
               f"{vals['response']['incremental_d7_per_yuan']:.4f}.", "",
               f"Why the modes differ: `response` ranks users by predicted *response*; the users it treats "
               f"retain at {vals['response']['treated_control_d7']:.1%} by D7 under control (would retain anyway) "
               f"and gain {vals['response']['treated_d7_lift']:+.1%} from the grant, at "
               f"{vals['response']['cost_per_user']:.3f} yuan realised cost per cohort user.  "
               f"`gain` ranks by predicted *change*; its treated users retain at "
               f"{vals['gain']['treated_control_d7']:.1%} under control and "
               f"gain {vals['gain']['treated_d7_lift']:+.1%}, at {vals['gain']['cost_per_user']:.3f} yuan "
               "per cohort user.  "
               "Treated users by hidden segment (truth, read by evaluation code only):", "",
               RM.markdown_table(ev["composition"], ".3f"), "",
               "Grants by action:", "", RM.markdown_table(grants, ".0f"), ""]
        if ctx.out_dir is not None:
            figures.append(str(RM.modes_figure(vals, ev["composition"], Path(ctx.out_dir) / "recommender_modes.png",
                                               blanket=ev["blanket_d7_per_yuan"])))
        return {"metrics": metrics, "markdown": "\n".join(md), "figures": figures}

