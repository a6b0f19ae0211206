"""``train-agent``: scripted demos -> behaviour cloning -> PPO fine-tuning -> evaluation report.

:func:`train_agent` runs four stages (five with grounding frames) into one run directory::

    out/demos.h5              vla-gym collect       (scripted expert, HDF5)
    out/grounding.h5          vla-gym collect-grounding  (only with ``grounding_frames > 0``:
                                                     scenes labelled with where the named
                                                     object is, for BC's auxiliary losses)
    out/bc/                   vla-gym train-bc      (policy.pt, last.pt, tb/, metrics.jsonl)
    out/ppo/                  vla-gym train-ppo     (policy.pt, last.pt, tb/, metrics.jsonl)
    out/eval/<policy>_<split>[_<task>].json         (one file per policy, split and, on a
                                                     multi-task env, task)
    out/report.md, report.json, learning_curve.png, final_policy.mp4

Each stage records itself in ``out/stages.json`` when it completes and is skipped on the
next run; BC and PPO resume from their ``last.pt`` at the step where they stopped, and
the evaluation from the cells already written. A run directory belongs to one config:
running another preset into it is refused.

On a multi-task env (``VLAMultiTask-v0``, the ``multitask`` preset) the demos are balanced
over the tasks (``demo_episodes_per_task``), BC and PPO train one policy on the mixture,
and the report evaluates every task on its own env id (``VLAPick-v0``, ...): a row per
task and split, and the mean over tasks.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vla_gym.envs.registration import DEFAULT_ENV_ID
from vla_gym.fileio import atomic_write_bytes, atomic_write_text

#: Evaluation seeds of the report: the same block as the BC benchmark, used by no training
#: stage (demos use 0+, BC rollout checks 10000000+, PPO's checkpoint choice 300000+).
REPORT_SEED = 100_000
POLICIES = ("scripted", "random", "bc", "bc+ppo")
#: The report's evaluation splits (env kwargs of each): the instruction splits, and the
#: benchmark's camera shift (``vla_gym.benchmark.BENCHMARK_CAMERA_JITTER``).
REPORT_SPLITS: dict[str, dict[str, Any]] = {
    "train": {"instruction_split": "train"},
    "test": {"instruction_split": "test"},
    "object_test": {"object_split": "test"},
    "camera_jitter": {"camera_jitter": [0.03, 3.0]},
    "switched_goal": {"instruction_split": "train"},
}
#: Splits run as the grounding check (``run_evaluation(swap_target=True)``): each seed's
#: train scene with another object as the goal and the instruction naming it, so a policy
#: that ignores the instruction and goes for the scene's usual goal fails.
SWAP_SPLITS = frozenset({"switched_goal"})
SPLITS = ("train", "test")  # the default
STAGES = ("demos", "grounding", "bc", "ppo", "evaluation")
VIDEO_FILE = "final_policy.mp4"
#: Fields of the config that may change when a run is continued.
RESUMABLE_CHANGES = frozenset({"device", "progress", "eval_workers", "backend", "ray_address"})
#: Config fields added since the first runs, with the value a run made before them had.
AGENT_FIELDS_ADDED: dict[str, Any] = {"grounding_frames": 0, "grounding_env_kwargs": None}

#: ``quick`` runs in minutes on a laptop CPU (a smoke test of the whole pipeline);
#: ``full`` is the configuration behind the figures in benchmarks/RESULTS.md.
#: PPO settings of both presets (see benchmarks/RESULTS.md, "PPO from a weak BC start"):
#: the trunk BC trained stays frozen and PPO adapts the heads; a self-imitation term on the
#: agent's own successes; potential-based shaping by the task's progress; exploration from
#: a std of 0.2 rather than BC's; a critic with its own learning rate and no gradient into the trunk.
#: PPO's privileged auxiliary passes (``aux_epochs``) are in neither: measured in the full
#: preset they lowered every split (benchmarks/RESULTS.md, "PPO from a weak BC start").
PPO_SETTINGS: dict[str, Any] = {
    "n_envs": 4, "n_steps": 256, "batch_size": 256, "n_epochs": 4, "lr": 1e-4, "critic_lr": 1e-3, "target_kl": 0.03,
    "detach_critic": True, "trunk_lr_scale": 0.0, "sil_coef": 1.0, "shaping": 1.0, "start_log_std": -1.6,
}

#: The network of the full preset: the order-free word encoder its figures in
#: benchmarks/RESULTS.md were measured with. The quick preset has the order-aware default
#: ("gru"), 18 points better on pick in the ablation table of benchmarks/RESULTS.md.
PICK_NETWORK: dict[str, Any] = {"word_context": "bag"}

#: ``quick`` runs in minutes on a laptop CPU (the README's main job); ``full`` is the
#: configuration behind the figures in benchmarks/RESULTS.md, with the camera randomised
#: during PPO and a camera-jitter split in the report.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        # PPO's showcase: a BC start that is weak for want of demos, not of training. 18 demos
        # teach the motion; grounding frames (scenes without an expert, labelled with where the
        # named object is) teach the trunk, with its fovea, to place the object to a third of
        # a pixel, and PPO (trunk frozen) then lifts the heads by self-imitation of its own
        # successes (benchmarks/RESULTS.md, "A fovea"). With this trunk 30 demos already give
        # BC ~83 %, 20 give 61-75 % and 15 ~30 %, from which PPO did not climb; without the
        # fovea PPO stopped near 75 % (same file, "Why PPO stops near 75 %"). 145 epochs are
        # 435 BC steps (30 demos x 100 epochs were 500).
        "demo_episodes": 18,
        "grounding_frames": 10_000,
        "bc": {"epochs": 145, "rollout_every": 0, "network": {"fovea": 16}},
        "ppo": {**PPO_SETTINGS, "timesteps": 40_960, "eval_every": 8192, "eval_episodes": 50},
        "eval_episodes": 100,
    },
    "full": {
        "demo_episodes": 1000,
        # Demos stay on the fixed camera: from randomised cameras ("demo_env_kwargs") BC gained
        # 11 points on the camera-jitter split and lost 5 on the train split (benchmarks/RESULTS.md,
        # "Demos from randomised cameras").
        "bc": {"epochs": 8, "rollout_every": 4, "rollout_episodes": 30, "network": PICK_NETWORK},
        "ppo": {**PPO_SETTINGS, "timesteps": 24_576, "eval_every": 8192, "eval_episodes": 50,
                "env_kwargs": {"camera_jitter": [0.03, 3.0]}},
        "eval_episodes": 100,
        "splits": ["train", "test", "camera_jitter"],
    },
    # One policy for the whole task suite: 300 demos of each of the 6 tasks, BC on the
    # mixture, PPO on VLAMultiTask-v0 with the camera randomised, a report row per task.
    # The report leaves out the scripted and random rows (benchmarks/RESULTS.md, "Scripted
    # experts on every task", has them) to stay within 45 minutes on 2 CPU cores.
    "multitask": {
        "env_id": "VLAMultiTask-v0",
        "demo_episodes_per_task": 300,
        "bc": {"epochs": 8, "rollout_every": 0},
        "ppo": {**PPO_SETTINGS, "timesteps": 16_384, "eval_every": 8192, "eval_episodes": 60,
                "env_kwargs": {"camera_jitter": [0.03, 3.0]}},
        "eval_episodes": 100,
        "policies": ["bc", "bc+ppo"],
        "splits": ["train", "test", "object_test", "camera_jitter", "switched_goal"],
    },
}


@dataclass
class AgentConfig:
    """A ``train-agent`` run.

    Args:
        out: run directory.
        preset: name of the preset the stage settings came from (for the report).
        env_id: env of every stage.
        demo_episodes: expert episodes to collect.
        demo_episodes_per_task: on a multi-task env: collect exactly this many episodes of
            each task instead (``vla-gym collect --episodes-per-task``); None uses
            ``demo_episodes`` with the task drawn per episode.
        demo_workers: collection worker processes.
        demo_env_kwargs: env kwargs of the demo collection only (e.g. ``{"camera_jitter":
            [0.03, 3.0]}``: demos from randomised cameras); BC reads them from the demo file.
            None: the env's defaults.
        grounding_frames: scenes without an expert, labelled with where the named object is
            (``vla-gym collect-grounding``, :mod:`vla_gym.data.grounding`), collected after
            the demos with the demos' env kwargs and given to BC (``grounding_data``); 0: none.
            They let BC learn the grounding from few demos (benchmarks/RESULTS.md, "Grounding frames").
        grounding_env_kwargs: env kwargs of the grounding frames instead of ``demo_env_kwargs``
            (e.g. frames from randomised cameras, demos from the fixed one); None: the demos'.
        bc: :class:`~vla_gym.agents.bc.BCConfig` fields (besides data, out, device, seed).
        ppo: :class:`~vla_gym.agents.ppo.PPOConfig` fields (besides init, out, env, device, seed).
        eval_episodes: episodes per policy and split (and task, on a multi-task env) in the report.
        splits: the report's splits, names of :data:`REPORT_SPLITS`.
        policies: the report's rows, from :data:`POLICIES`.
        eval_seed: first report seed.
        eval_workers: evaluation worker processes.
        video_episodes: episodes of the final policy in ``final_policy.mp4``.
        device: torch device for BC and PPO ("auto": CUDA when present).
        seed: seeds collection, BC and PPO.
        progress: show progress bars.
        backend: where collection and evaluation run: ``"local"`` (worker processes here)
            or ``"ray"`` (see :mod:`vla_gym.backends`); the same episodes either way.
        ray_address: with ``backend="ray"``: ``None`` starts Ray here, else ``"auto"`` or
            ``"HOST:PORT"`` of a running cluster.
    """

    out: str = "runs/agent"
    preset: str = "custom"
    env_id: str = DEFAULT_ENV_ID
    demo_episodes: int = 1000
    demo_episodes_per_task: int | None = None
    demo_workers: int = 2
    demo_env_kwargs: dict[str, Any] | None = None
    grounding_frames: int = 0
    grounding_env_kwargs: dict[str, Any] | None = None
    bc: dict[str, Any] = field(default_factory=dict)
    ppo: dict[str, Any] = field(default_factory=dict)
    eval_episodes: int = 200
    splits: list[str] = field(default_factory=lambda: list(SPLITS))
    policies: list[str] = field(default_factory=lambda: list(POLICIES))
    eval_seed: int = REPORT_SEED
    eval_workers: int = 2
    video_episodes: int = 2
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    backend: str = "local"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        from vla_gym.backends import check_backend_choice

        check_backend_choice(self.backend, self.ray_address)
        for name in ("demo_episodes", "eval_episodes", "eval_workers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("demo_workers", "video_episodes", "eval_seed", "grounding_frames"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.splits, (list, tuple)) or not self.splits or set(self.splits) - set(REPORT_SPLITS):
            raise ValueError(f"splits must be a non-empty list of {sorted(REPORT_SPLITS)}, got {self.splits!r}")
        self.splits = list(dict.fromkeys(self.splits))
        if not isinstance(self.policies, (list, tuple)) or not self.policies or set(self.policies) - set(POLICIES):
            raise ValueError(f"policies must be a non-empty list of {list(POLICIES)}, got {self.policies!r}")
        self.policies = [p for p in POLICIES if p in self.policies]
        self._check_tasks()
        for name in ("demo_env_kwargs", "grounding_env_kwargs"):
            self._check_env_kwargs(name)
        for name, reserved in (("bc", {"data", "out", "device", "seed", "resume", "progress", "grounding_data"}),
                               ("ppo", {"init", "out", "env_id", "device", "seed", "resume", "progress"})):
            clash = sorted(reserved & set(getattr(self, name)))
            if clash:
                raise ValueError(f"{name} settings {clash} are set by train-agent itself; remove them")
        # Build the stage configs once, so a bad field fails now rather than after the demos.
        self.bc_config(Path(self.out))
        self.ppo_config(Path(self.out))
        if self.grounding_frames:
            self.grounding_config(Path(self.out))

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages this run has, in order (the grounding stage only with ``grounding_frames``)."""
        return tuple(s for s in STAGES if s != "grounding" or self.grounding_frames)

    def _check_env_kwargs(self, name: str) -> None:
        """Bad env kwargs fail now, not after the demos (the CLI's own check, an OptionError:
        a ValueError naming the field)."""
        from vla_gym.cli_checks import check_env_kwargs

        value = getattr(self, name)
        if value is not None and not isinstance(value, dict):
            raise ValueError(
                f"{name} must be a dict of env kwargs (e.g. {{'camera_jitter': [0.03, 3.0]}}) or None, got {value!r}"
            )
        check_env_kwargs(self.env_id, value, option=name)

    def _check_tasks(self) -> None:
        from vla_gym.envs.registration import ENV_IDS

        if self.env_id not in ENV_IDS:
            raise ValueError(f"env_id={self.env_id!r} is not a vla_gym env id; choose one of {sorted(ENV_IDS)}")
        if self.demo_episodes_per_task is not None:
            if len(self.tasks) < 2:
                raise ValueError(
                    f"demo_episodes_per_task balances the demos over a multi-task env's tasks; {self.env_id} "
                    "has one task: use demo_episodes"
                )
            if int(self.demo_episodes_per_task) < 1:
                raise ValueError(f"demo_episodes_per_task must be >= 1, got {self.demo_episodes_per_task!r}")

    @property
    def tasks(self) -> list[str]:
        """The tasks of ``env_id`` (several for ``VLAMultiTask-v0``), as the env resolves them."""
        from vla_gym.data.format import env_config_dict

        return list(env_config_dict(self.env_id)["tasks"])

    @property
    def eval_tasks(self) -> list[str | None]:
        """The report's task blocks: None (the env itself) for a one-task env, else every
        task, each evaluated on its own env id."""
        tasks = self.tasks
        return [None] if len(tasks) == 1 else tasks

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> "AgentConfig":
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r} is not available; choose one of {sorted(PRESETS)}")
        settings = json.loads(json.dumps(PRESETS[preset]))
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(preset=preset, **settings)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def bc_config(self, out: Path):
        from vla_gym.agents.bc import BCConfig

        grounding = str(out / "grounding.h5") if self.grounding_frames else None
        return BCConfig(
            data=str(out / "demos.h5"), out=str(out / "bc"), env_id=self.env_id, env_kwargs=self.demo_env_kwargs,
            device=self.device, seed=self.seed, resume=True, progress=self.progress, grounding_data=grounding,
            **self.bc,
        )

    def grounding_config(self, out: Path):
        from vla_gym.data.grounding import DEFAULT_SEED, GroundingConfig

        return GroundingConfig(
            out=str(out / "grounding.h5"), env_id=self.env_id, frames=self.grounding_frames,
            seed=DEFAULT_SEED + self.seed, workers=self.demo_workers,
            env_kwargs=self.demo_env_kwargs if self.grounding_env_kwargs is None else self.grounding_env_kwargs,
        )

    def ppo_config(self, out: Path):
        from vla_gym.agents.ppo import PPOConfig

        return PPOConfig(
            init=str(out / "bc" / "policy.pt"), out=str(out / "ppo"), env_id=self.env_id, device=self.device,
            seed=self.seed, resume=True, progress=self.progress, **self.ppo,
        )


