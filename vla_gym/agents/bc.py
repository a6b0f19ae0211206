"""Behaviour cloning of the VLA actor-critic from a demo file: ``train_bc(BCConfig(...))``.

Loss per frame: the Gaussian negative log-likelihood of the expert's action (so the
learned log-std is the spread BC actually leaves, which PPO then starts from), plus
``value_coef`` times the squared error of the value head against the discounted return
of the demo, plus two auxiliary terms from the demo file's privileged state, and an
optional contrastive term:

* ``target_coef``: a head on the fused features predicts the goal object's offset from
  the end-effector;
* ``attention_coef``: the first head of the instruction-to-pixel attention is pulled onto
  the goal's projected image position. The goal is about 5 px wide in 84 x 84. Networks
  trained without this signal did not learn where it is: during development, the FiLM
  CNN alone, and then with the offset head, reached 0-3 % rollout success after 8-10
  epochs;
* ``contrastive_coef`` (off by default): a symmetric InfoNCE loss between the pre-FiLM
  vision summary and the instruction embedding;
* ``grounding_data`` (off by default): the two auxiliary terms again, on a batch of
  grounding frames per step (:mod:`vla_gym.data.grounding`: scenes without an expert,
  labelled with where the named object is), weighted by ``grounding_coef``.

Outputs in ``out``: ``policy.pt`` (best weights by rollout success, then validation
loss), ``last.pt`` (full training state, for ``resume``), ``config.json``,
``metrics.jsonl`` (one line per epoch) and TensorBoard scalars in ``tb/``. On a validation
split of several tasks (a multi-task demo file), each task's validation NLL and action MSE
are logged too: ``valid_nll/<task>``, ``valid_action_mse/<task>`` (TensorBoard
``valid/nll/<task>``, ...); single-task files log exactly the overall keys.

Data-parallel: ``torchrun --nproc-per-node N -m vla_gym.agents.bc --data ... --out ...``
(see :func:`train_bc` and :mod:`vla_gym.agents.distributed`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vla_gym.agents.bounds import MAX_SEED, bounded_int, finite_float
from vla_gym.agents.checkpoint import (
    CheckpointError,
    build_policy,
    check_training_state,
    read_checkpoint,
    resolve_device,
    save_checkpoint,
)
from vla_gym.agents.distributed import (
    barrier,
    device_for,
    distributed_context,
    init_process_group,
    mean_over_ranks,
)
from vla_gym.agents.network import NetworkConfig, VLAActorCriticPolicy, info_nce
from vla_gym.agents.privileged import auxiliary_losses
from vla_gym.data.augment import AugmentConfig, augment_batch
from vla_gym.fileio import append_jsonl, atomic_write_text
from vla_gym.data.dataset import DemoDataset, check_env_matches, collate_batch
from vla_gym.data.format import DatasetError, held_out_splits

OBS_KEYS = ("rgb", "depth", "proprio", "instruction")
#: Fields that may change between a run and its resumption (they do not change the result).
RESUMABLE_CHANGES = frozenset({"device", "progress", "num_workers", "epochs", "out", "resume"})
#: Rollout seeds start far from the collection seeds (0, 1, ...) and the evaluation seeds (100000+).
ROLLOUT_SEED = 10_000_000
LOG_EVERY = 20  # optimiser steps between TensorBoard training scalars
#: Validation terms also reported per task (``<term>/<task>``) when the split holds several tasks.
PER_TASK_TERMS = ("nll", "action_mse")
#: Rank r of a data-parallel run seeds its augmentation stream with ``seed + r * this``.
AUGMENT_SEED_STRIDE = 1_000_003
#: Bounds of the integer fields of :class:`BCConfig` (None: no upper bound).
INT_BOUNDS: dict[str, tuple[int, int | None]] = {
    "epochs": (1, 100_000), "batch_size": (1, 65_536), "warmup_steps": (0, None), "rollout_every": (0, None),
    "rollout_episodes": (0, 100_000), "checkpoint_every": (0, None), "num_workers": (0, 256), "seed": (0, MAX_SEED),
    "grounding_batch_size": (1, 65_536), "gripper_repeat": (1, 100), "gripper_window": (0, 100),
}
#: BCConfig fields added since BC checkpoints were first written, with the value a run
#: without them had (so its ``last.pt`` still resumes).
BC_FIELDS_ADDED: dict[str, Any] = {
    "grounding_data": None, "grounding_coef": 1.0, "grounding_batch_size": 64, "gripper_repeat": 1, "gripper_window": 2,
}
#: The grounding-frame sampler of rank r is seeded with ``seed + GROUNDING_SEED_OFFSET + r``.
GROUNDING_SEED_OFFSET = 7_919
#: Entries of a BC ``last.pt`` besides the weights, and keys of its meta.
TRAINING_STATE_KEYS = ("optimizer", "scheduler", "scaler", "augment_rng", "torch_rng")
TRAINING_META_KEYS = ("bc", "step", "epoch", "batch_in_epoch", "history", "best")


@dataclass
class BCConfig:
    """Everything that defines a BC run (saved in every checkpoint).

    Args:
        data: demo file from ``vla-gym collect``.
        out: run directory.
        epochs: passes over the training episodes' frames.
        batch_size: frames per optimiser step.
        lr, weight_decay: AdamW (no decay on biases, norms, embeddings, log-std).
        warmup_steps: linear LR warm-up, then cosine decay to ``min_lr_ratio * lr``.
        grad_clip: max global gradient norm.
        value_coef: weight of the value-head regression on discounted demo returns.
        target_coef: weight of the auxiliary loss that predicts the goal object's offset from
            the end-effector (privileged, from the demo file) out of the fused features.
        attention_coef: weight of the auxiliary loss that pulls the first head of the
            instruction-to-pixel attention onto the goal object's image position (privileged):
            the squared error of the attention's expected image coordinates.
        gamma: discount of those returns.
        contrastive_coef: weight of the InfoNCE vision-language loss (0 = off).
        contrastive_temperature: its temperature.
        grounding_data: a grounding file (``vla-gym collect-grounding``,
            :mod:`vla_gym.data.grounding`): scenes with the instruction and where the object it
            names is, no actions. Each training step adds the two auxiliary losses (goal offset
            and attention, weighted by ``target_coef`` and ``attention_coef``) on
            ``grounding_batch_size`` of its frames, times ``grounding_coef``. None: off.
        grounding_coef: weight of that term.
        grounding_batch_size: grounding frames per training step (per process).
        gripper_repeat: each epoch sees the frames around a change of the gripper label (the
            grasp, the release) this many times, the others once (1: off). A place demo has about
            2 release frames in 30; without more weight BC never learns to let go.
        gripper_window: frames up to this many steps before or after such a change count as
            around it.
        paraphrase_prob: chance an item's instruction is re-phrased from the train templates.
        augment: image augmentation strengths (:class:`AugmentConfig` fields).
        network: network sizes (:class:`NetworkConfig` fields).
        rollout_every: epochs between success checks in the env (0 = never).
        rollout_episodes: episodes per success check.
        checkpoint_every: optimiser steps between ``last.pt`` saves (also saved every epoch).
        env_id, env_kwargs: if given, must match the env the demos were collected on.
        device: "auto" (CUDA when present), "cpu" or "cuda".
        amp: mixed precision on CUDA (bf16 where supported, else fp16 with a grad scaler).
        in_memory: read the training frames into RAM once (else lazily from the file).
        num_workers: DataLoader worker processes.
        seed: seeds weights, batch order, augmentation and paraphrasing.
        resume: continue from ``out/last.pt`` if it exists.
        progress: show tqdm bars.
    """

    data: str
    out: str = "runs/bc"
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    value_coef: float = 0.5
    target_coef: float = 1.0
    attention_coef: float = 10.0
    gamma: float = 0.99
    contrastive_coef: float = 0.0
    contrastive_temperature: float = 0.1
    grounding_data: str | None = None
    grounding_coef: float = 1.0
    grounding_batch_size: int = 64
    gripper_repeat: int = 1
    gripper_window: int = 2
    paraphrase_prob: float = 0.5
    augment: dict[str, Any] = field(default_factory=lambda: dataclasses.asdict(AugmentConfig()))
    network: dict[str, Any] = field(default_factory=lambda: NetworkConfig().to_dict())
    rollout_every: int = 5
    rollout_episodes: int = 20
    checkpoint_every: int = 500
    env_id: str | None = None
    env_kwargs: dict[str, Any] | None = None
    device: str = "auto"
    amp: bool = True
    in_memory: bool = True
    num_workers: int = 0
    seed: int = 0
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        # Every number is a real int or a finite float within bounds (NaN and inf refused):
        # a run that starts must not diverge from its config, nor allocate without limit.
        for name, (low, high) in INT_BOUNDS.items():
            setattr(self, name, bounded_int(name, getattr(self, name), low, high))
        for name in ("lr", "contrastive_temperature"):
            setattr(self, name, finite_float(name, getattr(self, name), 0.0, low_open=True))
        if self.grounding_data is not None and not isinstance(self.grounding_data, str):
            raise ValueError(f"grounding_data must be a grounding file's path or None, got {self.grounding_data!r}")
        for name in ("weight_decay", "grad_clip", "value_coef", "target_coef", "attention_coef", "contrastive_coef",
                     "grounding_coef"):
            setattr(self, name, finite_float(name, getattr(self, name), 0.0))
        for name in ("gamma", "paraphrase_prob", "min_lr_ratio"):
            setattr(self, name, finite_float(name, getattr(self, name), 0.0, 1.0))
        if self.rollout_every and not self.rollout_episodes:
            raise ValueError(
                "rollout_episodes must be >= 1 when rollout_every > 0 (zero episodes measure nothing, and the "
                "best checkpoint is chosen by that success rate); set rollout_every=0 to skip rollouts"
            )
        resolve_device(self.device)
        self.augment = dataclasses.asdict(AugmentConfig(**self.augment))  # checks fields and values
        self.network = NetworkConfig(**self.network).to_dict()

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass
class BCResult:
    """What :func:`train_bc` did: where the policy is, and its last and best metrics."""

    policy_path: str
    last_path: str
    steps: int
    epochs: int
    samples_per_second: float
    train_seconds: float
    history: list[dict[str, Any]]
    best: dict[str, Any]


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from 1 to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _param_groups(policy: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, param in policy.named_parameters():
        if not param.requires_grad:
            continue
        matrix = param.ndim >= 2 and "embed" not in name
        (decay if matrix else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _amp_settings(device: torch.device, enabled: bool) -> tuple[bool, torch.dtype, bool]:
    """(autocast on, its dtype, grad scaler needed)."""
    if not enabled or device.type != "cuda":
        return False, torch.float32, False
    if torch.cuda.is_bf16_supported():
        return True, torch.bfloat16, False
    return True, torch.float16, True


class _Losses(torch.nn.Module):
    """Forward pass and losses of one batch (shared by training and validation). A module,
    so that ``DistributedDataParallel`` can wrap it: its forward is what DDP runs."""

    def __init__(self, policy: VLAActorCriticPolicy, config: BCConfig, device: torch.device) -> None:
        super().__init__()
        self.policy, self.config, self.device = policy, config, device
        self.amp, self.amp_dtype, _ = _amp_settings(device, config.amp)

    def forward(self, batch: dict[str, torch.Tensor], per_frame: bool = False) -> dict[str, torch.Tensor]:
        """The batch's mean loss terms (scalars); with ``per_frame``, also each frame's
        :data:`PER_TASK_TERMS` under ``<term>_per_frame``: float32 (B,), detached."""
        obs = {k: batch[k] for k in OBS_KEYS}
        actions, returns = batch["action"], batch["return"]
        policy, extractor = self.policy, self.policy.features_extractor
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            # SB3's evaluate_actions, spelled out to keep the features' auxiliary outputs.
            with extractor.keeping_auxiliary():
                features = policy.extract_features(obs)
            latent_pi, latent_vf = policy.mlp_extractor(features)
            distribution = policy._get_action_dist_from_latent(latent_pi)
            values = policy.value_net(latent_vf)
        aux = extractor.pop_auxiliary()
        log_prob = distribution.log_prob(actions.float())
        nll = -log_prob.float().mean() / actions.shape[1]  # per action dimension
        value_loss = F.mse_loss(values.float().squeeze(-1), returns.float())
        destination = (batch["destination_offset"], batch["destination_uv"], batch["has_destination"])
        offset_loss, where_loss = auxiliary_losses(aux, batch["target_offset"], batch["target_uv"], destination)
        loss = (
            nll + self.config.value_coef * value_loss + self.config.target_coef * offset_loss
            + self.config.attention_coef * where_loss
        )
        out = {"nll": nll, "value_loss": value_loss, "target_loss": offset_loss, "attention_loss": where_loss}
        squared_error = (distribution.distribution.mean.float().detach() - actions.float()) ** 2
        out["action_mse"] = squared_error.mean()
        if per_frame:
            out["nll_per_frame"] = -log_prob.float().detach() / actions.shape[1]
            out["action_mse_per_frame"] = squared_error.mean(dim=1)
        if "grounding" in batch:
            target, attention = self._grounding_losses(batch["grounding"])
            loss = loss + self.config.grounding_coef * (
                self.config.target_coef * target + self.config.attention_coef * attention
            )
            out["grounding_target_loss"], out["grounding_attention_loss"] = target, attention
        if self.config.contrastive_coef > 0:
            same_goal = extractor.same_instruction(obs["instruction"])  # same instruction: not a negative
            contrastive = info_nce(
                aux["vision"].float(), aux["language"].float(), self.config.contrastive_temperature, same_goal
            )
            loss = loss + self.config.contrastive_coef * contrastive
            out["infonce"] = contrastive
        out["loss"] = loss
        return out


    def _grounding_losses(self, frames: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(goal-offset loss, attention loss) on a batch of grounding frames (no actions)."""
        extractor = self.policy.features_extractor
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp), extractor.keeping_auxiliary():
            extractor({k: frames[k] for k in OBS_KEYS})
        return auxiliary_losses(extractor.pop_auxiliary(), frames["target_offset"], frames["target_uv"])


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _split(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def _batches(dataset: DemoDataset, batches: list[np.ndarray], num_workers: int, seed: int):
    """A DataLoader over the given batches of dataset indices (in this order)."""
    batch_sampler = [batch.tolist() for batch in batches]
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate_batch,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
    return loader


def _epoch_order(n: int, seed: int, epoch: int, repeats: np.ndarray | None = None) -> np.ndarray:
    """Frame indices of an epoch, shuffled; with ``repeats`` (int (n,)), frame i appears repeats[i] times."""
    frames = np.arange(n) if repeats is None else np.repeat(np.arange(n), repeats)
    return np.random.default_rng([seed, epoch]).permutation(frames)


def gripper_change_repeats(actions: np.ndarray, starts: np.ndarray, window: int, repeat: int) -> np.ndarray:
    """Per frame, ``repeat`` if a change of the gripper label's sign (the last action
    dimension: > 0 closes) lies at most ``window`` steps away in the same episode, else 1.

    Args:
        actions: float32 (N, 4) labels in frame order.
        starts: int (E + 1,) frame index opening each episode, then N.
    Returns: int64 (N,).
    """
    starts = np.asarray(starts, dtype=np.int64)
    episode = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    closed = actions[:, -1] > 0
    changed = np.zeros(len(actions), bool)  # frame t's label differs from frame t - 1's, in one episode
    changed[1:] = (closed[1:] != closed[:-1]) & (episode[1:] == episode[:-1])
    return np.where(_near_in_episode(changed, episode, window), repeat, 1).astype(np.int64)


def _near_in_episode(changed: np.ndarray, episode: np.ndarray, window: int) -> np.ndarray:
    """Whether a change lies at most ``window`` frames away in the same episode, per frame."""
    near = changed.copy()
    for shift in range(1, window + 1):
        same = episode[shift:] == episode[:-shift]
        near[:-shift] |= changed[shift:] & same
        near[shift:] |= changed[:-shift] & same
    return near


@torch.no_grad()
def validate(policy: VLAActorCriticPolicy, dataset: DemoDataset, config: BCConfig, device: torch.device) -> dict:
    """Mean losses over a dataset split, without augmentation; when the split holds more than
    one task (``dataset.task_names``), also each task's mean :data:`PER_TASK_TERMS` over its
    frames, keyed ``<term>/<task>`` (e.g. ``nll/pick``)."""
    policy.set_training_mode(False)
    losses = _Losses(policy, config, device)
    per_task = len(dataset.task_names) > 1
    totals: dict[str, float] = {}
    task_totals = {term: np.zeros(len(dataset.task_names)) for term in PER_TASK_TERMS}
    count = 0
    batches = _split(np.arange(len(dataset)), config.batch_size)
    for indices, batch in zip(batches, _batches(dataset, batches, 0, config.seed)):
        out = losses(_to_device(batch, device), per_frame=per_task)
        tasks = dataset.frame_tasks[indices]
        for term in PER_TASK_TERMS if per_task else ():
            frames = out.pop(f"{term}_per_frame").cpu().numpy()
            task_totals[term] += np.bincount(tasks, weights=frames, minlength=len(dataset.task_names))
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + float(v) * len(indices)
        count += len(indices)
    means = {k: v / max(count, 1) for k, v in totals.items()}
    if per_task:
        frames_per_task = np.bincount(dataset.frame_tasks, minlength=len(dataset.task_names))
        for term, sums in task_totals.items():
            means.update({f"{term}/{task}": float(total / n)
                          for task, total, n in zip(dataset.task_names, sums, frames_per_task)})
    return means


def rollout_success(policy: VLAActorCriticPolicy, env_args: dict, episodes: int, seed: int = ROLLOUT_SEED) -> dict:
    """Success rate of the deterministic policy on ``episodes`` fresh seeds of the demos' env."""
    import gymnasium as gym

    from vla_gym.evaluation import evaluate

    env = gym.make(env_args["env_name"], **env_args["env_kwargs"])
    try:
        result = evaluate(env, lambda _: policy, range(seed, seed + episodes))
    finally:
        env.close()
        policy.set_training_mode(True)
    return {"success_rate": result.success_rate, "mean_length": result.mean_length}


def train_bc(config: BCConfig) -> BCResult:
    """Train the VLA actor-critic by behaviour cloning; see the module docstring for outputs.

    Under ``torchrun`` (``RANK``/``WORLD_SIZE`` in the environment) the processes train one
    model data-parallel (:mod:`vla_gym.agents.distributed`): ``config.batch_size`` stays the
    global batch, split evenly over the processes, so the run follows the single-process
    one; only rank 0 validates, rolls out, and writes checkpoints, logs and TensorBoard.
    The result's history and best are rank 0's (empty on the others).
    """
    env_args = check_env_matches(config.data, config.env_id, config.env_kwargs)
    held_out = held_out_splits(env_args["env_config"])
    if held_out:
        warnings.warn(
            f"{config.data!r} was collected with {', '.join(held_out)}: the benchmark's held-out splits are then "
            "seen in training",
            stacklevel=2,
        )
    trainer = _BCTrainer(config, env_args)
    try:
        _run(trainer, config)
    finally:
        trainer.close()
    seconds = trainer.train_seconds
    rate = trainer.samples_done / seconds if seconds else float("nan")
    return BCResult(
        str(trainer.policy_path), str(trainer.last_path), trainer.step, trainer.epoch, rate, seconds,
        trainer.history, trainer.best,
    )


def _run(trainer: "_BCTrainer", config: BCConfig) -> None:
    """Resume if asked, then train the remaining epochs; rank 0 writes config and logs."""
    from torch.utils.tensorboard import SummaryWriter

    if config.resume and trainer.last_path.exists():
        trainer.restore()
    main = trainer.context.is_main
    if main:
        trainer.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(trainer.out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    writer = SummaryWriter(str(trainer.out / "tb"), purge_step=trainer.step or None) if main else _NullWriter()
    try:
        while trainer.epoch < config.epochs:
            trainer.train_epoch(writer)
            trainer.end_epoch(writer)
    except KeyboardInterrupt:
        trainer.save_last()  # resume continues from exactly this step
        raise
    finally:
        writer.close()
    if main and not trainer.policy_path.exists():
        save_checkpoint(trainer.policy_path, trainer.policy, trainer.meta())
    barrier(trainer.context)


class _NullWriter:
    """TensorBoard's ``SummaryWriter`` for the ranks that write nothing."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class _GroundingSampler:
    """Random batches of a grounding file's frames (``BCConfig.grounding_data``) on the device,
    from a generator of their own (saved in ``last.pt``)."""

    KEYS = (*OBS_KEYS, "target_offset", "target_uv")

    def __init__(self, config: BCConfig, env_args: dict[str, Any], device: torch.device, rank: int) -> None:
        from vla_gym.data.grounding import read_grounding_frames

        frames = read_grounding_frames(config.grounding_data)
        env_config = env_args["env_config"]
        if frames.image_size != env_config["image_size"]:
            raise ValueError(
                f"grounding file {config.grounding_data!r} has {frames.image_size} px images and the demos "
                f"{env_config['image_size']} px; collect the grounding frames with the demos' image_size"
            )
        foreign = sorted(set(frames.tasks) - set(env_config["tasks"]))
        if foreign:
            raise ValueError(
                f"grounding file {config.grounding_data!r} holds tasks {foreign} that the demos' env "
                f"({env_args['env_name']}, tasks {list(env_config['tasks'])}) lacks: the policy's vocabulary comes "
                "from the demos' tasks; collect the frames on the demos' env"
            )
        self.tensors = {key: torch.from_numpy(frames.arrays[key]) for key in self.KEYS}
        self.generator = torch.Generator().manual_seed(config.seed + GROUNDING_SEED_OFFSET + rank)
        self.batch_size, self.device = config.grounding_batch_size, device

    def sample(self) -> dict[str, torch.Tensor]:
        index = torch.randint(len(self.tensors["rgb"]), (self.batch_size,), generator=self.generator)
        return {key: value[index].to(self.device, non_blocking=True) for key, value in self.tensors.items()}


class _BCTrainer:
    """The state of one BC run: data, policy, optimiser, schedule, every random source, and
    the counters; trains an epoch, evaluates it, saves and restores ``last.pt``."""

    def __init__(self, config: BCConfig, env_args: dict[str, Any]) -> None:
        self.config, self.env_args = config, env_args
        self.out = Path(config.out)
        self.last_path, self.policy_path = self.out / "last.pt", self.out / "policy.pt"
        self.context = context = distributed_context()
        self.device = device = device_for(context, resolve_device(config.device))
        if config.batch_size % context.world_size:
            raise ValueError(
                f"batch_size={config.batch_size} (the global batch) must divide evenly over the "
                f"{context.world_size} processes; choose a multiple of {context.world_size}"
            )
        self.owns_group = init_process_group(context, device)
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.train_set = DemoDataset(
            config.data, "train", in_memory=config.in_memory, paraphrase_prob=config.paraphrase_prob,
            seed=config.seed, gamma=config.gamma,
        )
        self.valid_set = DemoDataset(config.data, "valid", in_memory=config.in_memory, gamma=config.gamma)
        if len(self.train_set) == 0:
            raise ValueError(f"demo file {config.data!r} has no successful training episodes")
        # Frames around a grasp or release, repeated in every epoch's order (gripper_repeat).
        self.repeats = None if config.gripper_repeat == 1 else gripper_change_repeats(
            self.train_set.actions(), self.train_set.starts, config.gripper_window, config.gripper_repeat
        )
        epoch_frames = len(self.train_set) if self.repeats is None else int(self.repeats.sum())
        self.policy = build_policy(env_args, config.network, device)
        self.policy.features_extractor.set_proprio_statistics(*self.train_set.proprio_statistics())
        self.optimizer = torch.optim.AdamW(_param_groups(self.policy, config.weight_decay), lr=config.lr)
        total_steps = math.ceil(epoch_frames / config.batch_size) * config.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, config.warmup_steps, total_steps, config.min_lr_ratio)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=_amp_settings(device, config.amp)[2])
        self.augment = AugmentConfig(**config.augment)
        # Each rank augments its own share of a batch with its own stream (rank 0: the single-process one).
        self.augment_generator = torch.Generator(device=device).manual_seed(config.seed + AUGMENT_SEED_STRIDE * context.rank)
        self.grounding = (
            None if config.grounding_data is None else _GroundingSampler(config, env_args, device, context.rank)
        )
        self.losses = _Losses(self.policy, config, device)
        self.train_losses: torch.nn.Module = self.losses
        if context.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.train_losses = DistributedDataParallel(
                self.losses, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=_has_unused_parameters(self.policy, config),
            )
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.samples_done, self.train_seconds = 0, 0.0
        self.running: dict[str, float] = {}

    def meta(self) -> dict[str, Any]:
        return {
            # The policy's own config: a sentence encoder's embedding size filled in.
            "env": self.env_args, "network": self.policy.network_config.to_dict(), "bc": self.config.to_dict(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "history": self.history,
            "best": self.best, "data_fingerprint": self.train_set.fingerprint, "rng": capture_host_rng(),
        }

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()

    def save_last(self) -> None:
        if not self.context.is_main:
            return
        save_checkpoint(
            self.last_path, self.policy, self.meta(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
            augment_rng=self.augment_generator.get_state(), running=dict(self.running), **capture_torch_rng(),
            **({} if self.grounding is None else {"grounding_rng": self.grounding.generator.get_state()}),
        )

    def restore(self) -> None:
        """Continue from ``last.pt``: weights, optimiser, schedule, scaler, counters and the
        state of every random source, so the run goes on exactly as if never stopped."""
        state = _load_training_state(self.last_path, self.config, self.device, self.train_set.fingerprint)
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        augment_rng = state["augment_rng"]
        self.augment_generator.set_state(augment_rng.cpu() if self.device.type == "cpu" else augment_rng)
        if self.grounding is not None and "grounding_rng" in state:
            self.grounding.generator.set_state(state["grounding_rng"].cpu())
        restore_torch_rng(state)
        meta = state["meta"]
        restore_host_rng(meta.get("rng"))
        self.step, self.epoch, self.batch_in_epoch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
        self.history, self.best = meta["history"], meta["best"]
        self.running = {k: float(v) for k, v in (state.get("running") or {}).items()}

    def train_epoch(self, writer: Any) -> None:
        """The rest of the current epoch (all of it, unless resumed mid-epoch)."""
        from tqdm.auto import tqdm

        config = self.config
        self.policy.set_training_mode(True)
        self.train_set.set_epoch(self.epoch)
        batches = self.epoch_batches()
        loader = _batches(self.train_set, [b[self.context.rank] for b in batches], config.num_workers,
                          config.seed + self.epoch)
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}/{config.epochs}",
                   disable=not (config.progress and self.context.is_main), leave=False)
        start = time.perf_counter()
        try:
            for batch, shares in zip(bar, batches):
                self._train_step(batch, writer, bar, sum(len(share) for share in shares))
        except DatasetError as err:  # from a DataLoader worker: keep the one line that says what is wrong
            raise DatasetError(_last_line(str(err))) from None
        finally:
            self.train_seconds += time.perf_counter() - start

    def epoch_batches(self) -> list[list[np.ndarray]]:
        """The rest of this epoch's global batches, each as every rank's share (one share in a
        single process). The order is the single-process one; a last batch too small to give
        every rank a sample is dropped in a multi-process run."""
        config, world = self.config, self.context.world_size
        order = _epoch_order(len(self.train_set), config.seed, self.epoch, self.repeats)
        order = order[self.batch_in_epoch * config.batch_size :]
        return [np.array_split(batch, world) for batch in _split(order, config.batch_size) if len(batch) >= world]

    def _train_step(self, batch: dict[str, torch.Tensor], writer: Any, bar: Any, global_size: int) -> None:
        config, policy, optimizer = self.config, self.policy, self.optimizer
        batch = augment_batch(_to_device(batch, self.device), self.augment, self.augment_generator)
        if self.grounding is not None:
            batch["grounding"] = augment_batch(self.grounding.sample(), self.augment, self.augment_generator)
        terms = self.train_losses(batch)
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        self.scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip or float("inf"))
        self.scaler.step(optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.batch_in_epoch += 1
        self.samples_done += global_size
        for k, v in terms.items():
            self.running[k] = self.running.get(k, 0.0) + float(v.detach())
        if self.step % LOG_EVERY == 0:
            for k, v in terms.items():
                writer.add_scalar(f"train/{k}", float(v.detach()), self.step)
            writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
            writer.add_scalar("train/grad_norm", float(grad_norm), self.step)
            writer.add_scalar("train/log_std", float(policy.log_std.detach().mean()), self.step)
            bar.set_postfix(loss=f"{float(terms['loss'].detach()):.3f}", refresh=False)
        if config.checkpoint_every and self.step % config.checkpoint_every == 0:
            self.save_last()

    def end_epoch(self, writer: Any) -> None:
        """Validate (and roll out), log, keep the best policy and save ``last.pt`` (rank 0;
        the other ranks wait for it)."""
        config = self.config
        batches = max(self.batch_in_epoch, 1)
        self.epoch += 1
        self.batch_in_epoch = 0
        running = mean_over_ranks(self.context, self.running, self.device)
        self.running = {}
        if self.context.is_main:
            self._evaluate_epoch(writer, {f"train_{k}": v / batches for k, v in running.items()})
        barrier(self.context)

    def _evaluate_epoch(self, writer: Any, train_terms: dict[str, float]) -> None:
        from tqdm.auto import tqdm

        config, policy = self.config, self.policy
        record = {"epoch": self.epoch, "step": self.step, **train_terms}
        record.update({f"valid_{k}": v for k, v in validate(policy, self.valid_set, config, self.device).items()})
        if config.rollout_every and (self.epoch % config.rollout_every == 0 or self.epoch == config.epochs):
            rollout = rollout_success(policy, self.env_args, config.rollout_episodes)
            record.update({f"rollout_{k}": v for k, v in rollout.items()})
        record["log_std"] = policy.log_std.detach().cpu().tolist()
        record["samples_per_second"] = self.samples_done / self.train_seconds if self.train_seconds else None
        self.history.append(record)
        for k, v in record.items():
            if isinstance(v, float) and k.startswith(("valid_", "rollout_")):
                writer.add_scalar(k.replace("_", "/", 1), v, self.step)
        if _better(record, self.best):
            self.best = {k: v for k, v in record.items() if k != "log_std"}
            save_checkpoint(self.policy_path, policy, self.meta())
        append_jsonl(self.out / "metrics.jsonl", record)
        self.save_last()
        if config.progress:
            tqdm.write(_describe(record))


def _last_line(message: str) -> str:
    """The last line of a (DataLoader worker's) message, without an ``module.Error:`` prefix."""
    line = [part for part in message.strip().splitlines() if part.strip()][-1].strip()
    return re.sub(r"^[\w.]*Error: ", "", line)


def capture_host_rng() -> dict[str, Any]:
    """The global numpy and Python random states, as JSON (for a checkpoint's meta)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss]}


def restore_host_rng(state: dict[str, Any] | None) -> None:
    """Undo :func:`capture_host_rng` (checkpoints from before it hold none: nothing to do)."""
    if not state:
        return
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def capture_torch_rng() -> dict[str, Any]:
    """Torch's CPU generator state, and each CUDA device's when CUDA is in use."""
    state: dict[str, Any] = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore_torch_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch_rng"].cpu())
    cuda = state.get("cuda_rng")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _has_unused_parameters(policy: VLAActorCriticPolicy, config: BCConfig) -> bool:
    """Whether some trainable weights get no gradient from the BC loss: the contrastive
    projections when the contrastive term is off. DDP must then be told to look for them."""
    return config.contrastive_coef == 0 and any(
        p.requires_grad for name, p in policy.features_extractor.named_parameters()
        if name.startswith(("vision_embed.", "language_embed."))
    )


def _better(record: dict[str, Any], best: dict[str, Any]) -> bool:
    """Rank epochs by rollout success (when measured), then by validation loss."""
    if not best:
        return True
    new, old = record.get("rollout_success_rate"), best.get("rollout_success_rate")
    if new is not None and (old is None or new != old):
        return old is None or new > old
    if new is None and old is not None:
        return False
    return record.get("valid_loss", math.inf) < best.get("valid_loss", math.inf)


def _load_training_state(path: Path, config: BCConfig, device: torch.device, fingerprint: str) -> dict[str, Any]:
    """``last.pt`` of a BC run made with ``config`` (up to :data:`RESUMABLE_CHANGES`) on
    the same demos (content ``fingerprint``); else :class:`CheckpointError`."""
    state = read_checkpoint(path, map_location=device)
    check_training_state(
        path, state, "bc", config.to_dict(), meta_keys=TRAINING_META_KEYS, state_keys=TRAINING_STATE_KEYS,
        may_change=RESUMABLE_CHANGES, remedy="resume a train-bc run directory, or train into a new out directory",
        added=BC_FIELDS_ADDED,
    )
    saved = state["meta"].get("data_fingerprint")
    if saved is not None and saved != fingerprint:
        raise CheckpointError(
            f"cannot resume {str(path)!r}: the demo file {config.data!r} changed since that checkpoint was written "
            f"(content fingerprint {saved} then, {fingerprint} now); resume with the original demos, or train "
            "into a new out directory"
        )
    return state


def _describe(record: dict[str, Any]) -> str:
    parts = [f"epoch {record['epoch']}", f"step {record['step']}"]
    for key in ("train_nll", "valid_nll", "valid_action_mse", "valid_target_loss", "rollout_success_rate"):
        if key in record:
            parts.append(f"{key} {record[key]:.4f}")
    if record.get("samples_per_second"):
        parts.append(f"{record['samples_per_second']:.0f} samples/s")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """``python -m vla_gym.agents.bc [train-bc options]``: ``vla-gym train-bc``, the entry
    point for ``torchrun --nproc-per-node N -m vla_gym.agents.bc --data ... --out ...``."""
    import sys

    from vla_gym.cli import main as cli_main

    return cli_main(["train-bc", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
