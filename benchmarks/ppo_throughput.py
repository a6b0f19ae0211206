"""PPO fine-tuning throughput: env steps per second, PPO updates included.

Usage: python benchmarks/ppo_throughput.py --n-envs 8 --timesteps 16384 --device auto \\
           --out benchmarks/RESULTS.md

Runs ``train_ppo`` for ``--timesteps`` env steps per setting (``SubprocVecEnv`` workers
stepping the env on CPU; the network on ``--device``) and reports env steps per second of
the training loop: rollouts (env steps and policy forward passes) plus the PPO updates
(``n_epochs`` passes of forward and backward over each rollout). Evaluations are excluded
(they are timed apart by ``train_ppo``), and so is the workers' start-up. Every rollout is
a full PPO update (no critic warm-up rollouts, whose update is cheaper). The network is the
default VLA actor-critic; its compute does not depend on whether its weights came from BC.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import tempfile
from pathlib import Path

from report import machine_description, markers, write_section

from vla_gym.agents.checkpoint import resolve_device
from vla_gym.agents.ppo import PPOConfig, train_ppo
from vla_gym.hardware import gpu_description

SECTION = "ppo_throughput"


def measure(n_envs: int, timesteps: int, device: str, init: str | None, n_steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        config = PPOConfig(
            init=init, out=tmp, timesteps=timesteps, n_envs=n_envs, n_steps=n_steps, batch_size=256,
            critic_warmup_rollouts=0, eval_every=0, eval_episodes=1, device=device, progress=False,
        )
        result = train_ppo(config)
    print(f"  n_envs {n_envs}: {result.timesteps} steps in {result.train_seconds:.1f} s of training: "
          f"{result.steps_per_second:.1f} env steps/s", flush=True)
    return result.steps_per_second


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-envs", default="8", help="comma-separated env counts, e.g. 2,8 or 16")
    parser.add_argument("--timesteps", type=int, default=16384, help="env steps per measurement")
    parser.add_argument("--n-steps", type=int, default=256, help="steps per env per rollout")
    parser.add_argument("--init", default=None, help="optional BC checkpoint to start from")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--section", default=SECTION, help="name of the RESULTS.md section to write")
    parser.add_argument("--out", type=Path, default=None, help="write/update this Markdown file")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    counts = [int(n) for n in args.n_envs.split(",")]
    rates = {n: measure(n, args.timesteps, str(device), args.init, args.n_steps) for n in counts}
    if args.out:
        start_marker, end_marker = markers(args.section)
        command = "python " + " ".join(shlex.quote(x) for x in [sys.argv[0], *(argv or sys.argv[1:])])
        now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        gpu = gpu_description() if device.type == "cuda" else None
        rows = [
            f"| {n} | {n * args.n_steps} | {rates[n]:.1f} |" for n in counts
        ]
        text = "\n".join([
            start_marker,
            f"## PPO throughput ({device.type.upper()}{': ' + gpu if gpu else ''})",
            "",
            f"- Date: {now}",
            f"- Machine: {machine_description()}",
            f"- Network device: {device}{' (' + gpu + ')' if gpu else ''}; envs step in CPU worker processes",
            f"- Command: `{command}`",
            f"- {args.timesteps} env steps per row; env steps per second of the training loop (rollouts plus PPO "
            "updates of 3 epochs at batch 256), evaluations and worker start-up excluded.",
            "",
            "| envs | rollout (steps) | env steps/s incl. updates |",
            "|---:|---:|---:|",
            *rows,
            end_marker,
        ])
        write_section(args.out, text, args.section)


if __name__ == "__main__":
    main()
