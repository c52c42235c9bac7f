"""The cost ledger of one experiment arm.

The ledger works on a commitment basis.  When a grant is made it reserves the
grant's commitment (the most it can cost: coin face value, trial days times
the daily ad-revenue cap, unlocked chapters times the royalty).  A grant whose
commitment does not fit in ``budget - spent - reserved`` is refused and
counted.  Realised costs (coins actually redeemed, ad revenue actually
forgone, unlocked chapters actually read) are charged as they happen, and a
commitment that can no longer be realised (expired coins, an uninstall) is
released.  Because realised cost never exceeds the commitment it consumes,
``spent + reserved <= budget`` holds after every day: the simulator enforces
the budget whatever the policy asks for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sim.catalogue import TYPE_NAMES


@dataclass
class Ledger:
    budget: float | None  # total yuan for the arm; None = unlimited
    spent: float = 0.0
    reserved: float = 0.0
    spent_by_type: dict[str, float] = field(default_factory=lambda: {t: 0.0 for t in TYPE_NAMES[1:]})
    grants_by_type: dict[str, int] = field(default_factory=lambda: {t: 0 for t in TYPE_NAMES[1:]})
    grants_by_action: dict[str, int] = field(default_factory=dict)
    refused: int = 0

    def __post_init__(self) -> None:
        if self.budget is not None and (not math.isfinite(self.budget) or self.budget < 0):
            raise ValueError(f"budget: expected a finite non-negative number of yuan or None, got {self.budget!r}")

    @property
    def available(self) -> float:
        if self.budget is None:
            return math.inf
        return max(0.0, self.budget - self.spent - self.reserved)

    @property
    def grants(self) -> int:
        return int(sum(self.grants_by_type.values()))

    def record_grants(self, actions: np.ndarray, catalogue) -> None:
        counts = np.bincount(actions, minlength=len(catalogue))
        for a in catalogue:
            if a.index == 0 or counts[a.index] == 0:
                continue
            self.grants_by_type[a.type_name] += int(counts[a.index])
            self.grants_by_action[a.name] = self.grants_by_action.get(a.name, 0) + int(counts[a.index])

    def settle(self, spent_total: float, spent_by_type: dict[str, float], reserved: float) -> None:
        """Set the realised totals (exact sums of per-user costs) and outstanding commitments."""
        self.spent = float(spent_total)
        self.spent_by_type = {k: float(v) for k, v in spent_by_type.items()}
        self.reserved = float(reserved)
        if self.budget is not None and self.spent + self.reserved > self.budget * (1 + 1e-12) + 1e-9:
            raise RuntimeError(
                f"ledger invariant broken: spent {self.spent:.6f} + reserved {self.reserved:.6f} "
                f"> budget {self.budget:.6f}"
            )

    def as_dict(self) -> dict:
        return {
            "budget": self.budget,
            "spent": self.spent,
            "reserved": self.reserved,
            "refused": self.refused,
            "grants": self.grants,
            **{f"spent_{k}": v for k, v in self.spent_by_type.items()},
            **{f"grants_{k}": v for k, v in self.grants_by_type.items()},
        }
