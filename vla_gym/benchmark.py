"""``vla-gym benchmark``: success rates of several policies over tasks and generalisation splits.

Every policy runs the same episodes (seeds ``seed .. seed + episodes - 1``, by default
:data:`BENCHMARK_SEED` on) in every split of :data:`SPLITS`: the train distribution, one
held-out shift at a time (instructions, object combinations, camera pose), all three
together, and the number of objects from 2 to 6. Each cell gets its success rate with a
95 % Wilson interval, its mean episode length and its mean number of subgoals done (out of
the mean number of subgoals; 1 of 1 per success for the one-step tasks). The instruction
and camera splits keep the train scenes of each seed (only the text or the camera
changes); the object split draws its own scenes.

By default the episodes run on one env id (``env_id``). With ``tasks`` (``--tasks
pick,stack`` or ``--tasks all``) each task of :data:`vla_gym.envs.tasks.TASKS` named runs
on its own env id (:data:`vla_gym.envs.registration.TASK_ENV_IDS`), on the same seeds: the
report then holds the pooled table, one table per task and the mean over the tasks.

Episodes run in parallel worker processes, in chunks; every episode depends on its seed
alone (the random policy is re-seeded per episode), so the table does not depend on the
number of workers. Finished episodes are appended to ``benchmark_episodes.jsonl``: an
interrupted benchmark rerun with the same arguments (and unchanged checkpoints) continues
where it stopped. Writes ``benchmark.json``, ``benchmark.md``, ``benchmark.png`` (bars of
the pooled table) and ``benchmark_heatmap.png`` (success per task and split, one panel per
policy).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import shlex
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vla_gym.backends import Backend, make_backend
from vla_gym.envs.registration import DEFAULT_ENV_ID, TASK_ENV_IDS
from vla_gym.envs.tasks import TASKS
from vla_gym.fileio import atomic_write_bytes, atomic_write_text, sweep_stale_temps
from vla_gym.rundir import OutputError, check_output_dir, staged_files

#: First evaluation seed of the benchmark. Seeds of the other stages: demos 0+ (one per
#: episode tried), train-agent's report 100000+, PPO's checkpoint choice 300000+, BC's
#: rollout checks 10000000+, PPO's training envs 20000000+; so no training stage sees
#: a benchmark scene as long as ``episodes <= MAX_EPISODES``.
BENCHMARK_SEED = 200_000
MAX_EPISODES = 100_000
#: Camera jitter of the "camera jitter" split: up to 3 cm along and 3 degrees about each
#: world axis (the goal moves by ~4 px in an 84 px image).
BENCHMARK_CAMERA_JITTER = (0.03, 3.0)
#: Episodes a worker runs per work unit (a policy, a task, a split and this many seeds).
CHUNK_EPISODES = 10
#: The package's goals for a trained agent: least success rate in these splits.
TARGETS = {"object_test": 0.90, "instruction_test": 0.85}
#: Keys of the env that the splits set; the base ``env_kwargs`` must leave them alone.
SPLIT_KEYS = ("instruction_split", "object_split", "camera_jitter", "num_objects", "execution_shift")

JSON_FILE = "benchmark.json"
MARKDOWN_FILE = "benchmark.md"
PLOT_FILE = "benchmark.png"
HEATMAP_FILE = "benchmark_heatmap.png"
EPISODES_FILE = "benchmark_episodes.jsonl"
STATE_FILE = "benchmark_state.json"
PERCENT = 100.0
POLICY_KINDS = ("scripted", "random")
#: Characters a policy label must not hold: the Markdown table's separator and code quotes.
LABEL_FORBIDDEN = "|`"
#: The files a benchmark run owns in its ``out`` directory.
RUN_FILES = (EPISODES_FILE, STATE_FILE, JSON_FILE, MARKDOWN_FILE, PLOT_FILE, HEATMAP_FILE)
#: Name of the temporary directory (``out/.benchmark.<pid>.<random>.tmp``) of an ``overwrite`` run.
STAGING_NAME = "benchmark"
#: ``tasks=["all"]`` (``--tasks all``): every task of :data:`vla_gym.envs.tasks.TASKS`, in order.
ALL_TASKS = "all"
#: Tasks whose episodes have several subgoals: an episode record from before the records
#: held subgoal counts cannot be completed for them (it is run again); for every other task
#: the counts are 1 of 1 on success, 0 of 1 on failure.
MULTI_STEP_TASKS = frozenset({"rearrange"})


@dataclass(frozen=True)
class BenchmarkSplit:
    """One column of the benchmark: env kwargs on top of the base env."""

    name: str
    label: str
    env_kwargs: dict[str, Any]
    description: str


SPLITS: tuple[BenchmarkSplit, ...] = (
    BenchmarkSplit("train", "train", {},
                   "train instructions, train object combinations, fixed camera, 3-5 objects: the train side "
                   "of the instruction, object and camera pairs"),
    BenchmarkSplit("instruction_test", "instr. test", {"instruction_split": "test"},
                   "held-out templates, verbs and shape nouns; the train scenes"),
    BenchmarkSplit("object_test", "object test", {"object_split": "test"},
                   "the goal is a held-out colour-shape combination"),
    BenchmarkSplit("camera_jitter", "camera jitter", {"camera_jitter": list(BENCHMARK_CAMERA_JITTER)},
                   f"camera moved by up to {BENCHMARK_CAMERA_JITTER[0]} m and turned by up to "
                   f"{BENCHMARK_CAMERA_JITTER[1]} degrees per axis; the train scenes"),
    BenchmarkSplit("execution_shift", "execution shift", {"execution_shift": "all"},
                   "the arm starts from a random pose and the target is pushed once mid-episode "
                   "(vla_gym.envs.tasks.shifts); the train scenes"),
    BenchmarkSplit("all_test", "all shifts",
                   {"instruction_split": "test", "object_split": "test", "camera_jitter": list(BENCHMARK_CAMERA_JITTER)},
                   "test instructions, held-out goal combination and camera jitter together"),
    *(
        BenchmarkSplit(f"objects_{n}", f"{n} objects", {"num_objects": n},
                       f"the train distribution with {n} objects on the table")
        for n in range(2, 7)
    ),
)
SPLITS_BY_NAME = {split.name: split for split in SPLITS}
#: The train and test side of each shift the issue names (the train side is shared).
PAIRS = {
    "instruction": ("train", "instruction_test"),
    "object": ("train", "object_test"),
    "camera_jitter": ("train", "camera_jitter"),
    "execution": ("train", "execution_shift"),
}


@dataclass
class BenchmarkConfig:
    """A ``vla-gym benchmark`` run.

    Args:
        policies: ``"scripted"``, ``"random"``, a checkpoint path, or ``"label=path"`` (a
            list, or one comma-separated string).
        out: directory of the report files.
        episodes: episodes per policy, task and split (seeds ``seed .. seed + episodes - 1``).
        seed: first seed; the default :data:`BENCHMARK_SEED` is used by no training stage.
        splits: names from :data:`SPLITS` (default: all).
        env_id: a registered vla_gym env id: every episode runs on it unless ``tasks`` is
            given (then it must stay the default).
        tasks: ``None`` (the default): one block of episodes on ``env_id``. Else names from
            :data:`vla_gym.envs.tasks.TASKS` (a list, or one comma-separated string;
            ``"all"``: every task, in that order): each task runs on its own env id
            (:data:`vla_gym.envs.registration.TASK_ENV_IDS`) on the same seeds, and the
            report adds a table per task and the mean over the tasks.
        env_kwargs: base env kwargs (not the split keys :data:`SPLIT_KEYS`, nor ``tasks``
            when ``tasks`` is given); ``image_size`` defaults to the checkpoints'.
        workers: worker processes (``<= 1`` runs in this process).
        device: torch device of the network policies in the workers.
        backend: ``"local"`` (worker processes here) or ``"ray"`` (see :mod:`vla_gym.backends`);
            the same episodes either way.
        ray_address: with ``backend="ray"``: ``None`` starts Ray here, else ``"auto"`` or
            ``"HOST:PORT"`` of a running cluster.
        progress: show a progress bar.
        overwrite: replace a benchmark in ``out`` made with other arguments (else refused);
            the new files are built aside and moved in when complete.
    """

    policies: list[str]
    out: str = "reports"
    episodes: int = 200
    seed: int = BENCHMARK_SEED
    splits: list[str] = field(default_factory=lambda: [split.name for split in SPLITS])
    env_id: str = DEFAULT_ENV_ID
    tasks: list[str] | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    device: str = "cpu"
    progress: bool = True
    overwrite: bool = False
    backend: str = "local"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.policies, str):
            self.policies = [p.strip() for p in self.policies.split(",") if p.strip()]
        if not self.policies:
            raise ValueError("policies must name at least one policy: scripted, random, a checkpoint or label=path")
        if isinstance(self.episodes, bool) or not isinstance(self.episodes, (int, np.integer)) or not (
            1 <= self.episodes <= MAX_EPISODES
        ):
            raise ValueError(f"episodes must be an int from 1 to {MAX_EPISODES}, got {self.episodes!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        unknown = [name for name in self.splits if name not in SPLITS_BY_NAME]
        if unknown or not self.splits:
            raise ValueError(f"unknown splits {unknown or self.splits}; choose from {list(SPLITS_BY_NAME)}")
        self.env_kwargs = dict(self.env_kwargs or {})
        clash = sorted(set(self.env_kwargs) & set(SPLIT_KEYS + ("render_mode",)))
        if clash:
            raise ValueError(f"env_kwargs {clash} are set by the benchmark's splits; remove them")
        self.tasks = _check_tasks(self.tasks, self.env_id, self.env_kwargs)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        from vla_gym.backends import check_backend_choice

        check_backend_choice(self.backend, self.ray_address)


def _check_tasks(tasks: str | Sequence[str] | None, env_id: str, env_kwargs: Mapping[str, Any]) -> list[str] | None:
    """``tasks`` as a list of distinct names of :data:`TASKS` (``"all"``: every one, in
    order), or ``None``; ``ValueError`` when a name is unknown or repeated, or ``env_id`` or
    ``env_kwargs["tasks"]`` would pick the env instead."""
    if tasks is None:
        return None
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    names = [str(name).strip() for name in tasks if str(name).strip()]
    if names == [ALL_TASKS]:
        names = list(TASKS)
    allowed = f"choose from {list(TASKS)} or {ALL_TASKS!r}, comma-separated"
    if not names:
        raise ValueError(f"tasks names no task; {allowed}")
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; {allowed}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"tasks {repeated} are given more than once; name each task once")
    if env_id != DEFAULT_ENV_ID:
        raise ValueError(
            f"env_id {env_id!r} and tasks {names} are both given, but --tasks picks each task's own env id "
            f"({', '.join(TASK_ENV_IDS[name] for name in names)}); drop --env, or drop --tasks to benchmark {env_id}"
        )
    if "tasks" in env_kwargs:
        raise ValueError(f"env_kwargs 'tasks' and tasks {names} are both given; --tasks picks each env's task, "
                         "so remove 'tasks' from env_kwargs")
    return names


@dataclass
class PolicyEntry:
    """One row: a label, what to load, and facts about its checkpoint."""

    label: str
    spec: str
    kind: str  # "scripted", "random", "bc", "bc+ppo", "ppo"
    sha256: str | None = None
    image_size: int | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _training_warnings(meta: dict[str, Any]) -> list[str]:
    """What in a checkpoint's training env makes a held-out split not held out for it."""
    from vla_gym.data.format import held_out_splits

    configs = [meta.get("env", {}).get("env_config", {})]
    init = meta.get("init")
    if init and Path(init).is_file():  # a PPO checkpoint: its BC checkpoint saw the demo env
        from vla_gym.agents.checkpoint import read_checkpoint

        configs.append(read_checkpoint(init)["meta"].get("env", {}).get("env_config", {}))
    out = []
    for config in configs:
        if "object_split" not in config:
            out.append("trained before object splits existed: its training scenes held the held-out "
                       "combinations, so 'object test' is not held out for it")
        out += [f"trained with {split}: that split is not held out for it" for split in held_out_splits(config)]
        if any(config.get("camera_jitter") or []):
            out.append(f"trained with camera_jitter={config['camera_jitter']}")
    return sorted(set(out))


