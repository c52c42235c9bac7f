"""LTV-budgeted allocation: predict D30 revenue, segment by it, spend where a yuan returns most.

Fit on logged exploration data only (never hidden traits or twins):

1. **LTV model.** A LightGBM regressor predicts D30 revenue from the
   observable day-0 features and the logged day-1 action (a categorical
   feature); a user's LTV is the prediction under ``none``, i.e. the revenue
   expected without any incentive.
2. **Segments.** Users are split into ``low`` / ``mid`` / ``high`` predicted
   LTV at the quantiles ``segment_quantiles`` of the *out-of-fold*
   predictions on the logs (so the thresholds are not flattered by
   in-sample fit).
3. **Marginal return per yuan.** In each segment, each action's return is the
   difference of mean objective value between the users who were randomly
   assigned it and those assigned none (randomised arms, so this is unbiased),
   divided by its commitment cost (the budget's unit).  Each segment's
   incentive is the one that pays best per yuan; segments whose best return is
   not positive get nothing.
4. **Budget split.** The shared solver :func:`policies.solver.allocate` fills
   segments in order of their return per yuan on commitment costs (no grant is
   refused); inside a partly funded segment users with higher predicted LTV go
   first.  The split (yuan committed per segment) is kept in ``last_split_``.

Persistence: :meth:`LTVPolicy.save` writes a LightGBM text model and a JSON
file; :meth:`LTVPolicy.load` reads them back without unpickling.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from policies.base import NotFittedError, Observation, Policy
from policies.solver import OBJECTIVES, allocate
from policies.uplift import FEATURES, feature_matrix, objective_metrics
from sim.atomic import write_text_atomic

SEGMENTS = ("low", "mid", "high")
FORMAT_VERSION = 1


class LTVConfigError(ValueError):
    """A setting of the LTV policy is invalid; the message names it."""


class LTVPolicy(Policy):
    """Budget split across predicted-LTV segments by their marginal return per yuan.

    Parameters
    ----------
    objective : str
        What a "return" is: ``net_value`` (default: revenue minus cost, yuan),
        ``d7_retention``, ``first_payment`` or ``mix`` (with ``weights``).
    weights : dict, optional
        Metric weights for ``mix``.
    segment_quantiles : tuple of 2 floats
        Predicted-LTV quantiles separating low / mid / high.
    target : str
        Logged revenue column the LTV model predicts (default ``revenue``, to D30).
    n_estimators, learning_rate, num_leaves, min_child_samples : LightGBM settings.
    n_folds : int
        Folds of the out-of-fold predictions that place logged users in segments.
    n_jobs : int
        LightGBM threads (fixed for reproducibility).
    seed : int, optional
        Model seed; defaults to the ``seed`` passed to :meth:`fit`, else 0.
    eval_replications : int
        Fresh-luck replications :meth:`report` may use for expected truth.
    """

    name = "ltv"
    static = True
    needs_logs = True

    def __init__(
        self,
        objective: str = "net_value",
        weights: dict[str, float] | None = None,
        segment_quantiles: tuple[float, float] = (1 / 3, 2 / 3),
        target: str = "revenue",
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        num_leaves: int = 7,
        min_child_samples: int = 500,
        n_folds: int = 3,
        n_jobs: int = 1,
        seed: int | None = None,
        eval_replications: int = 4,
    ) -> None:
        self.objective = objective
        self.weights = weights
        self.segment_quantiles = segment_quantiles
        self.target = target
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.n_folds = n_folds
        self.n_jobs = n_jobs
        self.seed = seed
        self.eval_replications = eval_replications

    def _check_params(self) -> list[str]:
        if self.objective not in OBJECTIVES:
            raise LTVConfigError(f"objective: expected one of {list(OBJECTIVES)}, got {self.objective!r}")
        try:
            metrics = objective_metrics(self.objective, self.weights)
        except ValueError as err:
            raise LTVConfigError(str(err)) from None
        q = self.segment_quantiles
        if (not isinstance(q, (tuple, list)) or len(q) != 2
                or not all(isinstance(x, (int, float)) for x in q) or not (0.0 < q[0] < q[1] < 1.0)):
            raise LTVConfigError(f"segment_quantiles: expected two increasing numbers in (0, 1), got {q!r}")
        for f, lo in (("n_estimators", 1), ("num_leaves", 2), ("min_child_samples", 1), ("n_folds", 2),
                      ("n_jobs", 1), ("eval_replications", 1)):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                raise LTVConfigError(f"{f}: expected an integer >= {lo}, got {v!r}")
        if not isinstance(self.learning_rate, (int, float)) or not (0.0 < float(self.learning_rate) <= 1.0):
            raise LTVConfigError(f"learning_rate: expected a number in (0, 1], got {self.learning_rate!r}")
        if not isinstance(self.target, str):
            raise LTVConfigError(f"target: expected a logged column name, got {self.target!r}")
        if self.seed is not None and (not isinstance(self.seed, (int, np.integer)) or self.seed < 0):
            raise LTVConfigError(f"seed: expected an integer >= 0 or None, got {self.seed!r}")
        return metrics

    def _model(self, seed: int):
        from lightgbm import LGBMRegressor

        return LGBMRegressor(
            n_estimators=int(self.n_estimators),
            learning_rate=float(self.learning_rate),
            num_leaves=int(self.num_leaves),
            min_child_samples=int(self.min_child_samples),
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=0.9,
            random_state=int(seed),
            n_jobs=int(self.n_jobs),
            deterministic=True,
            force_row_wise=True,
            verbose=-1,
        )

    @staticmethod
    def _design(features: pd.DataFrame, action: np.ndarray | int, field: str) -> np.ndarray:
        X = feature_matrix(features, FEATURES, field)
        a = np.broadcast_to(np.asarray(action, dtype=np.float64), (X.shape[0],))
        return np.column_stack([X, a])

    def fit(self, logs: pd.DataFrame, *, scenario=None, catalogue=None, seed: int | None = None,
            **context: Any) -> LTVPolicy:
        """Fit the LTV model and the per-segment returns on logged exploration data."""
        from sklearn.model_selection import KFold

        from experiments.collect import validate_logs

        metrics = self._check_params()
        if not isinstance(logs, pd.DataFrame):
            raise ValueError(f"logs: expected a pandas DataFrame of logged users, got {type(logs).__name__}")
        validate_logs(logs, required=tuple(dict.fromkeys((*FEATURES, "action", "cost", self.target, *metrics))))
        action = logs["action"].to_numpy()
        if not np.issubdtype(action.dtype, np.integer) or action.min() < 0:
            raise ValueError(f"logs.action: expected integer action indices >= 0, got dtype {action.dtype}")
        cat = catalogue
        if cat is None and scenario is not None:
            from sim.catalogue import Catalogue
            from sim.scenario import load_scenario

            cat = Catalogue.from_scenario(load_scenario(scenario))
        n_actions = len(cat) if cat is not None else int(action.max()) + 1
        if action.max() >= n_actions:
            raise ValueError(f"logs.action: expected indices in [0, {n_actions - 1}], got max {action.max()}")
        y = logs[self.target].to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(y)):
            raise ValueError(f"logs.{self.target}: values must be finite")
        seed_ = int(self.seed if self.seed is not None else (seed if seed is not None else 0))
        Xd = self._design(logs, action, "logs")

        # out-of-fold LTV (under none) places the logged users in segments
        oof = np.zeros(len(logs))
        kf = KFold(n_splits=int(self.n_folds), shuffle=True, random_state=seed_)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for tr, te in kf.split(Xd):
                m = self._model(seed_).fit(Xd[tr], y[tr], categorical_feature=[Xd.shape[1] - 1])
                Xte = Xd[te].copy()
                Xte[:, -1] = 0.0
                oof[te] = m.predict(Xte)
            model = self._model(seed_).fit(Xd, y, categorical_feature=[Xd.shape[1] - 1])
        thresholds = np.quantile(oof, list(self.segment_quantiles))
        seg = np.searchsorted(thresholds, oof, side="right")

        # per-segment return of each action: difference of means against none (randomised arms)
        value = np.zeros(len(logs))
        w = {m: 1.0 for m in metrics} if self.objective != "mix" else {k: float(v) for k, v in self.weights.items()}
        for m in metrics:
            value += w[m] * logs[m].to_numpy(dtype=np.float64)
        ret = np.zeros((len(SEGMENTS), n_actions))
        se = np.zeros((len(SEGMENTS), n_actions))
        counts = np.zeros((len(SEGMENTS), n_actions), dtype=np.int64)
        for s in range(len(SEGMENTS)):
            v0 = value[(seg == s) & (action == 0)]
            counts[s, 0] = v0.size
            for k in range(1, n_actions):
                vk = value[(seg == s) & (action == k)]
                counts[s, k] = vk.size
                if vk.size < 2 or v0.size < 2:
                    ret[s, k] = -np.inf  # not estimable: never granted
                    continue
                ret[s, k] = vk.mean() - v0.mean()
                se[s, k] = np.sqrt(vk.var(ddof=1) / vk.size + v0.var(ddof=1) / v0.size)
        self.metrics_ = metrics
        self.n_actions_ = n_actions
        self.model_ = model
        self.thresholds_ = thresholds
        self.segment_returns_ = ret
        self.segment_return_se_ = se
        self.segment_counts_ = counts
        self.seed_ = seed_
        self.n_logged_ = int(len(logs))
        self.action_names_ = list(cat.names) if cat is not None else [str(i) for i in range(n_actions)]
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(
                "ltv: this policy is not fitted; call fit(logs, scenario=..., seed=...) with logged "
                "exploration data (experiments.collect.collect_logs) before act() or predict_ltv()"
            )

    def predict_ltv(self, features: pd.DataFrame) -> np.ndarray:
        """Predicted D30 revenue of each user without incentive (yuan)."""
        self._check_fitted()
        X = self._design(features, 0, "features")
        if X.shape[0] == 0:
            return np.zeros(0)
        return np.asarray(self.model_.predict(X), dtype=np.float64)

    def segment(self, ltv: np.ndarray) -> np.ndarray:
        """Segment index (0 = low, 1 = mid, 2 = high) of each predicted LTV."""
        self._check_fitted()
        return np.searchsorted(self.thresholds_, np.asarray(ltv), side="right")

    def segment_plan(self, commit_costs: np.ndarray) -> pd.DataFrame:
        """Each segment's best action by return per commitment yuan (from the logs)."""
        self._check_fitted()
        c = np.asarray(commit_costs, dtype=np.float64)
        rows = []
        for s, name in enumerate(SEGMENTS):
            with np.errstate(divide="ignore", invalid="ignore"):
                per_yuan = np.where(c > 0, self.segment_returns_[s] / np.where(c > 0, c, 1.0), -np.inf)
            per_yuan[0] = -np.inf
            k = int(np.argmax(per_yuan))
            ok = np.isfinite(per_yuan[k]) and self.segment_returns_[s, k] > 0
            rows.append({
                "segment": name,
                "action": k if ok else 0,
                "action_name": self.action_names_[k] if ok else "none",
                "return_per_user": float(self.segment_returns_[s, k]) if ok else 0.0,
                "return_se": float(self.segment_return_se_[s, k]) if ok else 0.0,
                "return_per_yuan": float(per_yuan[k]) if ok else 0.0,
                "logged_users": int(self.segment_counts_[s].sum()),
            })
        return pd.DataFrame(rows)

    def act(self, day: int, obs: Observation) -> np.ndarray:
        self._check_fitted()
        n = len(obs)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if len(obs.catalogue) != self.n_actions_:
            raise ValueError(
                f"catalogue: the policy was fit on {self.n_actions_} actions, the observation's catalogue has "
                f"{len(obs.catalogue)}"
            )
        budget = None if not np.isfinite(obs.budget_remaining) else float(obs.budget_remaining)
        if budget is not None and budget <= 0:
            return np.zeros(n, dtype=np.int64)
        commit = obs.catalogue.commit_costs
        ltv = self.predict_ltv(obs.features)
        seg = self.segment(ltv)
        plan = self.segment_plan(commit)
        values = np.zeros((n, self.n_actions_))
        for s, row in plan.iterrows():
            if row["action"] > 0:
                values[seg == s, int(row["action"])] = row["return_per_user"]
        # the solver breaks ties by row order: put higher predicted LTV first
        order = np.lexsort((np.arange(n), -ltv))
        choice = np.zeros(n, dtype=np.int64)
        choice[order] = allocate(values[order], commit, budget)
        self.last_split_ = {
            name: float(commit[choice[seg == s]].sum()) for s, name in enumerate(SEGMENTS)
        }
        return choice

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write ``ltv_model.txt`` (LightGBM text) and ``ltv.json`` to directory ``path``."""
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path / "ltv_model.txt", self.model_.booster_.model_to_string()
                          if hasattr(self.model_, "booster_") else self.model_.model_to_string())
        ret = np.where(np.isfinite(self.segment_returns_), self.segment_returns_, np.nan)
        meta = {
            "format_version": FORMAT_VERSION,
            "params": {**self.get_params(), "segment_quantiles": list(self.segment_quantiles)},
            "features": list(FEATURES),
            "metrics": self.metrics_,
            "n_actions": self.n_actions_,
            "thresholds": [float(x) for x in self.thresholds_],
            "segment_returns": [[None if np.isnan(x) else float(x) for x in r] for r in ret],
            "segment_return_se": self.segment_return_se_.tolist(),
            "segment_counts": self.segment_counts_.tolist(),
            "seed": self.seed_,
            "n_logged": self.n_logged_,
            "action_names": self.action_names_,
        }
        write_text_atomic(path / "ltv.json", json.dumps(meta, indent=1, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | Path) -> LTVPolicy:
        """Load a policy written by :meth:`save` (JSON + LightGBM text; nothing is unpickled)."""
        import lightgbm as lgb

        path = Path(path)
        if not (path / "ltv.json").is_file():
            raise ValueError(f"path: no ltv.json in {str(path)!r}; expected a directory written by save()")
        meta = json.loads((path / "ltv.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"ltv.json: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
        params = dict(meta["params"])
        params["segment_quantiles"] = tuple(params["segment_quantiles"])
        pol = cls(**params)
        pol.metrics_ = list(meta["metrics"])
        pol.n_actions_ = int(meta["n_actions"])
        pol.model_ = lgb.Booster(model_file=str(path / "ltv_model.txt"))
        pol.thresholds_ = np.asarray(meta["thresholds"], dtype=np.float64)
        pol.segment_returns_ = np.array([[-np.inf if x is None else x for x in r] for r in meta["segment_returns"]],
                                        dtype=np.float64)
        pol.segment_return_se_ = np.asarray(meta["segment_return_se"], dtype=np.float64)
        pol.segment_counts_ = np.asarray(meta["segment_counts"], dtype=np.int64)
        pol.seed_ = int(meta["seed"])
        pol.n_logged_ = int(meta["n_logged"])
        pol.action_names_ = list(meta["action_names"])
        return pol

    def report(self, ctx) -> dict[str, Any]:
        """LTV model quality and allocation value against the truth: see :func:`policies.quality.ltv_report`."""
        from policies.quality import ltv_report

        return ltv_report(self, ctx)
