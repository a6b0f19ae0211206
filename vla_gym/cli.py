"""The ``vla-gym`` command line: thin argument parsing over importable functions."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import gymnasium as gym

import vla_gym  # noqa: F401  (registers the env ids)
import numpy as np

from vla_gym.envs import DEFAULT_ENV_ID, ENV_IDS
from vla_gym.envs.registration import TASK_ENVS
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


def render_grid(env_ids: Sequence[str], seed: int, out: str, view: str = "viewer", columns: int = 3) -> list[str]:
    """One panel per env id (reset with ``seed``), the instruction above each, tiled in
    ``columns`` columns into one PNG. Returns the instructions."""
    panels, texts = [], []
    for env_id in env_ids:
        image, text = _render_one(env_id, seed, view=view)
        panels.append(put_text_band(image, f"{env_id}: {text}"))
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
        return [stem + "-v0" for stem, _ in TASK_ENVS]
    ids = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [i for i in ids if i not in ENV_IDS]
    if not ids or unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: choose an env id, a comma-separated list of them, or {ALL_TASKS!r}; ids: {sorted(ENV_IDS)}"
        )
    return ids


def _add_render(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="save a PNG of an observation (RGB | depth), or of several envs' scenes")
    p.add_argument("--env", default=[DEFAULT_ENV_ID], type=_env_list,
                   help=f"an env id, a comma-separated list (one panel each), or {ALL_TASKS!r} for every task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="obs.png")
    p.add_argument("--scale", type=int, default=4, help="upscaling factor of the saved picture")
    p.add_argument("--image-size", type=int, default=84, help="observation side in pixels")
    p.add_argument("--target", default=None, help="colour of the goal object (must be in the scene)")
    p.add_argument("--instruction", default=None, help="replace the generated instruction")
    p.add_argument("--view", choices=("agent", "viewer"), default="agent",
                   help="agent: RGB and depth the policy sees; viewer: the third-person rgb_array view")


def _json_dict(text: str) -> dict:
    """argparse type: a JSON object (for --env-kwargs)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object like '{{\"image_size\": 64}}', got {text!r}")
    return value


def _add_collect(sub: argparse._SubParsersAction) -> None:
    from vla_gym.data.collect import DEFAULT_NOISE_STD

    p = sub.add_parser("collect", help="record scripted-expert demos into an HDF5 file")
    p.add_argument("--env", default=DEFAULT_ENV_ID, choices=sorted(ENV_IDS))
    p.add_argument("--env-kwargs", type=_json_dict, default=None, help="JSON object of extra env kwargs")
    p.add_argument("--episodes", type=int, default=1000, help="episodes to keep")
    p.add_argument("--workers", type=int, default=2, help="worker processes (<= 1: in this process)")
    p.add_argument("--seed", type=int, default=0, help="episode i tried uses seed + i")
    p.add_argument("--noise-std", type=float, default=DEFAULT_NOISE_STD, help="expert action noise std")
    p.add_argument("--keep-failures", action="store_true", help="keep failed episodes too (success=False)")
    p.add_argument("--valid-fraction", type=float, default=0.1, help="share of episodes in mask/valid")
    p.add_argument("--out", required=True, help="HDF5 file to write (replaced atomically)")
    p.add_argument("--no-progress", action="store_true")


def _add_train_bc(sub: argparse._SubParsersAction) -> None:
    from vla_gym.agents.bc import BCConfig

    defaults = BCConfig(data="")
    p = sub.add_parser("train-bc", help="behaviour-clone the VLA actor-critic from a demo file")
    p.add_argument("--data", required=True, help="demo file from `vla-gym collect`")
    p.add_argument("--out", default=defaults.out, help="run directory (policy.pt, last.pt, tb/, ...)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--contrastive-coef", type=float, default=defaults.contrastive_coef,
                   help="weight of the InfoNCE vision-language loss (0: off)")
    p.add_argument("--rollout-every", type=int, default=defaults.rollout_every, help="epochs between env checks")
    p.add_argument("--rollout-episodes", type=int, default=defaults.rollout_episodes)
    p.add_argument("--env", default=None, choices=sorted(ENV_IDS), help="must match the demo file's env")
    p.add_argument("--env-kwargs", type=_json_dict, default=None, help="must match the demo file's env kwargs")
    p.add_argument("--device", default=defaults.device, help="auto | cpu | cuda[:N]")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--lazy", action="store_true", help="read frames from the file as needed, not into RAM")
    p.add_argument("--num-workers", type=int, default=defaults.num_workers, help="DataLoader workers")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--no-progress", action="store_true")


