"""The one validation layer of demo files: every structural or content problem is a
:class:`~vla_gym.data.format.DatasetError` that names the file and the key.

:func:`check_demo_file` runs when a file is opened. It checks the groups and the file's
attributes, ``env_args`` (:func:`~vla_gym.data.format.validate_env_args`), the masks
(episode names that exist, no name twice, no episode in both splits), each episode's
attributes, the shape and dtype of every array (images against the declared
``image_size``; rgb must be uint8), and the values of the small per-step arrays
(proprio, actions, rewards, dones, positions: finite; dones 0 or 1). Every read error,
such as a bit-flipped compressed chunk (``OSError: filter returned failure``), names its
key. It also computes the file's content fingerprint (:class:`DemoFileSummary`).

Image frames are large, so they are read when used: :func:`read_array` turns a failing
read into a ``DatasetError`` naming key and step, and :func:`check_depth` refuses depth
that is not finite or lies outside the camera's range.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vla_gym.data.format import (
    FORMAT_VERSION,
    LEGACY_TASK,
    POSITIONS_SUFFIX,
    REQUIRED_EPISODE_ATTRS,
    DatasetError,
    validate_env_args,
)
from vla_gym.envs.language import MAX_INSTRUCTION_BYTES
from vla_gym.envs.scene import COLOURS, SHAPES
from vla_gym.envs.spaces import ACTION_DIM, AGENT_CAMERA, PROPRIO_DIM

DEMO_NAME = re.compile(r"demo_(\d+)$")
SPLIT_MASKS = ("train", "valid")
#: Stands for the image side in :class:`ArraySpec` shapes.
IMAGE = "image_size"
#: Depth outside the agent camera's [near, far] by more than this (m) is refused.
DEPTH_TOLERANCE = 1e-4
#: Episodes whose middle rgb frame enters the content fingerprint (spread evenly).
FINGERPRINT_FRAMES = 16


@dataclass(frozen=True)
class ArraySpec:
    """One per-step array of an episode: its key under ``data/demo_<i>``, the shape after
    the step axis, the numpy dtype kinds allowed (and item size, if fixed), and whether
    its values are read and checked (finite) when the file is opened."""

    key: str
    tail: tuple[int | str, ...]
    kinds: str
    itemsize: int | None = None
    finite: bool = False
    required: bool = True

    def describe_dtype(self) -> str:
        names = {"u": "unsigned int", "f": "float", "b": "bool", "i": "int"}
        kinds = " or ".join(names[k] for k in self.kinds)
        return f"{kinds} of {self.itemsize} byte(s)" if self.itemsize else kinds


ARRAY_SPECS = (
    ArraySpec("obs/rgb", (IMAGE, IMAGE, 3), "u", itemsize=1),
    ArraySpec("obs/depth", (IMAGE, IMAGE, 1), "f"),
    ArraySpec("obs/proprio", (PROPRIO_DIM,), "f", finite=True),
    ArraySpec("obs/instruction", (MAX_INSTRUCTION_BYTES,), "u", itemsize=1),
    ArraySpec("actions", (ACTION_DIM,), "f", finite=True),
    ArraySpec("executed_actions", (ACTION_DIM,), "f", finite=True, required=False),
    ArraySpec("rewards", (), "f", finite=True),
    ArraySpec("dones", (), "biu", finite=True),
    ArraySpec("states/target_positions", (3,), "f", finite=True),
)


@dataclass(frozen=True)
class DemoFileSummary:
    """What :func:`check_demo_file` learnt: the env, the episode names (sorted by index),
    the masks, and a fingerprint of the content (env, masks, every episode's attributes
    and small arrays, and sampled image frames): equal for the same demos, different for
    other data, whatever the file's name, size or modification time."""

    env_args: dict[str, Any]
    episodes: tuple[str, ...]
    masks: dict[str, tuple[str, ...]]
    fingerprint: str


#: Validated files, by identity on disk (see :func:`_stat_key`); at most this many kept.
MAX_CACHED_SUMMARIES = 64
_SUMMARIES: dict[tuple, DemoFileSummary] = {}


def _stat_key(path: Path) -> tuple:
    """Identity of the file on disk (a replaced or rewritten file changes ctime or inode)."""
    st = os.stat(path)
    return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def check_demo_file(handle: h5py.File, path: str, shards: Sequence[Path] = ()) -> DemoFileSummary:
    """Validate an open demo file (see the module docstring); cached per file on disk (with
    ``shards``, the files a shard index links to, per file and shard)."""
    key = (_stat_key(Path(path)), *(_stat_key(shard) for shard in shards))
    if key not in _SUMMARIES:
        if len(_SUMMARIES) >= MAX_CACHED_SUMMARIES:
            _SUMMARIES.pop(next(iter(_SUMMARIES)))
        _SUMMARIES[key] = _check(handle, path)
    summary = _SUMMARIES[key]
    return dataclasses.replace(summary, env_args=copy.deepcopy(summary.env_args))  # callers may edit theirs


