"""What every vla_gym env shares, whatever its task: action and observation spaces, the
control constants behind the action, and the cameras.

``agents/`` and ``data/`` import this module (never a task module) to learn the spaces.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from vla_gym.envs.language import MAX_INSTRUCTION_BYTES
from vla_gym.envs.pybullet_sim import Camera

TIME_STEP = 1.0 / 200.0  # s, physics step
SUBSTEPS = 10  # physics steps per env step: control at 20 Hz (0.05 s a step)
CONTROL_PERIOD = TIME_STEP * SUBSTEPS  # s
#: Constraint solver iterations per physics step (PyBullet's default is 50); 20 hold a
#: grasp as firmly at 40 % less physics cost.
SOLVER_ITERATIONS = 20
MAX_EE_STEP = 0.04  # m: an action of +-1 moves the end-effector target this far per step
#: Box (m) the end-effector target is kept inside.
WORKSPACE_LOW = np.array([0.25, -0.35, 0.005])
WORKSPACE_HIGH = np.array([0.85, 0.35, 0.45])
ACTION_DIM = 4
PROPRIO_DIM = 8
#: Bounds of ``proprio`` (position m, velocity m/s, opening m, command); values are clipped to them.
PROPRIO_LOW = np.array([-1.0, -1.0, -0.5, -5.0, -5.0, -5.0, 0.0, -1.0], dtype=np.float32)
PROPRIO_HIGH = np.array([1.5, 1.0, 1.5, 5.0, 5.0, 5.0, 0.1, 1.0], dtype=np.float32)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 512

#: The agent's camera: in front of the table, looking back at the robot over the objects.
AGENT_CAMERA = Camera(eye=(1.05, 0.0, 0.65), target=(0.5, 0.0, 0.12), fov_deg=55.0, near=0.1, far=2.0)
#: A wider third-person view for ``render_mode="rgb_array"`` (videos).
VIEWER_CAMERA = Camera(eye=(1.05, -0.85, 0.75), target=(0.42, 0.0, 0.12), fov_deg=50.0, near=0.1, far=4.0)
VIEWER_SIZE = (480, 360)  # px, width x height


def make_action_space() -> spaces.Box:
    """``Box(-1, 1, (4,), float32)``: (dx, dy, dz, grip)."""
    return spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)


def make_observation_space(image_size: int) -> spaces.Dict:
    """The Dict observation space of every vla_gym env, for square images of side ``image_size`` px."""
    size = image_size
    return spaces.Dict(
        {
            "rgb": spaces.Box(0, 255, (size, size, 3), np.uint8),
            "depth": spaces.Box(AGENT_CAMERA.near, AGENT_CAMERA.far, (size, size, 1), np.float32),
            "proprio": spaces.Box(PROPRIO_LOW, PROPRIO_HIGH, (PROPRIO_DIM,), np.float32),
            "instruction": spaces.Box(0, 255, (MAX_INSTRUCTION_BYTES,), np.uint8),
        }
    )
