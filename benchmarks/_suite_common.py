"""Shared by ``demo_scaling.py`` and ``ablations.py``: resumable training stages, evaluation
cells kept as files, pooled Wilson intervals and the RESULTS.md section around them.

A suite works in one directory (``--work``)::

    work/state.json            the stages: done or not, seconds, what defines each (identity)
    work/demos_<N>.h5          collect_demos, VLAMultiTask-v0, N episodes per task
    work/<stage>/              a BC or PPO run directory (policy.pt, last.pt, ...)
    work/cells/<policy>__<task>__<split>.json   one evaluation cell

A stage is skipped when ``state.json`` says it is done and its output file exists; an
unfinished one resumes (``collect_demos(resume=True)``, BC and PPO from ``last.pt``). A cell
is skipped when its file exists (written atomically, so it is whole). A stage or cell whose
recorded identity differs from the one asked for is refused, never silently reused. With a
deadline (``--max-minutes``) the suite stops before the next unit (stage or cell) once the
time is up; with ``--only-table`` it runs nothing and renders what is there.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from report import machine_description, markers, write_section

from vla_gym.benchmark import BENCHMARK_SEED, SPLITS_BY_NAME
from vla_gym.envs.registration import MULTI_TASK_ENV_ID, TASK_ENV_IDS
from vla_gym.evaluation import wilson_interval
from vla_gym.fileio import atomic_write_text

STATE_FILE = "state.json"
CELLS_DIR = "cells"
#: Default BC budget, in gradient samples (frames through the loss): ~5-6 min per policy at
#: the ~600 samples/s BC runs at on 2 CPU cores.
DEFAULT_BC_SAMPLES = 200_000
#: BC epochs are ceil(samples / training frames), within these bounds (a small demo set is
#: passed over many times, but not without end).
MIN_BC_EPOCHS, MAX_BC_EPOCHS = 1, 60
#: Default PPO budget (env steps) and its checkpoint choice: PPO keeps the policy of its best
#: evaluation (its own seeds, 300000+), of PPO_EVALS evaluations of PPO_EVAL_EPISODES episodes
#: (the quick preset's size).
DEFAULT_PPO_STEPS = 16_384
PPO_EVALS = 4
PPO_EVAL_EPISODES = 30
#: Episodes per cell (the issue asks at least 100) and evaluation worker processes.
DEFAULT_EPISODES = 100
DEFAULT_WORKERS = 2
#: Evaluation runs on the CPU (one observation per step: faster there than on a GPU), on
#: one torch thread, as vla_gym's evaluation workers do: a single observation gains nothing
#: from more, and on a busy machine every op waits for the other threads (measured here with
#: the cores shared: a 50-step episode took 11 s on 2 threads, 0.5 s on 1).
EVAL_DEVICE = "cpu"
EVAL_TORCH_THREADS = 1
MISSING = "missing"
PERCENT = 100.0
SECONDS_PER_MINUTE = 60.0
TASKS = tuple(TASK_ENV_IDS)


class SuiteError(RuntimeError):
    """A work directory that holds results made with other settings, or a bad option."""


# --------------------------------------------------------------------------- options
def parse_names(text: str, known: Sequence[str], what: str) -> list[str]:
    """A comma-separated list of names out of ``known`` (order kept, duplicates dropped)."""
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise SuiteError(f"{what}: unknown or no names {unknown or text!r}; choose from {list(known)}")
    return names


def add_common_arguments(parser: argparse.ArgumentParser, work: str, results: Path) -> None:
    """The options both suites take (training budget, evaluation, where things go)."""
    add = parser.add_argument
    add("--tasks", default=",".join(TASKS), help=f"comma-separated tasks of {list(TASKS)} (default: all)")
    add("--bc-samples", type=int, default=DEFAULT_BC_SAMPLES,
        help=f"BC budget in gradient samples; epochs = ceil(samples / training frames), {MIN_BC_EPOCHS} to "
             "--max-bc-epochs")
    add("--max-bc-epochs", type=int, default=MAX_BC_EPOCHS, help="cap on the BC epochs")
    add("--ppo", type=json.loads, default={}, help="PPOConfig overrides as JSON (on the presets' PPO_SETTINGS)")
    add("--episodes", type=int, default=DEFAULT_EPISODES, help="evaluation episodes per task, split and policy")
    add("--workers", type=int, default=DEFAULT_WORKERS, help="worker processes of collection and evaluation")
    add("--seed", type=int, default=0, help="seeds collection, BC and PPO")
    add("--device", default="auto", help="torch device of BC and PPO (evaluation runs on the CPU)")
    add("--work", type=Path, default=Path(work), help="work directory (resumable)")
    add("--out", type=Path, default=results, help="RESULTS.md to write the section into")
    add("--max-minutes", type=float, default=None,
        help="stop cleanly after the stage or cell running when this many minutes have passed")
    add("--only-table", action="store_true", help="run nothing: render the section from the cells present")
    add("--no-progress", action="store_true", help="no progress bars")


def check_common_arguments(args: argparse.Namespace) -> None:
    """Bounds of the common options (a ``SuiteError`` naming the option)."""
    for name in ("bc_samples", "max_bc_epochs", "episodes", "workers", "ppo_steps"):
        if getattr(args, name, 1) < 1:
            raise SuiteError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not isinstance(args.ppo, dict):
        raise SuiteError(f"--ppo must be a JSON object of PPOConfig fields, got {args.ppo!r}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise SuiteError(f"--max-minutes must be > 0, got {args.max_minutes}")


def task_env_kwargs(tasks: Sequence[str]) -> dict[str, Any] | None:
    """VLAMultiTask-v0's kwargs for ``tasks``: None for every task (the env's own default)."""
    return None if set(tasks) == set(TASKS) else {"tasks": list(tasks)}


# --------------------------------------------------------------------------- state
class Deadline:
    """``--max-minutes``: whether the time is up (never, without a limit)."""

    def __init__(self, minutes: float | None) -> None:
        self.seconds = None if minutes is None else minutes * SECONDS_PER_MINUTE
        self.start = time.monotonic()

    def expired(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.start >= self.seconds


class StateFile:
    """``work/state.json``: per stage ``identity``, ``done``, ``seconds``, ``attempts``,
    ``summary`` and ``info``; and the ``command`` of the last run that trained or evaluated."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"stages": {}}
        if path.exists():
            try:
                self.data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise SuiteError(
                    f"{str(path)!r} is not valid JSON ({err}); delete it to start the stages over"
                ) from None
            if not isinstance(self.data, dict) or not isinstance(self.data.get("stages"), dict):
                raise SuiteError(f"{str(path)!r} is not a suite state file (no 'stages' object)")

    def stage(self, name: str) -> dict[str, Any] | None:
        return self.data["stages"].get(name)

    def record(self, name: str, identity: dict[str, Any], **fields: Any) -> None:
        entry = self.data["stages"].setdefault(
            name, {"identity": identity, "done": False, "seconds": 0.0, "attempts": 0, "summary": "", "info": {}}
        )
        entry.update(identity=identity, **fields)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.data, indent=2) + "\n")