class _Stages:
    """``out/stages.json``: which stages are done, their wall-clock seconds (summed over
    attempts, so a resumed stage counts all its work) and a one-line summary."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, dict[str, Any]] = read_json_file(path, "stage records") if path.exists() else {}
        bad = [name for name, entry in self.data.items() if name not in STAGES or not _valid_stage_entry(entry)]
        if bad:
            raise ValueError(
                f"{str(path)!r} is not a train-agent stage record (unknown or malformed entries {bad}); "
                "delete the run directory to start over"
            )

    def done(self, stage: str) -> bool:
        return bool(self.data.get(stage, {}).get("done"))

    def record(self, stage: str, seconds: float, done: bool, summary: str = "") -> None:
        entry = self.data.setdefault(stage, {"seconds": 0.0, "attempts": 0, "done": False, "summary": ""})
        entry["seconds"] += seconds
        entry["attempts"] += 1
        entry["done"] = done
        if summary:
            entry["summary"] = summary
        atomic_write_text(self.path, json.dumps(self.data, indent=2) + "\n")


def read_json_file(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; a file that is not one raises ``ValueError`` naming it."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{str(path)!r} ({what}) is not valid JSON ({err}); it is corrupt: delete the run directory to start over"
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{str(path)!r} ({what}) must hold a JSON object, not {type(value).__name__}")
    return value


def _valid_stage_entry(entry: Any) -> bool:
    return (
        isinstance(entry, dict) and isinstance(entry.get("done"), bool)
        and isinstance(entry.get("seconds"), (int, float)) and isinstance(entry.get("attempts"), int)
    )


def train_agent(config: AgentConfig) -> dict[str, Any]:
    """Run (or continue) every stage and write the report; returns the report dict."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _claim_run_directory(out, config)
    stages = _Stages(out / "stages.json")
    skipped: dict[str, bool] = {}
    runs = {"demos": _run_demos, "grounding": _run_grounding, "bc": _run_bc, "ppo": _run_ppo,
            "evaluation": _run_evaluation}
    for stage in config.stages:
        run = runs[stage]
        skipped[stage] = stages.done(stage)
        if skipped[stage]:
            _say(config, f"[train-agent] {stage}: complete already, skipped")
            continue
        _say(config, f"[train-agent] {stage} ...")
        start = time.perf_counter()
        try:
            summary = run(config, out)
        except BaseException:
            stages.record(stage, time.perf_counter() - start, done=False)
            raise
        stages.record(stage, time.perf_counter() - start, done=True, summary=summary)
        _say(config, f"[train-agent] {stage}: {summary} ({stages.data[stage]['seconds']:.0f} s)")
    report = build_report(config, out, stages, skipped)
    from vla_gym.report import write_report

    write_report(out, report)
    return report