def resolve_policies(specs: Sequence[str]) -> list[PolicyEntry]:
    """Parse ``scripted`` / ``random`` / ``path`` / ``label=path``; read each checkpoint's meta.

    Default labels: ``bc`` for a BC checkpoint, ``bc+ppo`` for a PPO one started from a
    checkpoint (``ppo`` from scratch), with ``-2``, ``-3`` ... on repeats (never one taken
    by another policy). A label holding ``|`` is refused (it would break the Markdown table).
    """
    from vla_gym.agents.checkpoint import read_checkpoint

    entries: list[PolicyEntry] = []
    explicit: list[bool] = []
    for raw in specs:
        label, _, spec = raw.partition("=") if "=" in raw else ("", "", raw)
        label, spec = label.strip(), spec.strip()
        _check_label(label, raw)
        explicit.append(bool(label))
        if spec in POLICY_KINDS:
            entries.append(PolicyEntry(label or spec, spec, spec))
            continue
        if not Path(spec).is_file():
            raise FileNotFoundError(
                f"policy {spec!r} is not one of {list(POLICY_KINDS)} and no checkpoint file exists at that path"
            )
        meta = read_checkpoint(spec)["meta"]
        kind = ("bc+ppo" if meta.get("init") else "ppo") if "ppo" in meta else "bc"
        entries.append(PolicyEntry(
            label or kind, spec, kind, sha256=_file_sha256(spec),
            image_size=int(meta["env"]["env_config"]["image_size"]), warnings=_training_warnings(meta),
        ))
    _assign_labels(entries, explicit)
    return entries


