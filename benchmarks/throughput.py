"""The throughput suite: env, collection, BC and PPO speed side by side, in one run.

Usage::

    python benchmarks/throughput.py --out benchmarks/RESULTS.md

Measures, one after another on this machine (nothing else should run meanwhile):

1. **Env steps/s** at 64, 84 and 128 px, with one process and with one process per core
   (each process its own env; the figure is the sum of their rates), for
   ``VLAPick-v0`` (``gym.make``, random actions, resets included), the bare PyBullet loop
   (the same scene, substeps and camera through raw PyBullet calls: the limit) and
   panda-gym's ``PandaPickAndPlace-v3`` with ``render()`` at the same size. Each figure
   comes from fresh subprocesses of ``env_throughput.py`` (see its docstring).
2. **Pipeline**: demo collection (scripted expert into HDF5, one worker per core) in
   episodes/s; BC training samples/s (default network, a few epochs on those demos);
   PPO env steps/s with updates included (from that BC policy, one env process per core,
   at least 8 envs; evaluations off). On the CPU, and again on CUDA when present.
3. **EGL**: ``renderer="egl"`` env steps/s at the same sizes, with the renderer that
   actually ran (the env falls back to TinyRenderer with a warning where PyBullet's EGL
   plugin cannot load) and the OpenGL renderer string EGL reported (a GPU, or Mesa's
   software ``llvmpipe`` on a machine without one).
4. **Image shift**: EGL and TinyRenderer draw different images of the same scene
   (lighting, background, shading). The mean pixel difference, and a 2 x 2 table: a BC
   policy trained on each renderer's demos (same seeds, same settings), evaluated on each
   renderer on the benchmark seeds.

Sections 1-4 go to the ``throughput`` section of ``--out``; the figures measured with
CUDA carry the GPU's name. ``--quick`` makes every measurement tiny (a smoke test).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from env_throughput import BARE, PANDA_GYM, PANDA_GYM_ID, VLAPICK, WORKER_TIMEOUT_S, Measurement, panda_gym_installed, worker_command
from report import NOT_INSTALLED, machine_description, markers, write_section

SECTION = "throughput"
SIZES = (64, 84, 128)
ENV_LABELS = {
    VLAPICK: "VLAPick-v0",
    BARE: "bare PyBullet loop",
    PANDA_GYM: f"panda-gym {PANDA_GYM_ID} + render()",
}
#: PPO runs at least this many envs (the full train-agent preset's count), one process each.
MIN_PPO_ENVS = 8
GL_RENDERER_PATTERN = re.compile(r"GL_RENDERER=(.+)")


@dataclass
class Settings:
    """How much each measurement runs (``--quick`` shrinks everything)."""

    steps: int = 1000
    warmup: int = 50
    max_seconds: float = 20.0
    collect_episodes: int = 200
    bc_epochs: int = 2
    shift_demos: int = 400
    shift_epochs: int = 10
    shift_episodes: int = 100
    ppo_n_steps: int = 256  # steps per env per rollout
    ppo_rollouts: int = 4
    processes: int = field(default_factory=lambda: os.cpu_count() or 1)


QUICK = dict(steps=20, warmup=2, max_seconds=5.0, collect_episodes=4, bc_epochs=1, shift_demos=4, shift_epochs=1,
             shift_episodes=2, ppo_n_steps=16, ppo_rollouts=2)


# --------------------------------------------------------------------------- 1. env steps/s
def env_rate(name: str, size: int, renderer: str, processes: int, settings: Settings, seed: int = 0) -> dict[str, Any]:
    """Steps/s of benchmark ``name`` with ``processes`` concurrent worker subprocesses (summed)."""
    tmp = tempfile.mkdtemp(prefix="throughput_")
    paths = [os.path.join(tmp, f"{i}.json") for i in range(processes)]
    procs = [
        subprocess.Popen(
            worker_command(name, path, settings.steps, settings.warmup, settings.max_seconds, seed + i, size, renderer),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i, path in enumerate(paths)
    ]
    outputs = [proc.communicate(timeout=WORKER_TIMEOUT_S)[0] for proc in procs]
    for proc, output in zip(procs, outputs):
        if proc.returncode != 0:
            raise RuntimeError(f"{name} at {size} px ({renderer}) failed (exit {proc.returncode}):\n{output[-3000:]}")
    runs = [Measurement(**json.loads(Path(path).read_text())) for path in paths]
    for path in paths:
        os.unlink(path)
    os.rmdir(tmp)
    gl = next((m.group(1).strip() for out in outputs for m in [GL_RENDERER_PATTERN.search(out)] if m), None)
    return {
        "steps_per_s": sum(r.steps_per_s for r in runs), "per_process": [r.steps_per_s for r in runs],
        "renderer": runs[0].renderer, "gl_renderer": gl,
    }


def measure_envs(settings: Settings, renderer: str, names: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for size in SIZES:
        for name in names:
            for processes in sorted({1, settings.processes}):
                key = f"{name}/{size}/{processes}"
                print(f"  env {key} ({renderer}) ...", end=" ", flush=True)
                results[key] = env_rate(name, size, renderer, processes, settings)
                print(f"{results[key]['steps_per_s']:.1f} steps/s ({results[key]['renderer']})", flush=True)
    return results


# --------------------------------------------------------------------------- 2. pipeline
def collect(out: Path, episodes: int, workers: int, renderer: str = "tiny", seed: int = 0) -> dict[str, Any]:
    from vla_gym.data import CollectConfig, collect_demos

    kwargs = {"renderer": renderer} if renderer != "tiny" else None
    result = collect_demos(
        CollectConfig(out=str(out), episodes=episodes, workers=workers, seed=seed, env_kwargs=kwargs), progress=False
    )
    return {"episodes": result.episodes, "seconds": result.seconds, "episodes_per_s": result.episodes / result.seconds,
            "steps_per_s": result.steps_per_second, "workers": workers}


def train_bc_for(data: Path, out: Path, epochs: int, device: str, seed: int = 0):
    from vla_gym.agents.bc import BCConfig, train_bc

    return train_bc(BCConfig(data=str(data), out=str(out), epochs=epochs, rollout_every=0, device=device,
                             progress=False, seed=seed))


def measure_pipeline(settings: Settings, device: str, work: Path, demos: Path | None = None) -> dict[str, Any]:
    from vla_gym.agents.checkpoint import resolve_device
    from vla_gym.agents.ppo import PPOConfig, train_ppo

    out: dict[str, Any] = {"device": str(resolve_device(device))}
    if demos is None:
        demos = work / "demos.h5"
        print(f"  collect {settings.collect_episodes} episodes ...", end=" ", flush=True)
        out["collect"] = collect(demos, settings.collect_episodes, settings.processes)
        print(f"{out['collect']['episodes_per_s']:.1f} episodes/s", flush=True)
    print(f"  BC {settings.bc_epochs} epochs on {out['device']} ...", end=" ", flush=True)
    bc = train_bc_for(demos, work / f"bc_{device}", settings.bc_epochs, device)
    out["bc"] = {"samples_per_s": bc.samples_per_second, "steps": bc.steps, "seconds": bc.train_seconds}
    print(f"{bc.samples_per_second:.0f} samples/s", flush=True)
    n_envs, n_steps = max(MIN_PPO_ENVS, settings.processes), settings.ppo_n_steps
    timesteps = n_envs * n_steps * settings.ppo_rollouts
    print(f"  PPO {timesteps} env steps, {n_envs} envs, on {out['device']} ...", end=" ", flush=True)
    ppo = train_ppo(PPOConfig(
        init=bc.policy_path, out=str(work / f"ppo_{device}"), timesteps=timesteps, n_envs=n_envs, n_steps=n_steps,
        batch_size=min(256, n_steps * n_envs), critic_warmup_rollouts=0, eval_every=0, eval_episodes=1,
        device=device, progress=False,
    ))
    out["ppo"] = {"steps_per_s": ppo.steps_per_second, "timesteps": ppo.timesteps, "n_envs": n_envs,
                  "seconds": ppo.train_seconds}
    print(f"{ppo.steps_per_second:.1f} env steps/s", flush=True)
    return out


# --------------------------------------------------------------------------- 4. image shift
def pixel_difference(seeds: range, size: int = 84) -> dict[str, float]:
    """Mean absolute RGB (0-255) and depth (m) difference between TinyRenderer and EGL
    observations of the same seeded scenes."""
    import gymnasium as gym

    import vla_gym  # noqa: F401

    tiny, egl = gym.make("VLAPick-v0", image_size=size), gym.make("VLAPick-v0", image_size=size, renderer="egl")
    try:
        rgb, depth = [], []
        for seed in seeds:
            a, _ = tiny.reset(seed=seed)
            b, _ = egl.reset(seed=seed)
            rgb.append(np.abs(a["rgb"].astype(np.float64) - b["rgb"]).mean())
            depth.append(np.abs(a["depth"] - b["depth"]).mean())
        return {"rgb_mean_abs": float(np.mean(rgb)), "depth_mean_abs_m": float(np.mean(depth)),
                "renderer": egl.unwrapped.sim.renderer}
    finally:
        tiny.close()
        egl.close()


def measure_shift(settings: Settings, device: str, work: Path) -> dict[str, Any]:
    """BC trained on each renderer's demos, evaluated on each renderer."""
    from vla_gym.benchmark import BENCHMARK_SEED
    from vla_gym.evaluation import run_evaluation

    out: dict[str, Any] = {"pixels": pixel_difference(range(20)), "policies": {}, "cells": {}}
    for renderer in ("tiny", "egl"):
        demos = work / f"shift_{renderer}.h5"
        print(f"  shift: {settings.shift_demos} demos on {renderer} ...", end=" ", flush=True)
        collected = collect(demos, settings.shift_demos, settings.processes, renderer)
        print(f"{collected['episodes_per_s']:.1f} episodes/s; BC {settings.shift_epochs} epochs ...", end=" ", flush=True)
        bc = train_bc_for(demos, work / f"shift_bc_{renderer}", settings.shift_epochs, device)
        out["policies"][renderer] = {"path": bc.policy_path, "collect": collected, "bc_seconds": bc.train_seconds}
        print("done", flush=True)
    for trained in ("tiny", "egl"):
        for evaluated in ("tiny", "egl"):
            result = run_evaluation(
                out["policies"][trained]["path"], episodes=settings.shift_episodes, seed=BENCHMARK_SEED,
                env_kwargs={"renderer": evaluated}, device=device, progress=False,
            )
            lo, hi = result.interval
            out["cells"][f"{trained}->{evaluated}"] = {
                "successes": result.successes, "episodes": result.episodes, "success_rate": result.success_rate,
                "ci95": [lo, hi], "mean_length": result.mean_length,
            }
            print(f"  shift: trained on {trained}, evaluated on {evaluated}: {result.summary()}", flush=True)
    return out


