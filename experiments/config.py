"""Configuration of a simulated A/B experiment, validated before anything runs.

A config is a TOML file (see ``experiments/configs/default.toml`` and
``docs/ab_test.md``) or a plain dict; both go through :func:`config_from_dict`,
which rejects unknown keys, wrong types, negative budgets, a traffic split that
does not sum to 1, an arm expected to get fewer than 2 users, unknown policies
and bad policy settings with one :class:`ConfigError` naming the field path
(e.g. ``arms[2].budget_per_user``).  Nothing is simulated or written before
validation passes.

Budgets are per user of the arm, in yuan, on the ledger's commitment basis.
An arm's ``budget_per_user`` is a number, ``"unlimited"`` or ``"default"``
(the experiment's ``budget_per_user``, itself a number or ``"scenario"`` =
the scenario's ``meta.default_budget_per_user``).  When an arm leaves it unset,
rule-based baselines (control, random, blanket) run unlimited so that their
full cost shows, and every other policy gets the default budget.
:meth:`ABConfig.resolved` replaces every ``"default"``/``"scenario"`` by its
number, so the resolved config written next to the results reruns as is.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from policies.registry import REGISTRY, make_policy
from sim.card import BUSINESS_TARGETS
from sim.scenario import ScenarioError, format_validation_error, load_scenario

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.toml"

# metric key -> (outcome column, kind)
METRICS: dict[str, tuple[str, str]] = {
    "d1_retention": ("retained_d1", "binary"),
    "d7_retention": ("retained_d7", "binary"),
    "d14_retention": ("retained_d14", "binary"),
    "d30_retention": ("retained_d30", "binary"),
    "pay_conv_d7": ("paid_d7", "binary"),
    "pay_conv_d30": ("paid_d30", "binary"),
    "revenue_per_user": ("revenue", "continuous"),
    "cost_per_user": ("cost", "continuous"),
    "net_value_per_user": ("net_value", "continuous"),
}
UNBUDGETED_BY_DEFAULT = ("control", "random", "blanket")


class ConfigError(ValueError):
    """An experiment config failed validation; the message names the field path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


Budget = float | Literal["unlimited", "default"]


class ArmConfig(_Strict):
    """One arm: a policy (registry name or ``module.path:ClassName``) with its settings."""

    name: str | None = Field(
        None, description="Arm label (default: policy name, blanket_<action> for blanket, ClassName for module:Class)."
    )
    policy: str = Field(min_length=1, description="Registry name or 'module.path:ClassName'.")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the policy class.")
    budget_per_user: Budget | None = Field(
        None, description="Yuan per arm user (commitment basis), 'unlimited', or 'default'; unset: see module doc."
    )

    @field_validator("budget_per_user")
    @classmethod
    def _budget(cls, v):
        if isinstance(v, float) and (not math.isfinite(v) or v < 0):
            raise ValueError(f"expected a number of yuan >= 0, 'unlimited' or 'default', got {v!r}")
        return v

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.policy == "blanket":
            return f"blanket_{self.params.get('action', 'coins_1')}"
        return self.policy.rsplit(":", 1)[-1]  # module.path:ClassName -> ClassName


class LogsConfig(_Strict):
    """Exploration logs for learned arms (collected on a separate cohort, cached)."""

    users: Annotated[int, Field(ge=2, le=10_000_000)] = 200_000
    seed: Annotated[int, Field(ge=0)] | None = Field(
        None, description="Seed of the log cohort; default: derived from the run seed via SeedSequence."
    )
    cache_dir: str = "results/logs"


class TargetsConfig(_Strict):
    """Business targets checked per arm."""

    d7_retention: Annotated[float, Field(ge=0, le=1)] = BUSINESS_TARGETS["d7_retention"]
    pay_conv_d30: Annotated[float, Field(ge=0, le=1)] = BUSINESS_TARGETS["pay_conv_d30"]
    cost_per_incremental_d7_vs_best_blanket: Annotated[float, Field(gt=0)] = Field(
        BUSINESS_TARGETS["cost_per_incremental_d7_vs_best_blanket"], description="Arm's cost per incremental D7 user must be <= this x the best blanket arm's."
    )


