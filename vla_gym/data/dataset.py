"""Demonstration datasets: one self-describing HDF5 file in the robomimic layout (or a shard
directory whose ``index.h5`` has this layout, its episodes linked into shard files).

Layout (``T`` = steps of an episode, ``S`` = image side)::

    data/                          attrs: env_args (JSON: env_name, env_kwargs, env_config),
                                          format_version, total (frames), collector (JSON:
                                          the collection's settings, attempts, balanced
                                          (episodes_per_task given), episodes_by_task)
    data/demo_<i>/obs/rgb          uint8   (T, S, S, 3)   chunked, compressed
    data/demo_<i>/obs/depth        float32 (T, S, S, 1)   metres, chunked, compressed
    data/demo_<i>/obs/proprio      float32 (T, 8)
    data/demo_<i>/obs/instruction  uint8   (T, 128)       UTF-8, zero padded
    data/demo_<i>/states/<role>_positions
                                   float32 (T, 3)         privileged: each role's body centre (m);
                                                          target_positions in every episode
    data/demo_<i>/states/subgoal_object_positions, states/subgoal_destination_positions
                                   float32 (T, 3)         privileged, optional: the object the
                                                          current subgoal moves, and where its
                                                          centre must go (Task.goal_points)
    data/demo_<i>/actions          float32 (T, 4)         the expert's noise-free action (the label)
    data/demo_<i>/executed_actions float32 (T, 4)         what was sent to the env (label + noise)
    data/demo_<i>/rewards          float32 (T,)
    data/demo_<i>/dones            uint8   (T,)           1 on the step that ended the episode
                                   attrs: num_samples, task, instruction, paraphrases (JSON:
                                          other train-split phrasings), roles (JSON: role ->
                                          colour and shape or kind), target_colour, target_shape,
                                          seed, success, subgoals_done, num_subgoals, camera
                                          (JSON: the agent camera's pose, which moves under
                                          camera_jitter)
    mask/train, mask/valid         bytes   episode names, split by episode (never by frame)
                                          and stratified by task (each task its share)

``obs[t]`` is the observation the action ``actions[t]`` was chosen from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from vla_gym.envs.language import decode_instruction, encode_instruction, sample_instruction
from vla_gym.data.format import GOAL_STATE_KEYS, OBS_KEYS, SHARD_INDEX_FILE, DatasetError, env_config_dict, episode_task
from vla_gym.data.validation import DemoFileSummary, check_demo_file, check_depth, read_array
from vla_gym.envs.scene import COLOURS
from vla_gym.envs.spaces import AGENT_CAMERA
from vla_gym.envs.pybullet_sim import Camera

SPLITS = ("train", "valid", "all")


def open_demo_file(path: str | os.PathLike) -> h5py.File:
    """Open a demo file read-only and validate it (:mod:`vla_gym.data.validation`); raise
    :class:`DatasetError` naming the file and key of the first problem."""
    return _open_checked(path)[0]


def demo_file_summary(path: str | os.PathLike) -> DemoFileSummary:
    """The validated file's env, episodes, masks and content fingerprint."""
    handle, summary = _open_checked(path)
    handle.close()
    return summary


def resolve_demo_path(path: str | os.PathLike) -> Path:
    """``path`` itself (a demo file), or the index of a shard directory (``vla-gym collect
    --shards``): every reader takes either."""
    path = Path(path)
    if not path.is_dir():
        return path
    index = path / SHARD_INDEX_FILE
    if index.is_file():
        return index
    if any(path.glob("shard_*.h5")) or (path / "attempts.jsonl").exists():
        raise DatasetError(
            f"shard directory {str(path)!r} holds an unfinished collection (no {SHARD_INDEX_FILE} yet); "
            f"finish it with the same `vla-gym collect ... --shards --out {path}` command and --resume"
        )
    raise DatasetError(f"{str(path)!r} is a directory, not a demo file nor a shard directory of "
                       f"`vla-gym collect --shards` (it has no {SHARD_INDEX_FILE})")


