"""Schema of a sweep file, and its expansion into points (one A/B run each), validated before anything runs.

A sweep file is TOML (see ``experiments/sweeps/*.toml`` and ``docs/sweeps.md``)::

    name = "budget"                       # sweep id: results are written under <out_dir>/<name>/
    seed = 20261203                       # sweep seed: every run seed is spawned from it (SeedSequence)
    replicates = 5                        # seeds per cell
    scenarios = ["fanqie_newuser"]        # shipped names or paths, or "all" (every shipped scenario)
    budgets = [0.1, 0.3, 1.0]             # yuan per user; "scenario" (its default) or "unlimited"

    [experiment]                          # A/B settings shared by every run (docs/ab_test.md)
    users = 20000

    [[policies]]                          # one entry per policy; `grid` expands settings
    policy = "oracle"
    grid = { objective = ["d7_retention", "net_value"] }

or, instead of ``policies`` x ``budgets`` (a grid), an explicit list of cells::

    [[points]]
    scenario = "fanqie_newuser"
    policy = "blanket"
    params = { action = "coins_1" }
    budget = "unlimited"

A **point** is one cell (scenario x arm x budget) in one replicate: one
``experiments.ab_test`` run with two arms, the implicit ``control`` arm and the
cell's arm, which is simulated at the cell's budget per user.

Seeds: replicate ``r`` of the sweep uses the run seed
``SeedSequence(seed).spawn(replicates)[r]`` (``paired = true``, the default:
every cell of a replicate sees the same cohort and the same control users, so
cells are compared on common random numbers), or, with ``paired = false``,
``SeedSequence(seed, spawn_key=(r, key))`` with ``key`` hashed from the cell.
Never ``seed + i``.

:func:`load_sweep` / :func:`sweep_from_dict` reject unknown keys, wrong types,
bad budgets, unknown scenarios or policies, bad policy settings and clashing arm
labels with one :class:`SweepConfigError` naming the field (e.g.
``policies[2].grid.objective``); :func:`expand` builds every point's
:class:`~experiments.config.ABConfig` and checks it the way ``ab_test`` does, so
nothing is simulated or written before the whole sweep is valid.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from experiments.config import ABConfig, ConfigError, config_from_dict
from sim.scenario import ScenarioError, available_scenarios, load_scenario

SWEEP_DIR = Path(__file__).resolve().parent / "sweeps"
CONTROL = "control"
# ABConfig fields that the sweep sets per point: not allowed in [experiment]
SWEEP_OWNED = ("scenario", "seed", "arms", "split", "control", "run_id", "out_dir", "budget_per_user")


class SweepConfigError(ConfigError):
    """A sweep file failed validation; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


BudgetLevel = Annotated[float, Field(ge=0)] | Literal["scenario", "unlimited"]


def _check_name(v: str | None, what: str) -> str | None:
    if v is not None and (not v or any(c in v for c in "/\\") or v.startswith(".") or v.strip() != v):
        raise ValueError(f"expected a plain {what} (no '/', not starting with '.'), got {v!r}")
    return v


class PolicySpec(_Strict):
    """A policy in a grid sweep: fixed ``params`` plus a ``grid`` of settings to expand."""

    policy: str = Field(min_length=1, description="Registry name or 'module.path:ClassName'.")
    name: str | None = Field(None, description="Arm label (default: policy name; blanket_<action> for blanket).")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments shared by every setting.")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="Setting -> values; every combination is one arm (e.g. objective, lambda)."
    )
    budgets: list[BudgetLevel] | None = Field(None, description="Budget levels for this policy (default: sweep's).")

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        return _check_name(v, "arm label")

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for k, vals in v.items():
            if not vals:
                raise ValueError(f"grid.{k}: expected a non-empty list of values, got []")
            keys = [json.dumps(x, sort_keys=True) for x in vals]
            if len(set(keys)) != len(keys):
                raise ValueError(f"grid.{k}: values must be distinct, got {vals}")
        return v

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v):
        return _distinct_budgets(v)

    @model_validator(mode="after")
    def _overlap(self) -> PolicySpec:
        both = sorted(set(self.params) & set(self.grid))
        if both:
            raise ValueError(f"grid: setting(s) {both} are also fixed in params; set each in one place only")
        return self


class PointSpec(_Strict):
    """One cell of an explicit sweep: scenario x policy settings x budget."""

    scenario: str = Field(min_length=1)
    policy: str = Field(min_length=1)
    name: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    budget: BudgetLevel = "scenario"

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        return _check_name(v, "arm label")


def _distinct_budgets(v):
    if v is None:
        return v
    if not v:
        raise ValueError("expected at least one budget level, got []")
    keys = [str(float(b)) if not isinstance(b, str) else b for b in v]
    if len(set(keys)) != len(keys):
        raise ValueError(f"budget levels must be distinct, got {list(v)}")
    return v