# --------------------------------------------------------------------------- report
def _rate(results: dict[str, Any], key: str) -> str:
    cell = results.get(key)
    return "-" if cell is None else f"{cell['steps_per_s']:.1f}"


def env_table(results: dict[str, Any], names: list[str], processes: int, missing: dict[str, str]) -> list[str]:
    procs = sorted({1, processes})
    header = "| env | " + " | ".join(f"{s} px, {p} proc" for s in SIZES for p in procs) + " |"
    rows = [header, "|---|" + "---:|" * (len(SIZES) * len(procs))]
    for name in [*names, *missing]:
        if name in missing:
            rows.append(f"| {ENV_LABELS[name]} | " + " | ".join(missing[name] for _ in SIZES for _ in procs) + " |")
            continue
        rows.append(f"| {ENV_LABELS[name]} | " + " | ".join(_rate(results, f"{name}/{s}/{p}") for s in SIZES for p in procs) + " |")
    return rows


def ratios(results: dict[str, Any], processes: int) -> list[str]:
    lines = []
    for size in SIZES:
        vla, bare, pg = (results.get(f"{n}/{size}/1") for n in (VLAPICK, BARE, PANDA_GYM))
        parts = []
        if vla and bare:
            parts.append(f"{vla['steps_per_s'] / bare['steps_per_s']:.2f} x the bare loop")
        if vla and pg:
            parts.append(f"{vla['steps_per_s'] / pg['steps_per_s']:.1f} x panda-gym")
        many = results.get(f"{VLAPICK}/{size}/{processes}")
        if vla and many and processes > 1:
            parts.append(f"{many['steps_per_s'] / vla['steps_per_s']:.2f} x from {processes} processes")
        if parts:
            lines.append(f"- {size} px, VLAPick-v0: " + "; ".join(parts))
    return lines


