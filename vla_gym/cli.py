"""The ``vla-gym`` command line: thin argument parsing over importable functions."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym

import vla_gym  # noqa: F401  (registers the env ids)
import numpy as np

from vla_gym.cli_checks import (
    COEFFICIENT,
    EPISODES,
    FRACTION,
    LEARNING_RATE,
    MAX_BATCH_SIZE,
    MAX_EPISODES,
    MAX_COEF,
    MAX_EPOCHS,
    MAX_N_ENVS,
    MAX_N_STEPS,
    MAX_NOISE_STD,
    MAX_SCALE,
    MAX_TARGET_KL,
    MAX_TIMESTEPS,
    MAX_WORKERS,
    SEED,
    OptionError,
    WORKERS,
    check_args,
    env_kwargs_option,
    float_option,
    int_option,
)
from vla_gym.envs import DEFAULT_ENV_ID, ENV_IDS
from vla_gym.envs.spaces import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from vla_gym.envs.registration import TASK_ENV_IDS
from vla_gym.visualize import observation_panel, put_text_band, save_png


def render_observation(
    env_id: str, seed: int, out: str, scale: int = 4, target: str | None = None, instruction: str | None = None,
    image_size: int = 84, view: str = "agent",
) -> str:
    """Reset ``env_id`` with ``seed`` and save what the agent sees (or the viewer camera) as PNG.

    Returns the instruction of the episode.
    """
    image, text = _render_one(env_id, seed, scale, target, instruction, image_size, view)
    save_png(out, image)
    return text


#: Lines of text above each panel of :func:`render_grid` (rearrange's instructions are long).
GRID_TEXT_LINES = 2


def render_grid(env_ids: Sequence[str], seed: int, out: str, view: str = "viewer", columns: int = 3) -> list[str]:
    """One panel per env id (reset with ``seed``), the instruction above each, tiled in
    ``columns`` columns into one PNG. Returns the instructions."""
    panels, texts = [], []
    for env_id in env_ids:
        image, text = _render_one(env_id, seed, view=view)
        panels.append(put_text_band(image, f"{env_id}: {text}", lines=GRID_TEXT_LINES))
        texts.append(text)
    height, width = max(p.shape[0] for p in panels), max(p.shape[1] for p in panels)
    panels = [np.pad(p, ((0, height - p.shape[0]), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in panels]
    blank = np.full_like(panels[0], 255)
    rows = [panels[i : i + columns] for i in range(0, len(panels), columns)]
    rows[-1] = rows[-1] + [blank] * (columns - len(rows[-1])) if len(rows) > 1 else rows[-1]
    save_png(out, np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0))
    return texts


def _render_one(
    env_id: str, seed: int, scale: int = 4, target: str | None = None, instruction: str | None = None,
    image_size: int = 84, view: str = "agent",
) -> tuple[np.ndarray, str]:
    options = {k: v for k, v in (("target", target), ("instruction", instruction)) if v is not None}
    env = gym.make(env_id, image_size=image_size, render_mode="rgb_array" if view == "viewer" else None)
    try:
        obs, info = env.reset(seed=seed, options=options)
        image = env.render() if view == "viewer" else observation_panel(obs, scale=scale)
        return image, info["instruction"]
    finally:
        env.close()


#: ``vla-gym render --env tasks``: one panel per task (its sparse-reward id).
ALL_TASKS = "tasks"


def _env_list(text: str) -> list[str]:
    """argparse type: an env id, a comma-separated list of ids, or ``tasks`` (every task's id)."""
    if text == ALL_TASKS:
        return list(TASK_ENV_IDS.values())
    ids = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [i for i in ids if i not in ENV_IDS]
    if not ids or unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: choose an env id, a comma-separated list of them, or {ALL_TASKS!r}; ids: {sorted(ENV_IDS)}"
        )
    return ids


#: Exit codes: bad arguments (argparse's), Ctrl-C and SIGTERM (the shell's 128 + signal).
EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM
SCALE = int_option(1, MAX_SCALE)
IMAGE_SIZE = int_option(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)