def _say(config: AgentConfig, text: str) -> None:
    if config.progress:
        print(text, flush=True)


def _claim_run_directory(out: Path, config: AgentConfig) -> None:
    """Write ``out/agent_config.json``, or check that the run there used this config."""
    from vla_gym.agents.checkpoint import resume_differences

    path = out / "agent_config.json"
    if path.exists():
        saved = {**AGENT_FIELDS_ADDED, **read_json_file(path, "the run's config")}
        differ = resume_differences(saved, config.to_dict(), RESUMABLE_CHANGES)
        if differ:
            raise ValueError(
                f"{str(out)!r} holds a train-agent run with another config ({'; '.join(differ)}); "
                "use another --out, or delete that directory to start over"
            )
    atomic_write_text(path, json.dumps(config.to_dict(), indent=2) + "\n")


def _run_demos(config: AgentConfig, out: Path) -> str:
    from vla_gym.data.collect import CollectConfig, collect_demos

    per_task = config.demo_episodes_per_task
    count = {"episodes_per_task": per_task} if per_task is not None else {"episodes": config.demo_episodes}
    result = collect_demos(
        CollectConfig(out=str(out / "demos.h5"), env_id=config.env_id, workers=config.demo_workers,
                      seed=config.seed, env_kwargs=config.demo_env_kwargs, backend=config.backend,
                      ray_address=config.ray_address, **count),
        progress=config.progress, resume=True, keep_partial=True,  # a killed collection continues on rerun
    )
    return result.summary()