def _check_label(label: str, raw: str) -> None:
    bad = [c for c in label if c in LABEL_FORBIDDEN or not c.isprintable()]
    if bad:
        raise ValueError(
            f"policy label {label!r} (from {raw!r}) holds {bad[0]!r}; a label must not hold '|' (the Markdown "
            "table's column separator), backquotes or control characters"
        )


def _assign_labels(entries: list[PolicyEntry], explicit: list[bool]) -> None:
    """Unique labels: explicit ones as given (a repeat is an error), the default ones of
    repeats numbered ``-2``, ``-3`` ... skipping every label already taken."""
    given = [e.label for e, is_explicit in zip(entries, explicit) if is_explicit]
    repeated = sorted({label for label in given if given.count(label) > 1})
    if repeated:
        raise ValueError(f"policy labels {repeated} are given more than once; give each policy its own label")
    taken = set(given)
    for entry, is_explicit in zip(entries, explicit):
        if is_explicit:
            continue
        label, number = entry.label, 1
        while label in taken:
            number += 1
            label = f"{entry.label}-{number}"
        entry.label = label
        taken.add(label)


def base_env_kwargs(config: BenchmarkConfig, policies: Sequence[PolicyEntry]) -> dict[str, Any]:
    """The env kwargs every split starts from: ``config.env_kwargs``, plus the checkpoints'
    image size when it is not given (the checkpoints must agree on it)."""
    kwargs = dict(config.env_kwargs)
    sizes = {p.label: p.image_size for p in policies if p.image_size is not None}
    if "image_size" not in kwargs and sizes:
        if len(set(sizes.values())) > 1:
            raise ValueError(f"the checkpoints were trained on different image sizes {sizes}; benchmark them separately")
        kwargs["image_size"] = next(iter(sizes.values()))
    wrong = {label: size for label, size in sizes.items() if size != kwargs.get("image_size", size)}
    if wrong:
        raise ValueError(f"image_size={kwargs['image_size']} but checkpoints {wrong} were trained on other sizes")
    return kwargs


def split_env_kwargs(base: dict[str, Any], split: str) -> dict[str, Any]:
    return {**base, **SPLITS_BY_NAME[split].env_kwargs}


@dataclass(frozen=True)
class TaskPlan:
    """Which env ids a run's episodes use, and the tasks its report breaks them down by.

    Attributes:
        blocks: block name -> env id. Each policy and split runs the seeds once per block:
            with ``config.tasks`` one block per task (named after it), else one block on
            ``config.env_id`` (named after its task, or after the id when it draws among
            several tasks).
        tasks: the task names of the report (``report["tasks"]``): ``config.tasks``, or the
            tasks of ``config.env_id`` with the base kwargs.
        env_ids: task name -> the env id its episodes ran on.
        by_task: whether the blocks are the tasks (``config.tasks`` given).
    """

    blocks: dict[str, str]
    tasks: list[str]
    env_ids: dict[str, str]
    by_task: bool

    def block_of(self, record: Mapping[str, Any]) -> str | None:
        """The block a (completed) episode record belongs to."""
        return record.get("task") if self.by_task else next(iter(self.blocks))


def task_plan(config: BenchmarkConfig, base: dict[str, Any]) -> TaskPlan:
    """The :class:`TaskPlan` of ``config`` with the base env kwargs ``base``."""
    from vla_gym.data.format import env_config_dict

    if config.tasks is not None:
        env_ids = {task: TASK_ENV_IDS[task] for task in config.tasks}
        return TaskPlan(dict(env_ids), list(config.tasks), env_ids, by_task=True)
    tasks = list(env_config_dict(config.env_id, base)["tasks"])
    block = tasks[0] if len(tasks) == 1 else config.env_id
    return TaskPlan({block: config.env_id}, tasks, {task: config.env_id for task in tasks}, by_task=False)


