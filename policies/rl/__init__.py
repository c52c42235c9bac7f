"""Reinforcement-learning arm: a gymnasium environment over the simulated world, a
vectorised stable-baselines3 environment and the ``rl`` policy.

Importing this package registers the gymnasium id ``IncentiveSim-v0``
(:class:`policies.rl.env.IncentiveEnv`)::

    import gymnasium as gym
    import policies.rl  # noqa: F401
    env = gym.make("IncentiveSim-v0", scenario="fanqie_newuser", world_seed=7)
"""

from __future__ import annotations

import gymnasium as gym

ENV_ID = "IncentiveSim-v0"

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="policies.rl.env:IncentiveEnv", disable_env_checker=False)