class ABConfig(_Strict):
    scenario: str = Field("fanqie_newuser", description="Shipped scenario name or path to a scenario TOML.")
    users: Annotated[int, Field(ge=4, le=50_000_000)] | None = Field(
        None, description="Cohort size (default: scenario's)."
    )
    days: Annotated[int, Field(ge=1, le=60)] | None = Field(None, description="Horizon (default: scenario's).")
    seed: Annotated[int, Field(ge=0)] = 0
    arms: Annotated[list[ArmConfig], Field(min_length=2)]
    split: list[Annotated[float, Field(ge=0, le=1)]] | None = Field(
        None, description="Traffic share per arm; default equal."
    )
    control: str = Field("control", description="Name of the control arm.")
    budget_per_user: Annotated[float, Field(ge=0)] | Literal["scenario"] = "scenario"
    metrics: list[str] = Field(default_factory=lambda: list(METRICS), description="Metrics tested against control.")
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    ground_truth: bool = Field(True, description="Simulate each arm's policy on the whole cohort (twins).")
    frontier: bool = Field(True, description="Compute the oracle's cost/D7 frontier for the plot.")
    frontier_budgets: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0],
        description="Budgets per user at which the oracle frontier is evaluated.",
    )
    logs: LogsConfig = LogsConfig()
    targets: TargetsConfig = TargetsConfig()
    out_dir: str = Field("results", description="Parent directory of results/<run-id>/.")
    run_id: str | None = Field(None, description="Output folder name (default: derived from the config hash).")

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in METRICS]
        if bad:
            raise ValueError(f"unknown metric(s) {bad}; valid metrics are {list(METRICS)}")
        if len(set(v)) != len(v) or not v:
            raise ValueError(f"expected a non-empty list of distinct metrics, got {v}")
        return v

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, v):
        if v is not None and (not v or any(c in v for c in "/\\") or v.startswith(".")):
            raise ValueError(f"expected a plain folder name (no '/', not starting with '.'), got {v!r}")
        return v

    @model_validator(mode="after")
    def _arms(self) -> ABConfig:
        labels = [a.label for a in self.arms]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"arms: arm names must be unique, duplicated {dup}; set 'name' on the arms")
        if self.control not in labels:
            raise ValueError(f"control: no arm named {self.control!r}; arms are {labels}")
        if self.split is not None:
            if len(self.split) != len(self.arms):
                raise ValueError(f"split: expected one share per arm ({len(self.arms)}), got {len(self.split)}")
            if not math.isclose(sum(self.split), 1.0, abs_tol=1e-9):
                raise ValueError(f"split: shares must sum to 1, got {sum(self.split):.6g}")
        return self

    # ------------------------------------------------------------------
    @property
    def shares(self) -> list[float]:
        return list(self.split) if self.split is not None else [1.0 / len(self.arms)] * len(self.arms)

    @property
    def arm_names(self) -> list[str]:
        return [a.label for a in self.arms]

    def arm_budget(self, i: int, scenario_default: float) -> float | None:
        """Budget per user of arm ``i`` (None = unlimited)."""
        a = self.arms[i]
        b = a.budget_per_user
        if b is None:
            b = "unlimited" if a.policy in UNBUDGETED_BY_DEFAULT else "default"
        if b == "unlimited":
            return None
        if b == "default":
            return float(scenario_default if self.budget_per_user == "scenario" else self.budget_per_user)
        return float(b)

    def resolved(self) -> ABConfig:
        """Every default made explicit (scenario size/horizon/budget, arm names and budgets)."""
        sc = load_scenario(self.scenario)
        default_b = float(sc.meta.default_budget_per_user)
        arms = []
        for i, a in enumerate(self.arms):
            b = self.arm_budget(i, default_b)
            arms.append(a.model_copy(update={"name": a.label, "budget_per_user": "unlimited" if b is None else b}))
        return self.model_copy(
            update={
                "users": self.users if self.users is not None else sc.cohort.users,
                "days": self.days if self.days is not None else sc.cohort.days,
                "arms": arms,
                "split": self.shares,
                "budget_per_user": float(default_b if self.budget_per_user == "scenario" else self.budget_per_user),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict without None values (TOML has no null)."""
        return _drop_none(self.model_dump(mode="json"))

    def config_hash(self) -> str:
        d = self.resolved().to_dict()
        d.pop("run_id", None)
        d.pop("out_dir", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    def default_run_id(self) -> str:
        r = self.resolved()
        return f"{Path(r.scenario).stem}-{r.users}u-seed{r.seed}-{self.config_hash()}"


def _drop_none(x):
    if isinstance(x, dict):
        return {k: _drop_none(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_drop_none(v) for v in x]
    return x


def _format(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        if not e["loc"]:  # model-level check: the message names its field
            lines.append(f"{source}: {e['msg'].removeprefix('Value error, ')}")
        else:
            one = ValidationError.from_exception_data(err.title, [e])  # type: ignore[list-item]
            lines.append(format_validation_error(one, source).replace("docs/scenario_schema.md", "docs/ab_test.md"))
    return "\n".join(lines)


def _check_deep(cfg: ABConfig) -> None:
    """Checks that need the scenario and the registry: run before anything is simulated."""
    try:
        sc = load_scenario(cfg.scenario)
    except ScenarioError as err:
        raise ConfigError(f"scenario: {err}") from None
    users = cfg.users if cfg.users is not None else sc.cohort.users
    from sim.catalogue import Catalogue

    cat = Catalogue.from_scenario(sc)
    for i, (a, share) in enumerate(zip(cfg.arms, cfg.shares)):
        field = f"arms[{i}].policy"
        try:
            pol = make_policy(a.policy, field, **a.params)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if a.policy == "blanket":
            act = getattr(pol, "action", None)
            if act not in cat.names:
                raise ConfigError(
                    f"arms[{i}].params.action: unknown action {act!r}; valid actions are {cat.names[1:]}"
                )
        if a.policy == "random" and getattr(pol, "probs", None) is not None:
            for k in pol.probs:
                if k not in cat.names:
                    raise ConfigError(f"arms[{i}].params.probs.{k}: unknown action; valid actions are {cat.names}")
            try:
                pol.probabilities(cat)
            except ValueError as err:
                raise ConfigError(f"arms[{i}].params.{err}") from None
        if users * share < 2:
            raise ConfigError(
                f"split[{i}]: arm {a.label!r} would get about {users * share:.1f} of {users} users; "
                "every arm needs at least 2 users (raise users or its share)"
            )


def config_from_dict(data: dict[str, Any] | ABConfig, source: str = "config") -> ABConfig:
    """Validate a config mapping (or pass an ABConfig through); raise :class:`ConfigError` naming the field."""
    if isinstance(data, ABConfig):
        cfg = data
    else:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of config fields, got {type(data).__name__}")
        try:
            cfg = ABConfig.model_validate(data)
        except ValidationError as err:
            raise ConfigError(_format(err, source)) from None
    _check_deep(cfg)
    return cfg


def load_config(path: str | Path | None = None) -> ABConfig:
    """Read and validate a TOML config (default: ``experiments/configs/default.toml``)."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    if not p.exists():
        raise ConfigError(f"config: file not found: {p}")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config: {p} is not valid TOML ({err})") from None
    return config_from_dict(data, source=str(p))


def valid_policy_names() -> list[str]:
    return sorted(REGISTRY)