def _check(handle: h5py.File, path: str) -> DemoFileSummary:
    fail = _Fail(path)
    if "data" not in handle or "mask" not in handle:
        raise fail("", "lacks the 'data' and 'mask' groups of a vla_gym demo file")
    data = handle["data"]
    version = data.attrs.get("format_version")
    if version != FORMAT_VERSION:
        raise fail("data.attrs['format_version']", f"is {version!r}; this vla_gym reads {FORMAT_VERSION}")
    env_args = _env_args(data, fail)
    names = _episode_names(data, fail)
    masks = {split: _mask_names(handle, split, set(names), fail) for split in SPLIT_MASKS}
    overlap = sorted(set(masks["train"]) & set(masks["valid"]), key=_index)
    if overlap:
        raise fail("mask/train", f"shares {len(overlap)} episode(s) with mask/valid (e.g. {overlap[:3]}); "
                                 "the splits must be disjoint")
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([FORMAT_VERSION, env_args, masks], sort_keys=True).encode())
    size = int(env_args["env_config"]["image_size"])
    sampled = set(names[:: max(len(names) // FINGERPRINT_FRAMES, 1)])
    for name in names:
        _check_episode(data[name], f"data/{name}", size, fail, digest, sample_frame=name in sampled)
    return DemoFileSummary(env_args, tuple(names), masks, digest.hexdigest())


class _Fail:
    """Builds the ``DatasetError`` of one file: ``demo file 'p': <key> <problem>``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, key: str, problem: str) -> DatasetError:
        where = f" {key}" if key else ""
        return DatasetError(f"demo file {self.path!r}:{where} {problem}")


def _env_args(data: h5py.Group, fail: _Fail) -> dict[str, Any]:
    key = "data.attrs['env_args']"
    if "env_args" not in data.attrs:
        raise fail(key, "is missing: the env cannot be rebuilt")
    try:
        value = json.loads(data.attrs["env_args"])
    except (json.JSONDecodeError, TypeError) as err:
        raise fail(key, f"is not valid JSON ({err})") from None
    try:
        return validate_env_args(value)
    except ValueError as err:
        raise fail(key, str(err)) from None


def _index(name: str) -> int:
    return int(DEMO_NAME.match(name).group(1))


def _episode_names(data: h5py.Group, fail: _Fail) -> list[str]:
    names = [n for n in data if n.startswith("demo_")]
    bad = [n for n in names if not DEMO_NAME.match(n) or not isinstance(data[n], h5py.Group)]
    if bad:
        raise fail(f"data/{bad[0]}", "is not an episode group named demo_<index>")
    if not names:
        raise fail("data", "holds no episodes")
    return sorted(names, key=_index)


def _mask_names(handle: h5py.File, split: str, present: set[str], fail: _Fail) -> tuple[str, ...]:
    key = f"mask/{split}"
    if split not in handle["mask"]:
        raise fail(key, "is missing")
    raw = read_array(handle["mask"][split], (), fail, key)
    if raw.ndim != 1 or raw.dtype.kind not in "SOU":
        raise fail(key, f"must be a 1-D array of episode names, got dtype {raw.dtype} and shape {raw.shape}")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    repeated = sorted(n for n, count in Counter(names).items() if count > 1)
    if repeated:
        raise fail(key, f"lists episodes more than once: {repeated[:5]}")
    missing = sorted(set(names) - present)
    if missing:
        raise fail(key, f"names episodes that are not there: {missing[:5]}")
    return tuple(sorted(names, key=_index))


def _check_episode(demo: h5py.Group, where: str, size: int, fail: _Fail, digest: Any, sample_frame: bool) -> None:
    length = _check_attrs(demo, where, fail)
    digest.update(json.dumps([where, _attr_fingerprint(demo)], sort_keys=True).encode())
    for spec in (*ARRAY_SPECS, *_role_position_specs(demo)):
        if spec.key not in demo:
            if spec.required:
                raise fail(f"{where}/{spec.key}", "is missing")
            continue
        dataset = demo[spec.key]
        _check_layout(dataset, spec, f"{where}/{spec.key}", length, size, fail)
        if spec.finite:
            values = read_array(dataset, (), fail, f"{where}/{spec.key}")
            _check_values(values, spec, f"{where}/{spec.key}", fail)
            digest.update(np.ascontiguousarray(values).tobytes())
    if sample_frame:
        digest.update(read_array(demo["obs/rgb"], length // 2, fail, f"{where}/obs/rgb").tobytes())


def _role_position_specs(demo: h5py.Group) -> list[ArraySpec]:
    """Specs of the position series of the episode's roles other than the target."""
    states = demo.get("states")
    if not isinstance(states, h5py.Group):
        return []
    keys = sorted(k for k in states if k.endswith(POSITIONS_SUFFIX) and k != "target_positions")
    return [ArraySpec(f"states/{k}", (3,), "f", finite=True) for k in keys]


def _check_layout(dataset: Any, spec: ArraySpec, key: str, length: int, size: int, fail: _Fail) -> None:
    if not isinstance(dataset, h5py.Dataset):
        raise fail(key, "is not an array")
    shape = (length, *(size if d == IMAGE else d for d in spec.tail))
    if dataset.shape != shape:
        raise fail(key, f"has shape {dataset.shape}; expected {shape} (num_samples {length}, "
                        f"image_size {size} declared in env_args)")
    dtype = dataset.dtype
    if dtype.kind not in spec.kinds or (spec.itemsize is not None and dtype.itemsize != spec.itemsize):
        raise fail(key, f"has dtype {dtype}; expected {spec.describe_dtype()}")


def _check_values(values: np.ndarray, spec: ArraySpec, key: str, fail: _Fail) -> None:
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        step = int(np.argwhere(~np.isfinite(values))[0][0])
        raise fail(key, f"holds NaN or inf (first at step {step}); values must be finite")
    if spec.key == "dones" and not np.isin(values, (0, 1)).all():
        raise fail(key, f"must hold only 0 and 1, got {sorted(set(np.unique(values).tolist()))[:5]}")


def _check_attrs(demo: h5py.Group, where: str, fail: _Fail) -> int:
    """Check an episode's attributes; return its ``num_samples``."""
    attrs = demo.attrs
    missing = [a for a in REQUIRED_EPISODE_ATTRS if a not in attrs]
    if missing:
        raise fail(f"{where}.attrs", f"lacks {missing} (every episode needs {list(REQUIRED_EPISODE_ATTRS)})")
    length = attrs["num_samples"]
    if isinstance(length, (bool, np.bool_)) or not isinstance(length, (int, np.integer)) or length < 1:
        raise fail(f"{where}.attrs['num_samples']", f"must be an int >= 1, got {length!r}")
    if not isinstance(attrs["success"], (bool, np.bool_)) and attrs["success"] not in (0, 1):
        raise fail(f"{where}.attrs['success']", f"must be a bool, got {attrs['success']!r}")
    for name, allowed in (("target_colour", COLOURS), ("target_shape", SHAPES)):
        if str(attrs[name]) not in allowed:
            raise fail(f"{where}.attrs[{name!r}]", f"is {attrs[name]!r}; expected one of {list(allowed)}")
    if "task" in attrs:
        from vla_gym.envs.tasks import TASKS

        if str(attrs["task"]) not in TASKS:
            raise fail(f"{where}.attrs['task']", f"is {attrs['task']!r}; expected one of {list(TASKS)}")
    for name, kind in (("paraphrases", list), ("roles", dict)):
        if name in attrs:
            _json_attr(attrs[name], kind, f"{where}.attrs[{name!r}]", fail)
    if "camera" in attrs:
        from vla_gym.envs.pybullet_sim import Camera

        camera = _json_attr(attrs["camera"], dict, f"{where}.attrs['camera']", fail)
        try:
            Camera.from_dict(camera)
        except TypeError as err:
            raise fail(f"{where}.attrs['camera']", f"is not a camera description ({err})") from None
    return int(length)


def _json_attr(text: Any, kind: type, key: str, fail: _Fail) -> Any:
    """A JSON attribute decoded, and of ``kind`` (list or dict)."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError) as err:
        raise fail(key, f"is not valid JSON ({err})") from None
    if not isinstance(value, kind):
        raise fail(key, f"must be a JSON {'list' if kind is list else 'object'}, got {type(value).__name__}")
    return value


def _attr_fingerprint(demo: h5py.Group) -> list[Any]:
    attrs = demo.attrs
    names = (*REQUIRED_EPISODE_ATTRS, "task", "paraphrases", "roles", "camera")
    return [str(attrs[n]) if n in attrs else (LEGACY_TASK if n == "task" else None) for n in names]


def read_array(dataset: h5py.Dataset, index: Any, fail: _Fail | str, key: str) -> np.ndarray:
    """``dataset[index]`` as an array; a failing read (a corrupt compressed chunk, a
    truncated file) becomes a ``DatasetError`` naming the key (and the step)."""
    try:
        return np.asarray(dataset[index])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        fail = _Fail(fail) if isinstance(fail, str) else fail
        step = f" at step {index}" if index != () else ""
        raise fail(key, f"cannot be read{step} (corrupt or truncated data): {type(err).__name__}: {err}") from None


def check_depth(depth: np.ndarray, path: str, key: str) -> None:
    """Refuse depth (m) that is not finite or lies outside the agent camera's range."""
    low, high = AGENT_CAMERA.near - DEPTH_TOLERANCE, AGENT_CAMERA.far + DEPTH_TOLERANCE
    finite = np.isfinite(depth)
    if not finite.all() or depth.min() < low or depth.max() > high:
        bad = float(depth[~finite][0]) if not finite.all() else float(depth.min() if depth.min() < low else depth.max())
        raise _Fail(path)(key, f"holds depth {bad!r} m; depth must be finite and within the camera's "
                               f"[{AGENT_CAMERA.near}, {AGENT_CAMERA.far}] m")
