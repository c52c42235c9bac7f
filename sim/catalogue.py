"""The action catalogue: "none" plus every level of every incentive type.

Action 0 is always ``none``.  Each action has a type, a level and a
*commitment cost*: the most it can ever cost the platform, which the ledger
reserves when the grant is made (coin face value; trial days times the daily
ad-revenue cap; unlocked chapters times the royalty).  Realised cost is what
is actually redeemed / forgone / read, and is never above the commitment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.scenario import Scenario

TYPE_NONE, TYPE_COINS, TYPE_TRIAL, TYPE_UNLOCK = 0, 1, 2, 3
TYPE_NAMES = ("none", "coins", "membership_trial", "chapter_unlock")


@dataclass(frozen=True)
class Action:
    index: int
    name: str
    type: int
    level: float
    commit_cost: float

    @property
    def type_name(self) -> str:
        return TYPE_NAMES[self.type]


@dataclass(frozen=True)
class Catalogue:
    actions: tuple[Action, ...]

    @classmethod
    def from_scenario(cls, scenario: Scenario) -> Catalogue:
        inc, eco = scenario.incentives, scenario.economy
        daily_ad_cap = eco.ad_daily_cap_impressions * eco.ecpm_yuan / 1000.0
        acts = [Action(0, "none", TYPE_NONE, 0.0, 0.0)]
        for lv in inc.coins.levels:
            acts.append(Action(len(acts), f"coins_{lv:g}", TYPE_COINS, float(lv), float(lv)))
        for lv in inc.membership_trial.levels:
            acts.append(Action(len(acts), f"trial_{lv}d", TYPE_TRIAL, float(lv), float(lv) * daily_ad_cap))
        for lv in inc.chapter_unlock.levels:
            acts.append(
                Action(len(acts), f"unlock_{lv}", TYPE_UNLOCK, float(lv), float(lv) * eco.royalty_per_chapter)
            )
        return cls(tuple(acts))

    def __len__(self) -> int:
        return len(self.actions)

    def __iter__(self):
        return iter(self.actions)

    def __getitem__(self, i: int) -> Action:
        return self.actions[i]

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.actions]

    @property
    def types(self) -> np.ndarray:
        return np.array([a.type for a in self.actions], dtype=np.int8)

    @property
    def levels(self) -> np.ndarray:
        return np.array([a.level for a in self.actions], dtype=np.float64)

    @property
    def commit_costs(self) -> np.ndarray:
        return np.array([a.commit_cost for a in self.actions], dtype=np.float64)

    def index(self, name: str) -> int:
        for a in self.actions:
            if a.name == name:
                return a.index
        raise ValueError(f"action: unknown action {name!r}; expected one of {self.names}")

    def of_type(self, type_name: str) -> list[Action]:
        if type_name not in TYPE_NAMES:
            raise ValueError(f"action type: unknown type {type_name!r}; expected one of {list(TYPE_NAMES)}")
        t = TYPE_NAMES.index(type_name)
        return [a for a in self.actions if a.type == t]
