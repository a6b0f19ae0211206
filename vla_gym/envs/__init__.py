"""Simulation environments: PyBullet wrapper, robot, scene, task, the env and its ids."""

from vla_gym.envs.language import INSTRUCTION_SPLITS, decode_instruction, encode_instruction
from vla_gym.envs.pick_env import VLAPickConfig, VLAPickEnv
from vla_gym.envs.registration import ENV_IDS, MAX_EPISODE_STEPS, register_envs
from vla_gym.envs.scene import HELD_OUT_COMBINATIONS, OBJECT_SPLITS

__all__ = [
    "ENV_IDS",
    "HELD_OUT_COMBINATIONS",
    "INSTRUCTION_SPLITS",
    "MAX_EPISODE_STEPS",
    "OBJECT_SPLITS",
    "VLAPickConfig",
    "VLAPickEnv",
    "decode_instruction",
    "encode_instruction",
    "register_envs",
]