def _normal(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(value))


def _differences(found: dict[str, Any], wanted: dict[str, Any]) -> str:
    """``"key: recorded X, asked Y; ..."`` for the top-level keys whose values differ."""
    found, wanted = _normal(found), _normal(wanted)
    lines = [f"{key}: recorded {found.get(key, '(none)')!r}, asked {wanted.get(key, '(none)')!r}"
             for key in sorted(set(found) | set(wanted)) if found.get(key) != wanted.get(key)]
    return "; ".join(lines) or "none"


@dataclass
class Stage:
    """A training step: ``run()`` does (or resumes) it and returns a one-line summary; it is
    done once ``output`` exists and the state says so. ``identity``: what defines its result."""

    name: str
    output: Path
    identity: dict[str, Any]
    run: Callable[[], str]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Cell:
    """One evaluation: ``policy`` (a column or row label) on ``task`` in ``split``; ``spec``
    says how (env, episodes, seeds, checkpoint), ``checkpoint`` is the policy file."""

    policy: str
    task: str
    split: str
    checkpoint: Path
    spec: dict[str, Any]

    @property
    def key(self) -> tuple[str, str, str]:
        return self.policy, self.task, self.split


class Suite:
    """Runs stages and cells in order, skipping what is done; after the deadline (or always,
    with ``dry``) nothing more runs and what is not done is listed in :attr:`left`."""

    def __init__(self, name: str, work: Path, deadline: Deadline, dry: bool, workers: int, progress: bool,
                 command: str) -> None:
        self.name, self.work, self.deadline, self.dry = name, work, deadline, dry
        self.workers, self.progress, self.command = workers, progress, command
        self.state = StateFile(work / STATE_FILE)
        self.ran, self.skipped = 0, 0
        self.left: list[str] = []
        self.cells: dict[tuple[str, str, str], dict[str, Any]] = {}

    def say(self, text: str) -> None:
        print(f"[{self.name}] {text}", flush=True)

    def _leave(self, what: str, ready: bool = True) -> bool:
        """Whether ``what`` is left undone (listed in :attr:`left`): a dry run, the time is
        up, or its input is not ``ready``."""
        if self.dry or not ready or self.deadline.expired():
            self.left.append(what)
            return True
        return False

    def is_done(self, stage: Stage) -> bool:
        """Whether ``stage`` recorded itself done and its output is there."""
        record = self.state.stage(stage.name)
        return bool(record and record["done"]) and stage.output.exists()

    def run_stage(self, stage: Stage, ready: bool = True) -> bool:
        """Run ``stage`` unless it is done (``ready``: its inputs are there); whether its
        output is ready."""
        record = self.state.stage(stage.name)
        if record is not None and _normal(record["identity"]) != _normal(stage.identity):
            raise SuiteError(
                f"{str(self.work)!r} holds stage {stage.name!r} made with other settings "
                f"({_differences(record['identity'], stage.identity)}); use another --work, or delete that "
                f"stage's output and its entry in {STATE_FILE} to redo it"
            )
        if self.is_done(stage):
            self.skipped += 1
            if not self.dry:
                self.say(f"stage {stage.name}: done already, skipped")
            return True
        if self._leave(f"stage {stage.name}", ready):
            return False
        self.say(f"stage {stage.name} ...")
        self.state.record(stage.name, stage.identity, done=False)
        entry, start = self.state.stage(stage.name), time.perf_counter()
        try:
            summary = stage.run()
        except BaseException:
            self.state.record(stage.name, stage.identity, seconds=entry["seconds"] + time.perf_counter() - start,
                              attempts=entry["attempts"] + 1, info=stage.info)
            raise
        seconds = entry["seconds"] + time.perf_counter() - start
        self.state.record(stage.name, stage.identity, done=True, seconds=seconds, attempts=entry["attempts"] + 1,
                          summary=summary, info=stage.info)
        self.ran += 1
        self.say(f"stage {stage.name}: {summary} ({seconds:.0f} s in all)")
        return True

    def run_cell(self, cell: Cell, ready: bool) -> dict[str, Any] | None:
        """Evaluate ``cell`` unless its file exists (``ready``: its checkpoint is there); its record."""
        path = cell_path(self.work, *cell.key)
        name = "/".join(cell.key)
        if path.exists():
            record = read_cell(path)
            if _normal(record.get("spec")) != _normal(cell.spec):
                raise SuiteError(
                    f"cell file {str(path)!r} was made with other settings "
                    f"({_differences(record.get('spec') or {}, cell.spec)}); use another --work or delete it"
                )
            self.skipped += 1
            self.cells[cell.key] = record
            if not self.dry:
                self.say(f"cell {name}: done already, skipped")
            return record
        if self._leave(f"cell {name}", ready):
            return None
        record = evaluate_cell(cell, self.workers, self.progress)
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        self.ran += 1
        self.cells[cell.key] = record
        self.say(f"cell {name}: {record['successes']}/{record['episodes']} ({record['seconds']:.0f} s)")
        return record

    def finish(self) -> None:
        """Say what ran and what is left (and remember the command of a run that did work)."""
        if not self.dry:
            self.state.data["command"] = self.command
            self.state.save()
        self.say(f"{self.ran} units run, {self.skipped} done already, {len(self.left)} left")
        if self.left:
            reason = "--only-table" if self.dry else "the time is up (--max-minutes)" if self.deadline.expired() else \
                "their inputs are missing"
            self.say(f"left ({reason}): " + ", ".join(self.left))


