"""PPO fine-tuning throughput against the VecEnv's own stepping rate, side by side.

Usage: python benchmarks/ppo_throughput.py --n-envs 4 --timesteps 8192 --rounds 3 \\
           --out benchmarks/RESULTS.md

For each env count, in every round (interleaved, medians over rounds):

* ``random``: the same VecEnv that PPO builds (``SubprocVecEnv`` workers, same env, same
  settings) stepped with random actions for ``--timesteps`` steps: the ceiling of any
  training loop on this machine;
* ``ppo``: ``train_ppo`` for ``--timesteps`` env steps with the given PPO settings
  (default: the quick preset's), env steps per second of the training loop, i.e.
  rollouts (env steps and policy forward passes) plus the PPO updates. Evaluations and
  worker start-up are excluded (``train_ppo`` times them apart), and every rollout is a
  full PPO update (no critic warm-up rollouts, whose update is cheaper).

The goal (issue 12): PPO at least 50 % of the random-action rate. The network is the
default VLA actor-critic; its compute does not depend on whether its weights came from BC.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from report import command_line, machine_description, markers, write_section

from vla_gym.agents.checkpoint import resolve_device
from vla_gym.agents.ppo import PPOConfig, _make_vec_env, train_ppo
from vla_gym.hardware import gpu_description
from vla_gym.pipeline import PRESETS

SECTION = "ppo_throughput"
#: PPO settings that are not about speed, kept out of the measurement.
NOT_TIMED = ("timesteps", "eval_every", "eval_episodes", "critic_warmup_rollouts", "bc_coef", "n_envs")


def ppo_settings(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    settings = {k: v for k, v in PRESETS[preset]["ppo"].items() if k not in NOT_TIMED}
    settings.update(overrides)
    return settings


def random_rate(n_envs: int, timesteps: int, settings: dict[str, Any]) -> float:
    """Env steps/s of PPO's VecEnv under random actions (worker start-up excluded)."""
    config = PPOConfig(out=tempfile.gettempdir(), n_envs=n_envs, **{**settings, "batch_size": 1})
    env = _make_vec_env(config, seed=0)
    try:
        env.reset()
        rng = np.random.default_rng(0)
        steps, start = 0, time.perf_counter()
        while steps < timesteps:
            env.step(rng.uniform(-1, 1, (n_envs, 4)).astype(np.float32))
            steps += n_envs
        return steps / (time.perf_counter() - start)
    finally:
        env.close()


def ppo_rate(n_envs: int, timesteps: int, settings: dict[str, Any], device: str, init: str | None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        config = PPOConfig(
            init=init, out=tmp, timesteps=timesteps, n_envs=n_envs, critic_warmup_rollouts=0, eval_every=0,
            eval_episodes=1, device=device, progress=False, **settings,
        )
        return train_ppo(config).steps_per_second


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-envs", default="4", help="comma-separated env counts, e.g. 2,4,8")
    parser.add_argument("--timesteps", type=int, default=8192, help="env steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="PPO settings of this preset")
    parser.add_argument("--ppo", type=json.loads, default={}, help="PPOConfig overrides as JSON")
    parser.add_argument("--init", default=None, help="optional BC checkpoint to start from")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--section", default=SECTION, help="the Markdown section to write (e.g. ppo_throughput_gpu)")
    parser.add_argument("--out", type=Path, default=None, help="write/update this Markdown file")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    settings = ppo_settings(args.preset, args.ppo)
    counts = [int(n) for n in args.n_envs.split(",")]
    rates: dict[int, dict[str, list[float]]] = {n: {"random": [], "ppo": []} for n in counts}
    for r in range(args.rounds):
        for n in counts:
            order = ("random", "ppo") if r % 2 == 0 else ("ppo", "random")
            for kind in order:
                rate = (random_rate(n, args.timesteps, settings) if kind == "random"
                        else ppo_rate(n, args.timesteps, settings, str(device), args.init))
                rates[n][kind].append(rate)
                print(f"round {r + 1}, {n} envs, {kind}: {rate:.1f} env steps/s", flush=True)
    rows = []
    for n in counts:
        rnd, ppo = statistics.median(rates[n]["random"]), statistics.median(rates[n]["ppo"])
        ratios = [p / q for p, q in zip(rates[n]["ppo"], rates[n]["random"])]
        rows.append(f"| {n} | {rnd:.1f} | {ppo:.1f} | {ppo / rnd:.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |")
    table = ["| envs | random actions (steps/s) | PPO incl. updates (steps/s) | PPO / random (per-round range) |",
             "|---:|---:|---:|---:|", *rows]
    print("\n".join(table))
    if args.out:
        start_marker, end_marker = markers(args.section)
        command = command_line(argv)
        gpu = gpu_description() if device.type == "cuda" else None
        text = "\n".join([
            start_marker,
            f"## PPO throughput against the VecEnv's random-action rate ({device.type.upper()}{': ' + gpu if gpu else ''})",
            "",
            f"`{command}` ({dt.date.today()}, {machine_description()}; network on {device}, envs in CPU worker "
            f"processes). {args.timesteps} env steps per measurement, {args.rounds} interleaved rounds, medians. "
            f"PPO settings: {json.dumps(settings)}. Goal: PPO / random >= 0.5.",
            "", *table, end_marker,
        ])
        write_section(args.out, text, args.section)


if __name__ == "__main__":
    main()
