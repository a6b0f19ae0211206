"""Success of a trained policy on held-out seeds: train- and test-split instructions,
grounding (same scenes, another goal), and phrasings that appear nowhere in the project.

Usage:
    python benchmarks/bc_success.py --policy runs/bc/policy.pt --episodes 200 --seed 100000 \\
        --label "BC (1000 demos)" --json runs/bc/success.json --out benchmarks/RESULTS.md

Collection uses seeds from 0 and BC's rollout checks seeds from 10 000 000, so the default
seeds (100 000 on) are never seen in training. Each check uses the same seeds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym

import vla_gym  # noqa: F401  (registers the env ids)
from vla_gym.evaluation import EvalResult, evaluate, policy_from_spec, swapped_target_options
from report import machine_description, markers, write_section

SECTION = "bc_success"
#: Phrasings written for this benchmark only: no template, verb or sentence of
#: vla_gym.envs.language. ``{colour}`` is the goal's colour, ``{noun}`` a shape word.
UNSEEN_PHRASINGS = (
    "hey robot, could you lift the {colour} {noun} for me?",
    "{colour} {noun}: pick it up, please",
    "I'd like the {colour} one raised up off the table",
    "Grab The {colour} {noun}!",
    "now go and get me that {colour} {noun}",
    "lift {colour}",
    "the {colour} {noun} needs to be picked up",
    "take hold of the {colour} {noun} and raise it",
)
UNSEEN_NOUNS = {"cube": "box", "cylinder": "can", "sphere": "ball"}


def unseen_phrasing_options(env: gym.Env):
    """Reset options replacing each seed's instruction by one of :data:`UNSEEN_PHRASINGS`."""

    def options(seed: int, index: int) -> dict[str, Any]:
        _, info = env.reset(seed=seed)
        target = info["target"]
        text = UNSEEN_PHRASINGS[index % len(UNSEEN_PHRASINGS)]
        return {"instruction": text.format(colour=target["colour"], noun=UNSEEN_NOUNS[target["shape"]])}

    return options


CHECKS: dict[str, tuple[dict[str, Any], Any]] = {
    "train-split instructions": ({"instruction_split": "train"}, None),
    "test-split instructions": ({"instruction_split": "test"}, None),
    "grounding: same scenes, another object as goal": ({"instruction_split": "train"}, swapped_target_options),
    "unseen phrasings (not in the project)": ({"instruction_split": "train"}, unseen_phrasing_options),
}


def run_checks(policy: str, env_id: str, seeds: range, device: str) -> dict[str, tuple[EvalResult, float]]:
    results = {}
    for name, (env_kwargs, options_factory) in CHECKS.items():
        env = gym.make(env_id, **env_kwargs)
        start = time.perf_counter()
        try:
            options = options_factory(env) if options_factory else None
            result = evaluate(env, lambda e: policy_from_spec(policy, e, device=device), seeds, options=options)
        finally:
            env.close()
        results[name] = (result, time.perf_counter() - start)
        print(f"{name}: {result.summary()} [{results[name][1]:.0f} s]", flush=True)
    return results


def section(results: dict[str, tuple[EvalResult, float]], label: str, seeds: range, command: str) -> str:
    start_marker, end_marker = markers(SECTION)
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    rows = ["| Check | Success | 95 % CI | Mean length |", "|---|---:|---:|---:|"]
    for name, (result, _) in results.items():
        lo, hi = result.interval
        rows.append(
            f"| {name} | {result.successes}/{result.episodes} = {result.success_rate:.1%} "
            f"| {lo:.1%} - {hi:.1%} | {result.mean_length:.1f} |"
        )
    per_colour = results["train-split instructions"][0].per_target_summary()
    return "\n".join(
        [
            start_marker,
            f"## Policy success: {label}",
            "",
            f"- Date: {now}",
            f"- Machine: {machine_description()}",
            f"- Command: `{command}`",
            f"- Seeds {seeds.start}-{seeds.stop - 1} (never used in collection or training), deterministic actions.",
            "",
            *rows,
            "",
            "Per goal colour, train-split instructions:",
            "",
            "```",
            per_colour,
            "```",
            end_marker,
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="checkpoint path (or 'scripted' / 'random')")
    parser.add_argument("--env", default="VLAPick-v0")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=100_000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--label", default=None, help="heading of the RESULTS.md section")
    parser.add_argument("--json", type=Path, default=None, help="write all results here")
    parser.add_argument("--out", type=Path, default=None, help="write/update this Markdown file")
    args = parser.parse_args(argv)
    seeds = range(args.seed, args.seed + args.episodes)
    results = run_checks(args.policy, args.env, seeds, args.device)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {name: {**r.to_dict(), "seconds": s} for name, (r, s) in results.items()}
        args.json.write_text(json.dumps({"policy": args.policy, "env": args.env, "results": payload}, indent=2))
    if args.out:
        write_section(args.out, section(results, args.label or args.policy, seeds, command), SECTION)


if __name__ == "__main__":
    main()