def shard_files(handle: h5py.File, path: str | os.PathLike) -> list[Path]:
    """The shard files an index links to (none for a plain demo file), each checked to be
    there, with the size the index recorded, and an HDF5 file; :class:`DatasetError` otherwise."""
    listed = handle["data"].attrs.get("shards") if "data" in handle else None
    if listed is None:
        return []
    where = Path(path).parent
    try:
        entries = json.loads(listed)
        files = [(str(e["file"]), int(e["bytes"])) for e in entries]
    except (TypeError, ValueError, KeyError, json.JSONDecodeError):
        raise DatasetError(f"shard index {str(path)!r}: data.attrs['shards'] is not a list of "
                           "{file, bytes} records") from None
    shards = []
    for name, size in files:
        shard = where / name
        if Path(name).name != name:
            raise DatasetError(f"shard index {str(path)!r} names {name!r}, not a file beside it")
        if not shard.is_file():
            raise DatasetError(f"shard directory {str(where)!r}: shard {name!r} is missing (the index lists "
                               f"{len(files)}); restore it, or collect again into a new directory")
        if shard.stat().st_size != size or not h5py.is_hdf5(shard):
            raise DatasetError(
                f"shard directory {str(where)!r}: shard {name!r} is corrupt ({shard.stat().st_size} bytes, "
                f"the index recorded {size}); restore it, or collect again into a new directory"
            )
        shards.append(shard)
    return shards


def _open_checked(path: str | os.PathLike) -> tuple[h5py.File, DemoFileSummary]:
    path = resolve_demo_path(path)
    if not path.exists():
        raise DatasetError(f"demo file {str(path)!r} does not exist (make one with `vla-gym collect`)")
    if not path.is_file():
        raise DatasetError(f"demo file {str(path)!r} is not a file")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise DatasetError(
            f"demo file {str(path)!r} is not a readable HDF5 file (corrupt or truncated?): {err}"
        ) from None
    try:
        return handle, check_demo_file(handle, str(path), shard_files(handle, path))
    except DatasetError:
        handle.close()
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as err:  # h5py on a damaged file
        handle.close()
        raise DatasetError(f"demo file {str(path)!r} is corrupt: {type(err).__name__}: {err}") from None


def read_env_args(path: str | os.PathLike) -> dict[str, Any]:
    """The ``env_args`` of a demo file: ``{"env_name", "env_kwargs", "env_config"}``."""
    return demo_file_summary(path).env_args


def check_env_matches(path: str | os.PathLike, env_id: str | None, env_kwargs: dict[str, Any] | None) -> dict:
    """Raise :class:`DatasetError` if the file's env differs from ``env_id`` with ``env_kwargs``.

    ``env_id=None`` accepts the file's env. Returns the file's env_args.
    """
    stored = read_env_args(path)
    if env_id is None:
        return stored
    if env_id != stored["env_name"]:
        raise DatasetError(f"demo file {str(path)!r} was collected on {stored['env_name']!r}, not {env_id!r}")
    wanted = env_config_dict(env_id, env_kwargs)
    differ = {k: (stored["env_config"].get(k), wanted[k]) for k in wanted if stored["env_config"].get(k) != wanted[k]}
    if differ:
        detail = ", ".join(f"{k}: file {a!r} vs requested {b!r}" for k, (a, b) in sorted(differ.items()))
        raise DatasetError(f"demo file {str(path)!r} was collected with other env kwargs ({detail})")
    return stored


