"""Env throughput: ``VLAPick-v0`` against a bare PyBullet loop and panda-gym, side by side.

Three measurements, each on the same machine in one run, each in its own fresh Python
subprocess (run one after the other, never in parallel, so they do not compete for CPU
and none inherits another's PyBullet client, caches or imports):

1. ``vlapick``   -- ``gym.make("VLAPick-v0")`` (84x84 RGB-D observations, default kwargs),
   random actions from the seeded ``env.action_space.sample()``, reset on
   ``terminated or truncated`` (the 50-step limit is set at registration).
2. ``bare``      -- the limit: the same scene (built through ``PyBulletSim``, ``Scene`` and
   ``Panda``), then stepped with raw PyBullet calls only. Per step: one
   ``calculateInverseKinematics`` towards a random end-effector target (same call and
   arguments as ``Panda.set_ee_target``; the target is the current end-effector position,
   read with one ``getLinkState``, plus a random step of up to ``MAX_EE_STEP`` clipped to
   the workspace, as in the env), ``setJointMotorControlArray`` for the arm and the
   fingers, ``SUBSTEPS`` x ``stepSimulation``, one 84x84 ``getCameraImage`` from the env's
   agent camera with ``ER_TINY_RENDERER`` + ``ER_NO_SEGMENTATION_MASK``, converted to RGB
   uint8 and depth in metres. A reset (objects respawned with ``Scene.spawn``) every
   ``MAX_EPISODE_STEPS`` steps.
3. ``panda_gym`` -- panda-gym's ``PandaPickAndPlace-v3`` with ``render_mode="rgb_array"`` at
   84x84, ``env.render()`` every step, random actions, resets included. Optional
   (``pip install -e .[bench]``); reported as "not installed" when missing.

Each measurement runs ``--warmup`` steps untimed, then times ``--steps`` steps (stopping
early if ``--max-seconds`` pass). Steps per second, and the project's targets, are printed
as Markdown; ``--out PATH`` also writes them to PATH, replacing only the block between
:data:`START_MARKER` and :data:`END_MARKER` when the file already exists.

Usage::

    python benchmarks/env_throughput.py --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from report import NOT_INSTALLED, machine_description, markers, write_section

# --- defaults and targets -----------------------------------------------------------------
DEFAULT_STEPS = 2000  # timed steps per measurement
DEFAULT_WARMUP = 100  # untimed steps before timing
DEFAULT_MAX_SECONDS = 120.0  # wall-time cap on one measurement's timed loop
DEFAULT_REPEATS = 1  # subprocess runs per measurement; the median steps/s is reported
DEFAULT_SEED = 0
WORKER_TIMEOUT_S = 900.0  # a worker subprocess taking longer than this is killed

IMAGE_SIZE = 84  # px, side of the observation images everywhere
VLAPICK_ID = "VLAPick-v0"
PANDA_GYM_ID = "PandaPickAndPlace-v3"

#: The project's throughput targets.
TARGET_VLAPICK_STEPS_PER_S = 250.0
TARGET_RATIO_VS_PANDA_GYM = 12.0
TARGET_RATIO_VS_BARE = 0.85

VLAPICK, BARE, PANDA_GYM = "vlapick", "bare", "panda_gym"
BENCHMARKS = (VLAPICK, BARE, PANDA_GYM)
LABELS = {
    VLAPICK: f"(1) `{VLAPICK_ID}` (gym.make, {IMAGE_SIZE}x{IMAGE_SIZE} RGB-D obs)",
    BARE: "(2) bare PyBullet loop (same scene, substeps, camera)",
    PANDA_GYM: f"(3) panda-gym `{PANDA_GYM_ID}` + render() {IMAGE_SIZE}x{IMAGE_SIZE}",
}
NOT_RUN = "not run"

SECTION = "env_throughput"
START_MARKER, END_MARKER = markers(SECTION)


@dataclass
class Measurement:
    """What one worker subprocess measured."""

    steps: int  # timed steps
    seconds: float  # wall time of the timed loop
    episodes: int  # resets inside the timed loop
    renderer: str = "tiny"  # the renderer that ran ("egl" falls back to "tiny" where it cannot load)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds


# --- the three timed loops (run inside worker subprocesses) -------------------------------
def _timed_loop(
    step: Callable[[], bool], reset: Callable[[], None], warmup: int, steps: int, max_seconds: float
) -> Measurement:
    """Run ``warmup`` untimed steps, then time up to ``steps`` steps (or ``max_seconds``).

    ``step`` advances one env step and returns whether the episode ended; ``reset`` starts
    a new episode. Resets are part of the timed work.
    """
    for _ in range(warmup):
        if step():
            reset()
    episodes = 0
    done = 0
    start = time.perf_counter()
    deadline = start + max_seconds
    while done < steps:
        if step():
            reset()
            episodes += 1
        done += 1
        if time.perf_counter() > deadline:
            break
    return Measurement(steps=done, seconds=time.perf_counter() - start, episodes=episodes)


def bench_vlapick(
    warmup: int, steps: int, max_seconds: float, seed: int, image_size: int = IMAGE_SIZE, renderer: str = "tiny"
) -> Measurement:
    import gymnasium as gym

    import vla_gym  # noqa: F401  (registers the env ids)

    env = gym.make(VLAPICK_ID, image_size=image_size, renderer=renderer)
    env.reset(seed=seed)
    env.action_space.seed(seed)

    def step() -> bool:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        return terminated or truncated

    try:
        m = _timed_loop(step, lambda: env.reset(), warmup, steps, max_seconds)
        return dataclasses.replace(m, renderer=env.unwrapped.sim.renderer)
    finally:
        env.close()


def bench_bare(
    warmup: int, steps: int, max_seconds: float, seed: int, image_size: int = IMAGE_SIZE, renderer: str = "tiny"
) -> Measurement:
    import numpy as np
    import pybullet as p

    from vla_gym.envs.pybullet_sim import PyBulletSim, zbuffer_to_metres
    from vla_gym.envs.registration import DEFAULT_ENV_ID
    from vla_gym.envs.registration import MAX_EPISODE_STEPS as LIMITS
    from vla_gym.envs.spaces import (
        AGENT_CAMERA,
        MAX_EE_STEP,
        SOLVER_ITERATIONS,
        SUBSTEPS,
        TIME_STEP,
        WORKSPACE_HIGH,
        WORKSPACE_LOW,
    )
    from vla_gym.envs.tabletop_env import TabletopConfig

    MAX_EPISODE_STEPS = LIMITS[DEFAULT_ENV_ID]
    from vla_gym.envs.robot import (
        IK_JOINT_LOWER,
        IK_JOINT_RANGE,
        IK_JOINT_UPPER,
        ARM_FORCE,
        ARM_JOINTS,
        ARM_POSITION_GAIN,
        EE_DOWN_QUAT,
        EE_LINK,
        FINGER_CLOSED,
        FINGER_FORCE,
        FINGER_JOINTS,
        FINGER_OPEN,
        HOME_JOINTS,
        IK_ITERATIONS,
        Panda,
    )
    from vla_gym.envs.scene import Scene, sample_scene

    # Static scene, built exactly as VLATabletopEnv.__init__ builds it (lowpoly robot).
    sim = PyBulletSim(TIME_STEP, SOLVER_ITERATIONS, renderer=renderer)
    scene = Scene(sim)
    robot = Panda(sim, mesh="lowpoly")
    robot.reset()
    empty_state = sim.save_state()
    c = sim.client
    body = robot.body
    view = AGENT_CAMERA.view_matrix()
    projection = AGENT_CAMERA.projection_matrix(1.0)
    near, far = AGENT_CAMERA.near, AGENT_CAMERA.far
    num_objects_range = TabletopConfig().num_objects  # the env's default range
    arm_forces = [ARM_FORCE] * len(ARM_JOINTS)
    arm_gains = [ARM_POSITION_GAIN] * len(ARM_JOINTS)
    finger_forces = [FINGER_FORCE] * len(FINGER_JOINTS)
    n_arm = len(ARM_JOINTS)
    rng = np.random.default_rng(seed)
    state: dict[str, Any] = {}

    def command_arm(joint_positions) -> None:
        c.setJointMotorControlArray(
            body,
            ARM_JOINTS,
            p.POSITION_CONTROL,
            targetPositions=joint_positions,
            forces=arm_forces,
            positionGains=arm_gains,
        )

    def command_fingers(position: float) -> None:
        c.setJointMotorControlArray(
            body, FINGER_JOINTS, p.POSITION_CONTROL, targetPositions=[position, position], forces=finger_forces
        )

    def reset() -> None:
        specs, _ = sample_scene(rng, int(rng.integers(num_objects_range[0], num_objects_range[1] + 1)))
        scene.clear()
        c.restoreState(stateId=empty_state)
        robot.reset()  # once an episode: the timed per-step work below is raw PyBullet
        scene.spawn(specs)
        state["t"] = 0

    def step() -> bool:
        action = rng.uniform(-1.0, 1.0, 4)
        # Same action semantics as the env: a displacement of the current end-effector position.
        ee = np.asarray(c.getLinkState(body, EE_LINK)[4])
        target = np.clip(ee + action[:3] * MAX_EE_STEP, WORKSPACE_LOW, WORKSPACE_HIGH)
        q = c.calculateInverseKinematics(
            body,
            EE_LINK,
            target.tolist(),
            EE_DOWN_QUAT,
            lowerLimits=IK_JOINT_LOWER,
            upperLimits=IK_JOINT_UPPER,
            jointRanges=IK_JOINT_RANGE,
            restPoses=HOME_JOINTS,
            maxNumIterations=IK_ITERATIONS,
        )
        command_arm(q[:n_arm])
        command_fingers(FINGER_CLOSED if action[3] > 0.0 else FINGER_OPEN)
        for _ in range(SUBSTEPS):
            c.stepSimulation()
        _, _, rgba, zbuffer, _ = c.getCameraImage(
            image_size, image_size, view, projection, renderer=sim.render_flag, flags=p.ER_NO_SEGMENTATION_MASK
        )
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(image_size, image_size, 4)[..., :3]
        depth = zbuffer_to_metres(np.asarray(zbuffer, dtype=np.float32).reshape(image_size, image_size), near, far)
        state["obs"] = (rgb, depth)
        state["t"] += 1
        return state["t"] >= MAX_EPISODE_STEPS

    reset()
    try:
        m = _timed_loop(step, reset, warmup, steps, max_seconds)
        return dataclasses.replace(m, renderer=sim.renderer)
    finally:
        sim.close()


def bench_panda_gym(
    warmup: int, steps: int, max_seconds: float, seed: int, image_size: int = IMAGE_SIZE, renderer: str = "tiny"
) -> Measurement:
    """panda-gym renders with its TinyRenderer option here (its "OpenGL" one needs a GUI window)."""
    import gymnasium as gym
    import panda_gym  # noqa: F401  (registers the env ids)

    if renderer != "tiny":
        raise ValueError("the panda-gym comparison runs with TinyRenderer only")
    env = gym.make(PANDA_GYM_ID, render_mode="rgb_array", render_width=image_size, render_height=image_size)
    env.reset(seed=seed)
    env.action_space.seed(seed)

    def step() -> bool:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        frame = env.render()
        assert frame.shape == (image_size, image_size, 3)
        return terminated or truncated

    try:
        return _timed_loop(step, lambda: env.reset(), warmup, steps, max_seconds)
    finally:
        env.close()


WORKERS: dict[str, Callable[..., Measurement]] = {
    VLAPICK: bench_vlapick,
    BARE: bench_bare,
    PANDA_GYM: bench_panda_gym,
}


# --- the parent: run workers, compare, report ---------------------------------------------
def panda_gym_installed() -> bool:
    return importlib.util.find_spec("panda_gym") is not None


def worker_command(
    name: str, result_path: str, steps: int, warmup: int, max_seconds: float, seed: int,
    image_size: int = IMAGE_SIZE, renderer: str = "tiny",
) -> list[str]:
    """The command line of a worker subprocess that runs benchmark ``name`` and writes its
    :class:`Measurement` as JSON to ``result_path``."""
    return [
        sys.executable, str(Path(__file__).resolve()), "--worker", name, "--result-file", result_path,
        "--steps", str(steps), "--warmup", str(warmup), "--max-seconds", str(max_seconds), "--seed", str(seed),
        "--image-size", str(image_size), "--renderer", renderer,
    ]


def run_worker(name: str, args: argparse.Namespace) -> Measurement:
    """Run one measurement in a fresh subprocess and return what it measured."""
    fd, result_path = tempfile.mkstemp(prefix=f"env_throughput_{name}_", suffix=".json")
    os.close(fd)
    cmd = worker_command(
        name, result_path, args.steps, args.warmup, args.max_seconds, args.seed,
        getattr(args, "image_size", IMAGE_SIZE), getattr(args, "renderer", "tiny"),
    )
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(
                f"benchmark {name!r} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
            )
        return Measurement(**json.loads(Path(result_path).read_text()))
    finally:
        os.unlink(result_path)


#: A benchmark's outcome: its runs, or why there are none ("not installed", "not run").
Outcome = list[Measurement] | str


def median_run(runs: list[Measurement]) -> Measurement:
    """The run with the median steps/s (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r.steps_per_s)
    return ordered[(len(ordered) - 1) // 2]


def median_rate(outcome: Outcome) -> float | None:
    return median_run(outcome).steps_per_s if isinstance(outcome, list) else None


def results_table(results: dict[str, Outcome]) -> str:
    rows = [
        "| Benchmark | Timed steps | Episodes | Time (s) | Steps/s | Steps/s, every run |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name in BENCHMARKS:
        outcome = results[name]
        if not isinstance(outcome, list):
            rows.append(f"| {LABELS[name]} | - | - | - | {outcome} | - |")
            continue
        m = median_run(outcome)
        every = ", ".join(f"{r.steps_per_s:.1f}" for r in outcome)
        rows.append(f"| {LABELS[name]} | {m.steps} | {m.episodes} | {m.seconds:.2f} | {m.steps_per_s:.1f} | {every} |")
    return "\n".join(rows)


def targets_table(results: dict[str, Outcome]) -> tuple[str, bool]:
    """Markdown table of the project's targets, and whether every measured one passed."""
    vla, bare, pg = (median_rate(results[n]) for n in (VLAPICK, BARE, PANDA_GYM))

    def ratio(a: float | None, b: float | None, missing: str) -> float | str:
        return a / b if a is not None and b is not None else missing

    def why(*names: str) -> str:
        return "n/a (" + ", ".join(f"{n} {results[n]}" for n in names if not isinstance(results[n], list)) + ")"

    checks: list[tuple[str, float | str, float, str]] = [
        ("(1) steps/s", vla if vla is not None else why(VLAPICK), TARGET_VLAPICK_STEPS_PER_S, "{:.1f}"),
        ("(1) / (3), vs panda-gym", ratio(vla, pg, why(VLAPICK, PANDA_GYM)), TARGET_RATIO_VS_PANDA_GYM, "{:.2f}"),
        ("(1) / (2), vs bare loop", ratio(vla, bare, why(VLAPICK, BARE)), TARGET_RATIO_VS_BARE, "{:.3f}"),
    ]
    rows = ["| Target | Measured | Required | Result |", "|---|---:|---:|:---:|"]
    all_pass = True
    for label, value, threshold, fmt in checks:
        if isinstance(value, str):
            rows.append(f"| {label} | - | >= {threshold:g} | {value} |")
            continue
        ok = value >= threshold
        all_pass &= ok
        rows.append(f"| {label} | {fmt.format(value)} | >= {threshold:g} | {'PASS' if ok else 'FAIL'} |")
    return "\n".join(rows), all_pass


def report_section(results: dict[str, Outcome], args: argparse.Namespace, command: str) -> str:
    """The Markdown block (markers included) that this script owns in ``--out``."""
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    targets, _ = targets_table(results)
    notes = []
    if results[PANDA_GYM] == NOT_INSTALLED:
        notes = [
            "",
            f"panda-gym is {NOT_INSTALLED}: (3) and the (1)/(3) ratio were not measured "
            "(`pip install -e .[bench]`).",
        ]
    return "\n".join(
        [
            START_MARKER,
            "## Env throughput: VLAPick-v0 vs bare PyBullet loop vs panda-gym",
            "",
            f"- Date: {now}",
            f"- Machine: {machine_description()}",
            f"- Command: `{command}`",
            "- Method: each benchmark in its own fresh subprocess, one after another "
            "(never concurrently; round-robin when repeated); "
            f"{args.warmup} untimed warm-up steps, then {args.steps} timed steps (capped at {args.max_seconds:g} s), "
            f"random actions, resets included; {args.repeats} run(s) each, the median shown.",
            "",
            results_table(results),
            "",
            targets,
            *notes,
            END_MARKER,
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help=f"timed steps per benchmark (default {DEFAULT_STEPS})"
    )
    parser.add_argument(
        "--warmup", type=int, default=DEFAULT_WARMUP, help=f"untimed steps first (default {DEFAULT_WARMUP})"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=DEFAULT_MAX_SECONDS,
        help=f"stop a benchmark's timed loop after this many seconds (default {DEFAULT_MAX_SECONDS:g})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=DEFAULT_REPEATS,
        help=f"runs per benchmark, the median reported (default {DEFAULT_REPEATS})",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"seed for envs and actions (default {DEFAULT_SEED})"
    )
    parser.add_argument("--out", type=Path, default=None, help="write/update this Markdown file")
    parser.add_argument(
        "--only", choices=BENCHMARKS, action="append", default=None, help="run only this benchmark (repeatable)"
    )
    # Internal: run a single benchmark in this process and write its result as JSON.
    parser.add_argument("--worker", choices=BENCHMARKS, help=argparse.SUPPRESS)
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, help=argparse.SUPPRESS)
    parser.add_argument("--renderer", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1 or args.max_seconds <= 0:
        parser.error("--steps and --repeats must be >= 1, --warmup >= 0, --max-seconds > 0")
    if args.worker and args.result_file is None:
        parser.error("--worker needs --result-file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        m = WORKERS[args.worker](args.warmup, args.steps, args.max_seconds, args.seed, args.image_size, args.renderer)
        args.result_file.write_text(json.dumps(dataclasses.asdict(m)))
        return 0

    command = shlex.join([sys.executable, *(sys.argv if argv is None else [sys.argv[0], *argv])])
    selected = list(dict.fromkeys(args.only or BENCHMARKS))
    results: dict[str, Outcome] = {name: NOT_RUN for name in BENCHMARKS}
    if PANDA_GYM in selected and not panda_gym_installed():
        print(
            f"NOTE: panda_gym is not importable, so (3) {PANDA_GYM_ID} is reported as '{NOT_INSTALLED}'. "
            "Install it with `pip install -e .[bench]` (or `pip install panda-gym`).",
            file=sys.stderr,
        )
        results[PANDA_GYM] = NOT_INSTALLED
        selected = [name for name in selected if name != PANDA_GYM]
    runs: dict[str, list[Measurement]] = {name: [] for name in selected}
    # Round-robin over the benchmarks, so that a slow drift in machine load hits all of them alike.
    for i in range(args.repeats):
        for name in selected:
            print(f"running {name} ({i + 1}/{args.repeats}) ...", file=sys.stderr, flush=True)
            m = run_worker(name, args)
            print(f"  {m.steps} steps in {m.seconds:.2f} s: {m.steps_per_s:.1f} steps/s", file=sys.stderr, flush=True)
            runs[name].append(m)
    results.update(runs)

    section = report_section(results, args, command)
    print(section.removeprefix(START_MARKER + "\n").removesuffix("\n" + END_MARKER))
    if args.out is not None:
        write_section(args.out, section, SECTION)
        print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
