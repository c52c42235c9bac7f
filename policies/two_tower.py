"""A two-tower network predicting a user's response to each incentive (torch, CPU).

The **user tower** embeds the observable day-0 features (an embedding per
categorical feature, standardised log-minutes and log-chapters) into one
vector per prediction head; the **incentive tower** maps each catalogue
action's type, relative level and commitment cost (``none`` is an item too)
into vectors of the same size.  The logit of head ``h`` (D7 retention, first
payment by D30, ...) for user ``i`` and action ``a`` is::

    logit[i, a, h] = <u_h(x_i), v_h(a)> + b_h(x_i) + c_h(a)

so a user's predicted gain of action ``a`` over ``none`` is driven by
``<u_h(x_i), v_h(a) - v_h(none)>``: the towers learn who responds to what.

Training is on logged exploration data (one logged action per user), with
inverse-propensity weights, a binary cross-entropy per head, Adam, and early
stopping on a validation split (the best epoch's weights are restored).

Reproducibility: every random draw (initial weights, the validation split,
mini-batch order) comes from explicit generators seeded by ``seed``; the
global torch RNG is never touched (layers are built on the ``meta`` device
and initialised from a ``torch.Generator``).  Training and prediction run
inside :func:`torch_determinism`, which fixes the number of CPU threads and
turns on deterministic algorithms, then restores the caller's settings.

Saved as a directory holding ``weights.pt`` (a ``state_dict``, loaded with
``torch.load(..., weights_only=True)``) and ``config.json`` (hyper-parameters,
feature encoders and the incentive catalogue's item features).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from policies.base import NotFittedError
from sim.atomic import atomic_path, write_text_atomic
from sim.catalogue import TYPE_NAMES

CATEGORICAL = ("channel", "device_tier", "city_tier", "age_band", "gender", "genre", "install_hour", "os")
NUMERIC = ("d0_minutes", "d0_chapters")
FEATURES = CATEGORICAL + NUMERIC
DEFAULT_TARGETS = ("retained_d7", "paid_d30")
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------
def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or (
        hi is not None and value > hi
    ):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}: expected an integer {rng}, got {value!r}")


def _check_float(name: str, value: Any, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise ValueError(f"{name}: expected a finite number in {lb}{lo:g}, {hi:g}{rb}, got {value!r}")


@dataclass(frozen=True)
class TwoTowerConfig:
    """Hyper-parameters of :class:`TwoTowerModel`, validated on construction.

    Attributes
    ----------
    targets : tuple of str
        Binary outcome columns of the logs, one prediction head each.
    head_weights : tuple of float or None
        Weight of each head's loss (default: all 1).
    cat_dim : int
        Embedding size of each categorical feature.
    hidden : int
        Width of the user tower's two hidden layers.
    item_hidden : int
        Width of the incentive tower's hidden layer.
    dim : int
        Size of the per-head dot product between the towers.
    epochs : int
        Maximum number of training epochs.
    patience : int
        Stop after this many epochs without a better validation loss.
    batch_size : int
        Mini-batch size.
    lr, weight_decay : float
        Adam step size and L2 penalty.
    val_fraction : float
        Share of the training logs held out for early stopping.
    ips : bool
        Weight each logged user by 1 / propensity (normalised to mean 1).
    seed : int
        Seed of the initial weights, validation split and batch order.
    n_threads : int
        CPU threads used by torch while training/predicting (restored afterwards).
    """

    targets: tuple[str, ...] = DEFAULT_TARGETS
    head_weights: tuple[float, ...] | None = None
    cat_dim: int = 4
    hidden: int = 64
    item_hidden: int = 32
    dim: int = 16
    epochs: int = 40
    patience: int = 4
    batch_size: int = 512
    lr: float = 3e-3
    weight_decay: float = 1e-5
    val_fraction: float = 0.2
    ips: bool = True
    seed: int = 0
    n_threads: int = 1

    def __post_init__(self) -> None:
        t = self.targets
        if isinstance(t, str) or not isinstance(t, Sequence) or len(t) == 0 or not all(
            isinstance(x, str) and x for x in t
        ):
            raise ValueError(f"targets: expected a non-empty list of outcome column names, got {t!r}")
        if len(set(t)) != len(t):
            raise ValueError(f"targets: expected distinct names, got {list(t)!r}")
        object.__setattr__(self, "targets", tuple(t))
        if self.head_weights is not None:
            hw = self.head_weights
            if isinstance(hw, str) or not isinstance(hw, Sequence) or len(hw) != len(t):
                raise ValueError(f"head_weights: expected {len(t)} weights (one per target), got {hw!r}")
            for i, w in enumerate(hw):
                _check_float(f"head_weights[{i}]", w, 0.0, 1e6)
            if sum(float(w) for w in hw) <= 0:
                raise ValueError(f"head_weights: expected at least one positive weight, got {list(hw)!r}")
            object.__setattr__(self, "head_weights", tuple(float(w) for w in hw))
        _check_int("cat_dim", self.cat_dim, 1, 256)
        _check_int("hidden", self.hidden, 1, 4096)
        _check_int("item_hidden", self.item_hidden, 1, 4096)
        _check_int("dim", self.dim, 1, 1024)
        _check_int("epochs", self.epochs, 1, 10_000)
        _check_int("patience", self.patience, 1, 10_000)
        _check_int("batch_size", self.batch_size, 1, 10_000_000)
        _check_float("lr", self.lr, 0.0, 10.0, lo_open=True)
        _check_float("weight_decay", self.weight_decay, 0.0, 10.0)
        _check_float("val_fraction", self.val_fraction, 0.0, 0.9, lo_open=True)
        if not isinstance(self.ips, bool):
            raise ValueError(f"ips: expected True or False, got {self.ips!r}")
        _check_int("seed", self.seed, 0)
        _check_int("n_threads", self.n_threads, 1, 256)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        d["head_weights"] = None if self.head_weights is None else list(self.head_weights)
        return d


@contextmanager
def torch_determinism(n_threads: int) -> Iterator[None]:
    """Fixed CPU threads and deterministic algorithms inside; the caller's settings restored after."""
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(int(n_threads))
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