class DemoDataset(Dataset):
    """Frames of a demo file as a :class:`torch.utils.data.Dataset`.

    Item ``i`` is a dict of numpy arrays in the env's observation format plus the label:
    ``rgb`` uint8 (S, S, 3), ``depth`` float32 (S, S, 1), ``proprio`` float32 (8,),
    ``instruction`` uint8 (128,), ``action`` float32 (4,); and privileged extras for losses:
    ``return`` float32 (discounted return from this step), ``target_offset`` float32 (3,)
    (the centre of the object the current subgoal moves minus the end-effector position, m),
    ``target_uv`` float32 (2,) (where that centre is in the image, x and y in [-1, 1]),
    ``destination_offset`` float32 (3,) and ``destination_uv`` float32 (2,) (the same for
    where the object must go), and ``has_destination`` float32 () (1, or 0 for files from
    before destinations were recorded: their destination items are zeros).

    The episodes kept are ``episodes`` (names), with ``tasks`` (each one's task name),
    ``lengths`` int64 (E,) and ``starts`` int64 (E + 1,) (frame ``starts[e]`` opens episode
    ``e``); ``task_names`` are the split's distinct tasks, sorted, and ``frame_tasks`` int64
    (N,) gives each frame's task as an index into them.

    Lazy by default: the HDF5 file is opened on first access in each process (so it works
    with DataLoader workers) and each frame is read when asked for. ``in_memory=True``
    reads the split once into RAM (fastest for small datasets on few cores).

    The file is validated on construction (:mod:`vla_gym.data.validation`), and a frame
    that cannot be read later (a corrupt chunk met mid-training) raises
    :class:`DatasetError` naming the key and step. ``fingerprint`` identifies the content.

    Args:
        path: demo file from ``vla-gym collect``.
        split: "train", "valid" (the file's masks) or "all".
        only_successful: skip episodes whose ``success`` attribute is false.
        tasks: keep only the episodes of these tasks (names of
            :data:`vla_gym.envs.tasks.TASKS`; None keeps every episode).
        paraphrase_prob: probability that an item's instruction is replaced by a fresh
            train-split phrasing of the same target (see :func:`paraphrase_instruction`).
        seed: seeds the paraphrasing, with the epoch (:meth:`set_epoch`) and the frame
            index, so an item's phrasing does not depend on workers, order or resumption.
        gamma: discount of the ``return`` item (the discounted sum of rewards from that
            step on: a value target for the critic).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "train",
        only_successful: bool = True,
        tasks: Sequence[str] | None = None,
        in_memory: bool = False,
        paraphrase_prob: float = 0.0,
        seed: int = 0,
        gamma: float = 0.99,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not available; choose one of {SPLITS}")
        if not 0.0 <= paraphrase_prob <= 1.0:
            raise ValueError(f"paraphrase_prob must lie in [0, 1], got {paraphrase_prob}")
        self.path = str(resolve_demo_path(path))
        self.paraphrase_prob = paraphrase_prob
        self.seed = seed
        #: Seeds the paraphrasing with the frame index (see :meth:`set_epoch`).
        self.epoch = 0
        handle, summary = _open_checked(path)
        with handle:
            data = handle["data"]
            self.env_args = summary.env_args
            self.fingerprint = summary.fingerprint
            names = list(summary.episodes if split == "all" else summary.masks[split])
            if only_successful:
                names = [n for n in names if bool(data[n].attrs["success"])]
            if tasks is not None:
                names = _filter_tasks(data, names, tasks, str(path))
            self.episodes = names
            self.tasks = [episode_task(data[n]) for n in names]
            self.paraphrases = [_episode_paraphrases(data[n]) for n in names]
            self.kept_words = task_specific_words(set(self.tasks))
            self.lengths = np.array([int(data[n].attrs["num_samples"]) for n in names], dtype=np.int64)
            self.targets = [(str(data[n].attrs["target_colour"]), str(data[n].attrs["target_shape"])) for n in names]
            self.cameras = [_episode_camera(data[n]) for n in names]
            self.returns = np.concatenate(
                [discounted_returns(self._read(data[n]["rewards"], n, "rewards"), gamma) for n in names]
                or [np.zeros(0, np.float32)]
            )
            self.image_size = int(self.env_args["env_config"]["image_size"])
            self.starts = np.concatenate([[0], np.cumsum(self.lengths)])
            self.task_names, self.frame_tasks = _frame_tasks(self.tasks, self.lengths)
            self._memory = self._read_all(data) if in_memory and names else None  # an empty split reads nothing
        self._handle: h5py.File | None = None
        self._handle_pid: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Paraphrasing draws from a generator seeded by (seed, epoch, frame index): the
        same item in the same epoch gets the same phrasing in any worker, order or resumed run."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(episode number in this split, step within it) of frame ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range for a dataset of {len(self)} frames")
        episode = int(np.searchsorted(self.starts, index, side="right") - 1)
        return episode, int(index - self.starts[episode])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        episode, step = self.locate(int(index))
        if self._memory is not None:
            item = {k: np.array(v[self.starts[episode] + step]) for k, v in self._memory.items()}
        else:
            item = self._read_frame(episode, step)
        item["return"] = np.float32(self.returns[index])
        if self.paraphrase_prob > 0:
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            if rng.random() < self.paraphrase_prob:
                item["instruction"] = encode_instruction(self._paraphrase(rng, episode))
        return item

    def actions(self) -> np.ndarray:
        """Every frame's action label, float32 (N, 4), in frame order (read from RAM or the file)."""
        if self._memory is not None:
            return np.asarray(self._memory["action"], dtype=np.float32)
        data = self._file()["data"]
        return np.concatenate(
            [self._read(data[name]["actions"], name, "actions") for name in self.episodes]
            or [np.zeros((0, 4), np.float32)]
        ).astype(np.float32)

    def _read_frame(self, episode: int, step: int) -> dict[str, np.ndarray]:
        """One frame read from the file (lazy mode); every read names its key if it fails."""
        name = self.episodes[episode]
        demo = self._file()["data"][name]
        item = {k: self._read(demo["obs"][k], name, f"obs/{k}", step) for k in OBS_KEYS}
        check_depth(item["depth"], self.path, f"data/{name}/obs/depth at step {step}")
        item["action"] = self._read(demo["actions"], name, "actions", step)
        goal, destination = self._goal_series(demo, name, step)
        destination = None if destination is None else destination[None]
        privileged = self._privileged(goal[None], destination, item["proprio"][None], self.cameras[episode])
        item.update({k: v[0] for k, v in privileged.items()})
        return item

    def _goal_series(
        self, demo: h5py.Group, name: str, index: Any = ()
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(object to move, destination) positions, float32 (..., 3), of ``index`` steps; a
        file without both subgoal series gives its target and no destination (None)."""
        if not all(key in demo["states"] for key in GOAL_STATE_KEYS):
            return self._read(demo["states/target_positions"], name, "states/target_positions", index), None
        goal, destination = (self._read(demo[f"states/{k}"], name, f"states/{k}", index) for k in GOAL_STATE_KEYS)
        return goal, destination

    def _privileged(
        self, goal: np.ndarray, destination: np.ndarray | None, proprio: np.ndarray, camera: Camera
    ) -> dict[str, np.ndarray]:
        """The privileged items of frames (N, ...) from their object and destination positions
        (N, 3; None: not recorded, its items zeros) and proprioception (N, 8)."""
        n = len(goal)
        if destination is None:
            offset, uv = np.zeros((n, 3), np.float32), np.zeros((n, 2), np.float32)
        else:
            offset, uv = destination - proprio[:, :3], image_coordinates(destination, self.image_size, camera)
        return {
            "target_offset": goal - proprio[:, :3],
            "target_uv": image_coordinates(goal, self.image_size, camera),
            "destination_offset": offset,
            "destination_uv": uv,
            "has_destination": np.full(n, destination is not None, np.float32),
        }

    def _read(self, dataset: h5py.Dataset, episode: str, key: str, index: Any = ()) -> np.ndarray:
        return read_array(dataset, index, self.path, f"data/{episode}/{key}")

    def _read_all(self, data: h5py.Group) -> dict[str, np.ndarray]:
        """The split's frames in RAM (``in_memory``), with the privileged targets derived."""
        out: dict[str, list[np.ndarray]] = {}
        for name, camera in zip(self.episodes, self.cameras):
            frames = {key: self._read(data[name]["obs"][key], name, f"obs/{key}") for key in OBS_KEYS}
            check_depth(frames["depth"], self.path, f"data/{name}/obs/depth")
            frames["action"] = self._read(data[name]["actions"], name, "actions")
            goal, destination = self._goal_series(data[name], name)
            frames.update(self._privileged(goal, destination, frames["proprio"], camera))
            for key, value in frames.items():
                out.setdefault(key, []).append(value)
        return {k: np.concatenate(v) for k, v in out.items()}

    def _paraphrase(self, rng: np.random.Generator, episode: int) -> str:
        """One of the episode's stored train-split phrasings with some words dropped (files
        from before the task suite: a fresh pick phrasing of the target)."""
        options = self.paraphrases[episode]
        if not options:
            colour, shape = self.targets[episode]
            return paraphrase_instruction(rng, colour, shape)
        return drop_words(rng, options[int(rng.integers(len(options)))], self.kept_words)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """A whole batch at once, stacked: each key gets a leading batch dimension.

        In memory this is one fancy-indexing read per key; the DataLoader calls it when
        given a batch sampler (use :func:`collate_batch` as its ``collate_fn``).
        """
        indices = np.asarray(indices, dtype=np.int64)
        if self._memory is None or self.paraphrase_prob > 0:
            return _stack([self[int(i)] for i in indices])
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"frame indices out of range for a dataset of {len(self)} frames")
        batch = {k: v[indices] for k, v in self._memory.items()}
        batch["return"] = self.returns[indices]
        return batch

    def proprio_statistics(self, max_frames: int = 5000) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and std of ``proprio`` (8,), over at most ``max_frames`` frames."""
        if self._memory is not None:
            proprio = self._memory["proprio"]
        else:
            step = max(len(self) // max_frames, 1)
            proprio = np.stack([self[i]["proprio"] for i in range(0, len(self), step)])
        return proprio.mean(axis=0), proprio.std(axis=0)

    def instruction_of(self, episode: int) -> str:
        """The stored instruction text of an episode of this split."""
        if self._memory is not None:
            return decode_instruction(self._memory["instruction"][self.starts[episode]])
        return str(self._file()["data"][self.episodes[episode]].attrs["instruction"])

    def _file(self) -> h5py.File:
        if self._handle is None or self._handle_pid != os.getpid():
            try:  # one handle per process (DataLoader workers fork)
                self._handle = h5py.File(self.path, "r")
            except OSError as err:
                raise DatasetError(f"demo file {self.path!r} cannot be reopened (moved or damaged?): {err}") from None
            self._handle_pid = os.getpid()
        return self._handle

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"], state["_handle_pid"] = None, None
        return state


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """``G_t = r_t + gamma * G_{t+1}`` over one episode, float32 (T,)."""
    out = np.zeros(len(rewards), dtype=np.float32)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


def _stack(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([item[k] for item in items]) for k in items[0]}


def collate_batch(batch: dict[str, np.ndarray] | list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """DataLoader ``collate_fn``: a stacked batch (from ``__getitems__``) or a list of items to tensors."""
    if isinstance(batch, list):
        batch = _stack(batch)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


def _episode_camera(demo: h5py.Group) -> Camera:
    """The agent camera an episode was recorded with (files without one: the fixed camera)."""
    if "camera" not in demo.attrs:
        return AGENT_CAMERA
    return Camera.from_dict(json.loads(demo.attrs["camera"]))


def image_coordinates(points: np.ndarray, image_size: int, camera: Camera = AGENT_CAMERA) -> np.ndarray:
    """Where world points (..., 3) appear in ``camera``'s image, float32 (..., 2):
    x (column) and y (row) scaled to [-1, 1] over the pixel centres, as the network's grid."""
    pixels = camera.project(points, image_size, image_size)
    return (pixels * 2 / (image_size - 1) - 1).astype(np.float32)


