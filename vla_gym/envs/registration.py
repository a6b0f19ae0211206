"""Env ids and their registration with Gymnasium (done on ``import vla_gym``).

Every id is :class:`vla_gym.envs.tabletop_env.VLATabletopEnv` with its task and reward
fixed; :data:`ENV_IDS` is generated from one list of (id stem, task), a sparse and a
dense id each, plus the multi-task ids. Tests are parametrized over it.
"""

from __future__ import annotations

import gymnasium as gym

from vla_gym.envs.tasks import TASKS

ENTRY_POINT = "vla_gym.envs.tabletop_env:VLATabletopEnv"
DEFAULT_ENV_ID = "VLAPick-v0"
MULTI_TASK_ENV_ID = "VLAMultiTask-v0"

#: (id stem, task): ``<stem>-v0`` (sparse reward) and ``<stem>Dense-v0`` (dense) for each.
TASK_ENVS: tuple[tuple[str, str], ...] = (
    ("VLAPick", "pick"),
    ("VLAPlace", "place"),
    ("VLAPush", "push"),
    ("VLAStack", "stack"),
    ("VLAPickSpatial", "spatial_pick"),
    ("VLARearrange", "rearrange"),
)
MULTI_TASK_STEM = "VLAMultiTask"


def _ids() -> tuple[dict[str, dict], dict[str, int]]:
    kwargs: dict[str, dict] = {}
    limits: dict[str, int] = {}
    stems = [(stem, task, TASKS[task].max_episode_steps) for stem, task in TASK_ENVS]
    stems.append((MULTI_TASK_STEM, "all", max(TASKS[task].max_episode_steps for _, task in TASK_ENVS)))
    for stem, task, limit in stems:
        for suffix, reward in (("", "sparse"), ("Dense", "dense")):
            env_id = f"{stem}{suffix}-v0"
            kwargs[env_id] = {"tasks": task, "reward_type": reward}
            limits[env_id] = limit
    return kwargs, limits


#: Every registered id and the kwargs it fixes, and its time limit (steps).
ENV_IDS, MAX_EPISODE_STEPS = _ids()
#: Task name -> its sparse-reward env id.
TASK_ENV_IDS: dict[str, str] = {task: f"{stem}-v0" for stem, task in TASK_ENVS}


def register_envs() -> None:
    for env_id, kwargs in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=ENTRY_POINT, max_episode_steps=MAX_EPISODE_STEPS[env_id], kwargs=kwargs)
