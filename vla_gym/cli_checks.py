"""The validation layer of the ``vla-gym`` and ``train-agent`` command lines.

Every option is checked before any work starts, and a bad one ends the command with exit
code 2 and one line naming the option, the value and what is allowed:

* numbers, at parse time (argparse ``type=``): :func:`int_option` and :func:`float_option`
  (integers in a range, floats finite and in a range; ``nan`` and ``inf`` are refused);
* ``--env-kwargs``, at parse time: a JSON object without ``render_mode`` (the commands are
  batch jobs: PyBullet's GUI would hang or kill them without a display), then, with the env
  id known, every key and value as the env checks them (:func:`check_env_kwargs`);
* paths, after parsing (:func:`check_args`): inputs exist; outputs are of the right kind
  (a file where a file is written, a directory where a run directory is) and writable;
  run directories are claimed (:func:`vla_gym.rundir.claim_run_directory`: an earlier run
  needs ``--resume`` or ``--overwrite``); and the cross-checks between options.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vla_gym.rundir import check_output_dir, check_output_file, claim_run_directory

#: Seeds go to numpy, torch and Gymnasium; the largest int32 suits them all (with the
#: offsets the stages add, see :data:`vla_gym.benchmark.BENCHMARK_SEED`).
MAX_SEED = 2**31 - 1
#: Episodes per collection, evaluation or benchmark cell (and per rollout check).
MAX_EPISODES = 100_000
MAX_WORKERS = 256
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 1 << 16
MAX_TIMESTEPS = 10**10
MAX_N_ENVS = 256
MAX_N_STEPS = 1 << 16
#: ``render --scale``: the upscaling factor, and the longest side of the saved panel.
MAX_SCALE = 16
MAX_RENDER_SIDE = 4096
MAX_LR = 1.0
MAX_COEF = 1e4
MAX_NOISE_STD = 10.0
MAX_TARGET_KL = 10.0
VIDEO_SUFFIX = ".mp4"
#: Env kwargs no command accepts: PyBullet's GUI in a batch job.
FORBIDDEN_ENV_KWARGS = ("render_mode",)


class OptionError(ValueError):
    """A command-line option with a value the command refuses."""


def int_option(low: int, high: int, hint: str = "") -> Callable[[str], int]:
    """argparse type: an integer from ``low`` to ``high``."""
    allowed = f"must be an integer from {low} to {high}{hint}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; {allowed}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not allowed; {allowed}")
        return value

    parse.__name__ = "integer"
    return parse


def float_option(
    low: float, high: float, low_open: bool = False, high_open: bool = False, hint: str = ""
) -> Callable[[str], float]:
    """argparse type: a finite number from ``low`` to ``high`` (each bound excluded when open)."""
    allowed = (f"must be a finite number {'>' if low_open else '>='} {low:g} and {'<' if high_open else '<='} "
               f"{high:g}{hint}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; {allowed}") from None
        above = low < value if low_open else low <= value
        below = value < high if high_open else value <= high
        if not (math.isfinite(value) and above and below):
            raise argparse.ArgumentTypeError(f"{text} is not allowed; {allowed}")
        return value

    parse.__name__ = "number"
    return parse


SEED = int_option(0, MAX_SEED)
EPISODES = int_option(1, MAX_EPISODES)
WORKERS = int_option(0, MAX_WORKERS, " (0 or 1: in this process)")
LEARNING_RATE = float_option(0.0, MAX_LR, low_open=True)
COEFFICIENT = float_option(0.0, MAX_COEF)
FRACTION = float_option(0.0, 1.0)


def env_kwargs_option(text: str) -> dict[str, Any]:
    """argparse type: a JSON object of env kwargs, without the ones no command accepts."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} must be a JSON object like '{{\"image_size\": 64}}'")
    forbidden = sorted(set(value) & set(FORBIDDEN_ENV_KWARGS))
    if forbidden:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {forbidden[0]} is not allowed: the commands are batch jobs without a window "
            "(evaluate records what the policy does with --video)"
        )
    return value


