"""Scripted experts that act from privileged simulator state (for demonstrations)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from vla_gym.envs.pick_env import MAX_EE_STEP, VLAPickEnv
from vla_gym.envs.scene import Scene

HOVER_HEIGHT = 0.10  # m above the target centre to line up before descending
XY_TOLERANCE = 0.008  # m: horizontal error at which the descent starts
DESCENT_XY_TOLERANCE = 0.025  # m: horizontal error tolerated while descending
Z_TOLERANCE = 0.008  # m: vertical error at which the gripper closes
GRASP_OFFSET = 0.0  # m: grasp point height relative to the target centre
EMPTY_GRIP_OPENING = 0.01  # m: a closed gripper this narrow holds nothing
GAIN = 1.0  # proportional gain from position error (in units of MAX_EE_STEP) to action
#: Action noise fades linearly to zero within this distance (m) of the current sub-goal,
#: so noisy demos vary in free space but still line up and grasp precisely.
NOISE_FADE_DISTANCE = 0.06


class ScriptedPickPolicy:
    """Move above the target, descend, close the gripper, lift.

    The phase is read from the simulator each step (no hidden counter), so the policy
    recovers from any state, e.g. a slipped grasp. Follows stable-baselines3's
    ``predict(obs, state=None, episode_start=None, deterministic=True) -> (action, state)``.

    Args:
        env: a ``VLAPick`` env (wrapped or not); its unwrapped env is read for state.
        noise_std: std of Gaussian noise added to the motion part of the action when
            ``deterministic=False`` (for varied demonstrations).
        seed: seed of the noise generator.
        target: colour of the object to pick instead of the task's goal (to record
            deliberate mistakes, or to test that lifting a wrong object is no success).
    """

    def __init__(
        self, env: gym.Env, noise_std: float = 0.0, seed: int | None = None, target: str | None = None
    ) -> None:
        unwrapped = env.unwrapped
        if not isinstance(unwrapped, VLAPickEnv):
            raise TypeError(f"ScriptedPickPolicy needs a VLAPick env, got {type(unwrapped).__name__}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.env = unwrapped
        self.noise_std = noise_std
        self.rng = np.random.default_rng(seed)
        self.target = target

    def _target_body(self) -> str:
        if self.target is None:
            return self.env.task.target_name
        return Scene.body_name(self.env.scene.index_of(self.target))

    def act(self) -> np.ndarray:
        """Noise-free expert action, float32 (4,), from the env's current state."""
        return self._plan()[0]

    def _plan(self) -> tuple[np.ndarray, float]:
        """Expert action float32 (4,) and the distance (m) to the current sub-goal."""
        robot = self.env.robot
        ee = robot.ee_position()
        body = self._target_body()
        target = self.env.sim.base_position(body)
        grasp_point = target + np.array([0.0, 0.0, GRASP_OFFSET])
        if robot.gripper_closed:
            if all(robot.finger_contacts(body)):
                goal, grip = ee + np.array([0.0, 0.0, MAX_EE_STEP]), 1.0  # lift
            elif robot.gripper_opening() < EMPTY_GRIP_OPENING:
                goal, grip = ee + np.array([0.0, 0.0, MAX_EE_STEP]), -1.0  # missed: open, back off
            else:
                goal, grip = ee, 1.0  # fingers still closing
        else:
            horizontal_error = np.linalg.norm(target[:2] - ee[:2])
            hover = target[2] + HOVER_HEIGHT
            descending = ee[2] < hover - Z_TOLERANCE
            # Hysteresis: once below hover height, keep descending while roughly aligned.
            aligned = horizontal_error <= (DESCENT_XY_TOLERANCE if descending else XY_TOLERANCE)
            if not aligned and ee[2] < target[2] + HOVER_HEIGHT / 2:
                goal, grip = np.array([*ee[:2], hover]), -1.0  # too low to move sideways: rise
            elif not aligned:
                goal, grip = np.array([*target[:2], max(ee[2], hover)]), -1.0
            elif ee[2] - grasp_point[2] > Z_TOLERANCE or horizontal_error > XY_TOLERANCE:
                goal, grip = grasp_point, -1.0
            else:
                goal, grip = ee, 1.0
        motion = np.clip(GAIN * (goal - ee) / MAX_EE_STEP, -1.0, 1.0)
        return np.array([*motion, grip], dtype=np.float32), float(np.linalg.norm(goal - ee))

    def predict(
        self,
        observation: Any = None,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        if deterministic:
            return self.act(), state
        return self.act_noisy()[1], state

    def act_noisy(self) -> tuple[np.ndarray, np.ndarray]:
        """The noise-free expert action and a copy with ``noise_std`` noise on the motion part.

        Demonstrations execute the noisy one and record the clean one as the label, so the
        recorded states cover small deviations and the labels say how to recover from them.
        """
        clean, distance = self._plan()
        noisy = clean.copy()
        if self.noise_std > 0:
            scale = self.noise_std * min(1.0, distance / NOISE_FADE_DISTANCE)
            noisy[:3] = np.clip(noisy[:3] + self.rng.normal(0.0, scale, 3), -1.0, 1.0)
        return clean, noisy
