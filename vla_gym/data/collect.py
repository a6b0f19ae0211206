"""Record scripted-expert demonstrations into one HDF5 file or a directory of shards, on a
backend of parallel workers (:mod:`vla_gym.backends`: processes here, or Ray)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

import vla_gym
from vla_gym.envs.registration import DEFAULT_ENV_ID
from vla_gym.data.format import (
    FORMAT_VERSION,
    OBS_KEYS,
    demo_name,
    env_args,
    episode_task,
    held_out_splits,
    POSITIONS_SUFFIX,
    SHARD_INDEX_FILE,
    GOAL_STATE_KEYS,
    role_positions_key,
)
from vla_gym.backends import Backend, check_backend_choice, make_backend
from vla_gym.cli_checks import MAX_EPISODES
from vla_gym.fileio import FILE_MODE, TEMP_MARK, append_jsonl, atomic_path, atomic_write_text, sweep_stale_temps
from vla_gym.rundir import OutputError, check_output_dir, check_output_file

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
#: Episodes kept when neither ``episodes`` nor ``episodes_per_task`` is given.
DEFAULT_EPISODES = 1000
#: Extra seeds tried, beyond ``episodes`` (per task in a balanced collection), before a
#: collection that drops failures gives up.
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
#: Shard files (``shard_<k>.h5``) hold their kept episodes under this group.
SHARD_PREFIX = "shard_"
SHARD_GROUP = "episodes"
#: The index of a finished shard directory: the demo-file layout, episodes linked into the shards.
INDEX_FILE = SHARD_INDEX_FILE
#: Attempts per shard of a ``--shards`` directory (a kill loses at most the unwritten shard).
DEFAULT_SHARD_EPISODES = 50
#: Config fields that do not change the episodes (where they go, who records them).
NOT_IDENTITY = ("out", "workers", "backend", "ray_address", "shards", "shard_episodes")


@dataclass
class CollectConfig:
    """What ``vla-gym collect`` records.

    Args:
        out: path of the HDF5 file to write (replaced atomically at the end).
        env_id: a registered vla_gym env id.
        episodes: episodes to keep, each of the task the env draws (default
            :data:`DEFAULT_EPISODES`; excludes ``episodes_per_task``).
        workers: worker processes (``<= 1`` collects in this process).
        seed: episode ``i`` tried is reset with seed ``seed + i``.
        noise_std: std of the expert's action noise (in action units, fading near sub-goals).
        keep_failures: also keep episodes the expert failed (with ``success=False``).
        valid_fraction: share of the kept episodes listed in ``mask/valid``.
        env_kwargs: extra kwargs for ``gym.make``.
        backend: ``"local"`` (worker processes here) or ``"ray"`` (see :mod:`vla_gym.backends`).
        ray_address: with ``backend="ray"``: ``None`` starts Ray here, ``"auto"`` or
            ``"HOST:PORT"`` joins a running cluster.
        shards: write ``out`` as a directory of shards plus ``index.h5`` instead of one file.
        shard_episodes: attempts per shard with ``shards`` (default :data:`DEFAULT_SHARD_EPISODES`).
        episodes_per_task: a balanced collection: exactly this many kept episodes of each of
            the env's tasks (``env_config["tasks"]``; on a single-task env this is
            ``episodes=episodes_per_task``). Attempt ``i`` runs task ``tasks[i % T]``, forced
            by the reset option ``task`` (round-robin, fixed in advance, so the file is the
            same whatever the backend, workers, shards or interruptions); an attempt that
            fails, or whose task already has its episodes, is not kept. Excludes ``episodes``.
    """

    out: str
    env_id: str = DEFAULT_ENV_ID
    episodes: int | None = None
    workers: int = 2
    seed: int = 0
    noise_std: float = DEFAULT_NOISE_STD
    keep_failures: bool = False
    valid_fraction: float = 0.1
    env_kwargs: dict[str, Any] | None = None
    backend: str = "local"
    ray_address: str | None = None
    shards: bool = False
    shard_episodes: int | None = None
    episodes_per_task: int | None = None

    def __post_init__(self) -> None:
        check_backend_choice(self.backend, self.ray_address)
        if self.shard_episodes is not None:
            if not self.shards:
                raise ValueError("shard_episodes needs shards=True (a single-file output is not sharded)")
            if isinstance(self.shard_episodes, bool) or not isinstance(self.shard_episodes, int) or self.shard_episodes < 1:
                raise ValueError(f"shard_episodes must be an int >= 1, got {self.shard_episodes!r}")
        self._check_episode_counts()
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ValueError(f"noise_std must be a finite number >= 0, got {self.noise_std}")
        if not (math.isfinite(self.valid_fraction) and 0.0 <= self.valid_fraction < 1.0):
            raise ValueError(f"valid_fraction must lie in [0, 1), got {self.valid_fraction}")
        env_config = env_args(self.env_id, self.env_kwargs)["env_config"]  # bad kwargs fail here
        self._check_balanced_total(env_config["tasks"])
        held_out = held_out_splits(env_config)
        if held_out:
            warnings.warn(
                f"collecting demos with {', '.join(held_out)}: the benchmark's held-out splits would then be "
                "seen in training (the default is 'train')",
                stacklevel=3,
            )

    def _check_episode_counts(self) -> None:
        """``episodes`` or ``episodes_per_task``, not both; ``episodes`` defaults to
        :data:`DEFAULT_EPISODES` (and stays ``None`` in a balanced collection)."""
        if self.episodes is not None and self.episodes_per_task is not None:
            raise ValueError(
                f"episodes={self.episodes!r} and episodes_per_task={self.episodes_per_task!r} exclude each other: "
                "give episodes (that many in all, each of the task the env draws) or episodes_per_task "
                "(that many of each of the env's tasks)"
            )
        if self.episodes is None and self.episodes_per_task is None:
            self.episodes = DEFAULT_EPISODES
        name = "episodes" if self.episodes_per_task is None else "episodes_per_task"
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_EPISODES:
            raise ValueError(f"{name} must be an int from 1 to {MAX_EPISODES}, got {value!r}")

    def _check_balanced_total(self, tasks: Sequence[str]) -> None:
        if self.episodes_per_task is not None and self.episodes_per_task * len(tasks) > MAX_EPISODES:
            raise ValueError(
                f"episodes_per_task={self.episodes_per_task} over the {len(tasks)} tasks of {self.env_id} "
                f"({', '.join(tasks)}) makes {self.episodes_per_task * len(tasks)} episodes; at most "
                f"{MAX_EPISODES} are allowed, so give at most {MAX_EPISODES // len(tasks)} per task"
            )

    @property
    def balanced_tasks(self) -> tuple[str, ...]:
        """The tasks a balanced collection (``episodes_per_task``) fills, in the env's order;
        empty for an unbalanced one."""
        if self.episodes_per_task is None:
            return ()
        return tuple(env_args(self.env_id, self.env_kwargs)["env_config"]["tasks"])

    @property
    def total_episodes(self) -> int:
        """Episodes the file will hold: ``episodes``, or ``episodes_per_task`` times the tasks."""
        if self.episodes_per_task is None:
            return int(self.episodes)
        return self.episodes_per_task * len(self.balanced_tasks)


@dataclass
class CollectResult:
    """What :func:`collect_demos` did. ``failures_dropped``: attempts not kept (expert
    failures; in a balanced collection also attempts whose task already had its episodes)."""

    path: str
    episodes: int
    frames: int
    attempts: int
    failures_dropped: int
    seconds: float
    balanced: bool = False

    @property
    def steps_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        dropped = "attempts not kept (failed, or their task was full)" if self.balanced else "failures dropped"
        return (
            f"{self.path}: {self.episodes} episodes, {self.frames} frames from {self.attempts} attempts "
            f"({self.failures_dropped} {dropped}) in {self.seconds:.1f} s = "
            f"{self.steps_per_second:.0f} env steps/s"
        )


# --- worker side ------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


class Attempt(NamedTuple):
    """One episode for a worker to try: ``reset(seed=seed)``, with ``options={"task": task}``
    when ``task`` is given (else the env draws it); ``skip``: nothing to run (its task
    already has its episodes), answered by :func:`_skipped_episode`."""

    seed: int
    task: str | None = None
    skip: bool = False


def _init_worker(env_id: str, env_kwargs: dict[str, Any] | None, noise_std: float) -> None:
    import gymnasium as gym

    _WORKER["env"] = gym.make(env_id, **(env_kwargs or {}))
    _WORKER["noise_std"] = noise_std


def _record_episode(attempt: Attempt) -> dict[str, Any]:
    """Run the expert for one episode of ``attempt``; arrays stacked over steps."""
    from vla_gym.envs.experts import ScriptedExpert

    if attempt.skip:
        return _skipped_episode()
    seed, env = attempt.seed, _WORKER["env"]
    policy = ScriptedExpert(env, noise_std=_WORKER["noise_std"], seed=[seed, NOISE_STREAM])
    obs, info = env.reset(seed=seed, options=None if attempt.task is None else {"task": attempt.task})
    roles = sorted(info["roles"])
    steps: dict[str, list] = {k: [] for k in (*OBS_KEYS, "actions", "executed_actions", "rewards", "dones")}
    positions: dict[str, list] = {role: [] for role in roles}
    goals: list[np.ndarray] = []
    done = False
    while not done:
        clean, noisy = policy.act_noisy()
        for key in OBS_KEYS:
            steps[key].append(obs[key])
        for role in roles:
            positions[role].append(env.unwrapped.role_position(role).astype(np.float32))
        goals.append(env.unwrapped.goal_points())
        obs, reward, terminated, truncated, info = env.step(noisy)
        done = terminated or truncated
        steps["actions"].append(clean)
        steps["executed_actions"].append(noisy)
        steps["rewards"].append(reward)
        steps["dones"].append(done)
    arrays = {k: np.stack(v) for k, v in steps.items() if k in (*OBS_KEYS, "actions", "executed_actions")}
    arrays.update({role_positions_key(role): np.stack(v) for role, v in positions.items()})
    arrays.update(zip(GOAL_STATE_KEYS, np.stack(goals).astype(np.float32).swapaxes(0, 1)))
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


def _skipped_episode() -> dict[str, Any]:
    """The answer to a skipped :class:`Attempt`: no frames, not a success (never kept)."""
    return {"skipped": True, "arrays": {}, "images": {}, "attrs": {"num_samples": 0, "success": False}}


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


def _episode_results(config: CollectConfig, attempts: Iterable[Attempt], backend: Backend) -> Iterator[dict[str, Any]]:
    """The expert's episodes of ``attempts``, in order, from ``backend`` (which draws the
    attempts lazily, a window ahead of the results)."""
    yield from backend.imap(
        _record_episode, attempts, setup=_init_worker, setup_args=(config.env_id, config.env_kwargs, config.noise_std),
        teardown=_close_worker, window=PREFETCH_PER_WORKER * max(backend.workers, 1),
    )


# --- shards: the episodes of a collection under way -------------------------------------------
def partial_dir(out: str | os.PathLike) -> Path:
    """``.<name>.partial/`` beside the output file ``out``: the shards of an unfinished collection."""
    out = Path(out)
    return out.parent / f".{out.name}{PARTIAL_MARK}"


def attempt_name(index: int) -> str:
    """The group of attempt ``index`` in its shard: ``episodes/attempt_<index>``."""
    return f"{EPISODE_FILE_PREFIX}{index:06d}"


def _identity(config: CollectConfig) -> dict[str, Any]:
    """What the episodes depend on (not where they go nor who runs them): shards continue
    only a collection with the same identity."""
    fields = {k: v for k, v in asdict(config).items() if k not in NOT_IDENTITY}
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


def _valid_shard(record: Any, index: int, first: int, directory: Path) -> bool:
    if not isinstance(record, dict) or record.get("shard") != index or record.get("first_attempt") != first:
        return False
    seeds, kept, frames = record.get("seeds"), record.get("kept"), record.get("frames")
    if not (isinstance(seeds, list) and isinstance(kept, list) and isinstance(frames, list)):
        return False
    if not seeds or not len(seeds) == len(kept) == len(frames):
        return False
    if not all(isinstance(k, bool) for k in kept) or not all(isinstance(f, int) for f in frames):
        return False
    file = record.get("file")
    return (file is None) if not any(kept) else (isinstance(file, str) and (directory / file).is_file())


def _is_ours(entry: Path) -> bool:
    """A file a collection writes into its shard directory."""
    name = entry.name
    return (name in (ATTEMPTS_FILE, IDENTITY_FILE, INDEX_FILE) or TEMP_MARK in name
            or (name.startswith(SHARD_PREFIX) and name.endswith(".h5")))


class _Shards:
    """The episodes of a collection under way (see :func:`collect_demos`), in shards: runs of
    consecutive attempts, each an HDF5 file of its kept episodes (``episodes/attempt_<i>``)
    written atomically once the run is complete, and one line per shard in ``attempts.jsonl``.

    ``directory`` is the sidecar of a single-file output (shards of one attempt: resume loses
    nothing) or the output directory of ``--shards``.
    """

    def __init__(self, directory: Path, config: CollectConfig, resume: bool, shard_size: int) -> None:
        self.dir, self.shard_size, self.config = directory, shard_size, config
        self.buffer: list[tuple[int, dict[str, Any], bool]] = []
        self.lock: int | None = None
        self._writing = False
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = _lock(self.dir)
        if not resume:
            for entry in self.dir.iterdir():
                if _is_ours(entry):
                    entry.unlink()
        self._claim(config)
        self.shards, self.attempts = self._read_shards()

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

    def _read_shards(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The shards recorded in order, and their attempts; a line cut by a kill and whatever
        follows it are dropped, with shard files no line names."""
        path, shards, attempts = self.dir / ATTEMPTS_FILE, [], []
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if not _valid_shard(record, len(shards), len(attempts), self.dir):
                break
            shards.append(record)
            attempts.extend(self._attempts_of(record))
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in shards))
        files = {r["file"] for r in shards if r["file"]}
        for orphan in self.dir.glob(f"{SHARD_PREFIX}*.h5"):
            if orphan.name not in files:
                orphan.unlink()
        return shards, attempts

    @staticmethod
    def _attempts_of(shard: dict[str, Any]) -> list[dict[str, Any]]:
        first = shard["first_attempt"]
        return [{"attempt": first + j, "seed": seed, "kept": kept, "frames": frames, "file": shard["file"]}
                for j, (seed, kept, frames) in enumerate(zip(shard["seeds"], shard["kept"], shard["frames"]))]

    @property
    def next_attempt(self) -> int:
        return len(self.attempts) + len(self.buffer)

    def record(self, seed: int, episode: dict[str, Any], kept: bool) -> None:
        """Add an attempt; a full run of ``shard_size`` is written out as a shard."""
        self.buffer.append((seed, episode, kept))
        if len(self.buffer) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered attempts as a shard (atomically), then its line."""
        if not self.buffer or self._writing:
            return
        self._writing = True
        try:
            index, first = len(self.shards), len(self.attempts)
            kept = [(first + j, episode) for j, (_, episode, keep) in enumerate(self.buffer) if keep]
            file = f"{SHARD_PREFIX}{index:05d}.h5" if kept else None
            if file is not None:
                with atomic_path(self.dir / file) as tmp, h5py.File(tmp, "w") as handle:
                    handle.attrs["env_args"] = json.dumps(env_args(self.config.env_id, self.config.env_kwargs))
                    handle.attrs["format_version"] = FORMAT_VERSION
                    group = handle.create_group(SHARD_GROUP)
                    for attempt, episode in kept:
                        _write_episode(group, attempt_name(attempt), episode)
            shard = {"shard": index, "first_attempt": first, "seeds": [int(s) for s, _, _ in self.buffer],
                     "kept": [bool(k) for _, _, k in self.buffer],
                     "frames": [int(e["attrs"]["num_samples"]) for _, e, _ in self.buffer], "file": file}
            append_jsonl(self.dir / ATTEMPTS_FILE, shard)
            self.shards.append(shard)
            self.attempts.extend(self._attempts_of(shard))
            self.buffer.clear()
        finally:
            self._writing = False

    def kept(self, episodes: int) -> list[dict[str, Any]]:
        return [r for r in self.attempts if r["kept"]][:episodes]

    @contextlib.contextmanager
    def _groups(self, kept: list[dict[str, Any]]) -> Iterator[list[h5py.Group]]:
        """The groups of the ``kept`` attempts in their shard files (open inside the block)."""
        with contextlib.ExitStack() as stack:
            files = {name: stack.enter_context(h5py.File(self.dir / name, "r")) for name in {r["file"] for r in kept}}
            yield [files[r["file"]][f"{SHARD_GROUP}/{attempt_name(r['attempt'])}"] for r in kept]

    def assemble(self, out: Path, config: CollectConfig) -> tuple[int, int]:
        """Write the single demo file from the kept episodes (atomically); returns (kept, frames)."""
        kept = self.kept(config.total_episodes)
        frames = sum(r["frames"] for r in kept)
        with atomic_path(out) as tmp, h5py.File(tmp, "w") as handle, self._groups(kept) as episodes:
            data = handle.create_group("data")
            for index, episode in enumerate(episodes):
                episode.file.copy(episode, data, name=demo_name(index))
            _write_metadata(handle, config, [episode_task(e) for e in episodes], frames, len(self.attempts))
        return len(kept), frames

    def write_index(self, config: CollectConfig) -> tuple[int, int]:
        """Write ``index.h5`` (atomically): the demo-file layout, its episodes external links into
        the shards; returns (kept, frames)."""
        kept = self.kept(config.total_episodes)
        frames = sum(r["frames"] for r in kept)
        with self._groups(kept) as episodes:
            tasks = [episode_task(e) for e in episodes]
        with atomic_path(self.dir / INDEX_FILE) as tmp, h5py.File(tmp, "w") as handle:
            data = handle.create_group("data")
            for index, record in enumerate(kept):
                data[demo_name(index)] = h5py.ExternalLink(record["file"], f"/{SHARD_GROUP}/{attempt_name(record['attempt'])}")
            _write_metadata(handle, config, tasks, frames, len(self.attempts))
            used = sorted({r["file"] for r in kept})
            data.attrs["shards"] = json.dumps([{"file": f, "bytes": (self.dir / f).stat().st_size} for f in used])
        return len(kept), frames

    def _unlock(self) -> None:
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None

    def release(self, remove: bool) -> None:
        """Unlock; remove the directory if ``remove`` (a sidecar no longer needed)."""
        self._unlock()
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            (self.dir / LOCK_FILE).unlink(missing_ok=True)


def _shard_dir_state(out: Path) -> str:
    """``"new"`` (absent or empty), ``"finished"`` (has its index), ``"interrupted"``, or
    ``"foreign"`` (files that no collection wrote)."""
    if not out.is_dir():
        return "new"
    entries = [e for e in out.iterdir() if e.name != LOCK_FILE]
    if not entries:
        return "new"
    if (out / INDEX_FILE).is_file():
        return "finished"
    if (out / IDENTITY_FILE).is_file():
        return "interrupted"
    return "foreign"


def claim_collect_output(
    out: str | os.PathLike, option: str, resume: bool, overwrite: bool, shards: bool = False
) -> Path:
    """The ``vla-gym collect`` guard: ``out`` is a writable file path (a directory with
    ``shards``), and an earlier collection there (finished, or interrupted) needs
    ``--overwrite`` (or, when interrupted, ``--resume``)."""
    if resume and overwrite:
        raise OutputError("--resume and --overwrite exclude each other: --resume continues an interrupted "
                          f"collection into {str(out)!r}, --overwrite starts it over")
    if shards:
        return _claim_shard_dir(check_output_dir(out, option), option, resume, overwrite)
    out = check_output_file(out, option)
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


def _claim_shard_dir(out: Path, option: str, resume: bool, overwrite: bool) -> Path:
    state = _shard_dir_state(out)
    if state == "foreign":
        raise OutputError(f"{option} {str(out)!r} holds files that are not a vla_gym shard directory; "
                          "give a new or empty directory")
    if state == "interrupted" and not (resume or overwrite):
        raise OutputError(f"{option} {str(out)!r} holds an interrupted collection; pass --resume to continue it "
                          "or --overwrite to start over")
    if state == "finished" and not overwrite:
        raise OutputError(
            f"{option} {str(out)!r} already holds a finished collection ({INDEX_FILE}; --resume only continues "
            f"an interrupted one); pass --overwrite to replace it, or choose another {option}"
        )
    return out


def collect_demos(
    config: CollectConfig, progress: bool = True, resume: bool = False, keep_partial: bool = False,
    backend: Backend | None = None,
) -> CollectResult:
    """Record ``config.total_episodes`` expert episodes (``episodes``, or ``episodes_per_task``
    of each task) into ``config.out``; see :mod:`vla_gym.data.dataset`. The masks are split
    by task (:func:`split_by_task`).

    Episodes are written in shards as they finish. With a single-file output they wait in a
    sidecar directory beside it (:func:`partial_dir`, one attempt per shard) and, once all
    are there, the demo file is written under a temporary name and renamed, so
    ``config.out`` holds either the previous file or a complete new one. With
    ``config.shards`` the output is a directory: shards of ``config.shard_episodes``
    attempts and, once all are there, ``index.h5`` (the demo-file layout, its episodes
    linked into the shards), which every reader of demo files accepts (the directory or
    the index). With ``resume``, the shards of an interrupted run of the same config are
    continued (else they are discarded); with ``keep_partial`` an interruption or error
    keeps a single-file sidecar for that (else it is removed; a shard directory always
    stays). A ``kill -9`` always leaves them. Episode ``k`` kept is the same whatever the
    backend, the number of workers, the shard size and interruptions. ``backend`` (else
    one made from the config) runs the expert.
    """
    out = Path(config.out)
    start = time.perf_counter()
    owned = backend is None  # made here (a Ray that cannot start fails before any file is touched)
    backend = make_backend(config.backend, config.workers, config.ray_address) if owned else backend
    try:
        if config.shards:
            store = _Shards(out, config, resume, config.shard_episodes or DEFAULT_SHARD_EPISODES)
        else:
            sweep_stale_temps(out)
            store = _Shards(partial_dir(out), config, resume, 1)
        try:
            _record_missing(store, config, progress, backend)
            kept, frames = store.write_index(config) if config.shards else store.assemble(out, config)
        except BaseException:
            store.release(remove=not (keep_partial or config.shards))
            raise
        store.release(remove=not config.shards)
    finally:
        if owned:
            backend.close()
    attempts = len(store.attempts)
    return CollectResult(str(out), kept, frames, attempts, attempts - kept, time.perf_counter() - start,
                         balanced=config.episodes_per_task is not None)


class _Quota:
    """Which task each attempt runs and how many episodes each still needs.

    Attempt ``i`` is reset with seed ``seed + i``. An unbalanced collection has one slot
    (``None``: the env draws the task) that needs ``episodes``; a balanced one has a slot
    per task, each needing ``episodes_per_task``, and attempt ``i`` runs slot ``i % T``
    (forced with the reset option ``task`` when ``T > 1``). Which attempts are kept
    depends only on their outcomes, in attempt order: never on timing.
    """

    def __init__(self, config: CollectConfig) -> None:
        self.seed, self.keep_failures = config.seed, config.keep_failures
        self.slots: tuple[str | None, ...] = config.balanced_tasks or (None,)
        self.wanted = int(config.episodes_per_task or config.episodes)
        self.kept: dict[str | None, int] = dict.fromkeys(self.slots, 0)
        extra = 0 if config.keep_failures else max(MIN_EXTRA_ATTEMPTS, math.ceil(MAX_EXTRA_ATTEMPT_FRACTION * self.wanted))
        #: Attempts tried before giving up (each slot gets ``wanted + extra``).
        self.max_attempts = len(self.slots) * (self.wanted + extra)

    def slot(self, attempt: int) -> str | None:
        return self.slots[attempt % len(self.slots)]

    def full(self, slot: str | None) -> bool:
        return self.kept[slot] >= self.wanted

    def done(self) -> bool:
        return all(self.full(slot) for slot in self.slots)

    def count(self, records: Iterable[dict[str, Any]]) -> None:
        """Count the kept attempts of an interrupted collection."""
        for record in records:
            self.kept[self.slot(record["attempt"])] += bool(record["kept"])

    def attempt(self, index: int) -> Attempt:
        """What attempt ``index`` runs; skipped if its task already has its episodes (so asked
        lazily, as late as the backend allows: then fewer surplus episodes are run)."""
        slot = self.slot(index)
        return Attempt(self.seed + index, slot if len(self.slots) > 1 else None, skip=self.full(slot))

    def take(self, index: int, episode: dict[str, Any]) -> bool:
        """Whether attempt ``index``'s episode is kept (then counted); results come in attempt order."""
        slot = self.slot(index)
        keep = not episode.get("skipped") and not self.full(slot) and bool(
            episode["attrs"]["success"] or self.keep_failures
        )
        self.kept[slot] += keep
        return keep

    def shortfall(self, attempts: int) -> str:
        """Why the attempts ran out: which slots lack episodes."""
        if self.slots == (None,):
            return (f"the expert succeeded in only {self.kept[None]} of {attempts} episodes; "
                    f"{self.wanted} were asked for (use keep_failures to keep failed ones)")
        short = ", ".join(f"{slot!r} {self.kept[slot]}" for slot in self.slots if not self.full(slot))
        return (f"after {attempts} attempts ({attempts // len(self.slots)} per task) the expert had succeeded in too "
                f"few episodes of some tasks ({short}); {self.wanted} per task were asked for (use keep_failures "
                "to keep failed ones)")


