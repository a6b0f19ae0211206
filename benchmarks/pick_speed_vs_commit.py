"""``VLAPick-v0`` env steps/s of this checkout against another commit, side by side: the
two run in turns (fresh processes, alternating which goes first), each round the same
seeded random actions at 84 px; the figure is the median over rounds and the ratio is
what counts (the machine is shared and noisy).

Usage: python benchmarks/pick_speed_vs_commit.py --commit 1b586a7 --rounds 6 --steps 1500
The other commit is checked out with ``git worktree`` into a temporary folder (removed
after) and imported through PYTHONPATH; both use this venv's packages.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from report import machine_description, markers, write_section

REPO = Path(__file__).resolve().parents[1]
SECTION = "pick_speed_vs_commit"
MEASURE = """
import time, numpy as np, gymnasium as gym, vla_gym
env = gym.make("VLAPick-v0")
actions = np.random.default_rng(0).uniform(-1, 1, ({steps}, 4)).astype(np.float32)
env.reset(seed=0)
start, seed = time.perf_counter(), 0
for action in actions:
    _, _, terminated, truncated, _ = env.step(action)
    if terminated or truncated:
        seed += 1
        env.reset(seed=seed)
print("RATE", {steps} / (time.perf_counter() - start), vla_gym.__file__)
"""


def rate(path: Path, steps: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(path)}
    out = subprocess.run(
        [sys.executable, "-c", MEASURE.format(steps=steps)], capture_output=True, text=True, env=env, check=True, cwd=path
    ).stdout
    line = next(l for l in out.splitlines() if l.startswith("RATE"))
    _, value, module = line.split()
    if not Path(module).resolve().is_relative_to(path.resolve()):
        raise RuntimeError(f"measured {module}, not the checkout at {path}")
    return float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", required=True, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(other), args.commit], check=True,
                       capture_output=True)
        try:
            rates: dict[str, list[float]] = {"this": [], "other": []}
            for i in range(args.rounds):
                for name in (("this", "other") if i % 2 == 0 else ("other", "this")):
                    rates[name].append(rate(REPO if name == "this" else other, args.steps))
                print(f"round {i}: this {rates['this'][-1]:.0f}, {args.commit} {rates['other'][-1]:.0f} steps/s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(other)], check=False)
    this, other_rate = statistics.median(rates["this"]), statistics.median(rates["other"])
    ratios = [a / b for a, b in zip(rates["this"], rates["other"])]
    summary = (
        f"VLAPick-v0, 84 px, random actions: this checkout {this:.0f} steps/s, {args.commit} {other_rate:.0f} "
        f"steps/s (medians of {args.rounds}): ratio {this / other_rate:.3f} (per round {min(ratios):.3f}-{max(ratios):.3f})"
    )
    print(summary)
    if args.out:
        start, end = markers(SECTION)
        text = "\n".join([
            start, "## VLAPick-v0 speed against an earlier commit", "",
            f"`python benchmarks/pick_speed_vs_commit.py --commit {args.commit} --rounds {args.rounds} "
            f"--steps {args.steps} --out {args.out}`. {machine_description()}", "", summary, "", end,
        ])
        write_section(Path(args.out), text, SECTION)


if __name__ == "__main__":
    main()