def _run_grounding(config: AgentConfig, out: Path) -> str:
    """Grounding frames for BC; the file is written whole (temporary name, then renamed), so
    an interrupted stage starts over and a finished file is replaced by the same frames."""
    from vla_gym.data.grounding import collect_grounding_frames

    return collect_grounding_frames(config.grounding_config(out), progress=config.progress)


def _run_bc(config: AgentConfig, out: Path) -> str:
    from vla_gym.agents.bc import train_bc

    result = train_bc(config.bc_config(out))
    rollout = result.best.get("rollout_success_rate")
    return (
        f"{result.steps} steps, {result.epochs} epochs, {result.samples_per_second:.0f} samples/s"
        + (f", best rollout success {rollout:.0%}" if rollout is not None else "")
    )


def _run_ppo(config: AgentConfig, out: Path) -> str:
    from vla_gym.agents.ppo import train_ppo

    result = train_ppo(config.ppo_config(out))
    return (
        f"{result.timesteps} env steps, {result.steps_per_second:.0f} env steps/s including updates "
        f"(this attempt), best eval success {result.best.get('success_rate', float('nan')):.0%}"
    )


def _policy_spec(name: str, out: Path) -> str:
    return {"bc": str(out / "bc" / "policy.pt"), "bc+ppo": str(out / "ppo" / "policy.pt")}.get(name, name)


