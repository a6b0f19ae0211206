"""The VLA actor-critic against SB3's NatureCNN ``CnnPolicy`` on the same 84 px RGB-D input.

Usage: python benchmarks/network_speed.py --rounds 7 --out benchmarks/RESULTS.md

Both policies are built as PPO builds them, and measured side by side in one process,
interleaved (A, B, A, B, ... within every round) and repeated; the table gives medians and
the ratio VLA / NatureCNN of each figure (throughput: higher is better for both; latency:
the ratio of times).

* ``forward b1`` / ``forward b128``: ``policy(obs)`` (actions, values, log-probs) under
  ``torch.inference_mode``, as a rollout calls it; observations per second.
* ``train b128``: a BC-style train step on 128 observations: ``evaluate_actions``, the
  NLL of the actions plus the value MSE, ``backward`` and an Adam step; samples per second.
* ``predict``: SB3's ``policy.predict`` on one observation (numpy in, numpy out), ms.

The NatureCNN policy sees RGB and depth stacked as one float (4, 84, 84) image (SB3's
``CnnPolicy`` defaults: ``NatureCNN`` features of 512, linear actor and critic heads);
the VLA policy sees the env's Dict observation (rgb, depth, proprio, instruction) in the
env's channel-last layout, as ``VLAPPO`` hands it over (it skips SB3's ``VecTransposeImage``). Threads: torch's default for the machine (``--threads`` to set).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import torch
from report import markers, torch_run_line, write_section
from stable_baselines3.common.policies import ActorCriticCnnPolicy

from vla_gym.agents.network import VLAActorCriticPolicy
from vla_gym.envs.language import encode_instruction
from vla_gym.envs.spaces import make_action_space, make_observation_space

SECTION = "network_speed"
IMAGE = 84
TRAIN_BATCH = 128


def build(kind: str, network: dict | None = None, device: str = "cpu") -> torch.nn.Module:
    lr = lambda _: 3e-4  # noqa: E731
    if kind == "vla":
        return VLAActorCriticPolicy(make_observation_space(IMAGE), make_action_space(), lr, network=network).to(device)
    space = gym.spaces.Box(0.0, 1.0, (4, IMAGE, IMAGE), np.float32)
    return ActorCriticCnnPolicy(space, make_action_space(), lr, normalize_images=False).to(device)


def observations(kind: str, batch: int, seed: int = 0):
    """A batch of numpy observations in the layout each policy's space has."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (batch, 3, IMAGE, IMAGE), dtype=np.uint8)
    depth = rng.uniform(0.6, 1.4, (batch, 1, IMAGE, IMAGE)).astype(np.float32)
    if kind == "cnn":
        return np.concatenate([rgb / 255.0, depth], axis=1).astype(np.float32)
    rgb, depth = rgb.transpose(0, 2, 3, 1).copy(), depth.transpose(0, 2, 3, 1).copy()  # the env's layout
    texts = ["pick up the red cube", "grab the blue sphere", "lift the green cylinder"]
    return {
        "rgb": rgb, "depth": depth, "proprio": rng.uniform(-0.5, 0.5, (batch, 8)).astype(np.float32),
        "instruction": np.stack([encode_instruction(texts[i % len(texts)]) for i in range(batch)]),
    }


def forward_fn(policy, batch: int, kind: str) -> Callable[[], None]:
    obs, _ = policy.obs_to_tensor(observations(kind, batch))

    def run() -> None:
        with torch.inference_mode():
            policy(obs)

    return run


def train_fn(policy, kind: str) -> Callable[[], None]:
    obs, _ = policy.obs_to_tensor(observations(kind, TRAIN_BATCH))
    actions = torch.rand(TRAIN_BATCH, 4, device=policy.device) * 2 - 1
    returns = torch.rand(TRAIN_BATCH, device=policy.device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-4)
    policy.set_training_mode(True)

    def run() -> None:
        values, log_prob, _ = policy.evaluate_actions(obs, actions)
        loss = -log_prob.mean() + 0.5 * (values.flatten() - returns).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return run


