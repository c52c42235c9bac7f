"""Scenario validation: every bad input is rejected with one message naming the field path."""

from __future__ import annotations

import copy
import math
import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from sim.catalogue import Catalogue
from sim.scenario import SCENARIO_DIR, Scenario, ScenarioError, available_scenarios, load_scenario, scenario_from_dict

BASE = {"meta": {"name": "test_world"}}


def with_value(path: str, value):
    """A copy of a minimal valid scenario with ``value`` set at a dotted ``path``."""
    d = copy.deepcopy(BASE)
    node = d
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return d


# (case id, scenario dict, regex the error message must match: the field path and what went wrong)
BAD_INPUTS = [
    ("unknown top-level key", {**BASE, "bogus": 1}, r"unknown field 'bogus'"),
    ("unknown nested key", with_value("incentives.coins.levelz", [1.0]), r"unknown field 'incentives\.coins\.levelz'"),
    ("unknown segment", with_value("segments.whales", 0.1), r"unknown field 'segments\.whales'"),
    ("missing meta", {}, r"field 'meta': Field required"),
    ("empty name", {"meta": {"name": ""}}, r"field 'meta\.name'"),
    ("wrong type: str for int", with_value("cohort.users", "many"), r"field 'cohort\.users'.*valid integer"),
    ("wrong type: str for float", with_value("behaviour.momentum", "high"), r"field 'behaviour\.momentum'.*number"),
    ("wrong type: fractional int", with_value("incentives.membership_trial.levels", [3.5]),
     r"field 'incentives\.membership_trial\.levels\[0\]'.*integer"),
    ("wrong type: table expected", with_value("incentives.coins", "lots"), r"field 'incentives\.coins'"),
    ("wrong type: nested str", with_value("behaviour.habit.persuadable", "a"),
     r"field 'behaviour\.habit\.persuadable'"),
    ("out of range: share > 1", with_value("segments.persuadable", 1.5), r"field 'segments\.persuadable'.*less than"),
    ("out of range: negative prob", with_value("behaviour.churn_if_active", -0.1),
     r"field 'behaviour\.churn_if_active'.*greater than"),
    ("out of range: days", with_value("cohort.days", 0), r"field 'cohort\.days'.*greater than"),
    ("out of range: too many days", with_value("cohort.days", 61), r"field 'cohort\.days'.*less than"),
    ("out of range: users", with_value("cohort.users", 1), r"field 'cohort\.users'"),
    ("out of range: level", with_value("incentives.coins.levels", [0.5, -1.0]),
     r"field 'incentives\.coins\.levels\[1\]'.*greater than 0"),
    ("coin levels with the same action name", with_value("incentives.coins.levels", [1.0000001, 1.0000002]),
     r"field 'incentives\.coins\.levels'.*distinct action names"),
    ("out of range: budget", with_value("meta.default_budget_per_user", -0.3),
     r"field 'meta\.default_budget_per_user'"),
    ("out of range: saturation", with_value("incentives.saturation", 11.0), r"field 'incentives\.saturation'"),
    ("NaN", with_value("behaviour.momentum", math.nan), r"field 'behaviour\.momentum'.*finite"),
    ("inf", with_value("economy.ecpm_yuan", math.inf), r"field 'economy\.ecpm_yuan'.*finite"),
    ("-inf", with_value("economy.pay_logit_base", -math.inf), r"field 'economy\.pay_logit_base'.*finite"),
    ("NaN in a list", with_value("population.age_band_shares", [0.2, math.nan, 0.3, 0.2, 0.1]),
     r"field 'population\.age_band_shares\[1\]'"),
    ("population shares not summing to 1", with_value("population.channel_shares", [0.5, 0.5, 0.5, 0.0, 0.0]),
     r"field 'population\.channel_shares'.*sum to 1, got 1\.5"),
    ("segment shares not summing to 1", with_value("segments.persuadable", 0.5),
     r"field 'segments'.*segment shares must sum to 1"),
    ("wrong number of shares", with_value("population.device_tier_shares", [0.5, 0.5]),
     r"field 'population\.device_tier_shares'.*at least 3"),
    ("non-increasing coin levels", with_value("incentives.coins.levels", [1.0, 0.5]),
     r"field 'incentives\.coins\.levels'.*strictly increasing"),
    ("repeated trial levels", with_value("incentives.membership_trial.levels", [7, 7]),
     r"field 'incentives\.membership_trial\.levels'.*strictly increasing"),
    ("non-increasing unlock levels", with_value("incentives.chapter_unlock.levels", [20, 5]),
     r"field 'incentives\.chapter_unlock\.levels'.*strictly increasing"),
    ("empty levels", with_value("incentives.coins.levels", []), r"field 'incentives\.coins\.levels'"),
    ("inverted target band", with_value("targets.d7_retention", [0.07, 0.05]),
     r"field 'targets\.d7_retention'.*low <= high"),
]


