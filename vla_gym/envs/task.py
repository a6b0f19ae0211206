"""The pick task: which object is the goal, when it counts as picked, and the reward.

Success is defined once, in :meth:`PickTask.is_success`, and both rewards and
``info["is_success"]`` use it.
"""

from __future__ import annotations

import numpy as np

from vla_gym.envs.pybullet_sim import PyBulletSim
from vla_gym.envs.robot import Panda
from vla_gym.envs.scene import Scene

REWARD_TYPES = ("sparse", "dense")

#: The target counts as picked when its lowest point is at least this high above the
#: table top (m) while a finger touches it.
LIFT_HEIGHT = 0.05
#: Dense shaping: distance (m) at which the reaching term has fallen to tanh(1) ~ 0.76.
REACH_SCALE = 0.1
# Dense reward weights; they sum to 1 so the reward lies in [0, 1].
REACH_WEIGHT = 0.3
GRASP_WEIGHT = 0.2
LIFT_WEIGHT = 0.5


class PickTask:
    """Pick up the object of the target colour.

    Args:
        sim: the simulation.
        robot: the robot whose fingers must hold the target.
        scene: the scene whose objects are the candidates.
        reward_type: "sparse" (1.0 on success, else 0.0) or "dense" (shaped, in [0, 1]).
    """

    def __init__(self, sim: PyBulletSim, robot: Panda, scene: Scene, reward_type: str = "sparse") -> None:
        if reward_type not in REWARD_TYPES:
            raise ValueError(f"reward_type={reward_type!r} is not available; choose one of {REWARD_TYPES}")
        self.sim = sim
        self.robot = robot
        self.scene = scene
        self.reward_type = reward_type
        self.target_index = 0

    @property
    def target_name(self) -> str:
        return Scene.body_name(self.target_index)

    def target_height(self) -> float:
        """Height (m) of the target's lowest point above the table top (z = 0)."""
        lo, _ = self.sim.aabb(self.target_name)
        return float(lo[2])

    def target_touched(self) -> bool:
        """Whether a gripper finger touches the target."""
        return any(self.robot.finger_contacts(self.target_name))

    def is_success(self) -> bool:
        """The target is held: at least :data:`LIFT_HEIGHT` above the table, a finger on it."""
        return self.target_height() >= LIFT_HEIGHT and self.target_touched()

    def reward(self, success: bool, ee_position: np.ndarray) -> float:
        """Reward for the current state given its success flag (computed once per step)."""
        if self.reward_type == "sparse" or success:
            return float(success)
        target = self.sim.base_position(self.target_name)
        reach = 1.0 - np.tanh(np.linalg.norm(ee_position - target) / REACH_SCALE)
        touched = self.target_touched()
        lift = np.clip(self.target_height() / LIFT_HEIGHT, 0.0, 1.0) if touched else 0.0
        return float(REACH_WEIGHT * reach + GRASP_WEIGHT * touched + LIFT_WEIGHT * lift)