# --------------------------------------------------------------------------- stages
def collect_stage(work: Path, per_task: int, tasks: Sequence[str], seed: int, workers: int, progress: bool) -> Stage:
    """``work/demos_<per_task>.h5``: a balanced VLAMultiTask-v0 collection."""
    out = work / f"demos_{per_task}.h5"
    kwargs = task_env_kwargs(tasks)

    def run() -> str:
        from vla_gym.data.collect import CollectConfig, collect_demos

        config = CollectConfig(out=str(out), env_id=MULTI_TASK_ENV_ID, episodes_per_task=per_task, env_kwargs=kwargs,
                               workers=workers, seed=seed)
        return collect_demos(config, progress=progress, resume=True, keep_partial=True).summary()

    identity = {"env_id": MULTI_TASK_ENV_ID, "env_kwargs": kwargs, "episodes_per_task": per_task, "seed": seed}
    return Stage(f"demos_{per_task}", out, identity, run)


def train_frames(path: Path) -> int:
    """Frames of the successful episodes of a demo file's train split (what a BC epoch passes over)."""
    import h5py

    with h5py.File(path, "r") as handle:
        data = handle["data"]
        names = [name.decode() for name in handle["mask/train"][()]]
        return sum(int(data[n].attrs["num_samples"]) for n in names if bool(data[n].attrs["success"]))


