"""Export a demo file (``vla-gym collect``) as a Minari dataset, Farama's standard format for
offline datasets (https://minari.farama.org): ``vla-gym export --format minari``.

Minari is an optional extra (``pip install "vla_gym[minari]"``): this module imports it
only inside :func:`export_minari`, and nothing on vla_gym's default import path imports
this module.

What an exported episode of ``N`` steps holds (``S`` = image side)::

    observations  Dict  rgb uint8 (N+1, S, S, 3), depth float32 (N+1, S, S, 1) metres,
                        proprio float32 (N+1, 8), instruction uint8 (N+1, 128) UTF-8 zero padded
    actions       float32 (N, 4)   the actions sent to the env: the file's ``executed_actions``
                                   (the expert's action plus its exploration noise)
    rewards       float32 (N,)     the file's rewards
    terminations  bool (N,)        the env ended the episode (the task was done)
    truncations   bool (N,)        the time limit ended it
    infos         expert_action float32 (N+1, 4): the expert's noise-free action (the file's
                  ``actions``, the behaviour-cloning label), NaN at the final observation,
                  where no action is chosen; is_success bool (N+1,); subgoals_done int64 (N+1,)
                  (``infos[t]`` belongs to ``observations[t]``: the reset info, then each step's)
    episode metadata (``dataset.storage.get_episode_metadata``): seed, source_episode
                  (``demo_<i>``), task, instruction, success, target_colour, target_shape

Observations, actions and rewards keep the file's dtypes and values exactly (images are not
JPEG-encoded), and the dataset's env spec is the file's env id with its env kwargs, so
``dataset.recover_environment()`` builds the same env.

**The final observation.** The demo file stores the observation each action was chosen
from, ``obs[0..N-1]``, but not the one after the last step, which Minari needs; nor does it
say whether an episode was terminated or truncated (``dones`` is both). Both are recomputed
by replaying each episode: ``reset(seed)`` with the episode's seed, then ``step`` with its
``executed_actions``. The envs are deterministic, and the replay is checked against the file
at every step (every observation key's dtype and values, the reward, the end of the
episode); if anything differs (a file made by another vla_gym or PyBullet version), the
export stops with :class:`ExportError` rather than invent a final observation. Replaying
costs about as much CPU as collecting the episodes did (one process).

The dataset is built in a hidden folder under the datasets root and moved to its place
when complete: an error or Ctrl-C leaves no partial dataset, and ``overwrite`` replaces an
earlier dataset of the same id only once the new one is complete. Minari stores arrays
uncompressed, so the dataset is several times larger than the demo file.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

import vla_gym
from vla_gym.data.format import OBS_KEYS
from vla_gym.data.validation import read_array
from vla_gym.fileio import TEMP_MARK, sweep_stale_temps, temp_prefix
from vla_gym.rundir import check_output_dir

#: ``vla-gym export --format``: the formats a demo file can be exported to.
EXPORT_FORMATS = ("minari",)
#: How to get the optional dependency, in every "minari is missing" message.
MINARI_INSTALL_HINT = (
    'install the extra: pip install "vla_gym[minari]" (from a source checkout: pip install -e ".[minari]")'
)
#: A Minari dataset id, ``(namespace/)name-vN``: Minari's own pattern (its
#: ``DATASET_ID_RE``) with the version required, which Minari needs to parse the id.
DATASET_ID_RE = re.compile(r"^(?:(?P<namespace>[-_\w][-_\w/]*[-_\w]+)/)?(?P<name>[-_\w]+?)-v(?P<version>\d+)$")
DATASET_ID_EXAMPLE = "vla_gym/pick/expert-v0"
#: Minari's environment variable for its datasets root, and its default root.
DATASETS_PATH_VARIABLE = "MINARI_DATASETS_PATH"
DEFAULT_DATASETS_PATH = Path("~/.minari/datasets")
#: Episodes are handed to Minari in batches of about this many bytes (bounds the memory).
BATCH_BYTES = 256 * 2**20
#: Mark of the hidden folder a dataset is built in (under the datasets root).
STAGING_MARK = ".export"
#: Metadata keys copied from each demo's attributes into the Minari episode metadata.
EPISODE_METADATA_ATTRS = ("task", "instruction", "success", "target_colour", "target_shape")


class ExportError(ValueError):
    """An export refused: a bad dataset id, an existing dataset without ``overwrite``, no
    episode to export, or a demo file whose replay does not reproduce it."""


class MinariNotInstalledError(ImportError):
    """The optional dependency ``minari`` is missing (the message says how to install it)."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_minari` wrote: the dataset id, its folder, the episodes and steps
    exported, the failed episodes left out (0 with ``include_failures``), and the time."""

    dataset_id: str
    path: str
    episodes: int
    steps: int
    skipped_failures: int
    seconds: float

    def summary(self) -> str:
        skipped = f", {self.skipped_failures} failed episode(s) left out" if self.skipped_failures else ""
        return (f"{self.path}: Minari dataset {self.dataset_id!r}, {self.episodes} episodes, {self.steps} steps"
                f"{skipped} in {self.seconds:.1f} s")


def check_dataset_id(dataset_id: str) -> tuple[str | None, str, int]:
    """``(namespace or None, name, version)`` of a Minari dataset id ``(namespace/)name-vN``;
    :class:`ExportError` saying what is allowed otherwise."""
    match = DATASET_ID_RE.fullmatch(dataset_id) if isinstance(dataset_id, str) else None
    namespace = match["namespace"] if match else None
    if match is None or (namespace is not None and "" in namespace.split("/")):
        raise ExportError(
            f"dataset id {dataset_id!r} is not a Minari dataset id: give (namespace/)name-vN, e.g. "
            f"{DATASET_ID_EXAMPLE!r} (letters, digits, '-' and '_'; namespaces separated by single '/'; "
            "a version number after '-v')"
        )
    return namespace, match["name"], int(match["version"])


def import_minari() -> ModuleType:
    """The ``minari`` module, or :class:`MinariNotInstalledError` saying how to install it."""
    try:
        return importlib.import_module("minari")
    except ImportError as err:
        raise MinariNotInstalledError(
            f"exporting to Minari needs the optional package minari, which cannot be imported ({err}); "
            f"{MINARI_INSTALL_HINT}"
        ) from None


def minari_datasets_root(data_path: str | os.PathLike | None = None) -> Path:
    """The Minari datasets root: ``data_path``, else ``$MINARI_DATASETS_PATH``, else
    ``~/.minari/datasets`` (Minari's own rule); checked to be a writable folder."""
    if data_path is not None:
        return check_output_dir(Path(data_path), "--data-path")
    if os.environ.get(DATASETS_PATH_VARIABLE):
        return check_output_dir(Path(os.environ[DATASETS_PATH_VARIABLE]), f"${DATASETS_PATH_VARIABLE}")
    return check_output_dir(DEFAULT_DATASETS_PATH.expanduser(), "the default Minari datasets root")


def export_minari(
    demos_path: str | os.PathLike,
    dataset_id: str,
    *,
    data_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    include_failures: bool = False,
    author: str | None = None,
    author_email: str | None = None,
    code_permalink: str | None = None,
    progress: bool = False,
) -> ExportResult:
    """Write the episodes of the demo file ``demos_path`` as the Minari dataset ``dataset_id``
    (see the module docstring for its content and how the final observations are made).

    Args:
        demos_path: demo file from ``vla-gym collect``.
        dataset_id: ``(namespace/)name-vN``, e.g. ``"vla_gym/pick/expert-v0"``.
        data_path: the Minari datasets root (default: ``$MINARI_DATASETS_PATH``, else
            ``~/.minari/datasets``); the dataset lands in ``data_path/dataset_id``.
        overwrite: replace an existing dataset of that id (else it is refused).
        include_failures: also export the episodes whose ``success`` attribute is false
            (by default only successful ones are).
        author, author_email, code_permalink: Minari metadata (author defaults to "vla_gym").
        progress: show a progress bar over the episodes.

    Raises:
        ExportError: bad id, existing dataset, no episode, or a replay that differs from the file.
        DatasetError: a missing or invalid demo file.
        MinariNotInstalledError: minari is not installed.
    """
    namespace = check_dataset_id(dataset_id)[0]
    minari = import_minari()
    root = minari_datasets_root(data_path)
    target = root / dataset_id
    _check_target(target, dataset_id, overwrite)
    source = _read_source(demos_path, include_failures)
    start = time.perf_counter()
    env = gym.make(source.env_id, **source.env_kwargs)
    try:
        with _staging_root(root, dataset_id) as staging:
            with _datasets_path_set_to(staging):
                dataset = _create_dataset(minari, dataset_id, env, source, author, author_email, code_permalink)
                steps = _write_episodes(dataset, env, source, progress)
            _move_into_place(staging / dataset_id, target, root, namespace)
    finally:
        env.close()
    return ExportResult(dataset_id, str(target), len(source.episodes), steps, source.skipped,
                        time.perf_counter() - start)


# --- the demo file ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Source:
    """The demo file to export: its env, collector record, fingerprint and chosen episodes."""

    path: str
    env_id: str
    env_kwargs: dict[str, Any]
    collector: dict[str, Any]
    fingerprint: str
    episodes: tuple[str, ...]
    skipped: int
    include_failures: bool


def _read_source(demos_path: str | os.PathLike, include_failures: bool) -> _Source:
    """Validate the demo file and choose its episodes (all, or the successful ones)."""
    from vla_gym.data.dataset import demo_file_summary, open_demo_file

    summary = demo_file_summary(demos_path)
    with open_demo_file(demos_path) as handle:
        data = handle["data"]
        collector = json.loads(data.attrs["collector"]) if "collector" in data.attrs else {}
        chosen = [n for n in summary.episodes if include_failures or bool(data[n].attrs["success"])]
        lacking = [n for n in chosen if "executed_actions" not in data[n]]
    if not chosen:
        raise ExportError(
            f"demo file {str(demos_path)!r} has no successful episode among its {len(summary.episodes)}; "
            "export them all with --all-episodes (include_failures=True)"
        )
    if lacking:
        raise ExportError(
            f"demo file {str(demos_path)!r}: {len(lacking)} episode(s) to export (e.g. {lacking[0]}) lack "
            "executed_actions, the actions sent to the env, which the export replays; collect the demos again"
        )
    env_args = summary.env_args
    env_kwargs = {k: v for k, v in env_args["env_kwargs"].items() if k != "render_mode"}  # no GUI in a batch job
    return _Source(str(demos_path), env_args["env_name"], env_kwargs, collector,
                   summary.fingerprint, tuple(chosen), len(summary.episodes) - len(chosen), include_failures)


# --- replay -------------------------------------------------------------------------------
@dataclass
class ReplayedEpisode:
    """One demo as Minari wants it (``N`` steps; shapes in the module docstring)."""

    seed: int
    observations: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    infos: dict[str, np.ndarray]
    metadata: dict[str, Any]

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.observations.values())


