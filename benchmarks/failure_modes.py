"""How a pick policy fails: each episode classified from the sim state.

Usage: python benchmarks/failure_modes.py --policy runs/bc/policy.pt --episodes 60 --seed 300000

Runs the policy deterministically on ``VLAPick-v0`` and sorts every episode into one class:
success; lifted another object (more than 2 cm); touched only other objects; touched the
target but lifted it less (or more) than 2 cm; touched nothing, coming within 5 cm of the
target or not. Wrong-object classes mean the grounding failed, the others that the approach
or the grasp did. Per class it also gives how far the gripper was from the target across the
table when the policy first closed it (median, cm) and in how many episodes the policy opened
it again after closing (a retry). Privileged sim state is read for these only, never by the policy.
"""

from __future__ import annotations

import argparse
import collections
from typing import Any, Callable

import gymnasium as gym
import numpy as np

import vla_gym  # noqa: F401  (registers the env ids)
from vla_gym.agents.checkpoint import load_policy
from vla_gym.envs.tasks.base import Role

LIFTED = 0.02  # m above the table: an object counts as lifted
NEAR = 0.05  # m from the gripper to the target: came near it


def classify(env: gym.Env, policy, seed: int) -> tuple[str, float, bool]:
    """(class, xy distance in m from the gripper to the target at the first close (nan if
    never closed), whether the gripper was opened again after a close)."""
    obs, _ = env.reset(seed=seed)
    task = env.unwrapped.task
    target = task.episode.roles["target"]
    others = [Role("object", i) for i in range(len(task.episode.objects)) if i != target.index]
    touched_target = touched_other = lifted_other = False
    target_lift, nearest = 0.0, np.inf
    done, info = False, {}
    first_close, closed, reopened = np.nan, False, False
    while not done:
        action, _ = policy.predict(obs, deterministic=True)
        if action[3] > 0 and np.isnan(first_close):
            offset = env.unwrapped.world.robot.ee_position() - task.position(target)
            first_close = float(np.linalg.norm(offset[:2]))
        reopened |= closed and action[3] <= 0
        closed = bool(action[3] > 0)
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        if task.touched(target):
            touched_target, target_lift = True, max(target_lift, task.bottom_height(target))
        touched_other |= any(task.touched(o) for o in others)
        lifted_other |= any(task.bottom_height(o) > LIFTED for o in others)
        nearest = min(nearest, float(np.linalg.norm(env.unwrapped.world.robot.ee_position() - task.position(target))))
    return _name(info, lifted_other, touched_other, touched_target, target_lift, nearest), first_close, reopened


def _name(info: dict, lifted_other: bool, touched_other: bool, touched_target: bool, target_lift: float,
          nearest: float) -> str:
    if info.get("is_success"):
        return "success"
    if lifted_other:
        return "lifted another object"
    if touched_other and not touched_target:
        return "touched only other objects"
    if touched_target:
        return f"touched the target, lifted it {'more' if target_lift > LIFTED else 'less'} than 2 cm"
    return f"touched nothing, came {'within' if nearest < NEAR else 'no closer than'} 5 cm"


def policy_episodes(argv: list[str] | None, description: str, episodes: int,
                    per_episode: Callable[[gym.Env, Any, int], Any]) -> list[Any]:
    """Parse ``--policy``, ``--episodes`` (default ``episodes``) and ``--seed`` and return
    ``per_episode(env, policy, seed)`` for each episode seed on one ``VLAPick-v0``, the policy
    loaded in eval mode on the CPU (shared with benchmarks/localisation_error.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--policy", required=True, help="a policy.pt of train-bc or train-ppo")
    parser.add_argument("--episodes", type=int, default=episodes)
    parser.add_argument("--seed", type=int, default=300_000, help="first episode seed")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    policy = load_policy(args.policy, device="cpu")
    policy.set_training_mode(False)
    env = gym.make("VLAPick-v0")
    try:
        return [per_episode(env, policy, args.seed + i) for i in range(args.episodes)]
    finally:
        env.close()


def main(argv: list[str] | None = None) -> None:
    rows = policy_episodes(argv, __doc__.split("\n\n")[0], 60, classify)
    counts = collections.Counter(row[0] for row in rows)
    print("| episodes | class | gripper to target at the first close, median (cm) | reopened after closing |")
    print("|---:|---|---:|---:|")
    for name, count in counts.most_common():
        mine = [row for row in rows if row[0] == name]
        distances = [row[1] for row in mine if not np.isnan(row[1])]
        median = f"{100 * np.median(distances):.1f}" if distances else "never closed"
        print(f"| {count} | {name} | {median} | {sum(row[2] for row in mine)} |")


if __name__ == "__main__":
    main()
