"""Record scripted-expert demonstrations into one HDF5 file, in parallel worker processes."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import vla_gym
from vla_gym.envs.registration import DEFAULT_ENV_ID
from vla_gym.data.format import (
    FORMAT_VERSION,
    OBS_KEYS,
    demo_name,
    env_args,
    held_out_splits,
    POSITIONS_SUFFIX,
    role_positions_key,
)
from vla_gym.fileio import atomic_path

#: Second entry of the expert-noise seed ``[episode_seed, NOISE_STREAM]``, so the noise
#: stream differs from the env's own stream seeded by ``episode_seed``.
NOISE_STREAM = 1
#: Second entry of the paraphrase seed ``[episode_seed, PARAPHRASE_STREAM]``.
PARAPHRASE_STREAM = 2
#: Train-split phrasings of each episode's goal stored beside its instruction.
NUM_PARAPHRASES = 8
DEFAULT_NOISE_STD = 0.3
#: Images are stored with HDF5's shuffle + gzip (deflate) filters at this level: byte
#: shuffling squeezes float32 depth well, and level 1 keeps the workers fast.
IMAGE_COMPRESSION_LEVEL = 1
#: Extra seeds tried, beyond ``episodes``, before a collection that drops failures gives up.
MAX_EXTRA_ATTEMPT_FRACTION = 0.5
MIN_EXTRA_ATTEMPTS = 10


@dataclass
class CollectConfig:
    """What ``vla-gym collect`` records.

    Args:
        out: path of the HDF5 file to write (replaced atomically at the end).
        env_id: a registered vla_gym env id.
        episodes: episodes to keep.
        workers: worker processes (``<= 1`` collects in this process).
        seed: episode ``i`` tried is reset with seed ``seed + i``.
        noise_std: std of the expert's action noise (in action units, fading near sub-goals).
        keep_failures: also keep episodes the expert failed (with ``success=False``).
        valid_fraction: share of the kept episodes listed in ``mask/valid``.
        env_kwargs: extra kwargs for ``gym.make``.
    """

    out: str
    env_id: str = DEFAULT_ENV_ID
    episodes: int = 1000
    workers: int = 2
    seed: int = 0
    noise_std: float = DEFAULT_NOISE_STD
    keep_failures: bool = False
    valid_fraction: float = 0.1
    env_kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must lie in [0, 1), got {self.valid_fraction}")
        held_out = held_out_splits(env_args(self.env_id, self.env_kwargs)["env_config"])  # bad kwargs fail here
        if held_out:
            warnings.warn(
                f"collecting demos with {', '.join(held_out)}: the benchmark's held-out splits would then be "
                "seen in training (the default is 'train')",
                stacklevel=3,
            )


@dataclass
class CollectResult:
    path: str
    episodes: int
    frames: int
    attempts: int
    failures_dropped: int
    seconds: float

    @property
    def steps_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        return (
            f"{self.path}: {self.episodes} episodes, {self.frames} frames from {self.attempts} attempts "
            f"({self.failures_dropped} failures dropped) in {self.seconds:.1f} s = "
            f"{self.steps_per_second:.0f} env steps/s"
        )


# --- worker side ------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(env_id: str, env_kwargs: dict[str, Any] | None, noise_std: float) -> None:
    import gymnasium as gym

    _WORKER["env"] = gym.make(env_id, **(env_kwargs or {}))
    _WORKER["noise_std"] = noise_std


def _record_episode(seed: int) -> dict[str, Any]:
    """Run the expert for one episode from ``reset(seed=seed)``; arrays stacked over steps."""
    from vla_gym.envs.experts import ScriptedExpert

    env = _WORKER["env"]
    policy = ScriptedExpert(env, noise_std=_WORKER["noise_std"], seed=[seed, NOISE_STREAM])
    obs, info = env.reset(seed=seed)
    roles = sorted(info["roles"])
    steps: dict[str, list] = {k: [] for k in (*OBS_KEYS, "actions", "executed_actions", "rewards", "dones")}
    positions: dict[str, list] = {role: [] for role in roles}
    done = False
    while not done:
        clean, noisy = policy.act_noisy()
        for key in OBS_KEYS:
            steps[key].append(obs[key])
        for role in roles:
            positions[role].append(env.unwrapped.role_position(role).astype(np.float32))
        obs, reward, terminated, truncated, info = env.step(noisy)
        done = terminated or truncated
        steps["actions"].append(clean)
        steps["executed_actions"].append(noisy)
        steps["rewards"].append(reward)
        steps["dones"].append(done)
    arrays = {k: np.stack(v) for k, v in steps.items() if k in (*OBS_KEYS, "actions", "executed_actions")}
    arrays.update({role_positions_key(role): np.stack(v) for role, v in positions.items()})
    arrays["rewards"] = np.asarray(steps["rewards"], np.float32)
    arrays["dones"] = np.asarray(steps["dones"], np.uint8)
    # Images are compressed here, in the worker, one HDF5 chunk per frame; the writer
    # stores the chunks as they are (so compression runs in parallel, not in the writer).
    images = {k: arrays.pop(k) for k in list(arrays) if arrays[k].ndim >= 3}
    return {
        "arrays": arrays,
        "images": {k: (v.shape, v.dtype.str, [compress_chunk(frame) for frame in v]) for k, v in images.items()},
        "attrs": {
            "num_samples": len(arrays["rewards"]),
            "task": info["task"],
            "instruction": info["instruction"],
            "paraphrases": json.dumps(_paraphrases(env.unwrapped, seed)),
            "roles": json.dumps(info["roles"]),
            "target_colour": info["target"]["colour"],
            "target_shape": info["target"]["shape"],
            "seed": seed,
            "success": bool(info["is_success"]),
            "subgoals_done": int(info["subgoals_done"]),
            "num_subgoals": int(info["num_subgoals"]),
            "camera": json.dumps(env.unwrapped.agent_camera.to_dict()),
        },
    }


def _paraphrases(env: Any, seed: int) -> list[str]:
    """:data:`NUM_PARAPHRASES` other train-split phrasings of the episode's goal (for
    instruction augmentation in training), from their own random stream."""
    rng = np.random.default_rng([seed, PARAPHRASE_STREAM])
    task = env.task
    return [task.sample_instruction(rng, task.episode, "train") for _ in range(NUM_PARAPHRASES)]


def compress_chunk(frame: np.ndarray) -> bytes:
    """One frame through HDF5's shuffle then deflate filters, as ``write_direct_chunk`` wants it."""
    raw = np.ascontiguousarray(frame)
    if raw.dtype.itemsize > 1:  # shuffle: all first bytes of each element, then all second bytes, ...
        data = raw.view(np.uint8).reshape(-1, raw.dtype.itemsize).T.tobytes()
    else:
        data = raw.tobytes()
    return zlib.compress(data, IMAGE_COMPRESSION_LEVEL)


