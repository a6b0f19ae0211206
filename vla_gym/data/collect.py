"""Record scripted-expert demonstrations into one HDF5 file, in parallel worker processes."""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing as mp
import os
import shutil
import time
import warnings
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
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
from vla_gym.cli_checks import MAX_EPISODES
from vla_gym.fileio import FILE_MODE, TEMP_MARK, append_jsonl, atomic_path, atomic_write_text, sweep_stale_temps
from vla_gym.rundir import OutputError, check_output_file

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
#: Episodes handed to the worker processes ahead of the one being written, per worker.
PREFETCH_PER_WORKER = 2
#: The sidecar of an unfinished collection (see :func:`collect_demos`) and what it holds.
PARTIAL_MARK = ".partial"
ATTEMPTS_FILE = "attempts.jsonl"
IDENTITY_FILE = "collect.json"
LOCK_FILE = "lock"
EPISODE_FILE_PREFIX = "attempt_"
EPISODE_GROUP = "episode"


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
        if isinstance(self.episodes, bool) or not isinstance(self.episodes, (int, np.integer)) or not (
            1 <= self.episodes <= MAX_EPISODES
        ):
            raise ValueError(f"episodes must be an int from 1 to {MAX_EPISODES}, got {self.episodes!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ValueError(f"noise_std must be a finite number >= 0, got {self.noise_std}")
        if not (math.isfinite(self.valid_fraction) and 0.0 <= self.valid_fraction < 1.0):
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
def _write_episode(parent: h5py.Group, name: str, episode: dict[str, Any]) -> None:
    group = parent.create_group(name)
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


def _ordered_results(pool: Any, seeds: Iterable[int], window: int) -> Iterator[dict[str, Any]]:
    """``pool.imap(_record_episode, seeds)`` with at most ``window`` episodes handed out ahead
    (``imap`` would read all of ``seeds`` into its task queue at once)."""
    pending: deque = deque()
    for seed in seeds:
        pending.append(pool.apply_async(_record_episode, (seed,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _episode_results(config: CollectConfig, seeds: Iterable[int]) -> Iterator[dict[str, Any]]:
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
        yield from _ordered_results(pool, seeds, PREFETCH_PER_WORKER * config.workers)
    finally:
        pool.terminate()
        pool.join()


# --- the sidecar of an unfinished collection -------------------------------------------------
def partial_dir(out: str | os.PathLike) -> Path:
    """``.<name>.partial/`` beside the output ``out``: the episodes of an unfinished collection."""
    out = Path(out)
    return out.parent / f".{out.name}{PARTIAL_MARK}"


def _identity(config: CollectConfig) -> dict[str, Any]:
    """What the episodes depend on (not ``out`` nor ``workers``): a sidecar continues only
    a collection with the same identity."""
    fields = {k: v for k, v in asdict(config).items() if k not in ("out", "workers")}
    return json.loads(json.dumps({**fields, "vla_gym_version": vla_gym.__version__}))


def _lock(directory: Path) -> int | None:
    """Hold an exclusive lock on ``directory/lock`` (released when the process ends, even by
    ``kill -9``); a second collection into the same output is refused."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    fd = os.open(directory / LOCK_FILE, os.O_CREAT | os.O_RDWR, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(
            f"another process is collecting into {str(directory)!r} now; wait for it to end or stop it"
        ) from None
    return fd


def _valid_attempt(record: Any, index: int, directory: Path) -> bool:
    if not isinstance(record, dict) or record.get("attempt") != index:
        return False
    if not isinstance(record.get("kept"), bool) or not isinstance(record.get("frames"), int):
        return False
    return not record["kept"] or (isinstance(record.get("file"), str) and (directory / record["file"]).is_file())


class _Partial:
    """The sidecar of a collection under way (see :func:`collect_demos`): one HDF5 file per
    kept episode, written atomically, and one line per attempt in ``attempts.jsonl``."""

    def __init__(self, out: Path, config: CollectConfig, resume: bool) -> None:
        self.dir = partial_dir(out)
        self.lock: int | None = None
        if self.dir.is_dir():
            self.lock = _lock(self.dir)
            if not resume:
                shutil.rmtree(self.dir)
                self._unlock()
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.lock is None:
            self.lock = _lock(self.dir)
        self._claim(config)
        self.attempts = self._read_attempts()

    def _claim(self, config: CollectConfig) -> None:
        identity, path = _identity(config), self.dir / IDENTITY_FILE
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                saved = None
            if saved != identity:
                self._unlock()
                raise ValueError(
                    f"the interrupted collection in {str(self.dir)!r} was made with other settings; "
                    "pass --overwrite (resume=False) to start over"
                )
        atomic_write_text(path, json.dumps(identity, indent=2) + "\n")
        for entry in self.dir.iterdir():
            if TEMP_MARK in entry.name:  # this process holds the lock: a temporary is from a dead one
                entry.unlink()

    def _read_attempts(self) -> list[dict[str, Any]]:
        """The attempts recorded in order; a line cut by a kill and whatever follows it are dropped."""
        path, records = self.dir / ATTEMPTS_FILE, []
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if not _valid_attempt(record, len(records), self.dir):
                break
            records.append(record)
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
        files = {r["file"] for r in records if r["kept"]}
        for orphan in self.dir.glob(f"{EPISODE_FILE_PREFIX}*.h5"):
            if orphan.name not in files:
                orphan.unlink()
        return records

    def record(self, seed: int, episode: dict[str, Any], kept: bool) -> None:
        index = len(self.attempts)
        entry = {"attempt": index, "seed": seed, "kept": kept, "frames": int(episode["attrs"]["num_samples"]),
                 "file": None}
        if kept:
            entry["file"] = f"{EPISODE_FILE_PREFIX}{index}.h5"
            with atomic_path(self.dir / entry["file"]) as tmp, h5py.File(tmp, "w") as handle:
                _write_episode(handle, EPISODE_GROUP, episode)
        append_jsonl(self.dir / ATTEMPTS_FILE, entry)
        self.attempts.append(entry)

    def assemble(self, out: Path, config: CollectConfig) -> tuple[int, int]:
        """Write the demo file from the kept episodes (atomically); returns (kept, frames)."""
        kept = [r for r in self.attempts if r["kept"]][: config.episodes]
        frames = sum(r["frames"] for r in kept)
        with atomic_path(out) as tmp, h5py.File(tmp, "w") as handle:
            data = handle.create_group("data")
            for index, record in enumerate(kept):
                with h5py.File(self.dir / record["file"], "r") as source:
                    source.copy(source[EPISODE_GROUP], data, name=demo_name(index))
            _write_metadata(handle, config, len(kept), frames, len(self.attempts))
        return len(kept), frames

    def _unlock(self) -> None:
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None

    def release(self, keep: bool) -> None:
        """Unlock; remove the sidecar unless ``keep``."""
        self._unlock()
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def claim_collect_output(out: str | os.PathLike, option: str, resume: bool, overwrite: bool) -> Path:
    """The ``vla-gym collect`` guard: ``out`` is a writable file path, and an earlier
    collection there (finished, or interrupted: its sidecar) needs ``--overwrite`` (or, when
    interrupted, ``--resume``)."""
    out = check_output_file(out, option)
    if resume and overwrite:
        raise OutputError("--resume and --overwrite exclude each other: --resume continues an interrupted "
                          f"collection into {str(out)!r}, --overwrite starts it over")
    sweep_stale_temps(out)
    partial = partial_dir(out)
    if partial.is_dir() and not (resume or overwrite):
        raise OutputError(
            f"{option} {str(out)!r}: an interrupted collection into it is in {str(partial)!r}; pass --resume "
            "to continue it or --overwrite to start over"
        )
    if out.exists() and not partial.is_dir() and not overwrite:
        raise OutputError(
            f"{option} {str(out)!r} already exists (a finished collection; --resume only continues an "
            f"interrupted one); pass --overwrite to replace it, or choose another {option}"
        )
    return out


def collect_demos(
    config: CollectConfig, progress: bool = True, resume: bool = False, keep_partial: bool = False
) -> CollectResult:
    """Record ``config.episodes`` expert episodes into ``config.out``; see :mod:`vla_gym.data.dataset`.

    Episodes are kept in a sidecar directory beside the output (:func:`partial_dir`) as they
    finish; once all are there, the demo file is written under a temporary name and renamed,
    so ``config.out`` holds either the previous file or a complete new one. With
    ``resume``, a sidecar left by an interrupted run of the same config is continued
    (else it is discarded); with ``keep_partial`` an interruption or error keeps the sidecar
    for that (else it is removed). A ``kill -9`` always leaves it. Episode ``k`` kept is the
    same whatever the number of workers and interruptions.
    """
    out = Path(config.out)
    sweep_stale_temps(out)
    partial = _Partial(out, config, resume)
    try:
        start = time.perf_counter()
        _record_missing(partial, config, progress)
        kept, frames = partial.assemble(out, config)
    except BaseException:
        partial.release(keep=keep_partial)
        raise
    partial.release(keep=False)
    attempts = len(partial.attempts)
    return CollectResult(str(out), kept, frames, attempts, attempts - kept, time.perf_counter() - start)


def _record_missing(partial: _Partial, config: CollectConfig, progress: bool) -> None:
    """Run the expert on the seeds after the recorded attempts until enough episodes are kept."""
    from tqdm.auto import tqdm

    extra = 0 if config.keep_failures else max(MIN_EXTRA_ATTEMPTS, math.ceil(MAX_EXTRA_ATTEMPT_FRACTION * config.episodes))
    kept = sum(r["kept"] for r in partial.attempts)
    frames, start = 0, time.perf_counter()
    seeds = range(config.seed + len(partial.attempts), config.seed + config.episodes + extra)
    bar = tqdm(total=config.episodes, initial=kept, unit="ep", desc="collect", disable=not progress)
    try:
        with contextlib.closing(_episode_results(config, seeds)) as results:
            for seed, episode in zip(seeds, results) if kept < config.episodes else ():
                keep = bool(episode["attrs"]["success"] or config.keep_failures)
                partial.record(seed, episode, keep)
                if keep:
                    kept += 1
                    frames += episode["attrs"]["num_samples"]
                    bar.update(1)
                    bar.set_postfix(steps_per_s=f"{frames / (time.perf_counter() - start):.0f}", refresh=False)
                if kept == config.episodes:
                    break
    finally:
        bar.close()
    if kept < config.episodes:
        raise RuntimeError(
            f"the expert succeeded in only {kept} of {len(partial.attempts)} episodes; "
            f"{config.episodes} were asked for (use keep_failures to keep failed ones)"
        )


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
