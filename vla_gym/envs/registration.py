"""Env ids and their registration with Gymnasium (done on ``import vla_gym``)."""

from __future__ import annotations

import gymnasium as gym

MAX_EPISODE_STEPS = 50
ENTRY_POINT = "vla_gym.envs.pick_env:VLAPickEnv"

#: Every registered id and the kwargs it fixes. Tests are parametrized over this.
ENV_IDS: dict[str, dict] = {
    "VLAPick-v0": {"reward_type": "sparse"},
    "VLAPickDense-v0": {"reward_type": "dense"},
}


def register_envs() -> None:
    for env_id, kwargs in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=ENTRY_POINT, max_episode_steps=MAX_EPISODE_STEPS, kwargs=kwargs)