def check_env_kwargs(env_id: str, env_kwargs: dict[str, Any] | None, option: str = "--env-kwargs") -> None:
    """Every key and value of ``env_kwargs`` as ``gym.make(env_id, **env_kwargs)`` checks them."""
    if not env_kwargs:
        return
    from vla_gym.data.format import env_config_dict

    try:
        env_config_dict(env_id, env_kwargs)
    except (TypeError, ValueError) as err:
        raise OptionError(f"{option} {json.dumps(env_kwargs)} for {env_id}: {err}") from None


def check_input_file(path: str | os.PathLike | None, option: str) -> None:
    if path is not None and not Path(path).is_file():
        what = "is a directory" if Path(path).is_dir() else "does not exist"
        raise OptionError(f"{option} {str(path)!r} {what}; give an existing file")


def _checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    from vla_gym.agents.checkpoint import read_checkpoint

    return read_checkpoint(path)["meta"]


def _check_run_kind(out: Path, command: str) -> None:
    """``--resume`` of ``command`` continues a run of the same command."""
    last = out / "last.pt"
    if not last.is_file():
        return
    is_ppo = "ppo" in _checkpoint_meta(last)
    if command == "train-ppo" and not is_ppo:
        raise OptionError(
            f"--out {str(out)!r} holds a train-bc run (its last.pt has no PPO state), which train-ppo cannot "
            f"resume; give train-ppo another --out, with --init {str(out / 'policy.pt')!r} to start from it"
        )
    if command == "train-bc" and is_ppo:
        raise OptionError(
            f"--out {str(out)!r} holds a train-ppo run, which train-bc cannot resume; give train-bc another --out"
        )


def _checks_render(args: argparse.Namespace) -> None:
    check_output_file(args.out, "--out")
    side = args.image_size * args.scale * 2  # RGB and depth side by side
    if args.view == "agent" and side > MAX_RENDER_SIDE:
        raise OptionError(
            f"--scale {args.scale} with --image-size {args.image_size} makes a {side} px wide picture; "
            f"the widest allowed is {MAX_RENDER_SIDE} px (2 x image size x scale)"
        )


def check_backend(args: argparse.Namespace) -> None:
    """``--ray-address`` goes with ``--backend ray``, and Ray is installed for it."""
    backend, address = getattr(args, "backend", "local"), getattr(args, "ray_address", None)
    if address is not None and backend != "ray":
        raise OptionError(f"--ray-address {address!r} needs --backend ray")
    if backend == "ray":
        from vla_gym.backends import check_ray_reachable, import_ray

        import_ray()
        check_ray_reachable(address)


def check_demo_input(path: str | os.PathLike | None, option: str) -> None:
    """A demo file, or a shard directory from ``vla-gym collect --shards`` (its content is
    checked when read)."""
    if path is None:
        return
    if not Path(path).exists():
        raise OptionError(f"{option} {str(path)!r} does not exist; give a demo file or shard directory "
                          "from `vla-gym collect`")
    from vla_gym.data.format import SHARD_INDEX_FILE

    if Path(path).is_dir() and not (Path(path) / SHARD_INDEX_FILE).is_file():
        raise OptionError(f"{option} {str(path)!r} is a directory without {SHARD_INDEX_FILE}; give a demo file or "
                          "the directory of a finished `vla-gym collect --shards`")


def _checks_collect(args: argparse.Namespace) -> None:
    from vla_gym.data.collect import claim_collect_output

    if args.shard_episodes is not None and not args.shards:
        raise OptionError("--shard-episodes needs --shards (a single --out file is not sharded)")
    check_backend(args)
    check_env_kwargs(args.env, args.env_kwargs)
    claim_collect_output(args.out, "--out", resume=args.resume, overwrite=args.overwrite, shards=args.shards)


def _checks_collect_grounding(args: argparse.Namespace) -> None:
    check_env_kwargs(args.env, args.env_kwargs)
    out = check_output_file(args.out, "--out")
    if out.exists() and not args.overwrite:
        raise OptionError(f"--out {args.out!r} exists; pass --overwrite to replace it, or give another path")


def _checks_train_bc(args: argparse.Namespace) -> None:
    check_demo_input(args.data, "--data")
    if args.grounding_data is not None:
        check_input_file(args.grounding_data, "--grounding-data")
    check_language_encoder(args.language_encoder, "--language-encoder")
    if args.env_kwargs is not None and args.env is None:
        from vla_gym.data.dataset import read_env_args

        args.env = read_env_args(args.data)["env_name"]  # the kwargs are checked against the file's env
    check_env_kwargs(args.env, args.env_kwargs)
    if args.env is not None:
        from vla_gym.data.dataset import check_env_matches

        check_env_matches(args.data, args.env, args.env_kwargs)
    args.staged = claim_run_directory(args.out, "--out", args.resume, args.overwrite)
    if args.resume:
        _check_run_kind(Path(args.out), "train-bc")


