"""Scenario schema: a TOML file validated before anything is simulated.

A scenario fixes the world: who the new users are (observable mix and hidden
segment shares), how they behave day by day, the app's economy, and the
incentive catalogue with its effects.  Every field is documented in
``docs/scenario_schema.md``; :func:`load_scenario` rejects unknown keys, wrong
types, out-of-range values and NaN/inf with one :class:`ScenarioError` naming
the field path, e.g. ``incentives.coins.levels[1]``.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
SEGMENTS = ("persuadable", "sure_thing", "lost_cause", "sleeping_dog", "subsidy_hunter")
CHANNELS = ("organic", "paid_social", "app_store_ads", "referral", "preinstall")


class ScenarioError(ValueError):
    """A scenario failed validation; the message names the field path."""


Prob = Annotated[float, Field(ge=0.0, le=1.0)]
PosFloat = Annotated[float, Field(gt=0.0)]
NonNeg = Annotated[float, Field(ge=0.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, strict=True)


def _check_shares(values: list[float], what: str) -> list[float]:
    total = float(sum(values))
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ValueError(f"{what} must sum to 1, got {total:.6g}")
    return values


class Meta(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    default_budget_per_user: NonNeg = Field(
        0.3, description="Default per-user subsidy budget of an arm, in yuan (commitment basis)."
    )


class Cohort(_Strict):
    users: Annotated[int, Field(ge=2, le=50_000_000)] = 100_000
    days: Annotated[int, Field(ge=1, le=60)] = 30


class Population(_Strict):
    """Observable mix of the cohort on install day (day 0)."""

    channel_shares: Annotated[list[Prob], Field(min_length=5, max_length=5)] = [0.25, 0.30, 0.20, 0.15, 0.10]
    device_tier_shares: Annotated[list[Prob], Field(min_length=3, max_length=3)] = [0.40, 0.40, 0.20]
    city_tier_shares: Annotated[list[Prob], Field(min_length=4, max_length=4)] = [0.15, 0.25, 0.30, 0.30]
    age_band_shares: Annotated[list[Prob], Field(min_length=5, max_length=5)] = [0.20, 0.30, 0.25, 0.15, 0.10]
    female_share: Prob = 0.5
    n_genres: Annotated[int, Field(ge=1, le=32)] = 8
    night_install_share: Prob = 0.12
    trait_noise: Annotated[float, Field(ge=0.0, le=5.0)] = Field(
        1.0, description="Scale of the unobservable noise in price sensitivity, ad tolerance, binge and pay propensity."
    )
    response_noise: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.5, description="Responsiveness is multiplied by U(1 - response_noise, 1 + response_noise), unobservable."
    )
    d0_habit_signal: Annotated[float, Field(ge=0.0, le=5.0)] = Field(
        0.35, description="Weight of the hidden habit in log day-0 reading minutes."
    )
    d0_minutes_noise: Annotated[float, Field(ge=0.0, le=5.0)] = Field(
        0.6, description="Standard deviation of the noise in log day-0 reading minutes."
    )

    @field_validator("channel_shares", "device_tier_shares", "city_tier_shares", "age_band_shares")
    @classmethod
    def _sum_to_one(cls, v: list[float]) -> list[float]:
        return _check_shares(v, "shares")


class Segments(_Strict):
    """Hidden segment shares (sum to 1) and how strongly observables tilt them."""

    persuadable: Prob = 0.18
    sure_thing: Prob = 0.05
    lost_cause: Prob = 0.60
    sleeping_dog: Prob = 0.08
    subsidy_hunter: Prob = 0.09
    observable_tilt: Annotated[float, Field(ge=0.0, le=5.0)] = 1.0
    persuadable_focus: Annotated[float, Field(ge=1.0, le=5.0)] = Field(
        1.5, description="A persuadable's responsiveness to its best-matching incentive type is multiplied by this, "
        "the other types' divided by it."
    )

    @model_validator(mode="after")
    def _sum(self) -> Segments:
        _check_shares([getattr(self, s) for s in SEGMENTS], "segment shares")
        return self


class SegmentHabit(_Strict):
    """Mean log-odds of opening the app on a day, by segment (before novelty decay)."""

    persuadable: float = -1.0
    sure_thing: float = 2.0
    lost_cause: float = -3.0
    sleeping_dog: float = 0.6
    subsidy_hunter: float = -2.0


class Behaviour(_Strict):
    habit: SegmentHabit = SegmentHabit()
    habit_noise: NonNeg = 0.6
    momentum: float = Field(1.0, description="Log-odds bonus for a user active yesterday.")
    learning: NonNeg = Field(0.12, description="Log-odds gained per active day (habit formation).")
    learning_cap_days: Annotated[int, Field(ge=0, le=60)] = 10
    novelty_decay: NonNeg = Field(0.5, description="Log-odds lost per log(1+day) as novelty fades.")
    churn_if_inactive: Prob = Field(0.18, description="Daily hazard of uninstalling on a day the user did not open.")
    churn_if_active: Prob = 0.01
    ad_annoyance: NonNeg = Field(0.8, description="Log-odds lost by fully ad-averse users while ads are shown.")
    minutes_log_mean: float = 3.2
    minutes_log_sd: PosFloat = 0.7
    max_minutes: PosFloat = 300.0
    minutes_per_chapter: PosFloat = 6.0
    premium_chapter_share: Prob = 0.3


class Economy(_Strict):
    ad_impressions_per_minute: NonNeg = 0.5
    ad_daily_cap_impressions: PosFloat = 40.0
    ecpm_yuan: NonNeg = 10.0
    pay_logit_base: float = -7.2
    pay_logit_per_log_active_day: float = 0.6
    membership_share_of_payments: Prob = 0.4
    membership_price: PosFloat = 15.0
    membership_days: Annotated[int, Field(ge=1, le=365)] = 30
    chapter_bundle_price: PosFloat = 6.0
    royalty_per_chapter: NonNeg = 0.04


class Responsiveness(_Strict):
    """Per-segment multipliers of the responsiveness to each incentive type."""

    persuadable: float = 1.0
    sure_thing: float = 0.2
    lost_cause: float = 0.25
    sleeping_dog: float = -0.8
    subsidy_hunter: float = 0.2


class Coins(_Strict):
    levels: Annotated[list[PosFloat], Field(min_length=1, max_length=6)] = [0.5, 1.0, 2.0]
    effect: float = Field(2.2, description="Peak log-odds lift for a fully price-sensitive persuadable at 1 yuan.")
    responsiveness: Responsiveness = Responsiveness()
    decay_days: PosFloat = 4.0
    expiry_days: Annotated[int, Field(ge=1, le=60)] = 7
    minutes_to_redeem_all: PosFloat = 90.0
    payment_cannibalisation: Prob = 0.5
    hunter_effect: float = Field(3.0, description="Log-odds lift for subsidy hunters while coins are unredeemed.")
    hunter_churn_after_cashout: Prob = 0.45

    @field_validator("levels")
    @classmethod
    def _increasing(cls, v: list[float]) -> list[float]:
        if any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError(f"levels must be strictly increasing, got {v}")
        names = [f"coins_{lv:g}" for lv in v]
        if len(set(names)) != len(names):
            raise ValueError(f"levels must give distinct action names, got {names}")
        return v


class MembershipTrial(_Strict):
    levels: Annotated[list[Annotated[int, Field(ge=1, le=60)]], Field(min_length=1, max_length=6)] = [3, 7]
    effect: float = Field(1.2, description="Log-odds lift for a fully ad-averse persuadable during the trial.")
    responsiveness: Responsiveness = Responsiveness()
    conversion_logit_base: float = -4.0
    conversion_per_active_share: float = 2.0
    conversion_per_pay_propensity: float = Field(1.0, description="Weight of the hidden pay propensity in the conversion log-odds.")
    payment_cannibalisation: Prob = 1.0

    @field_validator("levels")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError(f"levels must be strictly increasing, got {v}")
        return v


class ChapterUnlock(_Strict):
    levels: Annotated[list[Annotated[int, Field(ge=1, le=500)]], Field(min_length=1, max_length=6)] = [5, 20]
    effect: float = Field(1.6, description="Log-odds lift for a full binge reader (persuadable) at 5 chapters.")
    responsiveness: Responsiveness = Responsiveness()
    decay_days: PosFloat = 6.0
    expiry_days: Annotated[int, Field(ge=1, le=60)] = 14
    payment_cannibalisation: Prob = 0.6

    @field_validator("levels")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError(f"levels must be strictly increasing, got {v}")
        return v


class Incentives(_Strict):
    coins: Coins = Coins()
    membership_trial: MembershipTrial = MembershipTrial()
    chapter_unlock: ChapterUnlock = ChapterUnlock()
    saturation: Annotated[float, Field(ge=0.0, le=10.0)] = Field(
        0.7, description="Effect of the n-th grant of a type is divided by (1 + saturation * n_previous)."
    )
    sleeping_dog_churn_bump: Prob = Field(0.05, description="Extra one-off uninstall hazard when a sleeping dog gets any grant.")


class Targets(_Strict):
    """Calibration targets of the control cohort, checked by the scenario card and tests."""

    d1_retention: Annotated[list[Prob], Field(min_length=2, max_length=2)] = [0.20, 0.40]
    d7_retention: Annotated[list[Prob], Field(min_length=2, max_length=2)] = [0.055, 0.065]
    d30_retention: Annotated[list[Prob], Field(min_length=2, max_length=2)] = [0.01, 0.04]
    pay_conv_d30: Annotated[list[Prob], Field(min_length=2, max_length=2)] = [0.015, 0.025]

    @field_validator("d1_retention", "d7_retention", "d30_retention", "pay_conv_d30")
    @classmethod
    def _band(cls, v: list[float]) -> list[float]:
        if v[0] > v[1]:
            raise ValueError(f"band must be [low, high] with low <= high, got {v}")
        return v


class Scenario(_Strict):
    meta: Meta
    cohort: Cohort = Cohort()
    population: Population = Population()
    segments: Segments = Segments()
    behaviour: Behaviour = Behaviour()
    economy: Economy = Economy()
    incentives: Incentives = Incentives()
    targets: Targets = Targets()

    @property
    def name(self) -> str:
        return self.meta.name


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        path = _loc_to_path(tuple(p for p in e["loc"] if p not in ("function-after",)))
        given = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown field '{path}' (given {given!r}); check the spelling against docs/scenario_schema.md")
        else:
            lines.append(f"{source}: field '{path}': {e['msg']} (given {given!r})")
    return "\n".join(lines)


def scenario_from_dict(data: dict[str, Any], source: str = "scenario") -> Scenario:
    """Validate a parsed scenario mapping; raise :class:`ScenarioError` naming the field."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as err:
        raise ScenarioError(format_validation_error(err, source)) from None


def available_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def load_scenario(name_or_path: str | Path | Scenario) -> Scenario:
    """Load a shipped scenario by name (e.g. ``fanqie_newuser``) or a TOML file by path."""
    if isinstance(name_or_path, Scenario):
        return name_or_path
    p = Path(name_or_path)
    if p.suffix != ".toml":
        candidate = SCENARIO_DIR / f"{name_or_path}.toml"
        if not candidate.exists():
            raise ScenarioError(
                f"scenario: unknown scenario {str(name_or_path)!r}; expected one of "
                f"{available_scenarios()} or a path to a .toml file"
            )
        p = candidate
    if not p.exists():
        raise ScenarioError(f"scenario: file not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"{p}: not valid TOML: {err}") from None
    return scenario_from_dict(data, source=str(p.name))