# --------------------------------------------------------------------------- workers
_WORKER: dict[str, Any] = {}


def _init_worker(threads: int | None = 1, files: dict[str, bytes] | None = None) -> None:
    """Set up a worker; ``threads`` caps torch's threads (the workers share the cores);
    ``files``: checkpoints shipped to a Ray worker (see :func:`vla_gym.backends.ship_files`)."""
    from vla_gym.backends import local_copies

    if threads:
        import torch

        torch.set_num_threads(threads)
    _WORKER.clear()
    _WORKER["paths"] = local_copies(files)


def _env(env_id: str, kwargs: dict[str, Any]):
    import gymnasium as gym

    import vla_gym  # noqa: F401  (registers the env ids in a spawned worker)

    key = json.dumps([env_id, kwargs], sort_keys=True)
    envs = _WORKER.setdefault("envs", {})
    if key not in envs:
        envs[key] = gym.make(env_id, **kwargs)
    return envs[key]


def _policy(task: dict[str, Any], env, seed: int):
    from vla_gym.evaluation import RandomPolicy, policy_from_spec

    spec = task["spec"]
    if spec == "random":
        return RandomPolicy(env.action_space, seed=seed)  # per episode: independent of the chunking
    if spec == "scripted":
        return policy_from_spec(spec, env)  # bound to its env: cheap to build
    policies = _WORKER.setdefault("policies", {})
    if spec not in policies:
        path = _WORKER.get("paths", {}).get(spec, spec)
        policies[spec] = policy_from_spec(path, env, device=task["device"])
    return policies[spec]