def _add_train_ppo(sub: argparse._SubParsersAction) -> None:
    from vla_gym.agents.ppo import VEC_ENVS, PPOConfig

    d = PPOConfig()
    p = sub.add_parser("train-ppo", help="fine-tune a BC checkpoint with PPO (stable-baselines3)")
    p.add_argument("--init", default=None, help="BC checkpoint to start from (policy.pt of train-bc); "
                   "without it PPO trains the network from scratch")
    p.add_argument("--env", default=d.env_id, choices=sorted(ENV_IDS), help="VLAPickDense-v0 for the dense reward")
    p.add_argument("--env-kwargs", type=_json_dict, default=None, help="JSON object of extra env kwargs")
    p.add_argument("--out", default=d.out, help="run directory (policy.pt, last.pt, tb/, metrics.jsonl)")
    p.add_argument("--timesteps", type=int, default=d.timesteps, help="env steps in total")
    p.add_argument("--n-envs", type=int, default=d.n_envs, help="parallel envs")
    p.add_argument("--vec-env", choices=VEC_ENVS, default=d.vec_env, help="auto: subproc when n-envs > 1")
    p.add_argument("--n-steps", type=int, default=d.n_steps, help="steps per env per rollout")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--n-epochs", type=int, default=d.n_epochs, help="passes over each rollout")
    p.add_argument("--lr", type=float, default=d.lr, help="actor and trunk learning rate")
    p.add_argument("--critic-lr", type=float, default=d.critic_lr)
    p.add_argument("--target-kl", type=float, default=d.target_kl, help="early-stop threshold (<= 0: none)")
    p.add_argument("--ent-coef", type=float, default=d.ent_coef)
    p.add_argument("--critic-warmup-rollouts", type=int, default=d.critic_warmup_rollouts,
                   help="first rollouts that train only the critic")
    p.add_argument("--bc-coef", type=float, default=d.bc_coef, help="initial weight of the BC term (0: off)")
    p.add_argument("--bc-decay", type=float, default=d.bc_decay, help="BC weight factor per update")
    p.add_argument("--detach-critic", action="store_true",
                   help="the value loss trains only the critic head, not the shared trunk")
    p.add_argument("--bc-data", default=None, help="demo file of the BC term (default: the init checkpoint's)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="env steps between evaluations")
    p.add_argument("--eval-episodes", type=int, default=d.eval_episodes)
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda[:N]")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--no-progress", action="store_true")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="success rate of a policy on fixed seeds (95%% Wilson interval)")
    p.add_argument("--policy", required=True, help="checkpoint path, or 'scripted' / 'random'")
    p.add_argument("--env", default=DEFAULT_ENV_ID, choices=sorted(ENV_IDS))
    p.add_argument("--env-kwargs", type=_json_dict, default=None,
                   help='JSON object of env kwargs, e.g. \'{"instruction_split": "test"}\'')
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=100000, help="first seed (episode i uses seed + i)")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--target", default=None, help="goal colour in every episode (seeds whose scene has it)")
    goal.add_argument("--swap-target", action="store_true",
                      help="grounding check: same scenes, another object as the goal")
    p.add_argument("--json", default=None, help="write the result as JSON here")
    p.add_argument("--video", default=None, help="record the first episodes to this .mp4")
    p.add_argument("--video-episodes", type=int, default=3)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--no-progress", action="store_true")


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    from vla_gym.benchmark import BENCHMARK_SEED, SPLITS

    p = sub.add_parser("benchmark", help="success rates of several policies over the generalisation splits")
    p.add_argument("--policies", required=True,
                   help="comma-separated: scripted, random, checkpoint paths, or label=path")
    p.add_argument("--episodes", type=int, default=200, help="episodes per policy and split")
    p.add_argument("--out", default="reports", help="directory of benchmark.md, benchmark.json, benchmark.png")
    p.add_argument("--seed", type=int, default=BENCHMARK_SEED,
                   help=f"first seed (default {BENCHMARK_SEED}: used by no training stage)")
    p.add_argument("--splits", default=",".join(s.name for s in SPLITS), help="comma-separated split names")
    p.add_argument("--env", default=DEFAULT_ENV_ID, choices=sorted(ENV_IDS))
    p.add_argument("--env-kwargs", type=_json_dict, default=None,
                   help="JSON object of base env kwargs (not the split keys); image_size defaults to the checkpoints'")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--device", default="cpu", help="torch device of the network policies in the workers")
    p.add_argument("--no-progress", action="store_true")


