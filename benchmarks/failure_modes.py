"""How a pick policy fails: each episode classified from the sim state.

Usage: python benchmarks/failure_modes.py --policy runs/bc/policy.pt --episodes 60 --seed 300000

Runs the policy deterministically on ``VLAPick-v0`` and sorts every episode into one class:
success; lifted another object (more than 2 cm); touched only other objects; touched the
target but lifted it less (or more) than 2 cm; touched nothing, coming within 5 cm of the
target or not. Wrong-object classes mean the grounding failed, the others that the approach
or the grasp did. Privileged sim state is read for the classes only, never by the policy.
"""

from __future__ import annotations

import argparse
import collections

import gymnasium as gym
import numpy as np

import vla_gym  # noqa: F401  (registers the env ids)
from vla_gym.agents.checkpoint import load_policy
from vla_gym.envs.tasks.base import Role

LIFTED = 0.02  # m above the table: an object counts as lifted
NEAR = 0.05  # m from the gripper to the target: came near it


def classify(env: gym.Env, policy, seed: int) -> str:
    obs, _ = env.reset(seed=seed)
    task = env.unwrapped.task
    target = task.episode.roles["target"]
    others = [Role("object", i) for i in range(len(task.episode.objects)) if i != target.index]
    touched_target = touched_other = lifted_other = False
    target_lift, nearest = 0.0, np.inf
    done, info = False, {}
    while not done:
        action, _ = policy.predict(obs, deterministic=True)
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        if task.touched(target):
            touched_target, target_lift = True, max(target_lift, task.bottom_height(target))
        touched_other |= any(task.touched(o) for o in others)
        lifted_other |= any(task.bottom_height(o) > LIFTED for o in others)
        nearest = min(nearest, float(np.linalg.norm(env.unwrapped.world.robot.ee_position() - task.position(target))))
    if info.get("is_success"):
        return "success"
    if lifted_other:
        return "lifted another object"
    if touched_other and not touched_target:
        return "touched only other objects"
    if touched_target:
        return f"touched the target, lifted it {'more' if target_lift > LIFTED else 'less'} than 2 cm"
    return f"touched nothing, came {'within' if nearest < NEAR else 'no closer than'} 5 cm"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="a policy.pt of train-bc or train-ppo")
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--seed", type=int, default=300_000, help="first episode seed")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    policy = load_policy(args.policy, device="cpu")
    policy.set_training_mode(False)
    env = gym.make("VLAPick-v0")
    try:
        counts = collections.Counter(classify(env, policy, args.seed + i) for i in range(args.episodes))
    finally:
        env.close()
    print("| episodes | class |\n|---:|---|")
    for name, count in counts.most_common():
        print(f"| {count} | {name} |")


if __name__ == "__main__":
    main()