def check_language_encoder(name: str, option: str) -> None:
    """A sentence encoder ``name`` must load (its package installed, its model found) before
    any work; the word encoder needs nothing."""
    from vla_gym.agents.network import WORD_ENCODER, LanguageExtraMissingError, NetworkConfig, resolve_language_encoder

    if name == WORD_ENCODER:
        return
    try:
        resolve_language_encoder(NetworkConfig(language_encoder=name))
    except (LanguageExtraMissingError, ValueError) as err:
        raise OptionError(f"{option} {name!r}: {err}") from None


def _image_size_of_policy(args: argparse.Namespace) -> tuple[int, str]:
    """The image size train-ppo's network takes, and where it comes from."""
    if args.init is not None:
        return int(_checkpoint_meta(args.init)["env"]["env_config"]["image_size"]), f"--init {args.init!r}"
    from vla_gym.data.format import env_config_dict

    return int(env_config_dict(args.env, args.env_kwargs)["image_size"]), f"--env {args.env}"


def _checks_train_ppo(args: argparse.Namespace) -> None:
    check_input_file(args.init, "--init")
    if args.aux_epochs and args.trunk_lr_scale != 0:
        raise OptionError(
            f"--aux-epochs {args.aux_epochs} trains the trunk with the auxiliary losses alone and needs "
            f"--trunk-lr-scale 0 (got {args.trunk_lr_scale:g}); or set --aux-epochs 0"
        )
    check_demo_input(args.bc_data, "--bc-data")
    check_env_kwargs(args.env, args.env_kwargs)
    if args.bc_data is not None:
        from vla_gym.data.dataset import read_env_args

        data_size = int(read_env_args(args.bc_data)["env_config"]["image_size"])
        policy_size, source = _image_size_of_policy(args)
        if data_size != policy_size:
            raise OptionError(
                f"--bc-data {args.bc_data!r} holds {data_size} px images but the policy of {source} takes "
                f"{policy_size} px; give demos of the same image size"
            )
    args.staged = claim_run_directory(args.out, "--out", args.resume, args.overwrite)
    if args.resume:
        _check_run_kind(Path(args.out), "train-ppo")


def _checks_evaluate(args: argparse.Namespace) -> None:
    check_backend(args)
    check_env_kwargs(args.env, args.env_kwargs)
    check_output_file(args.json, "--json")
    check_output_file(args.video, "--video")
    if args.video is not None and Path(args.video).suffix.lower() != VIDEO_SUFFIX:
        raise OptionError(f"--video {args.video!r} must end in {VIDEO_SUFFIX!r} (an MP4 video)")
    if args.json is not None and args.video is not None and Path(args.json).resolve() == Path(args.video).resolve():
        raise OptionError(f"--json and --video are the same path {args.json!r}; give two files")


def _checks_benchmark(args: argparse.Namespace) -> None:
    check_backend(args)
    check_env_kwargs(args.env, args.env_kwargs)
    check_output_dir(args.out, "--out")


def _checks_export(args: argparse.Namespace) -> None:
    """Nothing to add: ``export_minari`` checks the dataset id, the minari import, the
    datasets root, an existing dataset and the demo file, in that order, before it replays
    anything (the id is also checked by argparse)."""


CHECKS: dict[str, Callable[[argparse.Namespace], None]] = {
    "render": _checks_render,
    "collect": _checks_collect,
    "collect-grounding": _checks_collect_grounding,
    "train-bc": _checks_train_bc,
    "train-ppo": _checks_train_ppo,
    "evaluate": _checks_evaluate,
    "benchmark": _checks_benchmark,
    "export": _checks_export,
}


def check_args(args: argparse.Namespace) -> None:
    """The checks of ``args.command`` that need the files or several options; raises
    :class:`OptionError` (or :class:`~vla_gym.rundir.OutputError`), both ``ValueError``."""
    CHECKS[args.command](args)

