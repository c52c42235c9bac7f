"""Mesa agents that carry users through the behaviour kernel.

* :class:`CohortAgent` holds a contiguous block of users (rows) and advances
  all of them in one vectorised, parallel kernel call: the fast path.
* :class:`UserAgent` holds one user and advances it through the same kernel
  code: the inspection path, for small runs where each user should be a
  visible Mesa agent.  Both produce identical per-user outcomes.
"""

from __future__ import annotations

import mesa
import numpy as np

from sim import kernel as K

PARALLEL_MIN_ROWS = 20_000


class CohortAgent(mesa.Agent):
    """A block of users ``rows lo..hi-1`` stepped together."""

    def __init__(self, model, lo: int, hi: int) -> None:
        super().__init__(model)
        self.lo, self.hi = int(lo), int(hi)

    @property
    def n_users(self) -> int:
        return self.hi - self.lo

    def step(self) -> None:
        m = self.model
        rows = m.alive_rows_in(self.lo, self.hi)
        # numba's thread launch costs more than it saves on small blocks
        step = K.step_rows if rows.shape[0] >= PARALLEL_MIN_ROWS else K.step_rows_serial
        step(rows, *m.kernel_args())


class UserAgent(mesa.Agent):
    """One user, stepped alone through the same kernel."""

    def __init__(self, model, row: int) -> None:
        super().__init__(model)
        self.row = int(row)
        self._rows = np.array([row], dtype=np.int64)

    @property
    def user_id(self) -> int:
        return int(self.model.cohort.user_ids[self.row])

    @property
    def alive(self) -> bool:
        return bool(self.model.I[K.I_ALIVE, self.row])

    @property
    def days_active(self) -> int:
        return int(self.model.I[K.I_DAYS_ACTIVE, self.row])

    def step(self) -> None:
        K.step_rows_serial(self._rows, *self.model.kernel_args())