#: Probability that paraphrasing also drops each word other than the colour word,
#: so the policy learns that the colour (and shape) words carry the goal.
WORD_DROP_PROB = 0.15


def paraphrase_instruction(rng: np.random.Generator, colour: str, shape: str) -> str:
    """A fresh pick phrasing (train split) naming the ``colour`` ``shape``, with some words dropped."""
    return drop_words(rng, sample_instruction(rng, colour, shape, "train"))


def drop_words(rng: np.random.Generator, text: str, keep: frozenset[str] = frozenset()) -> str:
    """``text`` with each word other than a colour word or a word of ``keep`` dropped with
    :data:`WORD_DROP_PROB`."""
    kept = [w for w in text.split()
            if w.strip(",.?") in COLOURS or w.strip(",.?").lower() in keep or rng.random() >= WORD_DROP_PROB]
    return " ".join(kept)


def task_specific_words(tasks: set[str]) -> frozenset[str]:
    """The train-split words that some but not all of ``tasks`` use ("push", "zone", "on",
    "left", ...): dropped from a paraphrase, they could leave an instruction that another
    task's demo also fits. Empty for one task (its paraphrases drop any non-colour word)."""
    from vla_gym.envs.tasks import TASKS, task_words

    names = sorted(t for t in tasks if t in TASKS)
    if len(names) < 2:
        return frozenset()
    words = [task_words("train", [name]) for name in names]
    return frozenset(set().union(*words) - set.intersection(*words))


def _frame_tasks(tasks: Sequence[str], lengths: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """The distinct ``tasks`` (one per episode), sorted, and each frame's index into them:
    int64 (sum(lengths),)."""
    names = tuple(sorted(set(tasks)))
    ids = np.array([names.index(task) for task in tasks], dtype=np.int64)
    return names, np.repeat(ids, lengths)


def _episode_paraphrases(demo: h5py.Group) -> list[str]:
    return [str(t) for t in json.loads(demo.attrs["paraphrases"])] if "paraphrases" in demo.attrs else []


def _filter_tasks(data: h5py.Group, names: list[str], tasks: Sequence[str], path: str) -> list[str]:
    from vla_gym.envs.tasks import TASKS

    if isinstance(tasks, str) or not all(t in TASKS for t in tasks):
        raise ValueError(f"tasks={tasks!r} must be a sequence of task names from {list(TASKS)}")
    kept = [n for n in names if episode_task(data[n]) in tasks]
    if not kept:
        present = sorted({episode_task(data[n]) for n in names})
        raise DatasetError(f"demo file {path!r} holds no episode of tasks {list(tasks)}; it holds {present}")
    return kept
