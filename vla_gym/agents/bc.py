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
  vision summary and the instruction embedding.

Outputs in ``out``: ``policy.pt`` (best weights by rollout success, then validation
loss), ``last.pt`` (full training state, for ``resume``), ``config.json``,
``metrics.jsonl`` (one line per epoch) and TensorBoard scalars in ``tb/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vla_gym.agents.checkpoint import (
    CheckpointError,
    build_policy,
    read_checkpoint,
    resolve_device,
    resume_differences,
    save_checkpoint,
)
from vla_gym.agents.network import TARGET_OFFSET_SCALE, NetworkConfig, VLAActorCriticPolicy, info_nce
from vla_gym.data.augment import AugmentConfig, augment_batch
from vla_gym.fileio import append_jsonl, atomic_write_text
from vla_gym.data.dataset import DemoDataset, check_env_matches, collate_batch
from vla_gym.data.format import held_out_splits

OBS_KEYS = ("rgb", "depth", "proprio", "instruction")
#: Fields that may change between a run and its resumption (they do not change the result).
RESUMABLE_CHANGES = frozenset({"device", "progress", "num_workers", "epochs", "out", "resume"})
#: Rollout seeds start far from the collection seeds (0, 1, ...) and the evaluation seeds (100000+).
ROLLOUT_SEED = 10_000_000
LOG_EVERY = 20  # optimiser steps between TensorBoard training scalars


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
            instruction-to-pixel attention onto the goal object's image position (privileged).
        gamma: discount of those returns.
        contrastive_coef: weight of the InfoNCE vision-language loss (0 = off).
        contrastive_temperature: its temperature.
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
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "contrastive_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "warmup_steps", "grad_clip", "value_coef", "target_coef", "attention_coef",
                     "contrastive_coef",
                     "rollout_every", "rollout_episodes", "checkpoint_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("gamma", "paraphrase_prob", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
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


class _Losses:
    """Forward pass and losses of one batch (shared by training and validation)."""

    def __init__(self, policy: VLAActorCriticPolicy, config: BCConfig, device: torch.device) -> None:
        self.policy, self.config, self.device = policy, config, device
        self.amp, self.amp_dtype, _ = _amp_settings(device, config.amp)

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        obs = {k: batch[k] for k in OBS_KEYS}
        actions, returns = batch["action"], batch["return"]
        policy, extractor = self.policy, self.policy.features_extractor
        extractor.keep_auxiliary = True
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            # SB3's evaluate_actions, spelled out to keep the features' auxiliary outputs.
            features = policy.extract_features(obs)
            latent_pi, latent_vf = policy.mlp_extractor(features)
            distribution = policy._get_action_dist_from_latent(latent_pi)
            values = policy.value_net(latent_vf)
        extractor.keep_auxiliary = False
        aux = extractor.pop_auxiliary()
        log_prob = distribution.log_prob(actions.float())
        nll = -log_prob.float().mean() / actions.shape[1]  # per action dimension
        value_loss = F.mse_loss(values.float().squeeze(-1), returns.float())
        offset_loss = F.mse_loss(aux["target_offset"].float(), batch["target_offset"].float() / TARGET_OFFSET_SCALE)
        where_loss = F.mse_loss(aux["where"][:, 0].float(), batch["target_uv"].float())
        loss = (
            nll + self.config.value_coef * value_loss + self.config.target_coef * offset_loss
            + self.config.attention_coef * where_loss
        )
        out = {"nll": nll, "value_loss": value_loss, "target_loss": offset_loss, "attention_loss": where_loss}
        out["action_mse"] = F.mse_loss(distribution.distribution.mean.float().detach(), actions.float())
        if self.config.contrastive_coef > 0:
            ids = extractor.tokenizer(obs["instruction"])
            same_goal = (ids[:, None, :] == ids[None, :, :]).all(-1)  # same instruction: not a negative
            contrastive = info_nce(
                aux["vision"].float(), aux["language"].float(), self.config.contrastive_temperature, same_goal
            )
            loss = loss + self.config.contrastive_coef * contrastive
            out["infonce"] = contrastive
        out["loss"] = loss
        return out


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _batches(dataset: DemoDataset, indices: np.ndarray, batch_size: int, num_workers: int, seed: int):
    batch_sampler = [indices[i : i + batch_size].tolist() for i in range(0, len(indices), batch_size)]
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate_batch,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
    return loader


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