def _close_worker() -> None:
    env = _WORKER.pop("env", None)
    if env is not None:
        env.close()


# --- writer side ------------------------------------------------------------------------
def _write_episode(data: h5py.Group, index: int, episode: dict[str, Any]) -> None:
    group = data.create_group(demo_name(index))
    for key, value in episode["attrs"].items():
        group.attrs[key] = value
    for key, value in episode["arrays"].items():
        group.create_dataset(_dataset_name(key), data=value)
    for key, (shape, dtype, chunks) in episode["images"].items():
        # One chunk per frame, so lazy random access decompresses one frame only.
        dataset = group.create_dataset(
            _dataset_name(key), shape=shape, dtype=np.dtype(dtype),
            chunks=(1, *shape[1:]), compression="gzip", compression_opts=IMAGE_COMPRESSION_LEVEL, shuffle=True,
        )
        origin = (0,) * (len(shape) - 1)
        for t, chunk in enumerate(chunks):
            dataset.id.write_direct_chunk((t, *origin), chunk)


def _dataset_name(key: str) -> str:
    if key in OBS_KEYS:
        return f"obs/{key}"
    return f"states/{key}" if key.endswith(POSITIONS_SUFFIX) else key


def _episode_results(config: CollectConfig, seeds: list[int]) -> Iterator[dict[str, Any]]:
    if config.workers <= 1:
        _init_worker(config.env_id, config.env_kwargs, config.noise_std)
        try:
            for seed in seeds:
                yield _record_episode(seed)
        finally:
            _close_worker()
        return
    context = mp.get_context("spawn")  # no PyBullet client or torch threads inherited by a fork
    pool = context.Pool(
        config.workers, initializer=_init_worker, initargs=(config.env_id, config.env_kwargs, config.noise_std)
    )
    try:
        yield from pool.imap(_record_episode, seeds, chunksize=1)
    finally:
        pool.terminate()
        pool.join()