def replay_episode(env: Any, demo: h5py.Group, path: str) -> ReplayedEpisode:
    """The demo ``demo`` with its final observation and its terminated/truncated flags, got
    by replaying its ``executed_actions`` from ``reset(seed)`` in ``env`` (the file's env);
    :class:`ExportError` if the replay differs from the file at any step."""
    name = demo.name.rsplit("/", 1)[-1]
    seed = int(demo.attrs["seed"])
    stored = {k: read_array(demo["obs"][k], (), path, f"data/{name}/obs/{k}") for k in OBS_KEYS}
    arrays = {k: read_array(demo[k], (), path, f"data/{name}/{k}") for k in ("actions", "executed_actions",
                                                                              "rewards", "dones")}
    steps = len(arrays["rewards"])
    flags = np.zeros((2, steps), dtype=bool)  # terminated, truncated
    obs, info = env.reset(seed=seed)
    infos = [info]
    for t in range(steps):
        mismatch = _observation_mismatch(obs, stored, t)
        if mismatch is None:
            obs, reward, terminated, truncated, info = env.step(arrays["executed_actions"][t])
            infos.append(info)
            flags[:, t] = terminated, truncated
            mismatch = _step_mismatch(reward, terminated or truncated, arrays, t)
        if mismatch is not None:
            raise _replay_error(path, name, seed, t, mismatch)
    observations = {k: np.concatenate([stored[k], obs[k][None]]) for k in OBS_KEYS}
    expert = np.concatenate([arrays["actions"], np.full((1, arrays["actions"].shape[1]), np.nan, np.float32)])
    return ReplayedEpisode(
        seed=seed, observations=observations, actions=arrays["executed_actions"], rewards=arrays["rewards"],
        terminations=flags[0], truncations=flags[1],
        infos={"expert_action": expert.astype(arrays["actions"].dtype),
               "is_success": np.array([bool(i["is_success"]) for i in infos]),
               "subgoals_done": np.array([int(i["subgoals_done"]) for i in infos], dtype=np.int64)},
        metadata={"source_episode": name, **{k: _plain(demo.attrs[k]) for k in EPISODE_METADATA_ATTRS
                                             if k in demo.attrs}},
    )


