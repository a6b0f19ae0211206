"""The ``vla-gym`` command line: thin argument parsing over importable functions."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import gymnasium as gym

import vla_gym  # noqa: F401  (registers the env ids)
from vla_gym.envs import ENV_IDS
from vla_gym.visualize import observation_panel, save_png


def render_observation(
    env_id: str, seed: int, out: str, scale: int = 4, target: str | None = None, instruction: str | None = None,
    image_size: int = 84, view: str = "agent",
) -> str:
    """Reset ``env_id`` with ``seed`` and save what the agent sees (or the viewer camera) as PNG.

    Returns the instruction of the episode.
    """
    options = {"target": target, "instruction": instruction}
    env = gym.make(env_id, image_size=image_size, render_mode="rgb_array" if view == "viewer" else None)
    try:
        obs, info = env.reset(seed=seed, options=options)
        image = env.render() if view == "viewer" else observation_panel(obs, scale=scale)
        save_png(out, image)
        return info["instruction"]
    finally:
        env.close()


def _add_render(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="save a PNG of an observation (RGB | depth)")
    p.add_argument("--env", default="VLAPick-v0", choices=sorted(ENV_IDS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="obs.png")
    p.add_argument("--scale", type=int, default=4, help="upscaling factor of the saved picture")
    p.add_argument("--image-size", type=int, default=84, help="observation side in pixels")
    p.add_argument("--target", default=None, help="colour of the goal object (must be in the scene)")
    p.add_argument("--instruction", default=None, help="replace the generated instruction")
    p.add_argument("--view", choices=("agent", "viewer"), default="agent",
                   help="agent: RGB and depth the policy sees; viewer: the third-person rgb_array view")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vla-gym", description=vla_gym.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vla-gym {vla_gym.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_render(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "render":
            text = render_observation(
                args.env, args.seed, args.out, scale=args.scale, target=args.target,
                instruction=args.instruction, image_size=args.image_size, view=args.view,
            )
            print(f"{args.out}: {args.env} seed {args.seed}: {text!r}")
    except (ValueError, TypeError) as err:
        parser.exit(2, f"vla-gym {args.command}: error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