def _cell_path(out: Path, policy: str, split: str, task: str | None = None) -> Path:
    suffix = f"_{task}" if task is not None else ""
    return out / "eval" / f"{policy.replace('+', '_')}_{split}{suffix}.json"


def _cell_env_id(config: AgentConfig, task: str | None) -> str:
    """The env a report cell runs on: the run's env, or the task's own id."""
    from vla_gym.envs.registration import TASK_ENV_IDS

    return config.env_id if task is None else TASK_ENV_IDS[task]


_SHIPPED: dict[str, str] = {}


def _init_cell_worker(files: dict[str, bytes] | None = None) -> None:
    """A backend worker of the evaluation stage: ``files`` are the checkpoints shipped to a
    Ray worker (see :func:`vla_gym.backends.ship_files`)."""
    from vla_gym.backends import local_copies

    _SHIPPED.clear()
    _SHIPPED.update(local_copies(files))


def _evaluate_cell(task: dict[str, Any]) -> dict[str, Any]:
    """One policy on one instruction split (run by a backend worker, here or on a Ray node):
    the result's JSON text and the video's bytes, which the caller writes (the worker's
    disk need not be this machine's)."""
    import tempfile

    import torch

    from vla_gym.evaluation import json_default, run_evaluation

    torch.set_num_threads(1)  # the workers share the cores
    with tempfile.TemporaryDirectory(prefix="vla_gym_eval_") as tmp:
        json_path = Path(tmp) / "cell.json"
        video_path = Path(tmp) / VIDEO_FILE if task["video"] is not None else None
        run_evaluation(
            _SHIPPED.get(task["spec"], task["spec"]), env_id=task["env_id"], episodes=task["episodes"], seed=task["seed"],
            json_path=json_path, video_path=video_path, video_episodes=task["video_episodes"],
            device="cpu", env_kwargs=task["env_kwargs"], progress=False, swap_target=task["swap_target"],
        )
        video = video_path.read_bytes() if video_path is not None else None
        result = json.loads(json_path.read_text())
    # Where the caller puts the video, and the checkpoint as the caller names it (not a worker's copies).
    result["metadata"].update(video_path=task["video"], policy=task["spec"])
    text = json.dumps(result, indent=2, default=json_default) + "\n"
    return {"json": task["json"], "text": text, "video": task["video"], "video_bytes": video}