def _run(args: argparse.Namespace) -> None:
    if args.command == "render" and len(args.env) > 1:
        if args.target is not None or args.instruction is not None:
            raise ValueError("--target and --instruction apply to one env; give one --env id with them")
        for env_id, text in zip(args.env, render_grid(args.env, args.seed, args.out, view=args.view)):
            print(f"{args.out}: {env_id} seed {args.seed}: {text!r}")
    elif args.command == "render":
        text = render_observation(
            args.env[0], args.seed, args.out, scale=args.scale, target=args.target,
            instruction=args.instruction, image_size=args.image_size, view=args.view,
        )
        print(f"{args.out}: {args.env[0]} seed {args.seed}: {text!r}")
    elif args.command == "collect":
        from vla_gym.data.collect import CollectConfig, collect_demos

        config = CollectConfig(
            out=args.out, env_id=args.env, episodes=args.episodes, workers=args.workers, seed=args.seed,
            noise_std=args.noise_std, keep_failures=args.keep_failures, valid_fraction=args.valid_fraction,
            env_kwargs=args.env_kwargs,
        )
        print(collect_demos(config, progress=not args.no_progress).summary())
    elif args.command == "train-bc":
        from vla_gym.agents.bc import BCConfig, train_bc

        config = BCConfig(
            data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            contrastive_coef=args.contrastive_coef, rollout_every=args.rollout_every,
            rollout_episodes=args.rollout_episodes, env_id=args.env, env_kwargs=args.env_kwargs,
            device=args.device, amp=not args.no_amp, in_memory=not args.lazy, num_workers=args.num_workers,
            seed=args.seed, resume=args.resume, progress=not args.no_progress,
        )
        result = train_bc(config)
        print(
            f"{result.policy_path}: {result.steps} steps over {result.epochs} epochs in {result.train_seconds:.0f} s "
            f"({result.samples_per_second:.0f} samples/s); best: "
            + ", ".join(f"{k} {v:.4g}" for k, v in result.best.items() if isinstance(v, float))
        )
    elif args.command == "train-ppo":
        from vla_gym.agents.ppo import PPOConfig, train_ppo

        config = PPOConfig(
            init=args.init, out=args.out, env_id=args.env, env_kwargs=args.env_kwargs, timesteps=args.timesteps,
            n_envs=args.n_envs, vec_env=args.vec_env, n_steps=args.n_steps, batch_size=args.batch_size,
            n_epochs=args.n_epochs, lr=args.lr, critic_lr=args.critic_lr,
            target_kl=args.target_kl if args.target_kl and args.target_kl > 0 else None, ent_coef=args.ent_coef,
            critic_warmup_rollouts=args.critic_warmup_rollouts, bc_coef=args.bc_coef, bc_decay=args.bc_decay,
            bc_data=args.bc_data, detach_critic=args.detach_critic, eval_every=args.eval_every, eval_episodes=args.eval_episodes, device=args.device,
            seed=args.seed, resume=args.resume, progress=not args.no_progress,
        )
        result = train_ppo(config)
        best = result.best
        print(
            f"{result.policy_path}: {result.timesteps} env steps, {result.steps_per_second:.0f} env steps/s "
            f"including updates; best eval success {best['success_rate']:.1%} at step {best['timesteps']}"
        )
    elif args.command == "evaluate":
        from vla_gym.evaluation import run_evaluation

        result = run_evaluation(
            args.policy, env_id=args.env, episodes=args.episodes, seed=args.seed, json_path=args.json,
            video_path=args.video, video_episodes=args.video_episodes, device=args.device,
            env_kwargs=args.env_kwargs, target=args.target, swap_target=args.swap_target,
            progress=not args.no_progress,
        )
        print(f"{args.policy} on {args.env}: {result.summary()}")
        print(result.per_target_summary())
    elif args.command == "benchmark":
        from vla_gym.benchmark import BenchmarkConfig, run_benchmark

        config = BenchmarkConfig(
            policies=args.policies, out=args.out, episodes=args.episodes, seed=args.seed,
            splits=[s.strip() for s in args.splits.split(",") if s.strip()], env_id=args.env,
            env_kwargs=args.env_kwargs or {}, device=args.device, progress=not args.no_progress,
            **({} if args.workers is None else {"workers": args.workers}),
        )
        report = run_benchmark(config)
        print(f"{args.out}: benchmark.md, benchmark.json, benchmark.png ({report['seconds']:.0f} s)")
        for label, by_split in report["results"].items():
            print(f"  {label}: " + ", ".join(f"{split} {cell['success_rate']:.1%}" for split, cell in by_split.items()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vla-gym", description=vla_gym.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vla-gym {vla_gym.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_render, _add_collect, _add_train_bc, _add_train_ppo, _add_evaluate, _add_benchmark):
        add(sub)
    args = parser.parse_args(argv)
    try:
        _run(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        parser.exit(2, f"vla-gym {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        hint = " (continue with --resume)" if args.command in ("train-bc", "train-ppo") else ""
        parser.exit(130, f"vla-gym {args.command}: interrupted{hint}\n")
    return 0


def train_agent_main(argv: Sequence[str] | None = None) -> int:
    """``train-agent``: demos -> BC -> PPO -> evaluation report, resumable stage by stage."""
    from vla_gym.pipeline import PRESETS, AgentConfig, train_agent

    parser = argparse.ArgumentParser(
        prog="train-agent",
        description="Scripted demos -> behaviour cloning -> PPO fine-tuning -> evaluation report "
        "(OUT/report.md). Rerun the same command to resume: finished stages are skipped.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help="quick: minutes on a laptop CPU; full: the configuration behind the README's figures")
    parser.add_argument("--out", default="runs/agent", help="run directory")
    parser.add_argument("--env", default=None, choices=sorted(ENV_IDS))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (BC and PPO)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demo-workers", type=int, default=None, help="collection worker processes")
    parser.add_argument("--eval-workers", type=int, default=None, help="evaluation worker processes")
    parser.add_argument("--eval-episodes", type=int, default=None, help="report episodes per policy and split")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = AgentConfig.from_preset(
            args.preset, out=args.out, env_id=args.env, device=args.device, seed=args.seed,
            demo_workers=args.demo_workers, eval_workers=args.eval_workers, eval_episodes=args.eval_episodes,
            progress=not args.no_progress,
        )
        report = train_agent(config)
    except (ValueError, TypeError, FileNotFoundError) as err:
        parser.exit(2, f"train-agent: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, "train-agent: interrupted (rerun the same command to resume)\n")
    print(f"{args.out}/report.md: " + ", ".join(
        f"{r['policy']} {r['split']} {r['success_rate']:.1%}" for r in report["results"]
    ) + f"; total {report['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
