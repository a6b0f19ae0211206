"""Where in the episode a BC policy's actions go wrong: the squared error of its mean action
against the expert's label on demo frames, per action dimension, by tenth of the episode.

Usage: python benchmarks/bc_phase_errors.py --policy runs/bc/policy.pt --data data/pick.h5 [--episodes 40]

Reads the first ``--episodes`` episodes of the demo file (sorted by name; training and
validation episodes alike) and prints one row per tenth: the mean squared error of x, y, z
and the gripper, and the mean gripper label (-1 open, +1 closed) in that tenth.
"""

from __future__ import annotations

import argparse

import h5py
import numpy as np
import torch

from vla_gym.agents.checkpoint import load_policy
from vla_gym.data.dataset import OBS_KEYS

TENTHS = 10


def phase_errors(policy, data: str, episodes: int) -> np.ndarray:
    """(TENTHS, 5): per tenth of the episode, the mean squared error of each action
    dimension (4) and the mean gripper label."""
    rows: list[tuple[float, ...]] = []
    with h5py.File(data, "r") as f:
        for name in sorted(f["data"].keys())[:episodes]:
            demo = f["data"][name]
            obs = {key: torch.as_tensor(demo["obs"][key][()]) for key in OBS_KEYS}
            with torch.no_grad():
                mean = policy.get_distribution(obs).distribution.mean.numpy()
            labels = demo["actions"][()]
            for t, (predicted, label) in enumerate(zip(mean, labels)):
                rows.append((t / len(labels), *((predicted - label) ** 2), label[-1]))
    table = np.asarray(rows)
    tenth = np.minimum((table[:, 0] * TENTHS).astype(int), TENTHS - 1)
    return np.stack([table[tenth == i, 1:].mean(axis=0) for i in range(TENTHS)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="a BC checkpoint (policy.pt)")
    parser.add_argument("--data", required=True, help="a demo file of the policy's env")
    parser.add_argument("--episodes", type=int, default=40, help="episodes to read (the first by name)")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    errors = phase_errors(load_policy(args.policy, device="cpu"), args.data, args.episodes)
    print("| tenth | x | y | z | gripper | mean gripper label |")
    print("|---:|---:|---:|---:|---:|---:|")
    for i, row in enumerate(errors):
        print(f"| {i + 1} | " + " | ".join(f"{v:.3f}" for v in row[:4]) + f" | {row[4]:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