class SweepConfig(_Strict):
    name: str | None = Field(None, description="Sweep id: the output folder name (default: the file's stem).")
    description: str = ""
    seed: Annotated[int, Field(ge=0)] = Field(0, description="Sweep seed; run seeds are spawned from it.")
    replicates: Annotated[int, Field(ge=1, le=1000)] = Field(5, description="Seeds per cell.")
    paired: bool = Field(True, description="Same run seed for every cell of a replicate (common random numbers).")
    scenarios: list[str] | Literal["all"] = Field(
        default_factory=lambda: ["fanqie_newuser"], description="Shipped scenario names or TOML paths, or 'all'."
    )
    budgets: list[BudgetLevel] = Field(
        default_factory=lambda: ["scenario"], description="Yuan per user of the arm; 'scenario' or 'unlimited'."
    )
    policies: list[PolicySpec] | None = Field(None, description="Grid: each policy x its settings x budgets.")
    points: list[PointSpec] | None = Field(None, description="Explicit list of cells (instead of policies).")
    experiment: dict[str, Any] = Field(default_factory=dict, description="ABConfig fields shared by every run.")
    out_dir: str = Field("results/sweeps", description="Parent folder of <name>/.")
    alpha: Annotated[float, Field(gt=0, lt=1)] = Field(0.05, description="1 - confidence of the CIs across seeds.")
    fit_cache: bool = Field(
        True, description="Reuse a worker's fitted policy for the points that differ only in budget (same fit)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        return _check_name(v, "folder name")

    @field_validator("scenarios")
    @classmethod
    def _scenarios(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("expected at least one scenario (or \"all\"), got []")
            if len(set(v)) != len(v):
                raise ValueError(f"scenarios must be distinct, got {v}")
        return v

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v):
        return _distinct_budgets(v)

    @field_validator("experiment")
    @classmethod
    def _experiment(cls, v: dict[str, Any]) -> dict[str, Any]:
        owned = [k for k in v if k in SWEEP_OWNED]
        if owned:
            raise ValueError(
                f"{owned[0]}: set by the sweep for every run (scenarios, seed/replicates, policies, budgets); "
                f"remove it from [experiment] (the sweep owns {list(SWEEP_OWNED)})"
            )
        if v.get("ground_truth") is False:
            raise ValueError("ground_truth: sweeps report true values next to measured ones; it must be true")
        return v

    @model_validator(mode="after")
    def _mode(self) -> SweepConfig:
        if (self.policies is None) == (self.points is None):
            raise ValueError("policies/points: give exactly one of [[policies]] (a grid) or [[points]] (a list)")
        if self.policies is not None and not self.policies:
            raise ValueError("policies: expected at least one policy")
        if self.points is not None and not self.points:
            raise ValueError("points: expected at least one point")
        return self


# ----------------------------------------------------------------------
def _loc(loc: tuple) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif str(p).startswith(("function-", "literal[", "float", "int", "list[", "str", "constrained")):
            continue  # union-member tags
        else:
            out += f".{p}" if out else str(p)
    return out


def _format(err: ValidationError, source: str) -> str:
    lines, seen = [], set()
    for e in err.errors():
        path = _loc(tuple(e["loc"]))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            line = f"{source}: unknown field '{path}' (given {e.get('input')!r}); see docs/sweeps.md"
        elif path:
            line = f"{source}: field '{path}': {msg} (given {e.get('input')!r})"
        else:
            line = f"{source}: {msg}"
        if path not in seen:  # one line per field (unions report each member)
            lines.append(line)
            seen.add(path)
    return "\n".join(lines)


# ----------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """One A/B run of the sweep: a cell (scenario x arm x budget) in one replicate."""

    point_id: str
    scenario: str
    arm: str
    policy: str
    params: dict
    budget_level: float | str  # as in the sweep file: number, "scenario" or "unlimited"
    budget: float  # yuan per user, resolved (inf = unlimited)
    replicate: int
    seed: int
    field: str  # where the cell comes from in the sweep file, for error messages
    config: dict  # the run's resolved ABConfig as a plain dict
    scenario_hash: str = ""  # content hash of the scenario when the plan was made (checked before the run)

    def to_dict(self) -> dict[str, Any]:
        return {
            "point_id": self.point_id,
            "scenario": self.scenario,
            "arm": self.arm,
            "policy": self.policy,
            "params": self.params,
            "budget_level": self.budget_level,
            "budget": "unlimited" if math.isinf(self.budget) else self.budget,
            "replicate": self.replicate,
            "seed": self.seed,
            "field": self.field,
            "config": self.config,
            "scenario_hash": self.scenario_hash,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Point:
        b = d["budget"]
        return cls(**{**d, "budget": math.inf if b == "unlimited" else float(b)})


@dataclass(frozen=True)
class Plan:
    config: SweepConfig
    sweep_id: str
    points: list[Point]
    scenarios: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sweep_id": self.sweep_id,
            "sweep": self.config.model_dump(mode="json", exclude_none=True),
            "scenarios": self.scenarios,
            "points": [p.to_dict() for p in self.points],
        }


def _label(spec_name: str | None, policy: str, params: dict, grid_keys: list[str]) -> str:
    if spec_name:
        base = spec_name
    elif policy == "blanket":
        base = f"blanket_{params.get('action', 'coins_1')}"
    elif ":" in policy:
        base = policy.rpartition(":")[2]
    else:
        base = policy
    if grid_keys:
        base += "(" + ",".join(f"{k}={_short(params[k])}" for k in grid_keys) + ")"
    return base


def _short(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, separators=(",", ":"))


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", s).strip("_") or "x"


def _budget_str(b: float) -> str:
    return "unlimited" if math.isinf(b) else f"{b:g}"


def replicate_seeds(sweep_seed: int, replicates: int) -> list[int]:
    """Run seed of each replicate: ``SeedSequence(sweep_seed).spawn(replicates)``, one 32-bit word each."""
    children = np.random.SeedSequence(sweep_seed).spawn(replicates)
    return [int(ss.generate_state(1, dtype=np.uint32)[0]) for ss in children]


def _cell_seed(sweep_seed: int, replicate: int, cell_key: str) -> int:
    key = int.from_bytes(hashlib.sha256(cell_key.encode()).digest()[:4], "little")
    ss = np.random.SeedSequence(sweep_seed, spawn_key=(replicate, key))
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def scenario_digest(name_or_path: str) -> str:
    """Content hash of a scenario (its validated fields), to detect a scenario file edited mid-sweep."""
    return hashlib.sha256(load_scenario(name_or_path).model_dump_json().encode()).hexdigest()[:12]


def _config_hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def sweep_from_dict(data: dict[str, Any], source: str = "sweep", default_name: str = "sweep") -> Plan:
    """Validate a sweep mapping and expand it into its points; raise :class:`SweepConfigError` naming the field."""
    if not isinstance(data, dict):
        raise SweepConfigError(f"{source}: expected a mapping of sweep fields, got {type(data).__name__}")
    try:
        cfg = SweepConfig.model_validate(data)
    except ValidationError as err:
        raise SweepConfigError(_format(err, source)) from None
    return expand(cfg, source, default_name)


def load_sweep(path: str | Path) -> Plan:
    """Read, validate and expand a sweep TOML file."""
    p = Path(path)
    if not p.exists():
        raise SweepConfigError(f"config: sweep file not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SweepConfigError(f"config: {p} is not valid TOML ({err})") from None
    return sweep_from_dict(data, source=str(p), default_name=p.stem)


def _scenario_list(cfg: SweepConfig, source: str) -> list[str]:
    names = available_scenarios() if cfg.scenarios == "all" else list(cfg.scenarios)
    for i, s in enumerate(names):
        try:
            load_scenario(s)
        except ScenarioError as err:
            raise SweepConfigError(f"{source}: field 'scenarios[{i}]': {err}") from None
    return names


def _experiment_base(cfg: SweepConfig, source: str) -> dict[str, Any]:
    base = {"frontier": False, **cfg.experiment}
    probe = {**base, "arms": [{"policy": CONTROL}, {"policy": "random", "name": "probe"}]}
    try:
        ABConfig.model_validate(probe)
    except ValidationError as err:
        msg = _format(err, source)
        msg = re.sub(r"field '(?!arms)", "field 'experiment.", msg)
        raise SweepConfigError(msg) from None
    return base


def expand(cfg: SweepConfig, source: str = "sweep", default_name: str = "sweep") -> Plan:
    """Every point of the sweep with its validated ABConfig (checked like ``ab_test`` does, before any run)."""
    sweep_id = cfg.name or _check_name(default_name, "folder name") or "sweep"
    if cfg.points is not None:
        extra = sorted({"scenarios", "budgets"} & cfg.model_fields_set)
        if extra:
            raise SweepConfigError(f"{source}: field '{extra[0]}': not used with [[points]] (each point sets its "
                                   "scenario and budget); remove it")
        scenarios: list[str] = []
    else:
        scenarios = _scenario_list(cfg, source)
    base = _experiment_base(cfg, source)

    # cells: (field, scenario, label, policy, params, budget_level)
    cells: list[tuple[str, str, str, str, dict, float | str]] = []
    if cfg.policies is not None:
        for j, spec in enumerate(cfg.policies):
            field = f"policies[{j}]"
            if spec.policy == CONTROL:
                raise SweepConfigError(f"{source}: field '{field}.policy': the control arm is implicit in every run; "
                                       "remove this entry")
            keys = sorted(spec.grid)
            combos = itertools.product(*(spec.grid[k] for k in keys)) if keys else [()]
            for combo in combos:
                params = {**spec.params, **dict(zip(keys, combo))}
                label = _label(spec.name, spec.policy, params, keys)
                for sc in scenarios:
                    for b in spec.budgets if spec.budgets is not None else cfg.budgets:
                        cells.append((field, sc, label, spec.policy, params, b))
    else:
        for j, spec in enumerate(cfg.points or []):
            field = f"points[{j}]"
            if spec.policy == CONTROL:
                raise SweepConfigError(f"{source}: field '{field}.policy': the control arm is implicit in every run")
            try:
                load_scenario(spec.scenario)
            except ScenarioError as err:
                raise SweepConfigError(f"{source}: field '{field}.scenario': {err}") from None
            cells.append((field, spec.scenario, _label(spec.name, spec.policy, spec.params, []), spec.policy,
                          dict(spec.params), spec.budget))
        scenarios = list(dict.fromkeys(c[1] for c in cells))

    # resolved budgets, label clashes
    seen: dict[tuple[str, str, float], str] = {}
    resolved_cells = []
    defaults: dict[str, float] = {}
    for field, sc, label, policy, params, b in cells:
        if label == CONTROL:
            raise SweepConfigError(f"{source}: field '{field}.name': 'control' is the implicit control arm's label")
        if sc not in defaults:
            defaults[sc] = float(load_scenario(sc).meta.default_budget_per_user)
        budget = math.inf if b == "unlimited" else defaults[sc] if b == "scenario" else float(b)
        key = (sc, label, budget)
        if key in seen:
            where = seen[key] if seen[key] != field else f"{field} (two settings)"
            raise SweepConfigError(
                f"{source}: field '{field}': arm label {label!r} at budget {_budget_str(budget)} in scenario {sc!r} "
                f"is already used by {where}; give the entries distinct 'name's"
            )
        seen[key] = field
        resolved_cells.append((field, sc, label, policy, params, b, budget))

    seeds = replicate_seeds(cfg.seed, cfg.replicates)
    scenario_hash = {sc: scenario_digest(sc) for sc in dict.fromkeys(c[1] for c in resolved_cells)}
    points: list[Point] = []
    checked: set[tuple] = set()
    for field, sc, label, policy, params, b, budget in resolved_cells:
        cell_key = json.dumps([sc, label, policy, params, _budget_str(budget)], sort_keys=True)
        for r in range(cfg.replicates):
            seed = seeds[r] if cfg.paired else _cell_seed(cfg.seed, r, cell_key)
            arm = {"name": label, "policy": policy, "params": params,
                   "budget_per_user": "unlimited" if math.isinf(budget) else budget}
            d = {**base, "scenario": sc, "seed": seed, "control": CONTROL,
                 "arms": [{"name": CONTROL, "policy": CONTROL}, arm]}
            try:
                ab = ABConfig.model_validate(d)
                if (sc, label, policy, json.dumps(params, sort_keys=True)) not in checked:
                    config_from_dict(ab)  # deep checks (scenario, policy import, settings, split) once per cell
                    checked.add((sc, label, policy, json.dumps(params, sort_keys=True)))
            except ValidationError as err:
                raise SweepConfigError(_relabel(_format(err, source), field)) from None
            except ConfigError as err:
                raise SweepConfigError(f"{source}: {_relabel(str(err), field)}") from None
            resolved = ab.resolved().to_dict()
            resolved.pop("out_dir", None)
            resolved.pop("run_id", None)
            # the id changes with the run's config and with the scenario's content (a recalibrated world reruns)
            h = _config_hash({"config": resolved, "scenario": scenario_hash[sc]})
            pid = f"{_slug(sc)}__{_slug(label)}__b{_budget_str(budget)}__r{r:03d}-{h}"
            resolved["run_id"] = pid
            points.append(Point(pid, sc, label, policy, params, b, budget, r, seed, field, resolved,
                                scenario_hash[sc]))
    ids = [p.point_id for p in points]
    if len(set(ids)) != len(ids):  # pragma: no cover - labels are unique per (scenario, budget) above
        raise SweepConfigError(f"{source}: two points share an id; give the entries distinct 'name's")
    return Plan(cfg, sweep_id, sorted(points, key=lambda p: p.point_id), scenarios)


def _relabel(msg: str, field: str) -> str:
    """Map an A/B config path (arms[1].params...) to the sweep entry it comes from."""
    msg = re.sub(r"arms\[1\]\.params", f"{field}.params", msg)
    msg = re.sub(r"arms\[1\]\.policy", f"{field}.policy", msg)
    msg = re.sub(r"arms\[1\]", field, msg)
    msg = re.sub(r"split\[1\]", f"{field} (experiment.users too small for two arms)", msg)
    return msg