def collect_demos(config: CollectConfig, progress: bool = True) -> CollectResult:
    """Record ``config.episodes`` expert episodes into ``config.out``; see :mod:`vla_gym.data.dataset`.

    The file is written under a temporary name in the same directory and renamed when
    complete, so an interruption leaves either the previous file or a complete new one.
    Episode ``k`` kept is the same whatever the number of workers.
    """
    from tqdm.auto import tqdm

    out = Path(config.out)
    extra = 0 if config.keep_failures else max(MIN_EXTRA_ATTEMPTS, math.ceil(MAX_EXTRA_ATTEMPT_FRACTION * config.episodes))
    seeds = list(range(config.seed, config.seed + config.episodes + extra))
    start = time.perf_counter()
    kept = attempts = frames = 0
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as handle:
        data = handle.create_group("data")
        bar = tqdm(total=config.episodes, unit="ep", desc="collect", disable=not progress)
        for episode in _episode_results(config, seeds):
            attempts += 1
            if episode["attrs"]["success"] or config.keep_failures:
                _write_episode(data, kept, episode)
                kept += 1
                frames += episode["attrs"]["num_samples"]
                bar.update(1)
                bar.set_postfix(steps_per_s=f"{frames / (time.perf_counter() - start):.0f}", refresh=False)
            if kept == config.episodes:
                break
        bar.close()
        if kept < config.episodes:
            raise RuntimeError(
                f"the expert succeeded in only {kept} of {attempts} episodes; "
                f"{config.episodes} were asked for (use keep_failures to keep failed ones)"
            )
        seconds = time.perf_counter() - start
        _write_metadata(handle, config, kept, frames, attempts)
    return CollectResult(str(out), kept, frames, attempts, attempts - kept, seconds)


def _write_metadata(handle: h5py.File, config: CollectConfig, kept: int, frames: int, attempts: int) -> None:
    data = handle["data"]
    data.attrs["format_version"] = FORMAT_VERSION
    data.attrs["env_args"] = json.dumps(env_args(config.env_id, config.env_kwargs))
    data.attrs["total"] = frames
    collector = {k: v for k, v in asdict(config).items() if k not in ("out", "workers", "env_kwargs", "env_id")}
    collector.update(policy="ScriptedExpert", attempts=attempts, vla_gym_version=vla_gym.__version__)
    data.attrs["collector"] = json.dumps(collector)
    names = [demo_name(i) for i in range(kept)]
    order = np.random.default_rng(config.seed).permutation(kept)
    n_valid = int(round(config.valid_fraction * kept))
    if config.valid_fraction > 0 and kept > 1:
        n_valid = min(max(n_valid, 1), kept - 1)
    valid = sorted(order[:n_valid].tolist())
    train = sorted(order[n_valid:].tolist())
    mask = handle.create_group("mask")
    mask.create_dataset("train", data=np.array([names[i] for i in train], dtype="S"))
    mask.create_dataset("valid", data=np.array([names[i] for i in valid], dtype="S"))
