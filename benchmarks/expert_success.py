"""Success of the scripted expert on every task and split, of the instruction-blind expert
(the right task on bodies drawn at random: the chance level of a policy that ignores the
instruction) and of random actions.

Usage: python benchmarks/expert_success.py --episodes 200 --out benchmarks/RESULTS.md
The experts were tuned on seeds below 10 000; the default seeds start far above them.
Each cell is written to ``--cells`` (JSON lines) as it finishes, and a rerun skips the
cells already there, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym

import vla_gym  # noqa: F401  (registers the env ids)
from report import machine_description, markers, write_section
from vla_gym.envs.experts import ScriptedExpert
from vla_gym.envs.registration import TASK_ENV_IDS
from vla_gym.evaluation import RandomPolicy, evaluate, wilson_interval

DEFAULT_FIRST_SEED = 1_000_000
SPLITS = {"default": {}, "instruction test": {"instruction_split": "test"}, "object test": {"object_split": "test"}}
SECTION = "expert_success"


def policies(seed: int, noise_std: float) -> dict:
    """name -> (policy factory, deterministic, splits it runs on)."""
    return {
        "scripted expert": (lambda e: ScriptedExpert(e), True, list(SPLITS)),
        f"scripted expert, noise_std={noise_std}": (
            lambda e: ScriptedExpert(e, noise_std=noise_std, seed=seed), False, ["default"]
        ),
        "instruction-blind expert": (lambda e: ScriptedExpert(e, blind=True, seed=seed), True, ["default"]),
        "random actions": (lambda e: RandomPolicy(e.action_space, seed=seed), True, ["default"]),
    }


def run_cell(env_id: str, split: str, factory, deterministic: bool, seeds: range) -> dict:
    env = gym.make(env_id, **SPLITS[split])
    start = time.perf_counter()
    try:
        result = evaluate(env, factory, seeds, deterministic=deterministic)
    finally:
        env.close()
    stats = result.per_task_stats()
    return {
        "episodes": result.episodes,
        "successes": result.successes,
        "mean_length": result.mean_length,
        "max_length": max(r["length"] for r in result.episodes_log),
        "subgoals": sum(s["mean_subgoals_done"] * s["episodes"] for s in stats.values()) / result.episodes,
        "seconds": time.perf_counter() - start,
    }


def render(cells: dict, args: argparse.Namespace) -> str:
    start, end = markers(SECTION)
    lines = [
        start,
        "## Scripted experts on every task",
        "",
        f"`python benchmarks/expert_success.py --episodes {args.episodes} --seed {args.seed} --out {args.out}`",
        f"(seeds {args.seed}-{args.seed + args.episodes - 1}, never used for tuning). {machine_description()}",
        "",
        "| task | policy | split | success (95 % CI) | mean / max length | subgoals done |",
        "|---|---|---|---|---|---|",
    ]
    for key, cell in cells.items():
        task, policy, split = key.split("|")
        lo, hi = wilson_interval(cell["successes"], cell["episodes"])
        lines.append(
            f"| {task} | {policy} | {split} | {cell['successes'] / cell['episodes']:.1%} ({lo:.1%}-{hi:.1%}) "
            f"| {cell['mean_length']:.1f} / {cell['max_length']} | {_subgoals(task, cell)} |"
        )
    lines += ["", end]
    return "\n".join(lines)


def _subgoals(task: str, cell: dict) -> str:
    """Mean subgoals done, for the task that has several (the others: success itself)."""
    return f"{cell['subgoals']:.2f}" if task == "rearrange" else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=DEFAULT_FIRST_SEED, help="first evaluation seed")
    parser.add_argument("--noise-std", type=float, default=0.3)
    parser.add_argument("--tasks", default=",".join(TASK_ENV_IDS), help="comma-separated task names")
    parser.add_argument("--cells", default="benchmarks/expert_success_cells.jsonl", help="resumable cell log")
    parser.add_argument("--out", default=None, help="RESULTS.md to update (section expert_success)")
    args = parser.parse_args()
    log = Path(args.cells)
    cells = {}
    if log.exists():
        for line in log.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                cells[record["key"]] = record["cell"]
    seeds = range(args.seed, args.seed + args.episodes)
    for task in args.tasks.split(","):
        for name, (factory, deterministic, splits) in policies(args.seed, args.noise_std).items():
            for split in splits:
                key = f"{task}|{name}|{split}"
                if key not in cells:
                    cells[key] = run_cell(TASK_ENV_IDS[task], split, factory, deterministic, seeds)
                    with log.open("a") as handle:
                        handle.write(json.dumps({"key": key, "cell": cells[key]}) + "\n")
                cell = cells[key]
                print(f"{key}: {cell['successes']}/{cell['episodes']} mean length {cell['mean_length']:.1f}", flush=True)
    if args.out:
        write_section(Path(args.out), render(cells, args), SECTION)


if __name__ == "__main__":
    main()