def _observation_mismatch(obs: dict[str, np.ndarray], stored: dict[str, np.ndarray], t: int) -> str | None:
    """Which observation key the replay got differently from the file at step ``t`` (None if none)."""
    for key in OBS_KEYS:
        replayed, recorded = np.asarray(obs[key]), stored[key][t]
        if replayed.dtype != recorded.dtype:
            return f"obs/{key} dtype ({replayed.dtype} replayed, {recorded.dtype} in the file)"
        if not np.array_equal(replayed, recorded):
            return f"obs/{key} values"
    return None


def _step_mismatch(reward: float, done: bool, arrays: dict[str, np.ndarray], t: int) -> str | None:
    """What of step ``t``'s outcome the replay got differently from the file (None if nothing)."""
    if np.float32(reward) != arrays["rewards"][t]:
        return f"reward ({reward!r} replayed, {arrays['rewards'][t]!r} in the file)"
    if done != bool(arrays["dones"][t]):
        return f"end of the episode (done={done} replayed, dones={arrays['dones'][t]} in the file)"
    return None


def _replay_error(path: str, name: str, seed: int, step: int, what: str) -> ExportError:
    return ExportError(
        f"demo file {path!r}: replaying {name} (reset seed {seed}, then its executed_actions) does not reproduce "
        f"the file's {what} at step {step}, so its final observation cannot be recomputed; the file was made by "
        f"another vla_gym or PyBullet version or platform (this is vla_gym {vla_gym.__version__}): export it "
        "where it was collected, or collect the demos again here"
    )


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value (numpy scalars to int/float/bool)."""
    return value.item() if isinstance(value, np.generic) else value


# --- the Minari dataset ----------------------------------------------------------------------
def _create_dataset(
    minari: ModuleType, dataset_id: str, env: Any, source: _Source,
    author: str | None, author_email: str | None, code_permalink: str | None,
) -> Any:
    """An empty Minari dataset (in the current datasets root) with the env's spec and spaces."""
    noise = source.collector.get("noise_std")
    policy = source.collector.get("policy", "ScriptedExpert")
    options: dict[str, Any] = {}
    if "jpeg_encoding" in inspect.signature(minari.create_dataset_from_buffers).parameters:
        options["jpeg_encoding"] = False  # lossless: the images must stay exactly as in the file
    with warnings.catch_warnings():
        # Optional metadata left empty on purpose (Minari warns about each one).
        warnings.filterwarnings("ignore", message=r"`(author_email|code_permalink)` is set to None")
        return minari.create_dataset_from_buffers(
            dataset_id, [], env=env, eval_env=env,
            algorithm_name=f"vla_gym {policy}" + (f" (noise_std={noise})" if noise is not None else ""),
            author=author or "vla_gym", author_email=author_email, code_permalink=code_permalink,
            description=_description(source), requirements=[f"vla-gym=={vla_gym.__version__}"], **options,
        )