def _run_task(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Episodes of one work unit (a policy, a task block and a split), one record per seed."""
    from vla_gym.evaluation import evaluate

    env = _env(task["env_id"], task["env_kwargs"])
    records = []
    for seed in task["seeds"]:
        result = evaluate(env, lambda e, s=seed: _policy(task, e, s), [seed], deterministic=True)
        episode = result.episodes_log[0]
        scene = env.unwrapped.task.episode  # the episode just run: its goal and objects
        target = scene.spec_of(scene.roles["target"]).describe()
        records.append({
            "policy": task["label"], "task": str(episode["task"]), "split": task["split"], "seed": seed,
            "success": bool(episode["success"]), "length": int(episode["length"]),
            "subgoals_done": int(episode["subgoals_done"]), "num_subgoals": int(episode["num_subgoals"]),
            "target": f"{target['colour']} {target['shape']}", "objects": len(scene.objects),
            "instruction": episode["instruction"],
        })
    return records


def _close_worker() -> None:
    for env in _WORKER.get("envs", {}).values():
        env.close()
    _WORKER.clear()


def _chunks(seeds: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(seeds), size):
        yield list(seeds[start:start + size])


def _results(tasks: list[dict[str, Any]], backend: Backend) -> Iterator[list[dict[str, Any]]]:
    """Each task's records, as the tasks finish, from ``backend``."""
    from vla_gym.backends import ship_files

    # In this process: leave torch's threads alone. On Ray: the checkpoints travel with the
    # job (the nodes need not share a disk).
    files = ship_files(t["spec"] for t in tasks) if backend.name == "ray" else None
    setup_args = (None, files) if backend.in_process else (1, files)
    for _, records in backend.imap_unordered(_run_task, tasks, setup=_init_worker, setup_args=setup_args,
                                             teardown=_close_worker):
        yield records


# --------------------------------------------------------------------------- statistics
def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A cell: episodes, successes, success_rate, ci95 [lo, hi], mean_length (steps), and
    mean_subgoals_done out of mean_num_subgoals (CALVIN-style progress; NaN when empty)."""
    from vla_gym.evaluation import wilson_interval

    n = len(records)
    k = sum(bool(r["success"]) for r in records)

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in records])) if n else math.nan

    return {
        "episodes": n,
        "successes": k,
        "success_rate": k / n if n else 0.0,
        "ci95": list(wilson_interval(k, n)),
        "mean_length": mean("length"),
        "mean_subgoals_done": mean("subgoals_done"),
        "mean_num_subgoals": mean("num_subgoals"),
    }


# --------------------------------------------------------------------------- the run
def _identity(config: BenchmarkConfig, policies: Sequence[PolicyEntry], base: dict[str, Any]) -> dict[str, Any]:
    """What the episodes depend on: a rerun with the same identity continues the episode log.
    ``tasks`` is there only when given (a single-env run's identity is the one it always
    had); more tasks extend a run like more splits (see :func:`_identity_differences`)."""
    identity = {
        "env_id": config.env_id, "env_kwargs": base, "seed": config.seed,
        "policies": [{"label": p.label, "spec": p.spec, "sha256": p.sha256} for p in policies],
    }
    if config.tasks is not None:
        identity["tasks"] = list(config.tasks)
    return identity


def _identity_differences(saved: Mapping[str, Any], identity: Mapping[str, Any]) -> list[str]:
    """The keys in which two identities differ; of ``tasks`` only whether it is there
    counts (the tasks themselves are checked against the episodes, like the splits)."""
    differ = []
    for key in sorted(set(saved) | set(identity)):
        if key == "tasks":
            if (key in saved) != (key in identity):
                differ.append(key)
        elif saved.get(key) != identity.get(key):
            differ.append(key)
    return differ


def _completed(record: dict[str, Any], plan: TaskPlan) -> dict[str, Any] | None:
    """``record`` with the keys that a record from before tasks lacks: its ``task`` (the
    env's single task) and subgoal counts (1 of 1 on success for a one-step task). ``None``
    when they cannot be known (a multi-task env, or a task of :data:`MULTI_STEP_TASKS`): that
    episode is run again."""
    record = dict(record)
    if "task" not in record:
        if plan.by_task or len(plan.tasks) != 1:
            return None
        record["task"] = plan.tasks[0]
    if "num_subgoals" not in record:
        if record["task"] in MULTI_STEP_TASKS:
            return None
        record.update(subgoals_done=int(bool(record.get("success"))), num_subgoals=1)
    return record


def _read_log(log: Path) -> list[dict[str, Any]]:
    records = []
    for line in log.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by an interruption: the episodes after it are rerun
    return records


def _earlier_run(
    out: Path, identity: dict[str, Any], plan: TaskPlan, wanted: set, seeds: set,
) -> tuple[list[dict[str, Any]], float]:
    """Episode records of an earlier attempt in ``out`` that this run continues, and the
    seconds they ran. ``wanted``: the (policy, block, split) cells of this run (see
    :class:`TaskPlan`). An earlier benchmark this run would not just extend (other identity,
    or records it would drop: other policies, tasks, splits or seeds) raises
    :class:`OutputError`. Records from before tasks are completed (:func:`_completed`)."""
    present = [name for name in RUN_FILES if (out / name).exists()]
    if not present:
        return [], 0.0
    state, log = out / STATE_FILE, out / EPISODES_FILE
    try:
        saved = json.loads(state.read_text()) if state.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        saved = None
    if not isinstance(saved, dict) or not isinstance(saved.get("identity"), dict) or not log.is_file():
        raise OutputError(f"holds benchmark files ({', '.join(present)}) without a readable {STATE_FILE} and "
                          f"{EPISODES_FILE} to continue")
    differ = _identity_differences(saved["identity"], json.loads(json.dumps(identity)))
    if differ:
        raise OutputError(f"holds a benchmark made with other arguments ({', '.join(differ)} differ)")
    records = [r for r in (_completed(record, plan) for record in _read_log(log)) if r is not None]
    dropped = [r for r in records
               if (r.get("policy"), plan.block_of(r), r.get("split")) not in wanted or r.get("seed") not in seeds]
    if dropped:
        first = dropped[0]
        cells = "policies, tasks, splits and seeds" if plan.by_task else "policies, splits and seeds"
        raise OutputError(
            f"holds {len(dropped)} episodes outside the {cells} asked for now (e.g. "
            f"{first.get('policy')} on {first.get('task')} {first.get('split')}, seed {first.get('seed')})"
        )
    return records, float(saved.get("seconds", 0.0))


def _save_state(out: Path, identity: dict[str, Any], seconds: float) -> None:
    atomic_write_text(out / STATE_FILE, json.dumps({"identity": identity, "seconds": seconds}, indent=2) + "\n")


def _tasks(config: BenchmarkConfig, policies: Sequence[PolicyEntry], base: dict[str, Any], seeds: list[int],
           done: set, plan: TaskPlan) -> list[dict[str, Any]]:
    """The work units still to run: a policy, a task block, a split and a chunk of seeds
    (those not in ``done``, a set of (policy, block, split, seed))."""
    tasks = []
    for chunk_index, chunk in enumerate(_chunks(seeds, CHUNK_EPISODES)):
        for policy in policies:
            for block, env_id in plan.blocks.items():
                for split in config.splits:
                    todo = [s for s in chunk if (policy.label, block, split, s) not in done]
                    if todo:
                        tasks.append({
                            "label": policy.label, "spec": policy.spec, "block": block, "split": split,
                            "seeds": todo, "env_id": env_id, "env_kwargs": split_env_kwargs(base, split),
                            "device": config.device, "chunk": chunk_index,
                        })
    return tasks


def run_benchmark(config: BenchmarkConfig) -> dict[str, Any]:
    """Run (or continue) the benchmark and write its files; returns the report dict.

    An earlier benchmark in ``config.out`` with the same arguments (or fewer: more episodes,
    splits or tasks extend it) is continued. Any other is refused unless ``config.overwrite``:
    then the new run is built in a temporary directory inside ``out`` and its files replace
    the old ones only when it is complete (so an interrupted replacement keeps the old run).
    """
    from vla_gym.data.format import env_config_dict

    policies = resolve_policies(config.policies)
    base = base_env_kwargs(config, policies)
    plan = task_plan(config, base)
    for env_id in plan.blocks.values():  # bad env ids and kwargs fail here, before any worker starts
        for split in config.splits:
            env_config_dict(env_id, split_env_kwargs(base, split))
    out = check_output_dir(config.out, "out")
    out.mkdir(parents=True, exist_ok=True)
    for name in (STAGING_NAME, *RUN_FILES):
        sweep_stale_temps(out / name)
    identity = _identity(config, policies, base)
    seeds = list(range(config.seed, config.seed + config.episodes))
    wanted = {(p.label, block, s) for p in policies for block in plan.blocks for s in config.splits}
    try:
        records, earlier_seconds = _earlier_run(out, identity, plan, wanted, set(seeds))
    except OutputError as err:
        if not config.overwrite:
            raise OutputError(
                f"--out {str(out)!r} {err}; rerun the command that made it to continue it, choose another --out, "
                "or pass --overwrite to replace it"
            ) from None
        with staged_files(out, RUN_FILES, STAGING_NAME) as build:
            return _run_into(build, config, policies, base, plan, identity, seeds, [], 0.0)
    if config.overwrite and any((out / name).exists() for name in RUN_FILES):
        with staged_files(out, RUN_FILES, STAGING_NAME) as build:
            return _run_into(build, config, policies, base, plan, identity, seeds, [], 0.0)
    return _run_into(out, config, policies, base, plan, identity, seeds, records, earlier_seconds)


def _run_into(
    out: Path, config: BenchmarkConfig, policies: Sequence[PolicyEntry], base: dict[str, Any], plan: TaskPlan,
    identity: dict[str, Any], seeds: list[int], records: list[dict[str, Any]], earlier_seconds: float,
) -> dict[str, Any]:
    """Run the episodes not in ``records`` and write every file into ``out``."""
    from tqdm.auto import tqdm

    done = {(r["policy"], plan.block_of(r), r["split"], r["seed"]) for r in records}
    _save_state(out, identity, earlier_seconds)
    log_path = out / EPISODES_FILE
    atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in records))
    tasks = _tasks(config, policies, base, seeds, done, plan)
    start = time.perf_counter()
    with make_backend(config.backend, config.workers if len(tasks) > 1 else 1, config.ray_address) as backend:
        total = len(policies) * len(plan.blocks) * len(config.splits) * len(seeds)
        bar = tqdm(total=total, initial=len(records), unit="ep",
                   desc="benchmark", disable=not config.progress)
        try:
            _log_results(log_path, _results(tasks, backend), records, bar)
        finally:
            bar.close()
            seconds = earlier_seconds + time.perf_counter() - start  # summed over attempts
            _save_state(out, identity, seconds)
    report = build_report(config, policies, base, records, seconds, episodes_run=sum(len(t["seeds"]) for t in tasks),
                          plan=plan)
    write_report(out, report)
    return report


def _log_results(log_path: Path, results: Iterator[list[dict[str, Any]]], records: list[dict[str, Any]], bar) -> None:
    """Append each finished chunk's records to the episode log (flushed: an interruption keeps them)."""
    with open(log_path, "a") as log:
        for chunk_records in results:
            for record in chunk_records:
                log.write(json.dumps(record) + "\n")
            log.flush()
            records.extend(chunk_records)
            bar.update(len(chunk_records))


def _table(records: Sequence[dict[str, Any]], labels: Sequence[str], splits: Sequence[str]) -> dict[str, Any]:
    """``{label: {split: cell}}`` of ``records`` (:func:`summarise` of each cell's records)."""
    cells: dict[str, dict[str, list[dict[str, Any]]]] = {label: {s: [] for s in splits} for label in labels}
    for record in records:
        cells[record["policy"]][record["split"]].append(record)
    return {
        label: {split: summarise(sorted(rs, key=lambda r: r["seed"])) for split, rs in by_split.items()}
        for label, by_split in cells.items()
    }


def _mean_over_tasks(results_by_task: Mapping[str, Mapping[str, Mapping[str, dict[str, Any]]]]) -> dict[str, Any]:
    """``{label: {split: mean success rate}}`` over the tasks with episodes in that cell
    (each task weighs the same, whatever its number of episodes)."""
    tables = list(results_by_task.values())
    out: dict[str, dict[str, float]] = {}
    for label, by_split in tables[0].items():
        out[label] = {}
        for split in by_split:
            rates = [t[label][split]["success_rate"] for t in tables if t[label][split]["episodes"]]
            out[label][split] = float(np.mean(rates)) if rates else math.nan
    return out


def _targets(
    policies: Sequence[PolicyEntry], splits: Sequence[str], results: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """The checkpoints' cells of :data:`TARGETS` (pooled over the tasks), and whether each is met."""
    targets = []
    for policy in policies:
        if policy.kind in POLICY_KINDS:
            continue
        for split, minimum in TARGETS.items():
            if split in splits:
                cell = results[policy.label][split]
                targets.append({
                    "policy": policy.label, "split": split, "target": minimum, "success_rate": cell["success_rate"],
                    "ci95": cell["ci95"], "met": cell["success_rate"] >= minimum,
                })
    return targets


def build_report(
    config: BenchmarkConfig, policies: Sequence[PolicyEntry], base: dict[str, Any],
    records: Sequence[dict[str, Any]], seconds: float, episodes_run: int, plan: TaskPlan | None = None,
) -> dict[str, Any]:
    """The report dict (``benchmark.json``): ``results`` pools every episode of the run;
    ``results_by_task`` splits them by task, and ``mean_over_tasks`` (with several tasks)
    averages the tasks' success rates. ``env_id`` is ``None`` when each task ran on its own
    (``task_env_ids``). ``plan`` defaults to :func:`task_plan` of ``config``."""
    from vla_gym.hardware import hardware_dict

    plan = plan or task_plan(config, base)
    labels = [p.label for p in policies]
    results = _table(records, labels, config.splits)
    by_task = {task: _table([r for r in records if r["task"] == task], labels, config.splits) for task in plan.tasks}
    return {
        "title": "vla_gym benchmark",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": benchmark_command(config),
        "env_id": config.env_id if config.tasks is None else None,
        "tasks": list(plan.tasks),
        "task_env_ids": dict(plan.env_ids),
        "base_env_kwargs": base,
        "seeds": {"first": config.seed, "last": config.seed + config.episodes - 1, "episodes": config.episodes,
                  "note": f"seeds {config.seed}+ are used by no training stage (see vla_gym.benchmark.BENCHMARK_SEED)"},
        "splits": [{**dataclasses.asdict(SPLITS_BY_NAME[s])} for s in config.splits],
        "pairs": {k: v for k, v in PAIRS.items() if all(s in config.splits for s in v)},
        "policies": [p.to_dict() for p in policies],
        "results": results,
        "results_by_task": by_task,
        **({"mean_over_tasks": _mean_over_tasks(by_task)} if len(plan.tasks) > 1 else {}),
        "targets": _targets(policies, config.splits, results),
        "deterministic_actions": True,
        "workers": config.workers,
        "backend": config.backend,
        "device": config.device,
        "seconds": seconds,  # running episodes, summed over attempts
        "episodes": len(records),
        "episodes_run": episodes_run,  # by the last attempt
        "hardware": hardware_dict(),
        "files": {"markdown": MARKDOWN_FILE, "plot": PLOT_FILE, "heatmap": HEATMAP_FILE, "episodes": EPISODES_FILE},
    }


def benchmark_command(config: BenchmarkConfig) -> str:
    q = shlex.quote
    parts = [
        "vla-gym benchmark", f"--policies {q(','.join(config.policies))}", f"--episodes {config.episodes}",
        f"--out {q(str(config.out))}",
    ]
    if config.seed != BENCHMARK_SEED:
        parts.append(f"--seed {config.seed}")
    if config.splits != [s.name for s in SPLITS]:
        parts.append(f"--splits {','.join(config.splits)}")
    if config.env_id != DEFAULT_ENV_ID:
        parts.append(f"--env {config.env_id}")
    if config.tasks is not None:
        parts.append(f"--tasks {ALL_TASKS if config.tasks == list(TASKS) else ','.join(config.tasks)}")
    if config.env_kwargs:
        parts.append(f"--env-kwargs {q(json.dumps(config.env_kwargs))}")
    parts.append(f"--workers {config.workers}")
    if config.backend != "local":
        parts.append(f"--backend {config.backend}")
        if config.ray_address is not None:
            parts.append(f"--ray-address {q(config.ray_address)}")
    return " ".join(parts)


# --------------------------------------------------------------------------- files
#: What a cell with no episodes shows (a task the multi-task env never drew for it).
EMPTY_CELL = "n/a"


def markdown_cell(cell: dict[str, Any]) -> str:
    """``"96.5 % (93.0-98.3), len 23.1"``."""
    from vla_gym.report import format_interval, format_percent

    if not cell["episodes"]:
        return EMPTY_CELL
    return f"{format_percent(cell['success_rate'])} ({format_interval(*cell['ci95'])}), len {cell['mean_length']:.1f}"


def subgoals_cell(cell: dict[str, Any]) -> str:
    """``"1.85 / 2.52"``: mean subgoals done out of the mean number of subgoals."""
    if not cell["episodes"]:
        return EMPTY_CELL
    return f"{cell['mean_subgoals_done']:.2f} / {cell['mean_num_subgoals']:.2f}"


def _markdown_table(rows: Mapping[str, Mapping[str, Any]], splits: Sequence[dict[str, Any]], cell) -> list[str]:
    """Policies as rows, ``splits`` as columns, ``cell(value)`` in each."""
    lines = [
        "| policy | " + " | ".join(s["label"] for s in splits) + " |",
        "| --- | " + " | ".join("---:" for _ in splits) + " |",
    ]
    for label, by_split in rows.items():
        lines.append(f"| {label} | " + " | ".join(cell(by_split[s["name"]]) for s in splits) + " |")
    return lines


def _multi_step(table: Mapping[str, Mapping[str, dict[str, Any]]]) -> bool:
    """Whether a task's episodes have several subgoals (``rearrange``): any cell's mean number > 1."""
    return any(c["episodes"] and c["mean_num_subgoals"] > 1 for by_split in table.values() for c in by_split.values())


def _per_task_markdown(report: dict[str, Any]) -> list[str]:
    """The mean over the tasks, then one table per task (and its subgoal progress if it has several)."""
    from vla_gym.report import format_percent

    splits = report["splits"]
    lines = ["## Mean over tasks", "",
             "Mean of the tasks' success rates (each task weighs the same; a task without episodes in a cell "
             "is left out of it).", ""]
    lines += _markdown_table(report["mean_over_tasks"], splits,
                             lambda rate: EMPTY_CELL if math.isnan(rate) else format_percent(rate))
    lines += ["", f"![success per task and split]({HEATMAP_FILE})", "", "## Per task", ""]
    for task in report["tasks"]:
        table = report["results_by_task"][task]
        lines += [f"### {task} ({report['task_env_ids'][task]})", ""]
        lines += _markdown_table(table, splits, markdown_cell)
        if _multi_step(table):
            lines += ["", "Mean subgoals done / mean subgoals per episode:", ""]
            lines += _markdown_table(table, splits, subgoals_cell)
        lines.append("")
    lines += ["## Pooled over the tasks", ""]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """``benchmark.md``: with one task the table of policies x splits; with several the mean
    over the tasks, a table per task and then the pooled table."""
    from vla_gym.report import format_interval, format_percent

    splits = report["splits"]
    seeds = report["seeds"]
    several = len(report["tasks"]) > 1
    if report["env_id"] is None:
        env = (f"Each task on its own env ({', '.join(f'`{i}`' for i in report['task_env_ids'].values())}) "
               "with base kwargs")
        per_cell = " and task" if several else ""
    else:
        env = f"Env `{report['env_id']}` with base kwargs"
        per_cell = " (the env draws each episode's task)" if several else ""
    lines = [
        f"# {report['title']}", "",
        f"Made by `{report['command']}` on {report['created']} "
        f"({report['seconds'] / 60:.1f} min for {report['episodes']} episodes with {report['workers']} workers, "
        "summed over attempts).", "",
        f"Success rate with 95 % Wilson interval, then mean episode length (env steps), over "
        f"{seeds['episodes']} episodes per cell{per_cell} on seeds "
        f"{seeds['first']}-{seeds['last']} (used by no training stage), deterministic actions. {env} "
        f"`{json.dumps(report['base_env_kwargs'])}`.", "",
    ]
    if several:
        lines += _per_task_markdown(report)
    lines += _markdown_table(report["results"], splits, markdown_cell)
    lines += ["", f"![success rates with 95 % intervals]({PLOT_FILE})", "", "## Splits", ""]
    for split in splits:
        kwargs = json.dumps(split["env_kwargs"]) if split["env_kwargs"] else "(none)"
        lines.append(f"- **{split['label']}** (`{split['name']}`, env kwargs `{kwargs}`): {split['description']}.")
    if report["pairs"]:
        pairs = ", ".join(f"{name}: {a} / {b}" for name, (a, b) in report["pairs"].items())
        lines += ["", f"Train/test pairs ({pairs}) share the **train** column."]
    if report["targets"]:
        lines += ["", "## Targets", ""]
        for t in report["targets"]:
            verdict = "met" if t["met"] else "**NOT met**"
            lines.append(
                f"- {t['policy']} on {t['split']}: {format_percent(t['success_rate'])} ({format_interval(*t['ci95'])}) "
                f"against the target {format_percent(t['target'])}: {verdict}"
            )
    lines += ["", "## Policies", ""]
    for p in report["policies"]:
        source = p["spec"] + (f" (sha256 {p['sha256'][:12]})" if p["sha256"] else "")
        lines.append(f"- **{p['label']}**: {p['kind']}, {source}")
        lines += [f"  - warning: {w}" for w in p["warnings"]]
    hw = report["hardware"]
    lines += ["", "## Hardware", "",
              f"- CPU: {hw.get('cpu')}, {hw.get('usable_cores')} usable cores; GPU: {hw.get('gpu') or 'none'}; "
              f"policy device: {report['device']}",
              f"- torch {hw.get('torch')}, pybullet {hw.get('pybullet')}, gymnasium {hw.get('gymnasium')}", ""]
    return "\n".join(lines)


def plot_benchmark(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Grouped bars: success rate (%) per split, one bar per policy, 95 % intervals as error
    bars (the pooled ``results``: over every task of the run)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    splits = report["splits"]
    labels = list(report["results"])
    width = 0.8 / max(len(labels), 1)
    x = np.arange(len(splits))
    fig = Figure(figsize=(max(8.0, 1.0 * len(splits) + 2), 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, label in enumerate(labels):
        cells = [report["results"][label][s["name"]] for s in splits]
        rate = np.array([PERCENT * c["success_rate"] for c in cells])
        lo = np.array([PERCENT * c["ci95"][0] for c in cells])
        hi = np.array([PERCENT * c["ci95"][1] for c in cells])
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, rate, width, label=label,
               yerr=np.clip(np.stack([rate - lo, hi - rate]), 0.0, None), capsize=2, error_kw={"elinewidth": 0.8})
    ax.set_xticks(x, [s["label"] for s in splits], rotation=30, ha="right")
    ax.set_ylim(0, 105)
    ax.set_ylabel("success rate (%)")
    per_cell = report["seeds"]["episodes"] * (len(report["tasks"]) if report["env_id"] is None else 1)
    pooled = f" ({len(report['tasks'])} tasks pooled)" if report["env_id"] is None and len(report["tasks"]) > 1 else ""
    ax.set_title(f"vla_gym benchmark: {per_cell} episodes per cell{pooled}, 95 % Wilson intervals")
    ax.grid(True, axis="y", alpha=0.4)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return atomic_write_bytes(Path(path), buffer.getvalue())


#: Heat-map panel size per task row and per split column (inches), and its least size.
HEATMAP_CELL_INCHES = (0.9, 0.45)
HEATMAP_MIN_PANEL_INCHES = (3.0, 1.6)
#: Success (%) above which a heat-map cell's label is dark (on the colour map's light end).
HEATMAP_DARK_TEXT_ABOVE = 60.0
#: Policy panels side by side in the heat map; more policies start another row.
HEATMAP_PANELS_PER_ROW = 2


def plot_heatmap(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Success (%) per task (rows) and split (columns), one panel per policy, each cell
    labelled with its percentage (``n/a`` where the cell has no episodes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    splits, tasks, labels = report["splits"], report["tasks"], list(report["results"])
    panel = (max(HEATMAP_MIN_PANEL_INCHES[0], HEATMAP_CELL_INCHES[0] * len(splits) + 1.5),
             max(HEATMAP_MIN_PANEL_INCHES[1], HEATMAP_CELL_INCHES[1] * len(tasks) + 1.6))
    columns = min(len(labels), HEATMAP_PANELS_PER_ROW)
    rows = math.ceil(len(labels) / columns)
    fig = Figure(figsize=(panel[0] * columns + 1.0, panel[1] * rows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(rows, columns, squeeze=False).ravel()
    for spare in grid[len(labels):]:
        spare.set_visible(False)
    axes = grid[:len(labels)]
    image = None
    for ax, label in zip(axes, labels):
        cells = [[report["results_by_task"][t][label][s["name"]] for s in splits] for t in tasks]
        rates = np.array([[PERCENT * c["success_rate"] if c["episodes"] else np.nan for c in row] for row in cells])
        image = ax.imshow(rates, vmin=0.0, vmax=PERCENT, cmap="viridis", aspect="auto")
        for (i, j), rate in np.ndenumerate(rates):
            text = EMPTY_CELL if np.isnan(rate) else f"{rate:.0f} %"
            ax.text(j, i, text, ha="center", va="center", fontsize="small",
                    color="black" if rate > HEATMAP_DARK_TEXT_ABOVE else "white")
        ax.set_xticks(np.arange(len(splits)), [s["label"] for s in splits], rotation=30, ha="right")
        ax.set_yticks(np.arange(len(tasks)), tasks)
        ax.set_title(label)
    fig.colorbar(image, ax=list(axes), label="success rate (%)", shrink=0.9)
    fig.suptitle(f"vla_gym benchmark: success per task and split, {report['seeds']['episodes']} episodes per cell")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return atomic_write_bytes(Path(path), buffer.getvalue())


def write_report(out: str | os.PathLike, report: dict[str, Any]) -> dict[str, Path]:
    """``benchmark.json``, ``benchmark.md``, ``benchmark.png`` and ``benchmark_heatmap.png``
    in ``out`` (each atomic)."""
    from vla_gym.evaluation import JSON_INDENT, json_default

    out = Path(out)
    return {
        "json": atomic_write_text(out / JSON_FILE, json.dumps(report, indent=JSON_INDENT, default=json_default) + "\n"),
        "markdown": atomic_write_text(out / MARKDOWN_FILE, render_markdown(report)),
        "plot": plot_benchmark(report, out / PLOT_FILE),
        "heatmap": plot_heatmap(report, out / HEATMAP_FILE),
    }
