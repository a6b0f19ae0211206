"""Env steps/s of every task's env against ``VLAPick-v0`` at 84 px, side by side in one
process: the ids take turns (interleaved), each round runs the same number of steps per
id, and the figure per id is the median over rounds; the ratio to VLAPick-v0 is what
counts (the machine is shared and noisy).

The scripted expert drives the episodes (contacts, grasps, carried objects: the steps a
policy really takes); only ``env.step`` and ``env.reset`` are timed.

Usage: python benchmarks/task_throughput.py --rounds 5 --steps 400 --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import gymnasium as gym
import vla_gym  # noqa: F401  (registers the env ids)
from report import machine_description, markers, write_section
from vla_gym.envs.experts import ScriptedExpert
from vla_gym.envs.registration import DEFAULT_ENV_ID, MULTI_TASK_ENV_ID, TASK_ENV_IDS

SECTION = "task_throughput"
#: The goal: every task at least this fraction of VLAPick-v0's steps/s.
MIN_RATIO = 0.7


def timed_steps(env: gym.Env, expert: ScriptedExpert, steps: int, seed: int) -> float:
    """Seconds spent in ``env.reset`` and ``env.step`` over ``steps`` expert-driven steps."""
    spent, done = 0.0, True
    for _ in range(steps):
        if done:
            start = time.perf_counter()
            env.reset(seed=seed)
            spent += time.perf_counter() - start
            seed += 1
        action = expert.act()
        start = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action)
        spent += time.perf_counter() - start
        done = terminated or truncated
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=400, help="steps per id per round")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    ids = [*TASK_ENV_IDS.values(), MULTI_TASK_ENV_ID]
    envs = {i: gym.make(i) for i in ids}
    experts = {i: ScriptedExpert(env) for i, env in envs.items()}
    rates: dict[str, list[float]] = {i: [] for i in ids}
    for round_index in range(args.rounds):
        order = ids if round_index % 2 == 0 else ids[::-1]
        for env_id in order:
            seconds = timed_steps(envs[env_id], experts[env_id], args.steps, seed=1000 * round_index)
            rates[env_id].append(args.steps / seconds)
    for env in envs.values():
        env.close()
    base = statistics.median(rates[DEFAULT_ENV_ID])
    rows = []
    for env_id in ids:
        median = statistics.median(rates[env_id])
        ratios = [r / p for r, p in zip(rates[env_id], rates[DEFAULT_ENV_ID])]
        rows.append((env_id, median, median / base, min(ratios), max(ratios)))
        print(f"{env_id}: {median:.0f} steps/s, {median / base:.2f}x {DEFAULT_ENV_ID}", flush=True)
    if args.out:
        start, end = markers(SECTION)
        lines = [
            start,
            "## Env steps/s per task (84 px, one process)",
            "",
            f"`python benchmarks/task_throughput.py --rounds {args.rounds} --steps {args.steps} --out {args.out}`: "
            f"the ids take turns, {args.steps} expert-driven steps each per round, {args.rounds} rounds; "
            f"median steps/s, and the ratio to {DEFAULT_ENV_ID} (goal: at least {MIN_RATIO}x). "
            f"{machine_description()}",
            "",
            f"| env | steps/s (median) | x {DEFAULT_ENV_ID} | per-round ratio range |",
            "|---|---:|---:|---|",
            *[f"| {i} | {m:.0f} | {r:.2f} | {lo:.2f}-{hi:.2f} |" for i, m, r, lo, hi in rows],
            "",
            end,
        ]
        write_section(Path(args.out), "\n".join(lines), SECTION)
    worst = min(r for _, _, r, _, _ in rows)
    print(f"slowest task: {worst:.2f}x {DEFAULT_ENV_ID} (goal >= {MIN_RATIO})")


if __name__ == "__main__":
    main()
