"""The BC-to-PPO hand-over: vla_gym's PPO settings against the ways it is known to collapse.

Usage: python benchmarks/ppo_handover.py --init runs/agent/bc/policy.pt --timesteps 20480 \\
           --out benchmarks/RESULTS.md --plot benchmarks/ppo_handover.png

Every variant starts from the same BC checkpoint, trains with the same seeds and is
evaluated (deterministic actions) on the same held-out seeds every ``--eval-every`` env steps:

* ``vla_gym``: the defaults (critic warm-up on the frozen trunk, critic LR 10x the actor's,
  the BC log-std, 3 epochs per rollout, target_kl 0.02);
* ``log-std reset``: the log-std set to SB3's default 0 (std 1.0) before PPO starts;
* ``random critic``: the critic (its MLP and value head) re-initialised as SB3 does
  (orthogonal), no warm-up, and the actor's learning rate for it;
* ``many epochs``: 10 epochs per rollout at SB3's default learning rate 3e-4, no target_kl;
* ``SB3 defaults``: all three at once, i.e. SB3's PPO settings on the BC weights.

Writes a table (eval success at each evaluation, the lowest, and the drop below the BC
level in points) to ``--out`` and the curves to ``--plot``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from report import machine_description, markers, write_section

from vla_gym.agents.ppo import PPOConfig, train_ppo
from vla_gym.fileio import atomic_write_bytes
from vla_gym.report import COLLAPSE_THRESHOLD_POINTS, collapse_summary

SECTION = "ppo_handover"
SB3_LR = 3e-4  # stable-baselines3's PPO default learning rate
SB3_EPOCHS = 10  # and its default epochs per rollout


def reset_log_std(model) -> None:
    with torch.no_grad():
        model.policy.log_std.zero_()


def random_critic(model) -> None:
    """Re-initialise the critic the way SB3's ActorCriticPolicy does (orthogonal, gain sqrt(2), head 1)."""
    policy = model.policy
    policy.mlp_extractor.value_net.apply(lambda m: policy.init_weights(m, gain=np.sqrt(2)))
    policy.value_net.apply(lambda m: policy.init_weights(m, gain=1.0))


def both(*hooks):
    def run(model) -> None:
        for hook in hooks:
            hook(model)

    return run


VARIANTS = {
    "vla_gym": ({}, None),
    "log-std reset": ({}, reset_log_std),
    "random critic": ({"critic_warmup_rollouts": 0, "critic_lr": PPOConfig().lr}, random_critic),
    "many epochs": ({"n_epochs": SB3_EPOCHS, "lr": SB3_LR, "critic_lr": SB3_LR, "target_kl": None}, None),
    "SB3 defaults": (
        {"n_epochs": SB3_EPOCHS, "lr": SB3_LR, "critic_lr": SB3_LR, "target_kl": None, "critic_warmup_rollouts": 0},
        both(reset_log_std, random_critic),
    ),
}


def run_variant(name: str, args: argparse.Namespace) -> list[dict]:
    overrides, hook = VARIANTS[name]
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        config = PPOConfig(
            init=args.init, out=tmp, timesteps=args.timesteps, n_envs=args.n_envs, eval_every=args.eval_every,
            eval_episodes=args.eval_episodes, seed=args.seed, device=args.device, progress=False, **overrides,
        )
        result = train_ppo(config, before_learn=hook)
    curve = [(r["timesteps"], r["success_rate"]) for r in result.history]
    print(f"{name}: " + ", ".join(f"{t}: {s:.0%}" for t, s in curve), flush=True)
    return result.history


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    fig = Figure(figsize=(7.5, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, history in curves.items():
        ax.plot([r["timesteps"] for r in history], [100 * r["success_rate"] for r in history], marker="o", label=name)
    bc_level = 100 * next(iter(curves.values()))[0]["success_rate"]
    ax.axhline(bc_level - COLLAPSE_THRESHOLD_POINTS, color="tab:red", linestyle=":", label="BC level - 10 points")
    ax.set(xlabel="environment steps", ylabel="eval success rate (%)", ylim=(0, 105),
           title="BC -> PPO hand-over from the same BC checkpoint")
    ax.grid(alpha=0.4)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", required=True, help="BC checkpoint every variant starts from")
    parser.add_argument("--timesteps", type=int, default=20480)
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=4096)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="write/update this Markdown file")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the curves")
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    curves = {name: run_variant(name, args) for name in names}
    if args.plot:
        plot(curves, args.plot)
    if args.out:
        steps = [r["timesteps"] for r in next(iter(curves.values()))]
        rows = []
        for name, history in curves.items():
            collapse = collapse_summary(history, history[0]["success_rate"])
            cells = " | ".join(f"{100 * r['success_rate']:.0f}" for r in history)
            verdict = "**collapse**" if collapse["collapsed"] else "no"
            rows.append(f"| {name} | {cells} | {100 * collapse['min_success_rate']:.0f} | "
                        f"{collapse['max_drop_points']:.0f} | {verdict} | "
                        f"{history[-1]['mean_length']:.1f} |")
        start_marker, end_marker = markers(SECTION)
        command = "python " + " ".join(shlex.quote(x) for x in [sys.argv[0], *(argv or sys.argv[1:])])
        now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        text = "\n".join([
            start_marker,
            "## BC -> PPO hand-over: what collapses and what does not",
            "",
            f"- Date: {now}",
            f"- Machine: {machine_description()}",
            f"- Command: `{command}`",
            f"- Every variant starts from `{args.init}` with seed {args.seed}; eval success (%, deterministic) on "
            f"{args.eval_episodes} held-out seeds (300000+) at each env step count; collapse = more than "
            f"{COLLAPSE_THRESHOLD_POINTS:g} points below the step-0 (BC) level.",
            *([f"- Curves: ![hand-over curves]({args.plot.name})"] if args.plot else []),
            "",
            "| variant | " + " | ".join(str(s) for s in steps) + " | lowest | drop (points) | collapse | final length |",
            "|---|" + "---:|" * len(steps) + "---:|---:|---|---:|",
            *rows,
            end_marker,
        ])
        write_section(args.out, text, SECTION)


if __name__ == "__main__":
    main()