def predict_fn(policy, kind: str) -> Callable[[], None]:
    obs = observations(kind, 1)
    obs = obs[0] if kind == "cnn" else {k: v[0] for k, v in obs.items()}
    return lambda: policy.predict(obs, deterministic=True)


def time_call(fn: Callable[[], None], min_seconds: float, device: str = "cpu") -> float:
    """Seconds per call: warm up, then repeat for at least ``min_seconds`` (on CUDA, each call
    waits for its kernels, so the time is the call's latency)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        sync()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= 3:
            return elapsed / calls


def measure(rounds: int, min_seconds: float, network: dict | None, device: str = "cpu") -> dict[str, dict[str, list[float]]]:
    policies = {kind: build(kind, network, device) for kind in ("vla", "cnn")}
    for policy in policies.values():
        policy.set_training_mode(False)
    benches = {
        "forward b1": (lambda p, k: forward_fn(p, 1, k), 1),
        "forward b128": (lambda p, k: forward_fn(p, 128, k), 128),
        "train b128": (train_fn, TRAIN_BATCH),
        "predict": (predict_fn, 1),
    }
    times: dict[str, dict[str, list[float]]] = {name: {"vla": [], "cnn": []} for name in benches}
    for r in range(rounds):
        for name, (make, _) in benches.items():
            order = ("vla", "cnn") if r % 2 == 0 else ("cnn", "vla")
            for kind in order:
                policy = policies[kind]
                policy.set_training_mode(name == "train b128")
                times[name][kind].append(time_call(make(policy, kind), min_seconds, device))
        print(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{name} {times[name]['vla'][-1] / times[name]['cnn'][-1]:.2f}x time" for name in benches), flush=True)
    return times


def table(times: dict[str, dict[str, list[float]]]) -> list[str]:
    lines = ["| measure | VLA policy | NatureCNN policy | VLA / NatureCNN |", "|---|---|---|---|"]
    for name, per_kind in times.items():
        vla, cnn = statistics.median(per_kind["vla"]), statistics.median(per_kind["cnn"])
        if name == "predict":
            lines.append(f"| predict, 1 obs (ms) | {vla * 1e3:.2f} | {cnn * 1e3:.2f} | {vla / cnn:.2f}x latency |")
        else:
            batch = 1 if name.endswith("b1") else 128
            what = "samples/s" if name.startswith("train") else "obs/s"
            lines.append(f"| {name} ({what}) | {batch / vla:,.0f} | {batch / cnn:,.0f} | {cnn / vla:.2f}x |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (medians over them)")
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum seconds per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--network", type=json.loads, default=None, help="VLA NetworkConfig fields as JSON")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--section", default=SECTION, help="the Markdown section to write")
    parser.add_argument("--out", type=Path, default=None, help="write/update this Markdown file")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be >= 1 and --seconds > 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    times = measure(args.rounds, args.seconds, args.network, args.device)
    lines = table(times)
    print("\n".join(lines))
    vla_params = sum(p.numel() for p in build("vla", args.network).parameters())
    cnn_params = sum(p.numel() for p in build("cnn").parameters())
    if args.out:
        start, end = markers(args.section)
        where = "" if args.device == "cpu" else f" on {torch.cuda.get_device_name()}"
        config = f" ({', '.join(f'{k}={v}' for k, v in args.network.items())})" if args.network else ""
        section = "\n".join([
            start, f"## Network speed{where}: the VLA policy{config} against SB3's NatureCNN policy", "",
            f"{torch_run_line(argv)}; {args.rounds} interleaved rounds, medians). Parameters: VLA "
            f"{vla_params:,}, NatureCNN policy {cnn_params:,}.", "", *lines, "", end,
        ])
        write_section(args.out, section, args.section)


if __name__ == "__main__":
    main()
