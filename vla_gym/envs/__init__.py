"""Simulation environments: PyBullet wrapper, robot, scene, tasks, experts, the env and its ids."""

from vla_gym.envs.display import DisplayUnavailableError
from vla_gym.envs.language import INSTRUCTION_SPLITS, decode_instruction, encode_instruction
from vla_gym.envs.registration import DEFAULT_ENV_ID, ENV_IDS, MAX_EPISODE_STEPS, MULTI_TASK_ENV_ID, register_envs
from vla_gym.envs.scene import HELD_OUT_COMBINATIONS, OBJECT_SPLITS
from vla_gym.envs.tabletop_env import TabletopConfig, VLATabletopEnv
from vla_gym.envs.tasks import TASKS

__all__ = [
    "DEFAULT_ENV_ID",
    "DisplayUnavailableError",
    "ENV_IDS",
    "HELD_OUT_COMBINATIONS",
    "INSTRUCTION_SPLITS",
    "MAX_EPISODE_STEPS",
    "MULTI_TASK_ENV_ID",
    "OBJECT_SPLITS",
    "TASKS",
    "TabletopConfig",
    "VLATabletopEnv",
    "decode_instruction",
    "encode_instruction",
    "register_envs",
]