def bc_epochs(samples: int, frames: int, max_epochs: int) -> int:
    """ceil(samples / frames), within [MIN_BC_EPOCHS, max_epochs]."""
    return min(max(math.ceil(samples / max(frames, 1)), MIN_BC_EPOCHS), max_epochs)


def bc_stage(name: str, work: Path, data: Path, args: argparse.Namespace, network: dict[str, Any] | None = None,
             contrastive_coef: float = 0.0) -> Stage:
    """BC on ``data`` into ``work/<name>`` for ``args.bc_samples`` gradient samples, no rollouts."""
    out = work / name
    identity = {"data": data.name, "samples": args.bc_samples, "max_epochs": args.max_bc_epochs,
                "network": network or {}, "contrastive_coef": contrastive_coef, "seed": args.seed}
    stage = Stage(name, out / "policy.pt", identity, lambda: "")

    def run() -> str:
        from vla_gym.agents.bc import BCConfig, train_bc

        frames = train_frames(data)
        epochs = bc_epochs(args.bc_samples, frames, args.max_bc_epochs)
        stage.info.update(train_frames=frames, epochs=epochs)
        result = train_bc(BCConfig(
            data=str(data), out=str(out), epochs=epochs, rollout_every=0, network=network or {},
            contrastive_coef=contrastive_coef, device=args.device, seed=args.seed, resume=True,
            progress=not args.no_progress,
        ))
        return (f"{epochs} epochs over {frames} training frames, {result.steps} steps, "
                f"{result.samples_per_second:.0f} samples/s")

    stage.run = run
    return stage