def _save_cell(cell: dict[str, Any]) -> None:
    """Write a finished cell's files (atomically; the video before the JSON that marks it done)."""
    if cell["video"] is not None:
        atomic_write_bytes(Path(cell["video"]), cell["video_bytes"])
    atomic_write_text(Path(cell["json"]), cell["text"])


def _run_evaluation(config: AgentConfig, out: Path) -> str:
    from vla_gym.backends import make_backend, ship_files

    tasks = []
    video_task = config.eval_tasks[0]
    for policy in config.policies:
        for split in config.splits:
            for task in config.eval_tasks:
                path = _cell_path(out, policy, split, task)
                if path.exists():
                    continue  # written by an earlier, interrupted attempt
                record_video = (policy == "bc+ppo" and split == "train" and task == video_task
                                and config.video_episodes > 0)
                tasks.append({
                    "spec": _policy_spec(policy, out), "env_id": _cell_env_id(config, task),
                    "episodes": config.eval_episodes, "seed": config.eval_seed, "json": str(path), "split": split,
                    "env_kwargs": REPORT_SPLITS[split], "swap_target": split in SWAP_SPLITS,
                    "video": str(out / VIDEO_FILE) if record_video else None,
                    "video_episodes": max(config.video_episodes, 1),
                })
    (out / "eval").mkdir(exist_ok=True)
    # The slowest cells (the network policies and random's full-length episodes) first.
    tasks.sort(key=lambda t: t["spec"] == "scripted")
    workers = config.eval_workers if len(tasks) > 1 else 1
    files = ship_files(t["spec"] for t in tasks) if config.backend == "ray" else None
    with make_backend(config.backend, workers, config.ray_address) as backend:
        cells = backend.imap_unordered(_evaluate_cell, tasks, setup=_init_cell_worker, setup_args=(files,))
        for _, cell in _progress(cells, len(tasks), config.progress):
            _save_cell(cell)
    per_task = f" x {len(config.eval_tasks)} tasks" if config.eval_tasks != [None] else ""
    return f"{len(config.policies)} policies x {len(config.splits)} splits{per_task} x {config.eval_episodes} episodes"


