"""Potential-based reward shaping for PPO (Ng, Harada and Russell, 1999).

:class:`PotentialShaping` adds ``coef * (gamma * phi(s') - phi(s))`` to the env's reward,
where ``phi`` is the task's dense progress (:meth:`VLATabletopEnv.progress`: reach, grasp,
lift ... in [0, 1]) and ``phi = 0`` after a terminal step. The added terms telescope over
an episode, so the policies that are optimal for the sparse success reward stay optimal,
while every step that brings the gripper closer to the goal gets credit at once. A dense
reward used directly (``VLA<Task>Dense-v0``) does not have that property: its per-step
reward in [0, 1) pays an agent to hover just short of success for the rest of the episode.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym


class PotentialShaping(gym.Wrapper):
    """Reward + ``coef * (gamma * phi(s') - phi(s))`` with ``phi`` the task's dense progress.

    ``info["shaping"]`` holds the added term of each step; the original reward stays in
    ``info["env_reward"]``.
    """

    def __init__(self, env: gym.Env, coef: float, gamma: float) -> None:
        super().__init__(env)
        if not hasattr(env.unwrapped, "progress"):
            raise TypeError(f"{env.unwrapped!r} has no progress(): potential shaping needs a vla_gym tabletop env")
        if not (coef > 0 and 0 < gamma <= 1):
            raise ValueError(f"shaping needs coef > 0 and 0 < gamma <= 1, got coef={coef!r}, gamma={gamma!r}")
        self.coef, self.gamma = float(coef), float(gamma)
        self._phi = 0.0

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self._phi = self.env.unwrapped.progress()
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        phi = 0.0 if terminated else self.env.unwrapped.progress()
        shaping = self.coef * (self.gamma * phi - self._phi)
        self._phi = phi
        info = {**info, "shaping": shaping, "env_reward": float(reward)}
        return obs, float(reward) + shaping, terminated, truncated, info