def _record_missing(store: _Shards, config: CollectConfig, progress: bool, backend: Backend) -> None:
    """Run the expert on the attempts after the recorded ones until enough episodes are kept."""
    from tqdm.auto import tqdm

    quota = _Quota(config)
    quota.count(store.attempts)
    frames, start = 0, time.perf_counter()
    indices = range(len(store.attempts), quota.max_attempts)
    bar = tqdm(total=config.total_episodes, initial=sum(quota.kept.values()), unit="ep", desc="collect",
               disable=not progress)
    try:
        attempts = (quota.attempt(i) for i in indices)  # drawn lazily: the skips see the latest counts
        with contextlib.closing(_episode_results(config, attempts, backend)) as results:
            for index, episode in zip(indices, results) if not quota.done() else ():
                keep = quota.take(index, episode)
                store.record(config.seed + index, episode, keep)
                if keep:
                    frames += episode["attrs"]["num_samples"]
                    bar.update(1)
                    bar.set_postfix(steps_per_s=f"{frames / (time.perf_counter() - start):.0f}", refresh=False)
                if quota.done():
                    break
    finally:
        store.flush()  # nothing recorded is lost, even on an interruption
        bar.close()
    if not quota.done():
        raise RuntimeError(quota.shortfall(len(store.attempts)))