def _progress(items, total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc="evaluate", unit="cell", disable=not enabled)


def _read_cell(out: Path, policy: str, split: str, task: str | None = None) -> dict[str, Any]:
    data = json.loads(_cell_path(out, policy, split, task).read_text())
    row = {
        "policy": policy, "split": split, "episodes": data["episodes"], "successes": data["successes"],
        "success_rate": data["success_rate"], "ci_low": data["ci95"][0], "ci_high": data["ci95"][1],
        "mean_length": data["mean_length"], "source": data["metadata"]["policy"],
    }
    if task is not None:
        stats = data["per_task"][task]
        row.update(task=task, mean_subgoals_done=stats["mean_subgoals_done"], num_subgoals=stats["num_subgoals"])
    return row


def build_report(config: AgentConfig, out: Path, stages: _Stages, skipped: dict[str, bool]) -> dict[str, Any]:
    """The report dict (see :func:`vla_gym.report.validate_report`) from the files of the run."""
    from vla_gym.agents.checkpoint import read_checkpoint, resolve_device
    from vla_gym.hardware import hardware_dict
    from vla_gym.report import LEARNING_CURVE_FILE, collapse_summary, mean_over_tasks, plot_learning_curve

    history = read_checkpoint(out / "ppo" / "last.pt")["meta"]["history"]
    curve = [
        {k: r[k] for k in ("timesteps", "success_rate", "ci_low", "ci_high", "mean_length", "episodes", "successes")}
        for r in history
    ]
    bc_level = curve[0]["success_rate"] if curve else None
    curve_file = None
    if curve:
        plot_learning_curve(curve, bc_level, out / LEARNING_CURVE_FILE)
        curve_file = LEARNING_CURVE_FILE
    results = [_read_cell(out, p, s, t) for p in config.policies for s in config.splits for t in config.eval_tasks]
    ppo = config.ppo_config(out)
    stage_table = {
        name: {"seconds": stages.data[name]["seconds"], "skipped": skipped.get(name, False),
               "summary": stages.data[name].get("summary", ""), "attempts": stages.data[name]["attempts"]}
        for name in config.stages
    }
    notes = [
        f"The PPO learning curve is measured on its own {ppo.eval_episodes} seeds from {ppo.eval_seed} "
        f"(which pick the kept checkpoint); the table above uses seeds {config.eval_seed}+, which no stage trains "
        "or selects on.",
        "bc+ppo is the PPO checkpoint with the best learning-curve success (then the shortest episodes).",
    ]
    if config.eval_tasks != [None]:
        notes.append(
            f"One policy for the {len(config.tasks)} tasks of {config.env_id}; each task's rows ran on the task's own "
            "env id, on the same seeds. switched_goal: each seed's train scene with another object as the goal "
            "and the instruction naming it (the instruction-blind check)."
        )
    return {
        "title": "vla_gym train-agent report",
        "preset": config.preset,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "env_id": config.env_id,
        "env_kwargs": {},
        "hardware": hardware_dict(),
        "device": resolve_device(config.device).type,
        "eval": {"episodes": config.eval_episodes, "seed_first": config.eval_seed,
                 "seed_last": config.eval_seed + config.eval_episodes - 1, "splits": list(config.splits),
                 "tasks": [t for t in config.eval_tasks if t is not None]},
        "results": results,
        "mean_over_tasks": mean_over_tasks(results),
        "learning_curve": curve,
        "bc_level": bc_level,
        "collapse": collapse_summary(curve, bc_level),
        "stages": stage_table,
        "total_seconds": sum(entry["seconds"] for entry in stage_table.values()),
        "files": {
            "learning_curve": curve_file,
            "video": VIDEO_FILE if (out / VIDEO_FILE).exists() else None,
            "demos": str(out / "demos.h5"),
            "bc_policy": str(out / "bc" / "policy.pt"),
            "ppo_policy": str(out / "ppo" / "policy.pt"),
        },
        "commands": _commands(config, out),
        "notes": notes,
    }


