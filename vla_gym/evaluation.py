"""Roll out any policy with ``predict(obs, deterministic=True) -> (action, state)`` on fixed
seeds and report its success rate with a 95 % Wilson interval, per task and per target
colour too.

:func:`evaluate` runs a policy on an env (optionally recording an MP4 of the first
episodes); :func:`policy_from_spec` turns a command-line string (``"scripted"``,
``"random"`` or a checkpoint path) into a policy; :func:`run_evaluation` does both for
``vla-gym evaluate`` and writes the result as JSON.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import gymnasium as gym
import numpy as np

from vla_gym.data.format import LEGACY_TASK
from vla_gym.envs.registration import DEFAULT_ENV_ID
from vla_gym.envs.scene import COLOURS
from vla_gym.fileio import FILE_MODE, atomic_write_text, make_temp_file, sweep_stale_temps
from vla_gym.rundir import check_output_file
from vla_gym.visualize import put_text_band

Z_95 = 1.959963984540054  # two-sided 95 % normal quantile

VIDEO_SUFFIX = ".mp4"
VIDEO_FOURCC = "mp4v"
#: Frames per second of evaluation videos: half the env's 20 Hz control rate (slow motion).
VIDEO_FPS = 10
#: The last frame of each recorded episode, with its outcome, is held this many frames (1 s).
VIDEO_HOLD_FRAMES = VIDEO_FPS
#: Text lines written above each video frame (instruction; episode, seed and outcome).
VIDEO_INSTRUCTION_LINES = 2  # rearrange's instructions take two lines at 480 px
VIDEO_TEXT_LINES = VIDEO_INSTRUCTION_LINES + 1
JSON_INDENT = 2
#: With ``run_evaluation(target=...)``, give up after probing this many seeds per episode.
MAX_SEEDS_PROBED_PER_EPISODE = 50

POLICY_SPECS = ("scripted", "random")

#: Reset options: one dict for every episode, or ``options(seed, index) -> dict | None``.
ResetOptions = Mapping[str, Any] | Callable[[int, int], Mapping[str, Any] | None]


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ValueError(f"successes={successes} must lie in [0, trials={trials}]")
    phat = successes / trials
    denom = 1 + z * z / trials
    centre = (phat + z * z / (2 * trials)) / denom
    half = z * math.sqrt(phat * (1 - phat) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class EvalResult:
    """Outcome of :func:`evaluate`.

    Attributes:
        episodes: number of episodes run.
        successes: episodes that ended in success.
        mean_length: mean episode length in env steps.
        per_target: per target colour, ``{"episodes": int, "successes": int}``.
        episodes_log: one record per episode, in order: ``seed`` (int), ``task`` (its
            name), ``target`` (the goal's colour), ``instruction`` (str), ``success``
            (bool), ``length`` (env steps), ``subgoals_done`` and ``num_subgoals`` (ints).
    """

    episodes: int
    successes: int
    mean_length: float
    per_target: dict[str, dict[str, int]] = field(default_factory=dict)
    episodes_log: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_episodes(cls, log: Sequence[Mapping[str, Any]]) -> EvalResult:
        """The result of these episode records (:attr:`episodes_log` entries, in order)."""
        per_target: dict[str, dict[str, int]] = {}
        for record in log:
            cell = per_target.setdefault(record["target"], {"episodes": 0, "successes": 0})
            cell["episodes"] += 1
            cell["successes"] += bool(record["success"])
        lengths = sum(int(r["length"]) for r in log)
        return cls(len(log), sum(bool(r["success"]) for r in log), lengths / max(len(log), 1), per_target,
                   [dict(r) for r in log])

    def per_task_stats(self) -> dict[str, dict[str, Any]]:
        """Per task (sorted): episodes, successes, success_rate, ci95 [lo, hi], and the mean
        number of subgoals done and of subgoals (CALVIN-style progress)."""
        stats: dict[str, dict[str, Any]] = {}
        for task in sorted({record.get("task", LEGACY_TASK) for record in self.episodes_log}):
            records = [r for r in self.episodes_log if r.get("task", LEGACY_TASK) == task]
            n, k = len(records), sum(bool(r["success"]) for r in records)
            stats[task] = {
                "episodes": n,
                "successes": k,
                "success_rate": k / n,
                "ci95": list(wilson_interval(k, n)),
                "mean_subgoals_done": float(np.mean([r.get("subgoals_done", int(r["success"])) for r in records])),
                "num_subgoals": float(np.mean([r.get("num_subgoals", 1) for r in records])),
            }
        return stats

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        """95 % Wilson interval of the success rate."""
        return wilson_interval(self.successes, self.episodes)

    def per_target_stats(self) -> dict[str, dict[str, Any]]:
        """Per target colour (sorted): episodes, successes, success_rate and ci95 [lo, hi]."""
        stats = {}
        for colour in sorted(self.per_target):
            cell = self.per_target[colour]
            n, k = int(cell["episodes"]), int(cell["successes"])
            stats[colour] = {
                "episodes": n,
                "successes": k,
                "success_rate": k / n if n else 0.0,
                "ci95": list(wilson_interval(k, n)),
            }
        return stats

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python (JSON-ready) totals, per-target breakdown and the episode log."""
        return {
            "episodes": self.episodes,
            "successes": self.successes,
            "success_rate": self.success_rate,
            "ci95": list(self.interval),
            "mean_length": self.mean_length,
            "per_target": self.per_target_stats(),
            "per_task": self.per_task_stats(),
            "episodes_log": [dict(record) for record in self.episodes_log],
        }

    def summary(self) -> str:
        lo, hi = self.interval
        return (
            f"success {self.successes}/{self.episodes} = {self.success_rate:.1%} "
            f"(95% CI {lo:.1%}-{hi:.1%}), mean episode length {self.mean_length:.1f}"
        )

    def per_target_summary(self) -> str:
        """Text table: one row per target colour with its success rate and 95 % interval."""
        header = f"{'target':<8} {'episodes':>8} {'successes':>9} {'success':>8}  95% CI"
        rows = [header]
        for colour, s in self.per_target_stats().items():
            lo, hi = s["ci95"]
            rows.append(
                f"{colour:<8} {s['episodes']:>8} {s['successes']:>9} {s['success_rate']:>8.1%}  {lo:.1%}-{hi:.1%}"
            )
        return "\n".join(rows)

    def save_json(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write ``{"metadata": metadata, **to_dict()}`` as indented JSON, atomically.

        Parent directories are created; the file appears under ``path`` only once it is
        complete (written to a temporary name in the same directory, then renamed).
        """
        payload = {"metadata": dict(metadata or {}), **self.to_dict()}
        text = json.dumps(payload, indent=JSON_INDENT, default=json_default) + "\n"
        return atomic_write_text(Path(path), text)


def json_default(value: Any) -> Any:
    """Make numpy scalars/arrays, paths, tuples and sets JSON-serialisable."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def _remove_quietly(path: str | os.PathLike) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _check_video_path(video_path: str | os.PathLike) -> Path:
    path = Path(video_path)
    if path.suffix.lower() != VIDEO_SUFFIX:
        raise ValueError(f"video_path={os.fspath(video_path)!r} must end in {VIDEO_SUFFIX!r} (MP4 video)")
    check_output_file(path, "video_path")  # a directory or an unwritable place fails before the episodes
    return path


class _VideoRecorder:
    """Writes RGB frames to an MP4 via a temporary name; :meth:`finish` renames it into place."""

    def __init__(self, path: Path, fps: float = VIDEO_FPS) -> None:
        self.path, self.fps = path, fps
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._tmp: str | None = None
        self._size: tuple[int, int] | None = None

    def write(self, rgb: np.ndarray) -> None:
        """Append one uint8 RGB frame (H, W, 3); every frame must have the first's size."""
        height, width = rgb.shape[:2]
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            sweep_stale_temps(self.path)
            self._tmp = str(make_temp_file(self.path, VIDEO_SUFFIX))
            self._size = (width, height)
            self._writer = cv2.VideoWriter(self._tmp, cv2.VideoWriter_fourcc(*VIDEO_FOURCC), self.fps, self._size)
            if not self._writer.isOpened():
                self.abort()
                raise RuntimeError(f"OpenCV could not open an {VIDEO_FOURCC!r} video writer for {self.path}")
        if (width, height) != self._size:
            raise ValueError(f"video frame size {width}x{height} differs from the first frame's {self._size}")
        self._writer.write(np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV wants BGR
        self.frames += 1

    def finish(self) -> Path:
        if self._writer is None or self._tmp is None:
            raise RuntimeError(f"no frames were recorded for {self.path}")
        self._writer.release()
        self._writer = None
        os.chmod(self._tmp, FILE_MODE)
        os.replace(self._tmp, self.path)
        self._tmp = None
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._tmp is not None:
            _remove_quietly(self._tmp)
            self._tmp = None


def _render_frame(env: gym.Env) -> np.ndarray:
    frame = env.render()
    if frame is None:
        raise ValueError(
            "env.render() returned None; to record a video make the env with render_mode='rgb_array' "
            f"(it has render_mode={getattr(env, 'render_mode', None)!r})"
        )
    return np.asarray(frame, dtype=np.uint8)


def _annotate(frame: np.ndarray, instruction: str, status: str) -> np.ndarray:
    """``frame`` (H, W, 3) with text bands above it: the instruction (wrapped to
    :data:`VIDEO_INSTRUCTION_LINES` lines), then ``status``."""
    return put_text_band(put_text_band(frame, status), instruction, lines=VIDEO_INSTRUCTION_LINES)


def _reset_options(options: ResetOptions | None, seed: int, index: int) -> dict[str, Any] | None:
    chosen = options(seed, index) if callable(options) else options
    if chosen is not None and not isinstance(chosen, Mapping):
        raise TypeError(f"reset options for seed {seed} must be a dict or None, got {type(chosen).__name__}")
    return None if chosen is None else dict(chosen)


def evaluate(
    env: gym.Env,
    policy_factory: Callable[[gym.Env], Any],
    seeds: Iterable[int],
    deterministic: bool = True,
    options: ResetOptions | None = None,
    video_path: str | os.PathLike | None = None,
    video_episodes: int = 3,
    progress: bool = False,
) -> EvalResult:
    """Run one episode per seed; the policy is built once by ``policy_factory(env)``.

    Episodes end on termination or truncation, so ``env`` needs a time limit
    (``gym.make`` adds the registered one).

    Args:
        env: a vla_gym env (its ``info`` holds ``task``, ``target``, ``instruction``,
            ``is_success``, ``subgoals_done`` and ``num_subgoals``).
        policy_factory: ``env -> policy`` with ``predict(obs, deterministic=...)``
            returning ``(action, state)``.
        seeds: one episode per seed, in order.
        deterministic: passed to ``predict``.
        options: reset options, either one dict for every episode or a callable
            ``options(seed, index) -> dict | None`` (index counts episodes from 0).
        video_path: if given, an ``.mp4`` of the first ``video_episodes`` episodes
            rendered by ``env.render()`` (the env needs ``render_mode="rgb_array"``),
            at :data:`VIDEO_FPS`, with the instruction and episode/seed/outcome above
            each frame.
        video_episodes: episodes to record (>= 1 when ``video_path`` is given).
        progress: show a tqdm bar with the running success rate.
    """
    seeds = [int(s) for s in seeds]
    if options is not None and not (callable(options) or isinstance(options, Mapping)):
        raise TypeError(f"options must be a dict, a callable (seed, index) -> dict | None, or None; got {options!r}")
    recorder: _VideoRecorder | None = None
    if video_path is not None:
        path = _check_video_path(video_path)
        if video_episodes < 1:
            raise ValueError(f"video_episodes must be >= 1 when video_path is given, got {video_episodes}")
        if not seeds:
            raise ValueError("video_path needs at least one seed to record")
        recorder = _VideoRecorder(path)
    policy = policy_factory(env)
    bar = _progress_bar(len(seeds)) if progress else None
    successes = 0
    log: list[dict[str, Any]] = []
    try:
        for index, seed in enumerate(seeds):
            obs, info = env.reset(seed=seed, options=_reset_options(options, seed, index))
            if hasattr(policy, "seed_episode"):  # e.g. random actions: drawn per episode, whoever runs it
                policy.seed_episode(seed)
            colour, instruction = info["target"]["colour"], info["instruction"]
            record = recorder is not None and index < video_episodes
            episode = f"episode {index + 1} seed {seed}"
            if record:
                frame = _render_frame(env)
                recorder.write(_annotate(frame, instruction, f"{episode} step 0"))
            length, done = 0, False
            while not done:
                action, _ = policy.predict(obs, deterministic=deterministic)
                obs, _, terminated, truncated, info = env.step(action)
                length += 1
                done = terminated or truncated
                if record:
                    frame = _render_frame(env)
                    if not done:
                        recorder.write(_annotate(frame, instruction, f"{episode} step {length}"))
            success = bool(info["is_success"])
            if record:
                outcome = _annotate(frame, instruction, f"{episode}: {'success' if success else 'fail'}")
                for _ in range(VIDEO_HOLD_FRAMES):
                    recorder.write(outcome)
                if index == min(video_episodes, len(seeds)) - 1:
                    recorder.finish()  # the video is complete: write it now, not after all episodes
            successes += success
            log.append(
                {
                    "seed": seed,
                    "task": info["task"],
                    "target": colour,
                    "instruction": instruction,
                    "success": success,
                    "length": length,
                    "subgoals_done": int(info["subgoals_done"]),
                    "num_subgoals": int(info["num_subgoals"]),
                }
            )
            if bar is not None:
                bar.set_postfix(success=f"{successes / (index + 1):.1%}", refresh=False)
                bar.update(1)
    finally:
        if recorder is not None:
            recorder.abort()
        if bar is not None:
            bar.close()
    return EvalResult.from_episodes(log)


def _progress_bar(total: int):
    """A tqdm bar over ``total`` episodes, or None (with a warning) without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        warnings.warn("progress=True needs tqdm (pip install tqdm); evaluating without a progress bar", stacklevel=3)
        return None
    return tqdm(total=total, desc="evaluate", unit="episode")


class RandomPolicy:
    """Uniformly random actions from ``action_space`` (seeded), with SB3-style ``predict``."""

    def __init__(self, action_space: gym.Space, seed: int | None = 0) -> None:
        self.action_space = action_space
        self.action_space.seed(seed)

    def seed_episode(self, seed: int) -> None:
        """Draw this episode's actions from ``seed`` (:func:`evaluate` calls it at each reset),
        so an episode's actions do not depend on the episodes run before it in this process."""
        self.action_space.seed(int(seed))

    def predict(
        self, observation: Any = None, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[Any, Any]:
        return self.action_space.sample(), state


def policy_from_spec(spec: str, env: gym.Env, device: str = "auto", seed: int = 0) -> Any:
    """Build a policy from a command-line string.

    ``"scripted"``: :class:`~vla_gym.envs.experts.ScriptedExpert` (privileged expert for
    whatever task each episode runs);
    ``"random"``: :class:`RandomPolicy` on ``env.action_space`` seeded with ``seed``;
    anything else: a checkpoint file loaded by ``vla_gym.agents.load_policy(spec, device=device)``;
    a :class:`~vla_gym.agents.checkpoint.VocabularyWarning` when its word vocabulary lacks
    words of ``env``'s tasks.
    """
    if spec == "scripted":
        from vla_gym.envs.experts import ScriptedExpert

        return ScriptedExpert(env)
    if spec == "random":
        return RandomPolicy(env.action_space, seed=seed)
    if not Path(spec).exists():
        raise FileNotFoundError(
            f"policy {spec!r} is not one of {list(POLICY_SPECS)} and no checkpoint file exists at that path"
        )
    from vla_gym.agents.checkpoint import check_task_vocabulary, load_policy

    policy = load_policy(spec, device=device)
    wanted = {k: space.shape for k, space in policy.observation_space.spaces.items()}
    given = {k: space.shape for k, space in env.observation_space.spaces.items()}
    if wanted != given:
        raise ValueError(
            f"checkpoint {spec!r} was trained on observations shaped {wanted}, but this env gives {given} "
            f"(its env kwargs were {policy.checkpoint_meta['env']['env_kwargs']})"
        )
    # A warning, not an error: measuring a policy on tasks whose words it never learnt is a
    # fair (transfer) experiment, as long as the reader is told.
    env_name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
    check_task_vocabulary(spec, policy.network_config, env.unwrapped.config.tasks, env_name=env_name)
    return policy


def swapped_target_options(env: gym.Env) -> Callable[[int, int], dict[str, Any]]:
    """Reset options for a grounding check: on each seed's own scene (and task), the goal
    becomes the next object after the seed's default target (in spawn order) that can be
    the task's target (not playing another role, and describable by the task), and the
    instruction names it.

    Probes each seed with plain resets first (the scene depends on the seed alone).
    """

    def options(seed: int, index: int) -> dict[str, Any]:
        _, info = env.reset(seed=seed)
        colours = [obj["colour"] for obj in info["objects"]]
        taken = {r["colour"] for name, r in info["roles"].items() if name != "target" and "shape" in r}
        start = colours.index(info["target"]["colour"])
        for step in range(1, len(colours)):
            colour = colours[(start + step) % len(colours)]
            if colour in taken:
                continue
            try:
                env.reset(seed=seed, options={"target": colour})
            except ValueError:  # e.g. no spatial relation picks that object out
                continue
            return {"target": colour}
        raise ValueError(f"seed {seed}: no other object of the scene can be the {info['task']} task's target")

    return options


def _first_seeds(accept: Callable[[int], bool], first_seed: int, episodes: int, what: str) -> list[int]:
    """The first ``episodes`` seeds from ``first_seed`` up that ``accept``; a ``ValueError``
    saying how many of the probed seeds ``what`` (e.g. "have a 'red' object") otherwise."""
    seeds: list[int] = []
    limit = first_seed + episodes * MAX_SEEDS_PROBED_PER_EPISODE
    seed = first_seed
    while len(seeds) < episodes:
        if seed >= limit:
            raise ValueError(f"only {len(seeds)} of the seeds {first_seed}..{limit - 1} {what}")
        if accept(seed):
            seeds.append(seed)
        seed += 1
    return seeds


def _swappable_seeds(options: Callable[[int, int], dict[str, Any]], first_seed: int, episodes: int) -> list[int]:
    """The first ``episodes`` seeds from ``first_seed`` up whose scene has another object
    that can be the goal (``options`` from :func:`swapped_target_options`); e.g. a stack
    scene whose only other flat object is the base has none."""

    def swappable(seed: int) -> bool:
        try:
            options(seed, 0)
        except ValueError:
            return False
        return True

    return _first_seeds(swappable, first_seed, episodes, "let another object be the goal")


def _seeds_with_target(env: gym.Env, colour: str, first_seed: int, episodes: int) -> list[int]:
    """The first ``episodes`` seeds from ``first_seed`` up whose scene holds a ``colour`` object.

    Probes each seed with a plain reset (the scene depends on the seed alone).
    """

    def has_colour(seed: int) -> bool:
        _, info = env.reset(seed=seed)
        return any(obj["colour"] == colour for obj in info["objects"])

    return _first_seeds(has_colour, first_seed, episodes, f"have a {colour!r} object")


#: Seeds per backend item: several per worker, so the workers finish close together.
CHUNKS_PER_WORKER = 4
_WORKER: dict[str, Any] = {}


def _init_eval_worker(files: dict[str, bytes] | None = None) -> None:
    """A backend worker: torch on one thread (the workers share the cores); ``files``: the
    checkpoint shipped to a Ray worker (see :func:`vla_gym.backends.ship_files`)."""
    import torch

    from vla_gym.backends import local_copies

    torch.set_num_threads(1)
    _WORKER.clear()
    _WORKER["paths"] = local_copies(files)


def _close_eval_worker() -> None:
    env = _WORKER.pop("env", None)
    if env is not None:
        env.close()
    for key in ("key", "policy"):
        _WORKER.pop(key, None)


def _evaluate_chunk(item: dict[str, Any]) -> list[dict[str, Any]]:
    """Episode records of one chunk of seeds (run by a backend worker; env and policy are
    built once per worker and job)."""
    job = item["job"]
    key = json.dumps([job["env_id"], job["env_kwargs"], job["policy"], job["device"], job["seed"]], sort_keys=True)
    if _WORKER.get("key") != key:
        _close_eval_worker()
        env = gym.make(job["env_id"], **job["env_kwargs"])
        spec = _WORKER.get("paths", {}).get(job["policy"], job["policy"])
        _WORKER.update(key=key, env=env, policy=policy_from_spec(spec, env, device=job["device"], seed=job["seed"]))
    env, start = _WORKER["env"], item["start"]
    if job["swap_target"]:
        swapped = swapped_target_options(env)
        options: ResetOptions | None = lambda seed, index: swapped(seed, start + index)  # noqa: E731
    else:
        options = {"target": job["target"]} if job["target"] is not None else None
    return evaluate(env, lambda e: _WORKER["policy"], item["seeds"], options=options).episodes_log


def _evaluate_on_backend(
    job: dict[str, Any], seeds: list[int], first_index: int, workers: int, backend: str, ray_address: str | None,
    progress: bool,
) -> list[dict[str, Any]]:
    """Episode records of ``seeds`` (in order), run in chunks on a backend."""
    from vla_gym.backends import make_backend, ship_files

    if not seeds:
        return []
    files = ship_files([job["policy"]]) if backend == "ray" else None  # Ray nodes need not share a disk
    size = max(1, math.ceil(len(seeds) / (CHUNKS_PER_WORKER * max(workers, 1))))
    items = [{"job": job, "seeds": seeds[i:i + size], "start": first_index + i} for i in range(0, len(seeds), size)]
    logs: list[list[dict[str, Any]]] = [[] for _ in items]
    done = successes = 0
    with make_backend(backend, workers, ray_address) as runner:  # a backend that cannot start fails here
        bar = _progress_bar(len(seeds)) if progress else None
        try:
            for index, log in runner.imap_unordered(_evaluate_chunk, items, setup=_init_eval_worker,
                                                    setup_args=(files,), teardown=_close_eval_worker):
                logs[index] = log
                done, successes = done + len(log), successes + sum(bool(r["success"]) for r in log)
                if bar is not None:
                    bar.set_postfix(success=f"{successes / done:.1%}", refresh=False)
                    bar.update(len(log))
        finally:
            if bar is not None:
                bar.close()
    return [record for log in logs for record in log]


def run_evaluation(
    policy: str,
    env_id: str = DEFAULT_ENV_ID,
    episodes: int = 100,
    seed: int = 100000,
    json_path: str | os.PathLike | None = None,
    video_path: str | os.PathLike | None = None,
    video_episodes: int = 3,
    device: str = "auto",
    env_kwargs: Mapping[str, Any] | None = None,
    target: str | None = None,
    progress: bool = True,
    swap_target: bool = False,
    workers: int = 1,
    backend: str = "local",
    ray_address: str | None = None,
) -> EvalResult:
    """Evaluate the policy ``policy`` (see :func:`policy_from_spec`) on ``env_id``, deterministically.

    ``swap_target=True`` is the grounding check: the same seeded scenes, each with another
    object as the goal (see :func:`swapped_target_options`); seeds whose scene has no other
    possible goal are passed over, so the seeds are the first ``episodes`` that have one.

    Seeds are ``range(seed, seed + episodes)``. With ``target`` (a colour name), the goal of
    every episode is the object of that colour (reset option ``target``), and the seeds are
    instead the first ``episodes`` seeds from ``seed`` up whose scene holds such an object.
    Writes ``json_path`` (result plus metadata: env_id, env_kwargs, policy, seeds, ...) and
    an MP4 of the first ``video_episodes`` episodes to ``video_path`` if given. Backs
    ``vla-gym evaluate``.

    With ``workers > 1`` or ``backend="ray"`` (see :mod:`vla_gym.backends`) the seeds are
    run in chunks by the backend's workers (the video's episodes in this process); each
    episode depends on its seed alone, so the result is the same.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ValueError(f"episodes must be an int >= 1, got {episodes!r}")
    if check_output_file(json_path, "json_path") is not None:  # a bad output path fails now, not after the episodes
        sweep_stale_temps(json_path)
    if video_path is not None:
        _check_video_path(video_path)
        if video_episodes < 1:
            raise ValueError(f"video_episodes must be >= 1 when video_path is given, got {video_episodes}")
    if target is not None and swap_target:
        raise ValueError("give either target (one goal colour for every episode) or swap_target, not both")
    if target is not None and target not in COLOURS:
        raise ValueError(f"target={target!r} is not a colour; choose one of {list(COLOURS)}")
    env_kwargs = dict(env_kwargs or {})
    if "render_mode" in env_kwargs:
        raise ValueError("env_kwargs must not set render_mode: it is 'rgb_array' when video_path is given, else None")
    # Importing this module imported ``vla_gym``, which registered the env ids.
    env = gym.make(env_id, render_mode="rgb_array" if video_path is not None else None, **env_kwargs)
    try:
        if swap_target:
            options = swapped_target_options(env)
            seeds = _swappable_seeds(options, seed, episodes)
        elif target is None:
            seeds, options = list(range(seed, seed + episodes)), None
        else:
            seeds, options = _seeds_with_target(env, target, seed, episodes), {"target": target}
        if workers <= 1 and backend == "local":
            result = evaluate(
                env,
                lambda e: policy_from_spec(policy, e, device=device, seed=seed),
                seeds,
                deterministic=True,
                options=options,
                video_path=video_path,
                video_episodes=video_episodes,
                progress=progress,
            )
        else:
            job = {"policy": policy, "env_id": env_id, "env_kwargs": env_kwargs, "device": device, "seed": seed,
                   "swap_target": swap_target, "target": target}
            recorded = min(video_episodes, len(seeds)) if video_path is not None else 0
            head = evaluate(env, lambda e: policy_from_spec(policy, e, device=device, seed=seed), seeds[:recorded],
                            options=options, video_path=video_path, video_episodes=video_episodes) if recorded else None
            log = list(head.episodes_log) if head is not None else []
            log += _evaluate_on_backend(job, seeds[recorded:], recorded, workers, backend, ray_address, progress)
            result = EvalResult.from_episodes(log)
    finally:
        env.close()
    if json_path is not None:
        metadata = {
            "env_id": env_id,
            "env_kwargs": env_kwargs,
            "policy": policy,
            "device": device,
            "seed_first": seeds[0],
            "seed_last": seeds[-1],
            "target": target,
            "swap_target": swap_target,
            "deterministic": True,
            "video_path": None if video_path is None else os.fspath(video_path),
        }
        result.save_json(json_path, metadata)
    return result
