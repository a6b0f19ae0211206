"""The demo file's format: names, version, env description (light: no torch, so that
collection workers start fast)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from vla_gym.envs.tabletop_env import TabletopConfig
from vla_gym.envs.registration import ENV_IDS
from vla_gym.envs.spaces import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

FORMAT_VERSION = 1
OBS_KEYS = ("rgb", "depth", "proprio", "instruction")
#: Privileged simulator state per step (not observations; for auxiliary losses and analysis):
#: ``states/<role>_positions`` for each of the episode's roles; every episode has a target.
POSITIONS_SUFFIX = "_positions"
STATE_KEYS = ("target_positions",)
#: ``states/<key>`` of the current subgoal (:meth:`Task.goal_points`), float32 (T, 3), m: the
#: object to move now and where its centre must go. Optional: files from before them lack
#: them (readers fall back on ``target_positions`` and no destination).
GOAL_STATE_KEYS = ("subgoal_object_positions", "subgoal_destination_positions")
EPISODE_KEYS = ("actions", "rewards", "dones")
EPISODE_ATTRS = ("num_samples", "instruction", "target_colour", "target_shape", "seed", "success", "camera")
#: Episode attributes a reader needs; ``camera``, ``task``, ``paraphrases`` and ``roles`` are
#: optional (files from before them are read with their defaults).
REQUIRED_EPISODE_ATTRS = ("num_samples", "instruction", "target_colour", "target_shape", "seed", "success")
#: Keys of the ``env_args`` attribute.
ENV_ARGS_KEYS = ("env_name", "env_kwargs", "env_config")
#: The index of a shard directory (``vla-gym collect --shards``): the demo-file layout, each
#: ``data/demo_<i>`` an HDF5 external link into a shard file beside it; ``data.attrs["shards"]``
#: (JSON) lists the shard files and their sizes in bytes.
SHARD_INDEX_FILE = "index.h5"
#: The task an episode of a file without a ``task`` attribute ran (files from before the suite).
LEGACY_TASK = "pick"


def role_positions_key(role: str) -> str:
    """Name of the per-step position series (float32 (T, 3), m) of ``role``'s body."""
    return f"{role}{POSITIONS_SUFFIX}"


class DatasetError(ValueError):
    """A demonstration file that is missing, corrupt, or made for another env."""


def env_config_dict(env_id: str, env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full, JSON-normalised env config that ``gym.make(env_id, **env_kwargs)`` builds."""
    if env_id not in ENV_IDS:
        raise DatasetError(f"env id {env_id!r} is not a vla_gym env; choose one of {sorted(ENV_IDS)}")
    kwargs = {**ENV_IDS[env_id], **(env_kwargs or {})}
    kwargs.pop("render_mode", None)
    config = dataclasses.asdict(TabletopConfig.from_kwargs(**kwargs))
    return json.loads(json.dumps(config))


def validate_env_args(value: Any) -> dict[str, Any]:
    """``value`` if it is a well-formed ``env_args`` of a vla_gym env, else ``ValueError``
    with a message fragment that says what is wrong (callers prefix the file and key).

    Checked: a JSON object with ``env_name`` (a registered vla_gym id), ``env_kwargs`` (an
    object the env accepts) and ``env_config`` (an object whose ``image_size`` is an int
    within the env's bounds and agrees with the kwargs). Sizes are checked here because
    networks and buffers are allocated from them.
    """
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object with {list(ENV_ARGS_KEYS)}, got {type(value).__name__}")
    missing = [key for key in ENV_ARGS_KEYS if key not in value]
    if missing:
        raise ValueError(f"lacks {missing}")
    name, kwargs, config = (value[key] for key in ENV_ARGS_KEYS)
    if not isinstance(name, str) or name not in ENV_IDS:
        raise ValueError(f"names env {name!r}, which is not a vla_gym env (known: {sorted(ENV_IDS)})")
    for key, item in (("env_kwargs", kwargs), ("env_config", config)):
        if not isinstance(item, dict):
            raise ValueError(f"{key} must be a JSON object, got {type(item).__name__}: {item!r}")
    size = config.get("image_size")
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ValueError(f"env_config image_size {size!r} must be an int from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}")
    try:
        expected = env_config_dict(name, kwargs)
    except (ValueError, TypeError) as err:
        raise ValueError(f"env_kwargs {kwargs!r} are not valid for {name}: {err}") from None
    if expected["image_size"] != size:
        raise ValueError(
            f"env_config image_size {size} disagrees with env_kwargs {kwargs!r} ({expected['image_size']})"
        )
    return value


def env_args(env_id: str, env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``env_args`` attribute: how to rebuild the env the demos came from."""
    return {
        "env_name": env_id,
        "env_kwargs": dict(env_kwargs or {}),
        "env_config": env_config_dict(env_id, env_kwargs),
    }


#: Env kwargs whose "test" side is held out of training for the benchmark.
HELD_OUT_SPLIT_KEYS = ("instruction_split", "object_split")


def held_out_splits(env_config: dict[str, Any]) -> list[str]:
    """``"key='test'"`` for each held-out split an env config uses, and the execution
    shifts it turns on (empty on the train side)."""
    held_out = [f"{key}={env_config[key]!r}" for key in HELD_OUT_SPLIT_KEYS if env_config.get(key, "train") != "train"]
    shifts = env_config.get("execution_shift") or []
    return held_out + ([f"execution_shift={list(shifts)!r}"] if shifts else [])


def demo_name(index: int) -> str:
    return f"demo_{index}"


def episode_task(demo: Any) -> str:
    """The task an episode (an ``h5py.Group`` of a demo file or shard) ran
    (:data:`LEGACY_TASK` for files from before the suite)."""
    return str(demo.attrs.get("task", LEGACY_TASK))
