"""Simulation environments: PyBullet wrapper, robot, scene, task, the env and its ids."""

from vla_gym.envs.language import decode_instruction, encode_instruction
from vla_gym.envs.pick_env import VLAPickConfig, VLAPickEnv
from vla_gym.envs.registration import ENV_IDS, MAX_EPISODE_STEPS, register_envs

__all__ = [
    "ENV_IDS",
    "MAX_EPISODE_STEPS",
    "VLAPickConfig",
    "VLAPickEnv",
    "decode_instruction",
    "encode_instruction",
    "register_envs",
]
