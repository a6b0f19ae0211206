"""How well a pick policy's trunk knows where the named object is, on the policy's own episodes.

Usage: python benchmarks/localisation_error.py --policy runs/agent_quick/bc/policy.pt --episodes 30 --seed 300000

Runs the policy deterministically on ``VLAPick-v0`` and, at every step, compares the trunk's
auxiliary read-out of the goal object's offset from the gripper (``target_head``, the label
BC's privileged loss and the grounding frames train) with the true offset from the sim. The
table gives the error across the table (xy) and in height (z) by how far the gripper truly
is from the object: the near band is where a grasp succeeds or fails. The sim state is read
for the labels only, never by the policy.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from failure_modes import policy_episodes

from vla_gym.agents.network import TARGET_OFFSET_SCALE

#: (low, high) m: bands of the true gripper-to-object distance across the table.
BANDS = ((0.0, 0.03), (0.03, 0.08), (0.08, np.inf))


def step_errors(env: gym.Env, policy, seed: int) -> np.ndarray:
    """(T, 3) per step of one episode: true xy distance (m), xy error (m), |z error| (m)."""
    obs, _ = env.reset(seed=seed)
    task = env.unwrapped.task
    target = task.episode.roles["target"]
    extractor = policy.features_extractor
    rows, done = [], False
    while not done:
        tensor, _ = policy.obs_to_tensor(obs)
        with torch.no_grad(), extractor.keeping_auxiliary():
            extractor(tensor)
        predicted = extractor.pop_auxiliary()["target_offset"][0].cpu().numpy() * TARGET_OFFSET_SCALE
        true = task.position(target) - env.unwrapped.world.robot.ee_position()
        rows.append((np.linalg.norm(true[:2]), np.linalg.norm((predicted - true)[:2]), abs(predicted[2] - true[2])))
        action, _ = policy.predict(obs, deterministic=True)
        obs, _, terminated, truncated, _ = env.step(action)
        done = terminated or truncated
    return np.asarray(rows)


def table(errors: np.ndarray) -> str:
    lines = ["| gripper to object, across the table | steps | xy error, median (cm) | xy error, 90th percentile (cm) "
             "| z error, median (cm) |", "|---|---:|---:|---:|---:|"]
    for low, high in BANDS:
        band = errors[(errors[:, 0] >= low) & (errors[:, 0] < high)]
        name = f"{100 * low:.0f} cm and more" if np.isinf(high) else f"{100 * low:.0f}-{100 * high:.0f} cm"
        if len(band):
            lines.append(f"| {name} | {len(band)} | {100 * np.median(band[:, 1]):.2f} | "
                         f"{100 * np.percentile(band[:, 1], 90):.2f} | {100 * np.median(band[:, 2]):.2f} |")
        else:
            lines.append(f"| {name} | 0 | - | - | - |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    print(table(np.concatenate(policy_episodes(argv, __doc__.split("\n\n")[0], 30, step_errors))))


if __name__ == "__main__":
    main()