def _description(source: _Source) -> str:
    chosen = "all episodes" if source.include_failures else "the successful episodes"
    return (
        f"Scripted-expert demonstrations on {source.env_id} (env kwargs {json.dumps(source.env_kwargs)}), exported "
        f"by vla_gym {vla_gym.__version__} from the demo file {str(Path(source.path).resolve())!r} (content "
        f"fingerprint {source.fingerprint}, collected by {json.dumps(source.collector)}): {chosen}, "
        f"{len(source.episodes)} of {len(source.episodes) + source.skipped}. Observations are the env's Dict "
        "(rgb uint8 (S, S, 3), depth float32 (S, S, 1) metres, proprio float32 (8,), instruction uint8 (128,) "
        "UTF-8 zero padded). actions are the actions sent to the env (the expert's action plus exploration "
        "noise); infos['expert_action'] is the expert's noise-free action (the behaviour-cloning label; NaN "
        "at the final observation). The demo file does not store each episode's final observation: it was "
        "recomputed by replaying the episode from its seed with its actions, which reproduced every recorded "
        "observation, reward and done flag exactly."
    )


def _write_episodes(dataset: Any, env: Any, source: _Source, progress: bool) -> int:
    """Replay the chosen episodes into ``dataset`` in batches; returns the steps written."""
    from minari.data_collector import EpisodeBuffer
    from tqdm.auto import tqdm

    batch: list[Any] = []
    metadata: list[dict[str, Any]] = []
    pending = steps = 0
    from vla_gym.data.dataset import open_demo_file

    with open_demo_file(source.path) as handle, tqdm(
        total=len(source.episodes), unit="ep", desc="export", disable=not progress
    ) as bar:
        for name in source.episodes:
            episode = replay_episode(env, handle["data"][name], source.path)
            batch.append(EpisodeBuffer(
                seed=episode.seed, observations=episode.observations, actions=episode.actions,
                rewards=episode.rewards, terminations=episode.terminations, truncations=episode.truncations,
                infos=episode.infos,
            ))
            metadata.append(episode.metadata)
            pending += episode.nbytes
            steps += len(episode.rewards)
            if pending >= BATCH_BYTES:
                dataset.update_dataset_from_buffer(batch)
                batch, pending = [], 0
            bar.update(1)
    if batch:
        dataset.update_dataset_from_buffer(batch)
    dataset.storage.update_episode_metadata(metadata, range(len(metadata)))
    return steps


