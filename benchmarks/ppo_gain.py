"""Does PPO improve a weak BC policy? Success against env steps for several training seeds.

Usage: python benchmarks/ppo_gain.py --init runs/agent_quick/bc/policy.pt --seeds 0,1,2 \\
           --out benchmarks/RESULTS.md --plot benchmarks/ppo_gain.png

Trains PPO from one BC checkpoint (``--init``, e.g. the quick preset's BC stage: few demos,
below 60 %) with the quick preset's PPO settings (``--preset``; ``--ppo`` JSON overrides)
once per training seed, into ``--work/seed_<n>`` (resumable: a finished seed is read back,
an interrupted one continues from its ``last.pt``). Every run evaluates the deterministic
policy on the same held-out seeds (PPO's own evaluation seeds, 300000+) at its evaluation
points. The plot shows each seed's success rate with its 95 % Wilson interval against env
steps, and the BC start as a horizontal line; the table gives the start, the best and the
last evaluation of each seed. Goal (issue 12): from a BC start below 60 %, every seed above
85 % within the preset's PPO budget.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from report import command_line, machine_description, markers, write_section

from vla_gym.agents.ppo import PPOConfig, train_ppo
from vla_gym.pipeline import PRESETS

SECTION = "ppo_gain"
GOAL = 0.85


def run_seed(init: str, work: Path, seed: int, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Train (or resume, or read back) one seed; its evaluation history."""
    out = work / f"seed_{seed}"
    config = PPOConfig(init=init, out=str(out), seed=seed, resume=True, progress=False, **settings)
    result = train_ppo(config)
    print(f"seed {seed}: " + ", ".join(f"{r['timesteps']}: {r['success_rate']:.0%}" for r in result.history), flush=True)
    return result.history


def plot(histories: dict[int, list[dict[str, Any]]], bc_level: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for seed, history in histories.items():
        steps = [r["timesteps"] for r in history]
        rate = [r["success_rate"] for r in history]
        ax.plot(steps, rate, marker="o", label=f"training seed {seed}")
        ax.fill_between(steps, [r["ci_low"] for r in history], [r["ci_high"] for r in history], alpha=0.15)
    ax.axhline(bc_level, color="black", linestyle="--", label=f"BC start ({bc_level:.0%})")
    ax.axhline(GOAL, color="grey", linestyle=":", label=f"goal ({GOAL:.0%})")
    ax.set_xlabel("env steps")
    ax.set_ylabel("success rate (deterministic, held-out seeds)")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(histories: dict[int, list[dict[str, Any]]]) -> list[str]:
    lines = ["| training seed | start (BC) | best (steps) | last (steps) | last 95 % interval | all evaluations above 85 % from |",
             "|---:|---:|---:|---:|---:|---:|"]
    for seed, history in histories.items():
        first, last = history[0], history[-1]
        best = max(history, key=lambda r: r["success_rate"])
        above = next((r["timesteps"] for i, r in enumerate(history)
                      if all(x["success_rate"] > GOAL for x in history[i:])), None)
        lines.append(
            f"| {seed} | {first['success_rate']:.1%} | {best['success_rate']:.1%} ({best['timesteps']}) | "
            f"{last['success_rate']:.1%} ({last['timesteps']}) | {last['ci_low']:.1%}-{last['ci_high']:.1%} | "
            f"{above if above is not None else 'never'} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", required=True, help="BC checkpoint to start every seed from")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="PPO settings of this preset")
    parser.add_argument("--ppo", type=json.loads, default={}, help="PPOConfig overrides as JSON")
    parser.add_argument("--work", type=Path, default=Path("runs/ppo_gain"), help="run directories (resumable)")
    parser.add_argument("--plot", type=Path, default=None, help="write the learning curves here (PNG)")
    parser.add_argument("--out", type=Path, default=None, help="write/update this Markdown file")
    args = parser.parse_args(argv)
    settings = {**PRESETS[args.preset]["ppo"], **args.ppo}
    seeds = [int(s) for s in args.seeds.split(",")]
    histories = {seed: run_seed(args.init, args.work, seed, settings) for seed in seeds}
    bc_level = histories[seeds[0]][0]["success_rate"]
    lines = table(histories)
    print("\n".join(lines))
    if args.plot:
        plot(histories, bc_level, args.plot)
    if args.out:
        start, end = markers(SECTION)
        command = command_line(argv)
        episodes = histories[seeds[0]][0]["episodes"]
        verdict = all(h[-1]["success_rate"] > GOAL for h in histories.values())
        text = "\n".join([
            start, "## PPO gain over a weak BC start, several training seeds", "",
            f"`{command}` ({dt.date.today()}, {machine_description()}). PPO settings: `{json.dumps(settings)}`. "
            f"Each evaluation: {episodes} episodes on seeds 300000+ (deterministic actions), the same for every "
            f"seed and step. BC start {bc_level:.1%}.", "", *lines, "",
            f"Every seed above {GOAL:.0%} at its last evaluation: {'yes' if verdict else 'no'}.",
            *( ["", f"![PPO gain]({args.plot.name})"] if args.plot else []), end,
        ])
        write_section(args.out, text, SECTION)


if __name__ == "__main__":
    main()