@pytest.mark.parametrize("data,pattern", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_scenario_rejected_naming_field(data, pattern):
    with pytest.raises(ScenarioError, match=pattern):
        scenario_from_dict(data)


def test_error_is_a_value_error_and_names_the_source():
    with pytest.raises(ValueError, match=r"^my_file\.toml: field 'cohort\.days'"):
        scenario_from_dict(with_value("cohort.days", 0), source="my_file.toml")


# Wrong scalar types that pydantic's lax mode would coerce silently (a TOML `days = true` would become 1 day,
# `users = "100000"` a number): rejected since sim/scenario.py's _Strict config is strict.  Strict mode still
# accepts integers for float fields and tables for nested sections.
SILENT_COERCIONS = [
    ("bool for int", with_value("cohort.days", True), r"field 'cohort\.days'.*valid integer"),
    ("numeric string for int", with_value("cohort.users", "100000"), r"field 'cohort\.users'.*valid integer"),
    ("numeric string for float", with_value("behaviour.momentum", "1.5"), r"field 'behaviour\.momentum'.*valid number"),
    ("bool for float", with_value("economy.ecpm_yuan", True), r"field 'economy\.ecpm_yuan'"),
]


@pytest.mark.parametrize("data,pattern", [c[1:] for c in SILENT_COERCIONS], ids=[c[0] for c in SILENT_COERCIONS])
def test_wrong_scalar_type_not_coerced(data, pattern):
    with pytest.raises(ScenarioError, match=pattern):
        scenario_from_dict(data)


def test_unknown_scenario_name():
    with pytest.raises(ScenarioError, match=r"unknown scenario 'no_such_world'.*fanqie_newuser"):
        load_scenario("no_such_world")


def test_missing_toml_file(tmp_path):
    with pytest.raises(ScenarioError, match=r"file not found"):
        load_scenario(tmp_path / "absent.toml")


def test_invalid_toml_syntax(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("[meta\nname = 'x'\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"broken\.toml: not valid TOML"):
        load_scenario(p)


def test_nan_in_toml_file_rejected(tmp_path):
    # TOML itself allows nan/inf literals: the schema must refuse them
    p = tmp_path / "nan_world.toml"
    p.write_text("[meta]\nname = 'nan_world'\n\n[behaviour]\nmomentum = nan\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"nan_world\.toml: field 'behaviour\.momentum'.*finite"):
        load_scenario(p)


def test_int_accepted_for_float_field():
    assert scenario_from_dict(with_value("economy.ecpm_yuan", 10)).economy.ecpm_yuan == 10.0


def test_valid_minimal_dict_uses_documented_defaults():
    sc = scenario_from_dict(BASE)
    assert sc.name == "test_world"
    assert sc.cohort.days == 30
    assert sc == Scenario.model_validate(BASE)


@pytest.mark.parametrize("name", available_scenarios())
def test_every_shipped_scenario_loads(name):
    sc = load_scenario(name)
    assert sc.name == name, f"{name}.toml: meta.name is {sc.name!r}, expected the file stem"
    raw = tomllib.loads((SCENARIO_DIR / f"{name}.toml").read_text(encoding="utf-8"))
    assert "targets" in raw, f"{name}.toml: a shipped scenario must state its own [targets] bands"
    cat = Catalogue.from_scenario(sc)
    assert cat.names[0] == "none" and len(set(cat.names)) == len(cat), f"{name}: duplicate action names {cat.names}"
    assert re.fullmatch(r"[a-z0-9_]+", name)


def test_at_least_three_shipped_scenarios():
    names = available_scenarios()
    assert {"fanqie_newuser", "hunter_heavy", "mature_market"} <= set(names), names


def _field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            paths += _field_paths(ann, f"{prefix}{name}.")
        else:
            paths.append(prefix + name)
    return paths


def test_every_field_documented_in_schema_doc():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "scenario_schema.md").read_text(encoding="utf-8")
    paths = _field_paths(Scenario)
    assert len(paths) > 80
    missing = [p for p in paths if f"`{p}`" not in doc]
    assert not missing, f"docs/scenario_schema.md does not document: {missing}"