# --- where the dataset is written -------------------------------------------------------------
def _check_target(target: Path, dataset_id: str, overwrite: bool) -> None:
    """Refuse to replace a dataset without ``overwrite``, or anything that is not a dataset."""
    if not target.exists() and not target.is_symlink():
        return
    if not (target.is_dir() and not target.is_symlink() and (target / "data").is_dir()):
        raise ExportError(
            f"{str(target)!r} exists and is not a Minari dataset (no data/ folder), so dataset {dataset_id!r} cannot "
            "be written there; choose another --name or --data-path"
        )
    if not overwrite:
        raise ExportError(
            f"a Minari dataset {dataset_id!r} already exists in {str(target)!r}; pass --overwrite "
            "(overwrite=True) to replace it, or give another --name (e.g. a higher -vN)"
        )


def _staging_key(root: Path, dataset_id: str) -> Path:
    """The path whose temporaries (:mod:`vla_gym.fileio`) are this dataset's staging folders."""
    return root / (dataset_id.replace("/", "__") + STAGING_MARK)


@contextlib.contextmanager
def _staging_root(root: Path, dataset_id: str) -> Iterator[Path]:
    """A hidden Minari datasets root under ``root`` to build the dataset in; removed on the
    way out (the dataset has been moved out of it by then, or the export failed). Those
    left by killed exports of the same id are removed first."""
    key = _staging_key(root, dataset_id)
    sweep_stale_temps(key)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=temp_prefix(key), suffix=TEMP_MARK))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _datasets_path_set_to(path: Path) -> Iterator[None]:
    """Point Minari (which reads ``$MINARI_DATASETS_PATH`` on every call) at ``path``."""
    previous = os.environ.get(DATASETS_PATH_VARIABLE)
    os.environ[DATASETS_PATH_VARIABLE] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(DATASETS_PATH_VARIABLE, None)
        else:
            os.environ[DATASETS_PATH_VARIABLE] = previous


def _move_into_place(built: Path, target: Path, root: Path, namespace: str | None) -> None:
    """Make ``namespace`` a Minari namespace of ``root`` and move the built dataset to
    ``target``; an earlier dataset there is moved aside into the staging folder first (and
    back if the move fails), so it is removed with it only once the new one is in place."""
    from minari.namespace import create_namespace, list_local_namespaces

    if namespace is not None:
        with _datasets_path_set_to(root):
            if namespace not in list_local_namespaces():
                create_namespace(namespace)
    aside = built.parent / f"{built.name}.replaced"
    if target.exists():
        os.replace(target, aside)
    try:
        os.replace(built, target)
    except BaseException:
        if aside.exists():
            os.replace(aside, target)
        raise