def pipeline_lines(pipeline: dict[str, Any], gpu: str | None) -> list[str]:
    device = pipeline["device"] + (f" ({gpu})" if pipeline["device"].startswith("cuda") and gpu else "")
    lines = []
    if "collect" in pipeline:
        c = pipeline["collect"]
        lines.append(f"| demo collection, {c['workers']} workers (CPU) | {c['episodes_per_s']:.1f} episodes/s "
                     f"({c['steps_per_s']:.0f} env steps/s, {c['episodes']} episodes) |")
    lines.append(f"| BC training, {device} | {pipeline['bc']['samples_per_s']:.0f} samples/s "
                 f"({pipeline['bc']['steps']} optimiser steps of 128) |")
    p = pipeline["ppo"]
    lines.append(f"| PPO with updates, {p['n_envs']} envs, {device} | {p['steps_per_s']:.1f} env steps/s "
                 f"({p['timesteps']} steps) |")
    return lines


def render_section(data: dict[str, Any], command: str) -> str:
    start, end = markers(SECTION)
    s = data["settings"]
    lines = [
        start, "## Throughput suite (benchmarks/throughput.py)", "",
        f"- Date: {data['date']}", f"- Machine: {data['machine']}", f"- Command: `{command}`",
        f"- Method: env figures from fresh subprocesses of `env_throughput.py`: {s['warmup']} untimed steps, then "
        f"{s['steps']} timed steps (at most {s['max_seconds']:g} s), random actions, resets included; with "
        f"{s['processes']} processes each runs its own env at once and the rates are summed.", "",
        "### Env steps/s (TinyRenderer)", "",
        *env_table(data["env"], data["env_names"], s["processes"], data["env_missing"]), "",
        *ratios(data["env"], s["processes"]), "",
        "### Pipeline", "", "| stage | throughput |", "|---|---:|",
    ]
    for pipeline in data["pipeline"]:
        lines += pipeline_lines(pipeline, data["gpu"])
    if not data["gpu"]:
        lines += ["", "No CUDA device here: the CUDA figures were not measured on this machine."]
    lines += ["", "### EGL renderer", ""]
    egl = data.get("egl")
    if egl:
        any_cell = next(iter(egl.values()))
        gl = any_cell.get("gl_renderer") or "unknown"
        software = (" `llvmpipe` is Mesa's CPU rasteriser: without a GPU, EGL is slower than TinyRenderer, "
                    "so keep the default `renderer=\"tiny\"` there.") if "llvmpipe" in gl else ""
        lines += [
            f"`renderer=\"egl\"` ran as `{any_cell['renderer']}`; OpenGL renderer: `{gl}`.{software}", "",
            *env_table(egl, [VLAPICK, BARE], s["processes"], {}), "",
        ]
    shift = data.get("shift")
    if shift:
        px = shift["pixels"]
        lines += [
            "### EGL vs TinyRenderer images, and what the shift does to BC", "",
            f"Same scenes (seeds 0-19, 84 px): mean absolute RGB difference {px['rgb_mean_abs']:.1f} / 255, depth "
            f"{px['depth_mean_abs_m'] * 1000:.1f} mm. EGL lights and shades the scene (and its background colour "
            "differs); TinyRenderer is flat.", "",
            f"BC trained on {s['shift_demos']} demos of one renderer ({s['shift_epochs']} epochs, default settings, "
            f"same seeds), evaluated on {s['shift_episodes']} benchmark seeds on each:", "",
            "| trained on \\ evaluated on | tiny | egl |", "|---|---:|---:|",
        ]
        for trained in ("tiny", "egl"):
            cells = [shift["cells"][f"{trained}->{e}"] for e in ("tiny", "egl")]
            lines.append(f"| {trained} | " + " | ".join(
                f"{100 * c['success_rate']:.1f} % ({100 * c['ci95'][0]:.1f}-{100 * c['ci95'][1]:.1f})" for c in cells
            ) + " |")
    lines.append(end)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write/update this Markdown file")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here as JSON")
    parser.add_argument("--device", default="auto", help="auto: the CPU figures, then CUDA ones when present")
    parser.add_argument("--processes", type=int, default=None, help="processes for the 'all cores' figures")
    parser.add_argument("--skip", action="append", default=[], choices=("env", "pipeline", "egl", "shift"),
                        help="leave out a part (repeatable)")
    parser.add_argument("--quick", action="store_true", help="tiny measurements: a smoke test of the suite")
    args = parser.parse_args(argv)
    import torch

    from vla_gym.hardware import gpu_description

    settings = Settings(**(QUICK if args.quick else {}))
    if args.processes:
        settings.processes = args.processes
    gpu = gpu_description() if torch.cuda.is_available() else None
    command = shlex.join(["python", "benchmarks/throughput.py", *(sys.argv[1:] if argv is None else argv)])
    names = [VLAPICK, BARE] + ([PANDA_GYM] if panda_gym_installed() else [])
    data: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "machine": machine_description(),
        "gpu": gpu, "settings": settings.__dict__, "env_names": names,
        "env_missing": {} if PANDA_GYM in names else {PANDA_GYM: NOT_INSTALLED}, "env": {}, "pipeline": [],
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="throughput_") as tmp:
        work = Path(tmp)
        if "env" not in args.skip:
            print("env steps/s (TinyRenderer):", flush=True)
            data["env"] = measure_envs(settings, "tiny", names)
        if "pipeline" not in args.skip:
            print("pipeline on the CPU:", flush=True)
            data["pipeline"].append(measure_pipeline(settings, "cpu", work))
            if gpu and args.device in ("auto", "cuda"):
                print(f"pipeline on CUDA ({gpu}):", flush=True)
                data["pipeline"].append(measure_pipeline(settings, "cuda", work, demos=work / "demos.h5"))
        if "egl" not in args.skip:
            print("env steps/s (EGL):", flush=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data["egl"] = measure_envs(settings, "egl", [VLAPICK, BARE])
        if "shift" not in args.skip:
            print("EGL vs TinyRenderer image shift:", flush=True)
            data["shift"] = measure_shift(settings, "cuda" if gpu else "cpu", work)
    data["seconds"] = time.perf_counter() - start
    section = render_section(data, command)
    print(section)
    if args.json is not None:
        args.json.write_text(json.dumps(data, indent=2, default=str) + "\n")
    if args.out is not None:
        write_section(args.out, section, SECTION)
        print(f"wrote {args.out} ({data['seconds'] / 60:.1f} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