@torch.no_grad()
def validate(policy: VLAActorCriticPolicy, dataset: DemoDataset, config: BCConfig, device: torch.device) -> dict:
    """Mean losses over a dataset split, without augmentation."""
    policy.set_training_mode(False)
    losses = _Losses(policy, config, device)
    totals: dict[str, float] = {}
    count = 0
    for batch in _batches(dataset, np.arange(len(dataset)), config.batch_size, 0, config.seed):
        batch = _to_device(batch, device)
        out = losses(batch)
        n = len(batch["action"])
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + float(v) * n
        count += n
    return {k: v / max(count, 1) for k, v in totals.items()}


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
    """Train the VLA actor-critic by behaviour cloning; see the module docstring for outputs."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    out = Path(config.out)
    env_args = check_env_matches(config.data, config.env_id, config.env_kwargs)
    held_out = held_out_splits(env_args["env_config"])
    if held_out:
        warnings.warn(
            f"{config.data!r} was collected with {', '.join(held_out)}: the benchmark's held-out splits are then "
            "seen in training",
            stacklevel=2,
        )
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    train_set = DemoDataset(
        config.data, "train", in_memory=config.in_memory, paraphrase_prob=config.paraphrase_prob,
        seed=config.seed, gamma=config.gamma,
    )
    valid_set = DemoDataset(config.data, "valid", in_memory=config.in_memory, gamma=config.gamma)
    if len(train_set) == 0:
        raise ValueError(f"demo file {config.data!r} has no successful training episodes")
    policy = build_policy(env_args, config.network, device)
    policy.features_extractor.set_proprio_statistics(*train_set.proprio_statistics())
    optimizer = torch.optim.AdamW(_param_groups(policy, config.weight_decay), lr=config.lr)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup_steps, total_steps, config.min_lr_ratio)
    )
    _, _, use_scaler = _amp_settings(device, config.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    augment = AugmentConfig(**config.augment)
    augment_generator = torch.Generator(device=device).manual_seed(config.seed)

    step, epoch, batch_in_epoch, history, best = 0, 0, 0, [], {}
    last_path, policy_path = out / "last.pt", out / "policy.pt"
    if config.resume and last_path.exists():
        state = _load_training_state(last_path, config, device)
        policy.load_state_dict(state["policy"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        augment_generator.set_state(state["augment_rng"].cpu() if device.type == "cpu" else state["augment_rng"])
        torch.set_rng_state(state["torch_rng"].cpu())
        meta = state["meta"]
        step, epoch, batch_in_epoch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
        history, best = meta["history"], meta["best"]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")

    def meta() -> dict[str, Any]:
        return {
            "env": env_args, "network": config.network, "bc": config.to_dict(), "step": step, "epoch": epoch,
            "batch_in_epoch": batch_in_epoch, "history": history, "best": best,
        }

    def save_last() -> None:
        save_checkpoint(
            last_path, policy, meta(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict(), augment_rng=augment_generator.get_state(), torch_rng=torch.get_rng_state(),
        )

    writer = SummaryWriter(str(out / "tb"), purge_step=step if step else None)
    losses = _Losses(policy, config, device)
    samples_done, train_seconds = 0, 0.0
    try:
        while epoch < config.epochs:
            policy.set_training_mode(True)
            order = _epoch_order(len(train_set), config.seed, epoch)[batch_in_epoch * config.batch_size :]
            loader = _batches(train_set, order, config.batch_size, config.num_workers, config.seed + epoch)
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not config.progress, leave=False)
            start = time.perf_counter()
            running: dict[str, float] = {}
            for batch in bar:
                batch = augment_batch(_to_device(batch, device), augment, augment_generator)
                terms = losses(batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms["loss"]).backward()
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip or float("inf"))
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                batch_in_epoch += 1
                samples_done += len(batch["action"])
                for k, v in terms.items():
                    running[k] = running.get(k, 0.0) + float(v.detach())
                if step % LOG_EVERY == 0:
                    for k, v in terms.items():
                        writer.add_scalar(f"train/{k}", float(v.detach()), step)
                    writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                    writer.add_scalar("train/grad_norm", float(grad_norm), step)
                    writer.add_scalar("train/log_std", float(policy.log_std.detach().mean()), step)
                    bar.set_postfix(loss=f"{float(terms['loss'].detach()):.3f}", refresh=False)
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    save_last()
            train_seconds += time.perf_counter() - start
            batches = max(batch_in_epoch, 1)
            epoch += 1
            batch_in_epoch = 0
            record = {"epoch": epoch, "step": step, **{f"train_{k}": v / batches for k, v in running.items()}}
            record.update({f"valid_{k}": v for k, v in validate(policy, valid_set, config, device).items()})
            if config.rollout_every and (epoch % config.rollout_every == 0 or epoch == config.epochs):
                rollout = rollout_success(policy, env_args, config.rollout_episodes)
                record.update({f"rollout_{k}": v for k, v in rollout.items()})
            record["log_std"] = policy.log_std.detach().cpu().tolist()
            record["samples_per_second"] = samples_done / train_seconds if train_seconds else None
            history.append(record)
            for k, v in record.items():
                if isinstance(v, float) and k.startswith(("valid_", "rollout_")):
                    writer.add_scalar(k.replace("_", "/", 1), v, step)
            if _better(record, best):
                best = {k: v for k, v in record.items() if k != "log_std"}
                save_checkpoint(policy_path, policy, meta())
            append_jsonl(out / "metrics.jsonl", record)
            save_last()
            if config.progress:
                tqdm.write(_describe(record))
    except KeyboardInterrupt:
        save_last()  # resume continues from exactly this step
        raise
    finally:
        writer.close()
    if not policy_path.exists():
        save_checkpoint(policy_path, policy, meta())
    rate = samples_done / train_seconds if train_seconds else float("nan")
    return BCResult(str(policy_path), str(last_path), step, epoch, rate, train_seconds, history, best)


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


def _load_training_state(path: Path, config: BCConfig, device: torch.device) -> dict[str, Any]:
    state = read_checkpoint(path, map_location=device)
    differ = resume_differences(state["meta"]["bc"], config.to_dict(), RESUMABLE_CHANGES)
    if differ:
        raise CheckpointError(f"cannot resume {str(path)!r} with another config: " + "; ".join(differ))
    return state


def _describe(record: dict[str, Any]) -> str:
    parts = [f"epoch {record['epoch']}", f"step {record['step']}"]
    for key in ("train_nll", "valid_nll", "valid_action_mse", "valid_target_loss", "rollout_success_rate"):
        if key in record:
            parts.append(f"{key} {record[key]:.4f}")
    if record.get("samples_per_second"):
        parts.append(f"{record['samples_per_second']:.0f} samples/s")
    return ", ".join(parts)