class _Parser(argparse.ArgumentParser):
    """Errors on one line (``prog: error: ...``) instead of the usage block, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: the jobs clean up (and save ``last.pt``) as on Ctrl-C."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while the command runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _add_overwrite(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace an earlier {what} at --out (the new one is built aside and swapped in when complete)")


def _render_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default=[DEFAULT_ENV_ID], type=_env_list,
                   help=f"an env id, a comma-separated list (one panel each), or {ALL_TASKS!r} for every task")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--out", default="obs.png")
    p.add_argument("--scale", type=SCALE, default=4, help=f"upscaling factor of the saved picture (1-{MAX_SCALE})")
    p.add_argument("--image-size", type=IMAGE_SIZE, default=84, help="observation side in pixels")
    p.add_argument("--target", default=None, help="colour of the goal object (must be in the scene)")
    p.add_argument("--instruction", default=None, help="replace the generated instruction")
    p.add_argument("--view", choices=("agent", "viewer"), default="agent",
                   help="agent: RGB and depth the policy sees; viewer: the third-person rgb_array view")


def _ray_address(text: str) -> str:
    """argparse type: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` (checked without importing Ray)."""
    from vla_gym.backends import BackendError, check_ray_address

    try:
        return check_ray_address(text)
    except BackendError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _backend_arguments(p: argparse.ArgumentParser, what: str = "episodes") -> None:
    from vla_gym.backends import BACKENDS

    p.add_argument("--backend", choices=BACKENDS, default="local",
                   help=f"where the {what} run: local (worker processes here, the default) or ray "
                        '(one Ray actor per --workers, 0: one per CPU of the cluster; needs pip install -e ".[ray]")')
    p.add_argument("--ray-address", type=_ray_address, default=None,
                   help="with --backend ray: auto (the Ray started here by `ray start`) or HOST:PORT of a "
                        "running cluster; default: start Ray on this machine for the job")


def _collect_arguments(p: argparse.ArgumentParser) -> None:
    from vla_gym.data.collect import DEFAULT_EPISODES, DEFAULT_NOISE_STD

    p.add_argument("--env", default=DEFAULT_ENV_ID, choices=sorted(ENV_IDS))
    p.add_argument("--env-kwargs", type=env_kwargs_option, default=None, help="JSON object of extra env kwargs")
    count = p.add_mutually_exclusive_group()
    count.add_argument("--episodes", type=EPISODES, default=None,
                       help=f"episodes to keep, each of the task the env draws (default {DEFAULT_EPISODES})")
    count.add_argument("--episodes-per-task", type=EPISODES, default=None,
                       help="balanced: exactly this many episodes of each of the env's tasks (e.g. on "
                            "VLAMultiTask-v0; on a single-task env the same as --episodes)")
    p.add_argument("--workers", type=WORKERS, default=2, help="worker processes (<= 1: in this process)")
    p.add_argument("--seed", type=SEED, default=0, help="episode i tried uses seed + i")
    p.add_argument("--noise-std", type=float_option(0.0, MAX_NOISE_STD), default=DEFAULT_NOISE_STD,
                   help="expert action noise std")
    p.add_argument("--keep-failures", action="store_true", help="keep failed episodes too (success=False)")
    p.add_argument("--valid-fraction", type=float_option(0.0, 1.0, high_open=True), default=0.1,
                   help="share of episodes in mask/valid")
    p.add_argument("--out", required=True,
                   help="HDF5 file to write (replaced atomically); with --shards, a directory")
    p.add_argument("--shards", action="store_true",
                   help="write --out as a directory of shard files plus index.h5 (read like one demo file)")
    p.add_argument("--shard-episodes", type=int_option(1, MAX_EPISODES), default=None,
                   help="with --shards: attempts per shard (default 50)")
    _backend_arguments(p)
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted collection into --out (its shards wait beside it in .OUT.partial/, "
                        "or in the --shards directory)")
    _add_overwrite(p, "demo file (or interrupted collection)")
    p.add_argument("--no-progress", action="store_true")


def _collect_grounding_arguments(p: argparse.ArgumentParser) -> None:
    from vla_gym.data.grounding import DEFAULT_FRAMES, DEFAULT_MAX_MOVES, DEFAULT_SEED, MAX_FRAMES, MAX_MOVES_LIMIT

    p.add_argument("--env", default=DEFAULT_ENV_ID, choices=sorted(ENV_IDS),
                   help="the demos' env (its tasks name the objects)")
    p.add_argument("--env-kwargs", type=env_kwargs_option, default=None, help="JSON object of extra env kwargs")
    p.add_argument("--frames", type=int_option(1, MAX_FRAMES), default=DEFAULT_FRAMES,
                   help="scenes to record, one frame each")
    p.add_argument("--max-moves", type=int_option(0, MAX_MOVES_LIMIT), default=DEFAULT_MAX_MOVES,
                   help="random arm moves after each reset (0 to this many)")
    p.add_argument("--workers", type=WORKERS, default=2, help="worker processes (<= 1: in this process)")
    p.add_argument("--seed", type=SEED, default=DEFAULT_SEED,
                   help="frame i comes from reset(seed=seed + i); keep it apart from demo and evaluation seeds")
    p.add_argument("--out", required=True, help="HDF5 file to write (written under a temporary name, then renamed)")
    _add_overwrite(p, "grounding file")
    p.add_argument("--no-progress", action="store_true")


def _train_bc_arguments(p: argparse.ArgumentParser) -> None:
    from vla_gym.agents.bc import BCConfig
    from vla_gym.agents.network import MAX_FOVEA, WORD_CONTEXTS

    defaults = BCConfig(data="")
    p.add_argument("--data", required=True, help="demo file from `vla-gym collect`")
    p.add_argument("--out", default=defaults.out, help="run directory (policy.pt, last.pt, tb/, ...)")
    p.add_argument("--epochs", type=int_option(1, MAX_EPOCHS), default=defaults.epochs)
    p.add_argument("--batch-size", type=int_option(1, MAX_BATCH_SIZE), default=defaults.batch_size)
    p.add_argument("--lr", type=LEARNING_RATE, default=defaults.lr)
    p.add_argument("--contrastive-coef", type=COEFFICIENT, default=defaults.contrastive_coef,
                   help="weight of the InfoNCE vision-language loss (0: off)")
    p.add_argument("--grounding-data", default=None,
                   help="grounding file from `vla-gym collect-grounding`: scenes labelled with where the named "
                        "object is, added to every step's auxiliary losses (no actions)")
    p.add_argument("--grounding-coef", type=COEFFICIENT, default=defaults.grounding_coef,
                   help="weight of the grounding frames' losses")
    p.add_argument("--grounding-batch-size", type=int_option(1, MAX_BATCH_SIZE), default=defaults.grounding_batch_size,
                   help="grounding frames per training step")
    p.add_argument("--gripper-repeat", type=int_option(1, 100), default=defaults.gripper_repeat,
                   help="repeat the frames around a grasp or release this many times per epoch (1: off)")
    p.add_argument("--gripper-window", type=int_option(0, 100), default=defaults.gripper_window,
                   help="frames at most this many steps from a gripper change count as around it")
    p.add_argument("--language-encoder", default=defaults.network["language_encoder"],
                   help="'words' (a word encoder trained with the policy) or a sentence-transformers model, by "
                        "local directory or hub name (e.g. sentence-transformers/all-MiniLM-L6-v2), used frozen; "
                        "needs pip install -e \".[language]\"")
    p.add_argument("--word-context", default=defaults.network["word_context"], choices=list(WORD_CONTEXTS),
                   help="how the word encoder reads an instruction: gru (in order: tells 'the red cube on the blue "
                        "cube' from its reverse) or bag (order-free attention pooling; enough for pick)")
    p.add_argument("--destination-head", action=argparse.BooleanOptionalAction,
                   default=defaults.network["destination_head"],
                   help="also supervise where the object must go (a receptacle, zone or stack base; from the demo "
                        "file's privileged subgoal states) besides which object to move")
    p.add_argument("--fovea", type=int_option(0, MAX_FOVEA, " (0: none)"), default=defaults.network["fovea"],
                   help="side (px) of a full-resolution glimpse around where the instruction's attention points, "
                        "to place the named object more finely than the stride-4 trunk (0: none; e.g. 16)")
    p.add_argument("--rollout-every", type=int_option(0, MAX_EPOCHS, " (0: no rollouts)"),
                   default=defaults.rollout_every, help="epochs between env checks (0: none)")
    p.add_argument("--rollout-episodes", type=int_option(1, 10_000, " (no rollouts: --rollout-every 0)"),
                   default=defaults.rollout_episodes)
    p.add_argument("--env", default=None, choices=sorted(ENV_IDS), help="must match the demo file's env")
    p.add_argument("--env-kwargs", type=env_kwargs_option, default=None,
                   help="must match the demo file's env kwargs (checked against its env when --env is not given)")
    p.add_argument("--device", default=defaults.device, help="auto | cpu | cuda[:N]")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--lazy", action="store_true", help="read frames from the file as needed, not into RAM")
    p.add_argument("--num-workers", type=int_option(0, MAX_WORKERS), default=defaults.num_workers,
                   help="DataLoader workers")
    p.add_argument("--seed", type=SEED, default=defaults.seed)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    _add_overwrite(p, "run")
    p.add_argument("--no-progress", action="store_true")


def _train_ppo_arguments(p: argparse.ArgumentParser) -> None:
    from vla_gym.agents.ppo import VEC_ENVS, PPOConfig

    d = PPOConfig()
    p.add_argument("--init", default=None, help="BC checkpoint to start from (policy.pt of train-bc); "
                   "without it PPO trains the network from scratch")
    p.add_argument("--env", default=d.env_id, choices=sorted(ENV_IDS), help="VLAPickDense-v0 for the dense reward")
    p.add_argument("--env-kwargs", type=env_kwargs_option, default=None, help="JSON object of extra env kwargs")
    p.add_argument("--out", default=d.out, help="run directory (policy.pt, last.pt, tb/, metrics.jsonl)")
    p.add_argument("--timesteps", type=int_option(1, MAX_TIMESTEPS), default=d.timesteps, help="env steps in total")
    p.add_argument("--n-envs", type=int_option(1, MAX_N_ENVS), default=d.n_envs, help="parallel envs")
    p.add_argument("--vec-env", choices=VEC_ENVS, default=d.vec_env, help="auto: subproc when n-envs > 1")
    p.add_argument("--n-steps", type=int_option(1, MAX_N_STEPS), default=d.n_steps, help="steps per env per rollout")
    p.add_argument("--batch-size", type=int_option(1, MAX_BATCH_SIZE), default=d.batch_size)
    p.add_argument("--n-epochs", type=int_option(1, 1000), default=d.n_epochs, help="passes over each rollout")
    p.add_argument("--lr", type=LEARNING_RATE, default=d.lr, help="actor and trunk learning rate")
    p.add_argument("--critic-lr", type=LEARNING_RATE, default=d.critic_lr)
    p.add_argument("--target-kl", type=float_option(0.0, MAX_TARGET_KL, hint=" (0: no early stop)"),
                   default=d.target_kl, help="early-stop threshold (0: none)")
    p.add_argument("--ent-coef", type=float_option(0.0, MAX_COEF), default=d.ent_coef)
    p.add_argument("--critic-warmup-rollouts", type=int_option(0, MAX_EPOCHS), default=d.critic_warmup_rollouts,
                   help="first rollouts that train only the critic")
    p.add_argument("--bc-coef", type=COEFFICIENT, default=d.bc_coef, help="initial weight of the BC term (0: off)")
    p.add_argument("--bc-decay", type=FRACTION, default=d.bc_decay, help="BC weight factor per update")
    p.add_argument("--detach-critic", action="store_true",
                   help="the value loss trains only the critic head, not the shared trunk")
    p.add_argument("--bc-data", default=None, help="demo file of the BC term (default: the init checkpoint's)")
    p.add_argument("--sil-coef", type=COEFFICIENT, default=d.sil_coef,
                   help="weight of the self-imitation term on the agent's own successful episodes (0: off)")
    p.add_argument("--shaping", type=COEFFICIENT, default=d.shaping,
                   help="weight of potential-based shaping by the task's dense progress (0: the env's reward alone)")
    p.add_argument("--start-log-std", type=float_option(-20.0, 2.0), default=None,
                   help="explore from this log-std instead of the one BC fitted")
    p.add_argument("--trunk-lr-scale", type=float_option(0.0, 10.0), default=d.trunk_lr_scale,
                   help="trunk (vision, language, fusion) learning rate / --lr; 0 freezes it")
    p.add_argument("--aux-epochs", type=int_option(0, 1000), default=d.aux_epochs,
                   help="passes of the privileged auxiliary losses (where the goal object is) over each rollout, "
                        "training the trunk alone; needs --trunk-lr-scale 0 (0: off)")
    p.add_argument("--aux-lr", type=LEARNING_RATE, default=d.aux_lr, help="learning rate of those passes")
    p.add_argument("--eval-every", type=int_option(0, MAX_TIMESTEPS), default=d.eval_every,
                   help="env steps between evaluations")
    p.add_argument("--eval-episodes", type=int_option(1, 10_000), default=d.eval_episodes)
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda[:N]")
    p.add_argument("--seed", type=SEED, default=d.seed)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    _add_overwrite(p, "run")
    p.add_argument("--no-progress", action="store_true")


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, help="checkpoint path, or 'scripted' / 'random'")
    p.add_argument("--env", default=DEFAULT_ENV_ID, choices=sorted(ENV_IDS))
    p.add_argument("--env-kwargs", type=env_kwargs_option, default=None,
                   help='JSON object of env kwargs, e.g. \'{"instruction_split": "test"}\'')
    p.add_argument("--episodes", type=EPISODES, default=100)
    p.add_argument("--seed", type=SEED, default=100000, help="first seed (episode i uses seed + i)")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--target", default=None, help="goal colour in every episode (seeds whose scene has it)")
    goal.add_argument("--swap-target", action="store_true",
                      help="grounding check: same scenes, another object as the goal")
    p.add_argument("--json", default=None, help="write the result as JSON here")
    p.add_argument("--video", default=None, help="record the first episodes to this .mp4")
    p.add_argument("--video-episodes", type=int_option(1, 1000), default=3)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--workers", type=WORKERS, default=1, help="worker processes (<= 1: in this process)")
    _backend_arguments(p)
    p.add_argument("--no-progress", action="store_true")


def _benchmark_arguments(p: argparse.ArgumentParser) -> None:
    from vla_gym.benchmark import ALL_TASKS, BENCHMARK_SEED, MAX_EPISODES, SPLITS
    from vla_gym.envs.tasks import TASKS

    p.add_argument("--policies", required=True,
                   help="comma-separated: scripted, random, checkpoint paths, or label=path")
    p.add_argument("--episodes", type=int_option(1, MAX_EPISODES), default=200,
                   help="episodes per policy, task and split")
    p.add_argument("--out", default="reports",
                   help="directory of benchmark.md, benchmark.json, benchmark.png, benchmark_heatmap.png")
    p.add_argument("--seed", type=SEED, default=BENCHMARK_SEED,
                   help=f"first seed (default {BENCHMARK_SEED}: used by no training stage)")
    p.add_argument("--splits", default=",".join(s.name for s in SPLITS), help="comma-separated split names")
    p.add_argument("--env", default=DEFAULT_ENV_ID, choices=sorted(ENV_IDS),
                   help="the env id of every episode (not with --tasks)")
    p.add_argument("--tasks", default=None,
                   help=f"comma-separated tasks of {', '.join(TASKS)}, or {ALL_TASKS!r}: each runs on its own env id "
                        "on the same seeds; the report adds a table per task, the mean over the tasks and a heat map "
                        "(default: the --env id only)")
    p.add_argument("--env-kwargs", type=env_kwargs_option, default=None,
                   help="JSON object of base env kwargs (not the split keys); image_size defaults to the checkpoints'")
    p.add_argument("--workers", type=WORKERS, default=None, help="worker processes (default: all cores)")
    p.add_argument("--device", default="cpu", help="torch device of the network policies in the workers")
    _backend_arguments(p)
    _add_overwrite(p, "benchmark made with other arguments")
    p.add_argument("--no-progress", action="store_true")


def _export_arguments(p: argparse.ArgumentParser) -> None:
    from vla_gym.data.minari_export import DATASET_ID_EXAMPLE, EXPORT_FORMATS

    p.add_argument("demos", metavar="DEMOS", help="demo file from `vla-gym collect`")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS,
                   help='minari: a Minari dataset (https://minari.farama.org; needs pip install "vla_gym[minari]")')
    p.add_argument("--name", required=True, type=_dataset_id,
                   help=f"dataset id (namespace/)name-vN, e.g. {DATASET_ID_EXAMPLE}")
    p.add_argument("--data-path", default=None,
                   help="Minari datasets root (default: $MINARI_DATASETS_PATH, else ~/.minari/datasets)")
    p.add_argument("--all-episodes", action="store_true",
                   help="also export the episodes the expert failed (default: the successful ones only)")
    p.add_argument("--author", default=None, help="author in the dataset's metadata (default: vla_gym)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing dataset of that id (the new one is built aside and moved in when complete)")
    p.add_argument("--no-progress", action="store_true")


def _dataset_id(text: str) -> str:
    """argparse type: a Minari dataset id (checked without importing minari)."""
    from vla_gym.data.minari_export import ExportError, check_dataset_id

    try:
        check_dataset_id(text)
    except ExportError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _run_render(args: argparse.Namespace) -> None:
    if len(args.env) > 1:
        if args.target is not None or args.instruction is not None:
            raise ValueError("--target and --instruction apply to one env; give one --env id with them")
        for env_id, text in zip(args.env, render_grid(args.env, args.seed, args.out, view=args.view)):
            print(f"{args.out}: {env_id} seed {args.seed}: {text!r}")
        return
    text = render_observation(
        args.env[0], args.seed, args.out, scale=args.scale, target=args.target,
        instruction=args.instruction, image_size=args.image_size, view=args.view,
    )
    print(f"{args.out}: {args.env[0]} seed {args.seed}: {text!r}")


def _run_collect(args: argparse.Namespace) -> None:
    from vla_gym.data.collect import CollectConfig, collect_demos

    config = CollectConfig(
        out=args.out, env_id=args.env, episodes=args.episodes, workers=args.workers, seed=args.seed,
        noise_std=args.noise_std, keep_failures=args.keep_failures, valid_fraction=args.valid_fraction,
        env_kwargs=args.env_kwargs, backend=args.backend, ray_address=args.ray_address, shards=args.shards,
        shard_episodes=args.shard_episodes, episodes_per_task=args.episodes_per_task,
    )
    print(collect_demos(config, progress=not args.no_progress, resume=args.resume, keep_partial=True).summary())


def _run_collect_grounding(args: argparse.Namespace) -> None:
    from vla_gym.data.grounding import GroundingConfig, collect_grounding_frames

    config = GroundingConfig(out=args.out, env_id=args.env, frames=args.frames, seed=args.seed,
                             max_moves=args.max_moves, workers=args.workers, env_kwargs=args.env_kwargs)
    print(collect_grounding_frames(config, progress=not args.no_progress))


def _run_export(args: argparse.Namespace) -> None:
    from vla_gym.data.minari_export import MinariNotInstalledError, export_minari

    try:
        result = export_minari(
            args.demos, args.name, data_path=args.data_path, overwrite=args.overwrite,
            include_failures=args.all_episodes, author=args.author, progress=not args.no_progress,
        )
    except MinariNotInstalledError as err:  # a missing optional extra is the user's to install: one line
        raise OptionError(f"--format {args.format}: {err}") from None
    print(result.summary())


@contextlib.contextmanager
def _run_directory(args: argparse.Namespace) -> Iterator[Path]:
    """Where a train command writes its run: ``--out``, or (``--overwrite`` of an earlier run)
    a directory beside it that replaces it once the run completes."""
    if not args.staged:
        yield Path(args.out)
        return
    from vla_gym.rundir import staged_directory

    with staged_directory(args.out) as build:
        yield build


class _RunConfig(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


def _fix_config_out(build: Path, config: _RunConfig) -> None:
    """``config.json`` of a staged run names ``--out``, where the run ends up (as train_bc and
    train_ppo write it)."""
    from vla_gym.fileio import atomic_write_text

    atomic_write_text(build / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")


def _run_train_bc(args: argparse.Namespace) -> None:
    """Also the entry of ``torchrun ... -m vla_gym.agents.bc``: every rank runs it; rank 0 prints."""
    from vla_gym.agents.bc import BCConfig, train_bc
    from vla_gym.agents.distributed import distributed_context
    from vla_gym.agents.network import NetworkConfig

    context = distributed_context()
    if context.enabled and args.staged:
        raise ValueError(
            f"--overwrite is not available under torchrun ({context.world_size} processes would each stage "
            f"a run); remove {args.out!r} or give a new --out"
        )

    config = BCConfig(
        data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        contrastive_coef=args.contrastive_coef, grounding_data=args.grounding_data,
        grounding_coef=args.grounding_coef, grounding_batch_size=args.grounding_batch_size,
        gripper_repeat=args.gripper_repeat, gripper_window=args.gripper_window,
        rollout_every=args.rollout_every,
        rollout_episodes=args.rollout_episodes, env_id=args.env, env_kwargs=args.env_kwargs,
        device=args.device, amp=not args.no_amp, in_memory=not args.lazy, num_workers=args.num_workers,
        seed=args.seed, resume=args.resume, progress=not args.no_progress,
        network=NetworkConfig(
            language_encoder=args.language_encoder, word_context=args.word_context,
            destination_head=args.destination_head, fovea=args.fovea,
        ).to_dict(),
    )
    with _run_directory(args) as build:
        result = train_bc(dataclasses.replace(config, out=str(build)))
        if args.staged:
            _fix_config_out(build, config)
    if not context.is_main:
        return
    print(
        f"{Path(args.out) / 'policy.pt'}: {result.steps} steps over {result.epochs} epochs in "
        f"{result.train_seconds:.0f} s ({result.samples_per_second:.0f} samples/s); best: "
        + ", ".join(f"{k} {v:.4g}" for k, v in result.best.items() if isinstance(v, float))
    )


def _run_train_ppo(args: argparse.Namespace) -> None:
    from vla_gym.agents.ppo import PPOConfig, train_ppo

    config = PPOConfig(
        init=args.init, out=args.out, env_id=args.env, env_kwargs=args.env_kwargs, timesteps=args.timesteps,
        n_envs=args.n_envs, vec_env=args.vec_env, n_steps=args.n_steps, batch_size=args.batch_size,
        n_epochs=args.n_epochs, lr=args.lr, critic_lr=args.critic_lr,
        target_kl=args.target_kl if args.target_kl > 0 else None, ent_coef=args.ent_coef,
        critic_warmup_rollouts=args.critic_warmup_rollouts, bc_coef=args.bc_coef, bc_decay=args.bc_decay,
        bc_data=args.bc_data, detach_critic=args.detach_critic, shaping=args.shaping, sil_coef=args.sil_coef,
        start_log_std=args.start_log_std, trunk_lr_scale=args.trunk_lr_scale, aux_epochs=args.aux_epochs,
        aux_lr=args.aux_lr, eval_every=args.eval_every,
        eval_episodes=args.eval_episodes, device=args.device, seed=args.seed, resume=args.resume,
        progress=not args.no_progress,
    )
    with _run_directory(args) as build:
        result = train_ppo(dataclasses.replace(config, out=str(build)))
        if args.staged:
            _fix_config_out(build, config)
    best = result.best
    print(
        f"{Path(args.out) / 'policy.pt'}: {result.timesteps} env steps, {result.steps_per_second:.0f} env steps/s "
        f"including updates; best eval success {best['success_rate']:.1%} at step {best['timesteps']}"
    )


def _run_evaluate(args: argparse.Namespace) -> None:
    from vla_gym.evaluation import run_evaluation

    result = run_evaluation(
        args.policy, env_id=args.env, episodes=args.episodes, seed=args.seed, json_path=args.json,
        video_path=args.video, video_episodes=args.video_episodes, device=args.device,
        env_kwargs=args.env_kwargs, target=args.target, swap_target=args.swap_target,
        progress=not args.no_progress, workers=args.workers, backend=args.backend, ray_address=args.ray_address,
    )
    print(f"{args.policy} on {args.env}: {result.summary()}")
    print(result.per_target_summary())


def _run_benchmark(args: argparse.Namespace) -> None:
    from vla_gym.benchmark import BenchmarkConfig, run_benchmark

    config = BenchmarkConfig(
        policies=args.policies, out=args.out, episodes=args.episodes, seed=args.seed,
        splits=[s.strip() for s in args.splits.split(",") if s.strip()], env_id=args.env, tasks=args.tasks,
        env_kwargs=args.env_kwargs or {}, device=args.device, progress=not args.no_progress,
        overwrite=args.overwrite, backend=args.backend, ray_address=args.ray_address,
        **({} if args.workers is None else {"workers": args.workers}),
    )
    report = run_benchmark(config)
    print(f"{args.out}: benchmark.md, benchmark.json, benchmark.png, benchmark_heatmap.png "
          f"({report['seconds']:.0f} s)")
    rates = report.get("mean_over_tasks") or {
        label: {split: cell["success_rate"] for split, cell in by_split.items()}
        for label, by_split in report["results"].items()
    }
    if "mean_over_tasks" in report:
        print(f"  mean over {len(report['tasks'])} tasks:")
    for label, by_split in rates.items():
        print(f"  {label}: " + ", ".join(f"{split} {rate:.1%}" for split, rate in by_split.items()))


RUNNERS = {
    "render": _run_render, "collect": _run_collect, "collect-grounding": _run_collect_grounding,
    "train-bc": _run_train_bc, "train-ppo": _run_train_ppo,
    "evaluate": _run_evaluate, "benchmark": _run_benchmark, "export": _run_export,
}
#: Each command: its one-line help and the function that adds its options.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "render": ("save a PNG of an observation (RGB | depth), or of several envs' scenes", _render_arguments),
    "collect": ("record scripted-expert demos into an HDF5 file", _collect_arguments),
    "collect-grounding": ("record scenes labelled with where the named object is (BC's grounding frames)",
                          _collect_grounding_arguments),
    "train-bc": ("behaviour-clone the VLA actor-critic from a demo file", _train_bc_arguments),
    "train-ppo": ("fine-tune a BC checkpoint with PPO (stable-baselines3)", _train_ppo_arguments),
    "evaluate": ("success rate of a policy on fixed seeds (95%% Wilson interval)", _evaluate_arguments),
    "benchmark": ("success rates of several policies over the generalisation splits", _benchmark_arguments),
    "export": ("write a demo file as a Minari dataset (optional extra: vla_gym[minari])", _export_arguments),
}
#: What a command's interruption leaves, and how to go on.
RESUME_HINTS = {
    "collect": " (continue with --resume)",
    "train-bc": " (continue with --resume)",
    "train-ppo": " (continue with --resume)",
    "benchmark": " (rerun the same command to continue)",
    "export": " (no dataset was written; an earlier one of that id is unchanged)",
}
#: Errors that are the user's input (a bad option, file or path): one line, exit code 2.
USER_ERRORS = (ValueError, TypeError, OSError)


def _interrupted_message(args: argparse.Namespace, err: KeyboardInterrupt) -> str:
    what = "terminated" if isinstance(err, Terminated) else "interrupted"
    if getattr(args, "staged", False):
        hint = f" (the earlier run in {args.out} is unchanged)"
    elif args.command == "benchmark" and args.overwrite:
        hint = f" (an earlier benchmark in {args.out} is unchanged)"
    else:
        hint = RESUME_HINTS.get(args.command, "")
    return f"vla-gym {args.command}: {what}{hint}\n"


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``vla-gym`` parser. Only the command named in ``argv`` gets its options (the
    others' defaults import torch, which a ``collect`` or ``render`` does not need); with
    ``argv=None``, ``sys.argv[1:]``."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((token for token in argv if not token.startswith("-")), None)
    parser = _Parser(prog="vla-gym", description=vla_gym.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vla-gym {vla_gym.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        if name == chosen:
            add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        with _sigterm_raises():
            check_args(args)  # every path and cross-check before any work
            RUNNERS[args.command](args)
    except USER_ERRORS as err:
        parser.exit(EXIT_USAGE, f"vla-gym {args.command}: error: {_one_line(err)}\n")
    except KeyboardInterrupt as err:
        code = EXIT_TERMINATED if isinstance(err, Terminated) else EXIT_INTERRUPTED
        parser.exit(code, _interrupted_message(args, err))
    return 0


def train_agent_main(argv: Sequence[str] | None = None) -> int:
    """``train-agent``: demos -> BC -> PPO -> evaluation report, resumable stage by stage."""
    from vla_gym.pipeline import PRESETS, AgentConfig, train_agent
    from vla_gym.rundir import check_output_dir

    parser = _Parser(
        prog="train-agent",
        description="Scripted demos -> behaviour cloning -> PPO fine-tuning -> evaluation report "
        "(OUT/report.md). Rerun the same command to resume: finished stages are skipped.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help="quick: minutes on a laptop CPU; full: the configuration behind the README's figures; "
                        "multitask: one policy for every task of VLAMultiTask-v0, a report row per task")
    parser.add_argument("--out", default="runs/agent", help="run directory")
    parser.add_argument("--env", default=None, choices=sorted(ENV_IDS))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (BC and PPO)")
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--demo-workers", type=WORKERS, default=None, help="collection worker processes")
    parser.add_argument("--eval-workers", type=int_option(1, MAX_WORKERS), default=None,
                        help="evaluation worker processes")
    parser.add_argument("--eval-episodes", type=EPISODES, default=None, help="report episodes per policy and split")
    _backend_arguments(parser, "demo collection and evaluation")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        with _sigterm_raises():
            check_output_dir(args.out, "--out")
            config = AgentConfig.from_preset(
                args.preset, out=args.out, env_id=args.env, device=args.device, seed=args.seed,
                demo_workers=args.demo_workers, eval_workers=args.eval_workers, eval_episodes=args.eval_episodes,
                backend=args.backend, ray_address=args.ray_address, progress=not args.no_progress,
            )
            report = train_agent(config)
    except USER_ERRORS as err:
        parser.exit(EXIT_USAGE, f"train-agent: error: {_one_line(err)}\n")
    except KeyboardInterrupt as err:
        code = EXIT_TERMINATED if isinstance(err, Terminated) else EXIT_INTERRUPTED
        what = "terminated" if isinstance(err, Terminated) else "interrupted"
        parser.exit(code, f"train-agent: {what} (rerun the same command to resume)\n")
    rows = report.get("mean_over_tasks") or report["results"]
    what = " (mean over tasks)" if report.get("mean_over_tasks") else ""
    print(f"{args.out}/report.md{what}: " + ", ".join(
        f"{r['policy']} {r['split']} {r.get('mean_success_rate', r.get('success_rate')):.1%}" for r in rows
    ) + f"; total {report['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