# ----------------------------------------------------------------------------------------------
# feature encoding
# ----------------------------------------------------------------------------------------------
# numeric inputs of the user tower, all derived from observables: log minutes, log chapters and the
# reading speed (chapters per minute on day 0, which says how fast, i.e. how bingey, a reader is)
NUMERIC_INPUTS = ("log_d0_minutes", "log_d0_chapters", "log_chapters_per_minute")


def _numeric(f: pd.DataFrame) -> dict[str, np.ndarray]:
    m = np.maximum(f["d0_minutes"].to_numpy(dtype=np.float64), 0.0)
    c = np.maximum(f["d0_chapters"].to_numpy(dtype=np.float64), 0.0)
    return {
        "log_d0_minutes": np.log1p(m),
        "log_d0_chapters": np.log1p(c),
        "log_chapters_per_minute": np.log((c + 0.5) / (m + 1.0)),
    }


@dataclass
class FeatureEncoder:
    """Categorical codes -> embedding indices (last index = unseen value); numerics -> z-scores (NUMERIC_INPUTS)."""

    vocab: dict[str, int] = field(default_factory=dict)  # per categorical: number of indices incl. OOV
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def _frame(features: pd.DataFrame, what: str) -> pd.DataFrame:
        if not isinstance(features, pd.DataFrame):
            raise ValueError(
                f"{what}: expected a pandas DataFrame of observable features, got {type(features).__name__}"
            )
        missing = [c for c in FEATURES if c not in features.columns]
        if missing:
            raise ValueError(f"{what}: missing feature column(s) {missing}; expected {list(FEATURES)}")
        bad = [c for c in FEATURES if features[c].isna().any()]
        if bad:
            raise ValueError(f"{what}: feature column(s) {bad} contain missing values (NaN)")
        return features

    def fit(self, features: pd.DataFrame) -> FeatureEncoder:
        f = self._frame(features, "features")
        for c in CATEGORICAL:
            v = f[c].to_numpy()
            if not np.issubdtype(v.dtype, np.integer) or v.min() < 0:
                raise ValueError(f"features.{c}: expected non-negative integer codes, got dtype {v.dtype}, "
                                 f"min {v.min()!r}")
            self.vocab[c] = int(v.max()) + 2  # codes 0..max, plus one index for unseen codes
        raw = _numeric(f)
        for c, x in raw.items():
            self.mean[c] = float(x.mean())
            self.std[c] = float(x.std()) if x.std() > 0 else 1.0
        return self

    def transform(self, features: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        f = self._frame(features, "features")
        cat = np.empty((len(f), len(CATEGORICAL)), dtype=np.int64)
        for j, c in enumerate(CATEGORICAL):
            v = f[c].to_numpy().astype(np.int64)
            oov = self.vocab[c] - 1
            cat[:, j] = np.where((v >= 0) & (v < oov), v, oov)
        raw = _numeric(f)
        num = np.empty((len(f), len(NUMERIC_INPUTS)), dtype=np.float32)
        for j, c in enumerate(NUMERIC_INPUTS):
            num[:, j] = (raw[c] - self.mean[c]) / self.std[c]
        return torch.from_numpy(cat), torch.from_numpy(num)

    def to_dict(self) -> dict[str, Any]:
        return {"vocab": dict(self.vocab), "mean": dict(self.mean), "std": dict(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureEncoder:
        return cls(vocab={k: int(v) for k, v in d["vocab"].items()}, mean=dict(d["mean"]), std=dict(d["std"]))


def item_features(types: Sequence[int], levels: Sequence[float], costs: Sequence[float]) -> np.ndarray:
    """Incentive-tower input per catalogue action: one-hot type, level relative to its type's top level, cost.

    ``none`` is an item (type 0, level 0, cost 0).
    """
    types = np.asarray(types, dtype=np.int64)
    levels = np.asarray(levels, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.float64)
    if not (types.shape == levels.shape == costs.shape) or types.ndim != 1 or types.size == 0:
        raise ValueError("catalogue: expected equal-length, non-empty action types, levels and costs")
    if types.min() < 0 or types.max() >= len(TYPE_NAMES):
        raise ValueError(f"catalogue: action types must be in [0, {len(TYPE_NAMES) - 1}], got {types.tolist()}")
    rel = np.zeros_like(levels)
    for t in np.unique(types):
        m = types == t
        top = levels[m].max()
        rel[m] = levels[m] / top if top > 0 else 0.0
    cmax = np.log1p(costs).max()
    out = np.zeros((types.size, len(TYPE_NAMES) + 2), dtype=np.float32)
    out[np.arange(types.size), types] = 1.0
    out[:, len(TYPE_NAMES)] = rel
    out[:, len(TYPE_NAMES) + 1] = np.log1p(costs) / cmax if cmax > 0 else 0.0
    return out


# ----------------------------------------------------------------------------------------------
# the network
# ----------------------------------------------------------------------------------------------
class TwoTowerNet(nn.Module):
    """User tower x incentive tower -> one logit per (user, action, head)."""

    def __init__(self, vocab: Sequence[int], n_numeric: int, n_item_features: int, cfg: TwoTowerConfig,
                 device: str | torch.device = "meta") -> None:
        super().__init__()
        self.n_heads = len(cfg.targets)
        self.dim = cfg.dim
        out = self.n_heads * (cfg.dim + 1)  # per head: dot-product vector and a bias
        # one table for all categorical features; feature j's codes start at offsets[j]
        offsets = np.concatenate([[0], np.cumsum(np.asarray(vocab, dtype=np.int64))[:-1]])
        self.offsets = torch.as_tensor(offsets, dtype=torch.int64)  # plain CPU tensor: not a parameter/buffer
        self.n_cat = len(vocab)
        self.embedding = nn.Embedding(int(sum(int(v) for v in vocab)), cfg.cat_dim, device=device)
        user_in = cfg.cat_dim * len(vocab) + n_numeric
        self.user = nn.Sequential(
            nn.Linear(user_in, cfg.hidden, device=device), nn.ReLU(),
            nn.Linear(cfg.hidden, cfg.hidden, device=device), nn.ReLU(),
            nn.Linear(cfg.hidden, out, device=device),
        )
        self.item = nn.Sequential(
            nn.Linear(n_item_features, cfg.item_hidden, device=device), nn.ReLU(),
            nn.Linear(cfg.item_hidden, out, device=device),
        )

    def init_weights(self, generator: torch.Generator) -> None:
        """Initialise every parameter from ``generator`` (the global RNG is not used)."""
        with torch.no_grad():
            self.embedding.weight.normal_(0.0, 0.5, generator=generator)
            for mod in self.modules():
                if isinstance(mod, nn.Linear):
                    bound = 1.0 / math.sqrt(mod.in_features)
                    nn.init.kaiming_uniform_(mod.weight, a=math.sqrt(5), generator=generator)
                    mod.bias.uniform_(-bound, bound, generator=generator)

    def user_vectors(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        e = self.embedding(cat + self.offsets).reshape(cat.shape[0], -1)
        z = self.user(torch.cat([e, num], dim=1))
        return z.view(-1, self.n_heads, self.dim + 1)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.item(items).view(-1, self.n_heads, self.dim + 1)

    def forward(self, cat: torch.Tensor, num: torch.Tensor, action: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits (n, heads) of each user's own logged action."""
        u = self.user_vectors(cat, num)
        v = self.item_vectors(items)[action]
        return (u[..., : self.dim] * v[..., : self.dim]).sum(-1) + u[..., self.dim] + v[..., self.dim]

    def all_actions(self, cat: torch.Tensor, num: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits (n, actions, heads) of every catalogue action for every user."""
        u = self.user_vectors(cat, num)
        v = self.item_vectors(items)
        dot = torch.einsum("nhd,khd->nkh", u[..., : self.dim], v[..., : self.dim])
        return dot + u[:, None, :, self.dim] + v[None, :, :, self.dim]


# ----------------------------------------------------------------------------------------------
# the estimator
# ----------------------------------------------------------------------------------------------
class TwoTowerModel:
    """Response model over (user, incentive) pairs; sklearn-like (``fit`` / ``predict_proba``).

    Parameters are those of :class:`TwoTowerConfig` (validated in ``fit``).

    Fitted attributes: ``config_``, ``encoder_``, ``items_`` (item features),
    ``action_names_``, ``net_``, ``history_`` (per-epoch train/validation
    loss), ``best_epoch_``, ``fit_seconds_``, ``train_index_`` / ``val_index_``
    (row positions of the fit data used for training / early stopping).
    """

    def __init__(self, **params: Any) -> None:
        self.params = dict(params)

    def get_params(self) -> dict[str, Any]:
        return dict(self.params)

    def __repr__(self) -> str:
        return f"TwoTowerModel({', '.join(f'{k}={v!r}' for k, v in self.params.items())})"

    # ------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise NotFittedError(
                "TwoTowerModel: not fitted; call fit(features, actions, outcomes, catalogue=...) before predicting"
            )

    def fit(
        self,
        features: pd.DataFrame,
        actions: np.ndarray,
        outcomes: pd.DataFrame | Mapping[str, np.ndarray],
        *,
        catalogue,
        propensity: np.ndarray | None = None,
        val_index: np.ndarray | None = None,
    ) -> TwoTowerModel:
        """Train on logged (features, action, outcomes) rows.

        ``catalogue``: the :class:`sim.catalogue.Catalogue` the actions index.
        ``propensity``: logging probability of each row's action (for IPS weights).
        ``val_index``: row positions used for early stopping (default: a random
        ``val_fraction`` of the rows, drawn from ``seed``).
        """
        cfg = TwoTowerConfig(**self.params)
        t0 = time.perf_counter()
        n = len(features)
        if n < 4:
            raise ValueError(f"features: expected at least 4 logged rows, got {n}")
        a = np.asarray(actions)
        if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"actions: expected {n} integer action indices, got shape {a.shape}, dtype {a.dtype}")
        K = len(catalogue)
        if a.min() < 0 or a.max() >= K:
            raise ValueError(f"actions: expected indices in [0, {K - 1}] (the catalogue), got [{a.min()}, {a.max()}]")
        ys = []
        for t in cfg.targets:
            if t not in outcomes:
                raise ValueError(f"outcomes: missing target column {t!r}")
            y = np.asarray(outcomes[t], dtype=np.float64)
            if y.shape != (n,) or not np.all((y == 0) | (y == 1)):
                raise ValueError(f"outcomes.{t}: expected {n} binary (0/1) values")
            ys.append(y)
        if propensity is None or not cfg.ips:
            w = np.ones(n)
        else:
            w = np.asarray(propensity, dtype=np.float64)
            if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w <= 0) or np.any(w > 1):
                raise ValueError(f"propensity: expected {n} probabilities in (0, 1]")
            w = 1.0 / w
        w = w / w.mean()

        self.encoder_ = FeatureEncoder().fit(features)
        self.action_names_ = list(catalogue.names)
        self.items_ = item_features(catalogue.types, catalogue.levels, catalogue.commit_costs)
        self.item_meta_ = {
            "names": list(catalogue.names),
            "types": [int(x) for x in catalogue.types],
            "levels": [float(x) for x in catalogue.levels],
            "costs": [float(x) for x in catalogue.commit_costs],
        }
        self.config_ = cfg

        # validation split from a numpy generator keyed by the seed (not global state)
        if val_index is None:
            perm = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1,))).permutation(n)
            n_val = max(1, int(round(cfg.val_fraction * n)))
            val_index = perm[:n_val]
        vi = np.unique(np.asarray(val_index))
        if vi.size == 0 or vi.size >= n or not np.issubdtype(vi.dtype, np.integer) or vi[0] < 0 or vi[-1] >= n:
            raise ValueError(f"val_index: expected distinct row positions in [0, {n - 1}] leaving rows to train on")
        self.val_index_ = vi.astype(np.int64)
        self.train_index_ = np.setdiff1d(np.arange(n), vi).astype(np.int64)

        cat, num = self.encoder_.transform(features)
        act = torch.from_numpy(a.astype(np.int64))
        y = torch.from_numpy(np.stack(ys, axis=1).astype(np.float32))
        wt = torch.from_numpy(w.astype(np.float32))
        items = torch.from_numpy(self.items_)
        hw = torch.tensor(cfg.head_weights or (1.0,) * len(cfg.targets), dtype=torch.float32)
        tr = torch.from_numpy(self.train_index_)
        va = torch.from_numpy(self.val_index_)

        with torch_determinism(cfg.n_threads):
            gen = torch.Generator().manual_seed(int(cfg.seed))
            net = TwoTowerNet([self.encoder_.vocab[c] for c in CATEGORICAL], len(NUMERIC_INPUTS), items.shape[1], cfg)
            net = net.to_empty(device="cpu")
            net.init_weights(gen)
            # start each head at the (weighted) base rate of the training rows: the bias slot of the item tower
            with torch.no_grad():
                for h in range(len(cfg.targets)):
                    rate = float((y[tr, h] * wt[tr]).sum() / wt[tr].sum())
                    rate = min(max(rate, 1e-4), 1 - 1e-4)
                    net.item[-1].bias[h * (cfg.dim + 1) + cfg.dim] += math.log(rate / (1 - rate))
            opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            bce = nn.BCEWithLogitsLoss(reduction="none")

            def loss_of(idx: torch.Tensor) -> torch.Tensor:
                logits = net(cat[idx], num[idx], act[idx], items)
                per = bce(logits, y[idx]) * hw  # (b, heads)
                return (per.sum(1) * wt[idx]).sum() / wt[idx].sum()

            best, best_state, best_epoch, stale = math.inf, None, 0, 0
            history = []
            for epoch in range(1, cfg.epochs + 1):
                net.train()
                order = tr[torch.randperm(tr.shape[0], generator=gen)]
                tot = 0.0
                for s in range(0, order.shape[0], cfg.batch_size):
                    idx = order[s : s + cfg.batch_size]
                    loss = loss_of(idx)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    tot += float(loss.detach()) * idx.shape[0]
                net.eval()
                with torch.no_grad():
                    val = float(loss_of(va))
                history.append({"epoch": epoch, "train_loss": tot / max(1, order.shape[0]), "val_loss": val})
                if val < best - 1e-6:
                    best, best_epoch, stale = val, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                else:
                    stale += 1
                    if stale >= cfg.patience:
                        break
            net.load_state_dict(best_state)
            net.eval()
        self.net_ = net
        self.history_ = history
        self.best_epoch_ = best_epoch
        self.best_val_loss_ = best
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    # ------------------------------------------------------------------
    @property
    def targets(self) -> tuple[str, ...]:
        self._check_fitted()
        return self.config_.targets

    def predict_logits(self, features: pd.DataFrame, batch_size: int = 65_536) -> np.ndarray:
        """Logits (n_users, n_actions, n_heads) of every action for every user."""
        self._check_fitted()
        cat, num = self.encoder_.transform(features)
        items = torch.from_numpy(self.items_)
        out = np.empty((cat.shape[0], items.shape[0], len(self.config_.targets)), dtype=np.float64)
        with torch_determinism(self.config_.n_threads), torch.no_grad():
            for s in range(0, cat.shape[0], batch_size):
                out[s : s + batch_size] = self.net_.all_actions(
                    cat[s : s + batch_size], num[s : s + batch_size], items
                ).numpy()
        return out

    def predict_proba(self, features: pd.DataFrame) -> dict[str, np.ndarray]:
        """Predicted probability of each target under each action: ``{target: (n_users, n_actions)}``."""
        z = self.predict_logits(features)
        p = 1.0 / (1.0 + np.exp(-z))
        return {t: p[:, :, h] for h, t in enumerate(self.config_.targets)}

    def predict_logged(self, features: pd.DataFrame, actions: np.ndarray) -> dict[str, np.ndarray]:
        """Predicted probability of each target under each row's given action: ``{target: (n,)}``."""
        a = np.asarray(actions, dtype=np.int64)
        p = self.predict_proba(features)
        if a.shape != (len(features),) or (a.size and (a.min() < 0 or a.max() >= len(self.action_names_))):
            raise ValueError(f"actions: expected {len(features)} indices in [0, {len(self.action_names_) - 1}]")
        return {t: v[np.arange(a.size), a] for t, v in p.items()}

    # ------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``weights.pt`` (state_dict) and ``config.json`` into the directory ``path`` (atomically)."""
        self._check_fitted()
        d = Path(path)
        meta = {
            "format_version": FORMAT_VERSION,
            "config": self.config_.to_dict(),
            "encoder": self.encoder_.to_dict(),
            "items": self.item_meta_,
            "best_epoch": self.best_epoch_,
            "history": self.history_,
        }
        state = {k: v.detach().clone() for k, v in self.net_.state_dict().items()}
        with atomic_path(d / "weights.pt") as tmp:
            torch.save(state, tmp)
        write_text_atomic(d / "config.json", json.dumps(meta, indent=2))
        return d

    @classmethod
    def load(cls, path: str | Path) -> TwoTowerModel:
        """Read a model written by :meth:`save` (weights loaded with ``weights_only=True``)."""
        d = Path(path)
        for name in ("weights.pt", "config.json"):
            if not (d / name).is_file():
                raise ValueError(f"path: expected a saved two-tower model directory with {name}, not found in {d}")
        meta = json.loads((d / "config.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"config.json: unsupported format_version {meta.get('format_version')!r}, "
                             f"expected {FORMAT_VERSION}")
        params = dict(meta["config"])
        params["targets"] = tuple(params["targets"])
        if params.get("head_weights") is not None:
            params["head_weights"] = tuple(params["head_weights"])
        m = cls(**params)
        m.config_ = TwoTowerConfig(**params)
        m.encoder_ = FeatureEncoder.from_dict(meta["encoder"])
        it = meta["items"]
        m.item_meta_ = it
        m.action_names_ = list(it["names"])
        m.items_ = item_features(it["types"], it["levels"], it["costs"])
        net = TwoTowerNet([m.encoder_.vocab[c] for c in CATEGORICAL], len(NUMERIC_INPUTS), m.items_.shape[1], m.config_)
        net = net.to_empty(device="cpu")
        state = torch.load(d / "weights.pt", weights_only=True, map_location="cpu")
        net.load_state_dict(state)
        net.eval()
        m.net_ = net
        m.best_epoch_ = int(meta.get("best_epoch", 0))
        m.history_ = list(meta.get("history", []))
        return m