def _write_metadata(handle: h5py.File, config: CollectConfig, tasks: list[str], frames: int, attempts: int) -> None:
    """The file's attributes and masks; ``tasks``: the task of each kept episode, in order."""
    data = handle["data"]
    data.attrs["format_version"] = FORMAT_VERSION
    data.attrs["env_args"] = json.dumps(env_args(config.env_id, config.env_kwargs))
    data.attrs["total"] = frames
    collector = {k: v for k, v in asdict(config).items() if k not in (*NOT_IDENTITY, "env_kwargs", "env_id")}
    collector.update(policy="ScriptedExpert", attempts=attempts, vla_gym_version=vla_gym.__version__,
                     balanced=config.episodes_per_task is not None, episodes_by_task=dict(sorted(Counter(tasks).items())))
    data.attrs["collector"] = json.dumps(collector)
    names = [demo_name(i) for i in range(len(tasks))]
    train, valid = split_by_task(tasks, config.valid_fraction, config.seed)
    mask = handle.create_group("mask")
    mask.create_dataset("train", data=np.array([names[i] for i in train], dtype="S"))
    mask.create_dataset("valid", data=np.array([names[i] for i in valid], dtype="S"))


def split_by_task(tasks: Sequence[str], valid_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, valid) episode numbers, each sorted, stratified by task: of each task's
    episodes, :func:`valid_count` go to valid, the first of them in one permutation of all
    episodes seeded by ``seed`` (with a single task, the split unstratified files had).

    ``tasks``: the task of each episode, in order.
    """
    order = np.random.default_rng(seed).permutation(len(tasks)).tolist()
    valid: list[int] = []
    for task in sorted(set(tasks)):
        mine = [i for i in order if tasks[i] == task]
        valid += mine[: valid_count(len(mine), valid_fraction)]
    return sorted(set(range(len(tasks))) - set(valid)), sorted(valid)


def valid_count(episodes: int, valid_fraction: float) -> int:
    """Validation episodes out of ``episodes``: the fraction, rounded, but at least one and
    not all when there are two or more and ``valid_fraction > 0``."""
    count = int(round(valid_fraction * episodes))
    if valid_fraction > 0 and episodes > 1:
        count = min(max(count, 1), episodes - 1)
    return count