def _grounding_command(config: AgentConfig, out: Path) -> str:
    grounding = config.grounding_config(out)
    return (
        f"vla-gym collect-grounding --env {grounding.env_id} --frames {grounding.frames} --workers {grounding.workers} "
        f"--seed {grounding.seed}"
        + (f" --env-kwargs {shlex.quote(json.dumps(grounding.env_kwargs))}" if grounding.env_kwargs else "")
        + f" --out {shlex.quote(grounding.out)}"
    )


def _commands(config: AgentConfig, out: Path) -> list[str]:
    """The command that made this run, and the stage commands it is equivalent to."""
    q = shlex.quote
    main = f"train-agent --preset {config.preset} --out {q(str(out))} --device {config.device} --seed {config.seed}"
    bc, ppo = config.bc_config(out), config.ppo_config(out)
    return [
        main,
        "# the same stages one by one:",
        f"vla-gym collect --env {config.env_id} "
        + (f"--episodes-per-task {config.demo_episodes_per_task}" if config.demo_episodes_per_task is not None
           else f"--episodes {config.demo_episodes}")
        + f" --workers {config.demo_workers} --seed {config.seed}"
        + (f" --env-kwargs {q(json.dumps(config.demo_env_kwargs))}" if config.demo_env_kwargs else "")
        + f" --out {q(bc.data)}",
        *([] if not config.grounding_frames else [_grounding_command(config, out)]),
        f"vla-gym train-bc --data {q(bc.data)} --out {q(bc.out)} --epochs {bc.epochs} --batch-size {bc.batch_size} "
        f"--rollout-every {bc.rollout_every} --rollout-episodes {bc.rollout_episodes} --seed {config.seed}"
        + (f" --grounding-data {q(bc.grounding_data)}" if bc.grounding_data else "")
        + (f" --word-context {bc.network['word_context']}" if "word_context" in bc.network else "")
        + (" --destination-head" if bc.network.get("destination_head") else "")
        + (f" --fovea {bc.network['fovea']}" if bc.network.get("fovea") else ""),
        f"vla-gym train-ppo --init {q(ppo.init)} --env {ppo.env_id} --timesteps {ppo.timesteps} --n-envs {ppo.n_envs} "
        f"--n-steps {ppo.n_steps} --batch-size {ppo.batch_size} --eval-every {ppo.eval_every} "
        f"--eval-episodes {ppo.eval_episodes} --seed {config.seed}"
        + (f" --n-epochs {ppo.n_epochs} --lr {ppo.lr} --critic-lr {ppo.critic_lr} --target-kl {ppo.target_kl or 0}")
        + (f" --env-kwargs {q(json.dumps(ppo.env_kwargs))}" if ppo.env_kwargs else "")
        + (" --detach-critic" if ppo.detach_critic else "")
        + (f" --trunk-lr-scale {ppo.trunk_lr_scale}" if ppo.trunk_lr_scale != 1.0 else "")
        + (f" --sil-coef {ppo.sil_coef}" if ppo.sil_coef else "")
        + (f" --shaping {ppo.shaping}" if ppo.shaping else "")
        + (f" --start-log-std {ppo.start_log_std}" if ppo.start_log_std is not None else "")
        + (f" --bc-coef {ppo.bc_coef} --bc-decay {ppo.bc_decay}" if ppo.bc_coef else "")
        + f" --out {q(ppo.out)}",
        *(
            f"vla-gym evaluate --policy {q(_policy_spec(p, out))} --env {_cell_env_id(config, t)} "
            f"--env-kwargs {q(json.dumps(REPORT_SPLITS[s]))} --episodes {config.eval_episodes} "
            f"--seed {config.eval_seed}" + (" --swap-target" if s in SWAP_SPLITS else "")
            + f" --json {q(str(_cell_path(out, p, s, t)))}"
            for p in config.policies for s in config.splits for t in config.eval_tasks
        ),
    ]