def ppo_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The presets' PPO_SETTINGS, this suite's budget and evaluation size, then ``--ppo``."""
    from vla_gym.pipeline import PPO_SETTINGS

    steps = args.ppo_steps
    return {**PPO_SETTINGS, "timesteps": steps, "eval_every": max(steps // PPO_EVALS, 1),
            "eval_episodes": PPO_EVAL_EPISODES, **args.ppo}


def ppo_stage(name: str, work: Path, init: Stage, tasks: Sequence[str], args: argparse.Namespace) -> Stage:
    """PPO on VLAMultiTask-v0 (the suite's tasks) from the BC stage ``init``'s policy."""
    out, settings = work / name, ppo_settings(args)
    identity = {"init": init.name, "env_kwargs": task_env_kwargs(tasks), "settings": settings, "seed": args.seed}

    def run() -> str:
        from vla_gym.agents.ppo import PPOConfig, train_ppo

        config = PPOConfig(init=str(init.output), out=str(out), env_id=MULTI_TASK_ENV_ID, device=args.device,
                           seed=args.seed, resume=True, progress=not args.no_progress,
                           **{"env_kwargs": task_env_kwargs(tasks), **settings})
        result = train_ppo(config)
        best = result.best.get("success_rate", float("nan"))
        return f"{result.timesteps} env steps, {result.steps_per_second:.0f} env steps/s, best own eval {best:.0%}"

    return Stage(name, out / "policy.pt", identity, run)


# --------------------------------------------------------------------------- cells
def cell_path(work: Path, policy: str, task: str, split: str) -> Path:
    safe = policy.replace("+", "plus").replace(" ", "_")
    return work / CELLS_DIR / f"{safe}__{task}__{split}.json"


def make_cell(policy: str, task: str, split: str, stage: Stage, episodes: int) -> Cell:
    """The cell of ``stage``'s policy on ``task``'s own env id in ``split``, seeds BENCHMARK_SEED+."""
    spec = {"env_id": TASK_ENV_IDS[task], "env_kwargs": SPLITS_BY_NAME[split].env_kwargs, "episodes": episodes,
            "seed": BENCHMARK_SEED, "stage": stage.name, "deterministic": True}
    return Cell(policy, task, split, stage.output, spec)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch on ``threads`` threads inside the block (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate_cell(cell: Cell, workers: int, progress: bool) -> dict[str, Any]:
    """Run ``cell``; its record: spec, counts, rate, Wilson interval, per-task stats, episode log."""
    from vla_gym.evaluation import run_evaluation

    start = time.perf_counter()
    with torch_threads(EVAL_TORCH_THREADS):  # the workers (workers > 1) set their own
        result = run_evaluation(
            str(cell.checkpoint), env_id=cell.spec["env_id"], episodes=cell.spec["episodes"], seed=cell.spec["seed"],
            env_kwargs=cell.spec["env_kwargs"], workers=workers, device=EVAL_DEVICE, progress=progress,
        )
    return {
        "policy": cell.policy, "task": cell.task, "split": cell.split, "spec": cell.spec,
        "checkpoint": str(cell.checkpoint), "episodes": result.episodes, "successes": result.successes,
        "success_rate": result.success_rate, "ci95": list(result.interval), "mean_length": result.mean_length,
        "per_task": result.per_task_stats(), "seconds": time.perf_counter() - start,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "episodes_log": result.episodes_log,
    }


def read_cell(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SuiteError(f"cell file {str(path)!r} is not valid JSON ({err}); delete it to evaluate it again") from None
    if not isinstance(record, dict) or not {"episodes", "successes", "spec"} <= set(record):
        raise SuiteError(f"cell file {str(path)!r} is not a suite cell; delete it to evaluate it again")
    return record


# --------------------------------------------------------------------------- tables
def pooled(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Mean success over the cells (tasks) and the 95 % Wilson interval of all their episodes
    pooled; with equal episodes per cell the mean is the pooled rate."""
    records = list(records)
    successes = sum(int(r["successes"]) for r in records)
    episodes = sum(int(r["episodes"]) for r in records)
    mean = sum(int(r["successes"]) / int(r["episodes"]) for r in records) / len(records) if records else 0.0
    low, high = wilson_interval(successes, episodes)
    return {"success_rate": mean, "successes": successes, "episodes": episodes, "ci95": [low, high],
            "cells": len(records)}


def format_rate(stat: dict[str, Any] | None) -> str:
    """``"45 % (35-55)"``: success % and its 95 % Wilson interval in %; :data:`MISSING` for None."""
    if stat is None:
        return MISSING
    low, high = (PERCENT * x for x in stat["ci95"])
    return f"{PERCENT * stat['success_rate']:.0f} % ({low:.0f}-{high:.0f})"


def mean_over_tasks(cells: dict[tuple[str, str, str], dict[str, Any]], policy: str, split: str,
                    tasks: Sequence[str]) -> tuple[dict[str, Any] | None, str]:
    """:func:`pooled` over ``tasks`` when every task's cell is there; else (None, "missing (k/T tasks)")."""
    present = [cells[(policy, task, split)] for task in tasks if (policy, task, split) in cells]
    if len(present) == len(tasks):
        stat = pooled(present)
        return stat, format_rate(stat)
    return None, MISSING + (f" ({len(present)}/{len(tasks)} tasks)" if present else "")


def missing_summary(expected: Sequence[Cell], cells: dict[tuple[str, str, str], dict[str, Any]]) -> str:
    """Which expected cells are there: ``"done: 10 of 12 cells; missing: X: all 4; Y: pick/train"``."""
    done = sum(cell.key in cells for cell in expected)
    by_policy: dict[str, list[Cell]] = {}
    for cell in expected:
        by_policy.setdefault(cell.policy, []).append(cell)
    parts = []
    for policy, group in by_policy.items():
        lacking = [c for c in group if c.key not in cells]
        if lacking:
            which = (f"all {len(group)}" if len(lacking) == len(group)
                     else ", ".join(f"{c.task}/{c.split}" for c in lacking))
            parts.append(f"{policy}: {which}")
    return f"done: {done} of {len(expected)} cells" + (f"; missing: {'; '.join(parts)}" if parts else "; none missing")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> list[str]:
    """A Markdown table, the first ``text_columns`` left-aligned and the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * text_columns + "---:|" * (len(header) - text_columns)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def provenance(state: StateFile, command: str, device: str) -> str:
    """The run's command (the last one that did work, else ``command``), date and machine."""
    from vla_gym.agents.checkpoint import resolve_device

    command = state.data.get("command") or command
    try:
        device = resolve_device(device).type
    except ValueError:
        pass  # as given
    return f"`{command}` ({dt.date.today()}, {machine_description()}; training device {device})"


def write_results(out: Path, name: str, title: str, body: Sequence[str]) -> str:
    """Write the ``name`` section (markers, ``## title``, ``body``) into ``out``; its text."""
    begin, end = markers(name)
    text = "\n".join([begin, f"## {title}", "", *body, end])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_section(out, text, name)
    return text


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def offline_hub() -> None:
    """Keep Hugging Face libraries from the network in this process and its workers: the
    suites use local models only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def json_text(value: Any) -> str:
    """``value`` as one line of JSON, keys sorted (for a section's settings)."""
    return json.dumps(value, sort_keys=True)


def open_suite(section: str, args: argparse.Namespace, argv: list[str] | None) -> "Suite":
    """The :class:`Suite` of a script's parsed common options."""
    from report import command_line

    return Suite(section, args.work, Deadline(args.max_minutes), args.only_table, args.workers,
                 not args.no_progress, command_line(argv))


def guarded(section: str, run: Callable[[], str]) -> int:
    """A script's exit status: print what ``run`` returns (0), or a :class:`SuiteError`'s
    message on stderr (2)."""
    try:
        print(run())
    except SuiteError as err:
        print(f"{section}: {err}", file=sys.stderr)
        return 2
    return 0
