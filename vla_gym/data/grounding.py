"""Grounding frames: scenes with an instruction and where the object it names is, no expert.

BC learns two things from its demos: *which* object the instruction names and *where* it is
(the trunk's auxiliary losses, :mod:`vla_gym.agents.privileged`), and *what to do* (the
actions). The first needs many scenes, the second few: measured on ``VLAPick-v0``, the
grounding supervision of 15 000 extra scenes lifted BC from 18 % to 62 % with 30 demos and
from 73 % to 83 % with 100 (benchmarks/RESULTS.md, "Grounding frames"). A scene costs one
reset and a few arm moves, against a whole expert episode for a demo, and needs no expert:
only the simulator's privileged state, the same as the demo file's
``states/subgoal_object_positions``.

A grounding file (``vla-gym collect-grounding``) holds, for frame ``i`` (reset with seed
``seed + i``, on a multi-task env with task ``i % len(tasks)``, then 0 to ``max_moves``
random arm moves with the gripper open):

    attrs       format ("vla_gym.grounding"), format_version, env_args (JSON: as a demo
                file's), seed, frames, max_moves, created
    rgb         uint8   (N, H, W, 3)
    depth       float32 (N, H, W, 1)  metres
    proprio     float32 (N, 8)
    instruction uint8   (N, 128)      the episode's instruction, UTF-8, zero-padded
    target_offset float32 (N, 3)      the named object's centre minus the end effector (m)
    target_uv   float32 (N, 2)        that centre in the image, x and y in [-1, 1] over
                                      the pixel centres (the episode's camera)
    tasks       uint8   (N,)          index into attrs["tasks"] (JSON list of task names)

BC reads it with ``BCConfig(grounding_data=...)``: each training step adds the two
auxiliary losses on a batch of these frames to the demos' loss (no action loss: the frames
have no action).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from vla_gym.envs.registration import DEFAULT_ENV_ID
from vla_gym.fileio import atomic_path
from vla_gym.envs.language import MAX_INSTRUCTION_BYTES
from vla_gym.envs.spaces import PROPRIO_DIM

FORMAT = "vla_gym.grounding"
FORMAT_VERSION = 1
#: Datasets of a grounding file, their dtypes and per-frame shapes (``None``: the image side).
FRAME_KEYS: dict[str, tuple[np.dtype, tuple[int | None, ...]]] = {
    "rgb": (np.dtype(np.uint8), (None, None, 3)),
    "depth": (np.dtype(np.float32), (None, None, 1)),
    "proprio": (np.dtype(np.float32), (PROPRIO_DIM,)),
    "instruction": (np.dtype(np.uint8), (MAX_INSTRUCTION_BYTES,)),
    "target_offset": (np.dtype(np.float32), (3,)),
    "target_uv": (np.dtype(np.float32), (2,)),
    "tasks": (np.dtype(np.uint8), ()),
}
OBS_FRAME_KEYS = ("rgb", "depth", "proprio", "instruction")
DEFAULT_FRAMES = 15_000
#: First reset seed of a grounding file: apart from demos (0+), reports (100 000+), PPO's
#: evaluations (300 000+) and BC's rollout checks (10 000 000+).
DEFAULT_SEED = 5_000_000
DEFAULT_MAX_MOVES = 3
MAX_MOVES_LIMIT = 50
MAX_FRAMES = 10_000_000
#: The gripper action that keeps it open (the last action dimension; > 0 closes).
GRIPPER_OPEN = -1.0
#: Frames collected per worker task (one reset each).
FRAMES_PER_CHUNK = 50


class GroundingDataError(ValueError):
    """A grounding file that cannot be read as one, with what is wrong."""


@dataclass
class GroundingConfig:
    """A grounding-frame collection (``vla-gym collect-grounding``).

    Args:
        out: HDF5 file to write (replaced atomically at the end).
        env_id: a registered vla_gym env id (its tasks name the objects).
        frames: scenes to record, one frame each.
        seed: frame ``i`` comes from ``reset(seed=seed + i)``; pick seeds that no demo,
            evaluation or benchmark uses (the default block starts at 5 000 000).
        max_moves: random arm moves (0 to this many, drawn per frame) after the reset, so the
            end effector is not always at its start pose.
        workers: worker processes (``<= 1``: in this process).
        env_kwargs: extra kwargs for ``gym.make`` (e.g. ``camera_jitter``).
    """

    out: str
    env_id: str = DEFAULT_ENV_ID
    frames: int = DEFAULT_FRAMES
    seed: int = DEFAULT_SEED
    max_moves: int = DEFAULT_MAX_MOVES
    workers: int = 2
    env_kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        from vla_gym.data.format import env_args

        for name, low, high in (("frames", 1, MAX_FRAMES), ("max_moves", 0, MAX_MOVES_LIMIT), ("workers", 0, 256),
                                ("seed", 0, 2**31 - 1 - MAX_FRAMES)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
                raise ValueError(f"{name} must be an int from {low} to {high}, got {value!r}")
        self.env_args = env_args(self.env_id, self.env_kwargs)  # bad env ids and kwargs fail here


_WORKER: dict[str, Any] = {}


def _init_worker(env_id: str, env_kwargs: dict[str, Any] | None) -> None:
    import gymnasium as gym

    _WORKER["env"] = gym.make(env_id, **(env_kwargs or {}))


def _close_worker() -> None:
    env = _WORKER.pop("env", None)
    if env is not None:
        env.close()


def _record_chunk(item: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
    """Frames ``first`` to ``first + count - 1`` (see the module docstring); on a multi-task
    env frame i is of task ``i % len(tasks)``, so every task gets its share."""
    from vla_gym.data.dataset import image_coordinates

    seed0, first, count, max_moves = item
    env = _WORKER["env"]
    base = env.unwrapped
    tasks = list(base.config.tasks)
    out: dict[str, list] = {key: [] for key in FRAME_KEYS}
    for index in range(first, first + count):
        seed = seed0 + index
        obs, info = env.reset(seed=seed, options={"task": tasks[index % len(tasks)]} if len(tasks) > 1 else None)
        rng = np.random.default_rng([seed, 1])  # the arm moves: a stream of their own
        for _ in range(int(rng.integers(0, max_moves + 1))):
            action = rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32)
            action[-1] = GRIPPER_OPEN
            obs, *_ = env.step(action)
        goal = base.goal_points()[0]
        for key in OBS_FRAME_KEYS:
            out[key].append(obs[key])
        out["target_offset"].append(goal - obs["proprio"][:3])
        out["target_uv"].append(image_coordinates(goal[None], obs["rgb"].shape[0], base.agent_camera)[0])
        out["tasks"].append(tasks.index(info["task"]))
    return {key: np.asarray(np.stack(values), dtype=FRAME_KEYS[key][0]) for key, values in out.items()}


def _chunks(config: GroundingConfig) -> Iterator[tuple[int, int, int, int]]:
    for start in range(0, config.frames, FRAMES_PER_CHUNK):
        yield config.seed, start, min(FRAMES_PER_CHUNK, config.frames - start), config.max_moves


def collect_grounding_frames(config: GroundingConfig, progress: bool = False) -> str:
    """Record ``config.frames`` grounding frames into ``config.out`` (written under a
    temporary name, then renamed: an interrupted run leaves no half file). Returns a summary line."""
    import time

    from vla_gym.backends import make_backend

    start = time.perf_counter()
    out = Path(config.out)
    backend = make_backend("local", config.workers)
    chunks = backend.imap(_record_chunk, _chunks(config), setup=_init_worker,
                          setup_args=(config.env_id, config.env_kwargs), teardown=_close_worker)
    bar = _progress(config.frames, progress)
    try:
        with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
            written = 0
            for chunk in chunks:
                if written == 0:
                    _create_datasets(f, config, chunk)
                n = len(chunk["rgb"])
                for key, values in chunk.items():
                    f[key][written:written + n] = values
                written += n
                bar.update(n)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    return f"{out}: {config.frames} grounding frames of {config.env_id} in {seconds:.1f} s"


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", disable=not enabled)


def _create_datasets(f: h5py.File, config: GroundingConfig, first: dict[str, np.ndarray]) -> None:
    f.attrs.update({
        "format": FORMAT, "format_version": FORMAT_VERSION, "env_args": json.dumps(config.env_args),
        "seed": config.seed, "frames": config.frames, "max_moves": config.max_moves,
        "tasks": json.dumps(list(config.env_args["env_config"]["tasks"])),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    for key, values in first.items():
        chunks = (min(FRAMES_PER_CHUNK, config.frames), *values.shape[1:])
        image = key in ("rgb", "depth")
        f.create_dataset(key, shape=(config.frames, *values.shape[1:]), dtype=values.dtype, chunks=chunks,
                         compression="gzip" if image else None, compression_opts=1 if image else None)


@dataclass
class GroundingFrames:
    """A grounding file read into memory, checked: arrays keyed as :data:`FRAME_KEYS`."""

    path: str
    arrays: dict[str, np.ndarray]
    env_args: dict[str, Any]
    tasks: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.arrays["rgb"])

    @property
    def image_size(self) -> int:
        return int(self.arrays["rgb"].shape[1])


def read_grounding_frames(path: str | os.PathLike) -> GroundingFrames:
    """Read and check a grounding file; :class:`GroundingDataError` says what is wrong."""
    path = str(path)
    if not Path(path).is_file():
        raise GroundingDataError(f"grounding file {path!r} does not exist (make one with `vla-gym collect-grounding`)")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise GroundingDataError(
                    f"{path!r} is not a grounding file (attrs['format'] is {f.attrs.get('format')!r}, not {FORMAT!r}); "
                    "make one with `vla-gym collect-grounding`"
                )
            version = int(f.attrs.get("format_version", -1))
            if version != FORMAT_VERSION:
                raise GroundingDataError(f"{path!r}: format_version {version} is not {FORMAT_VERSION}, the one this vla_gym reads")
            arrays = {key: _read_dataset(f, key, path) for key in FRAME_KEYS}
            env_args = json.loads(f.attrs["env_args"])
            tasks = tuple(json.loads(f.attrs["tasks"]))
    except OSError as err:
        raise GroundingDataError(f"grounding file {path!r} cannot be read as HDF5: {err}") from None
    _check_frames(arrays, tasks, path)
    return GroundingFrames(path, arrays, env_args, tasks)


def _read_dataset(f: h5py.File, key: str, path: str) -> np.ndarray:
    dtype, shape = FRAME_KEYS[key]
    if key not in f or not isinstance(f[key], h5py.Dataset):
        raise GroundingDataError(f"{path!r} lacks the dataset {key!r}; a grounding file has {list(FRAME_KEYS)}")
    data = f[key]
    if data.dtype != dtype or data.ndim != 1 + len(shape):
        raise GroundingDataError(f"{path!r}: {key!r} is {data.dtype} {data.shape}; expected {dtype} (N, {shape})")
    return data[()]


def _check_frames(arrays: dict[str, np.ndarray], tasks: tuple[str, ...], path: str) -> None:
    counts = {key: len(value) for key, value in arrays.items()}
    if len(set(counts.values())) != 1 or not counts["rgb"]:
        raise GroundingDataError(f"{path!r}: the datasets must hold the same number (>= 1) of frames, got {counts}")
    size = arrays["rgb"].shape[1]  # images are square: every image shape is checked against it
    for key, (_, shape) in FRAME_KEYS.items():
        wanted = tuple(size if side is None else side for side in shape)
        if arrays[key].shape[1:] != wanted:
            raise GroundingDataError(f"{path!r}: {key!r} frames are shaped {arrays[key].shape[1:]}, expected {wanted}")
    for key in ("depth", "proprio", "target_offset", "target_uv"):
        if not np.isfinite(arrays[key]).all():
            raise GroundingDataError(f"{path!r}: {key!r} holds NaN or infinite values")
    if int(arrays["tasks"].max()) >= len(tasks):
        raise GroundingDataError(f"{path!r}: 'tasks' indexes beyond attrs['tasks'] ({len(tasks)} tasks)")
