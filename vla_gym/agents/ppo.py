"""PPO fine-tuning of the BC-pretrained VLA actor-critic: ``train_ppo(PPOConfig(...))``.

stable-baselines3's PPO drives the very network BC trained: the model is built with
``ortho_init=False`` and then the BC checkpoint's state dict (weights, learned log-std and
the proprio statistics) is loaded into ``model.policy``, so nothing SB3 initialises
survives. :class:`VLAPPO` adds what keeps a BC policy from collapsing when PPO takes over:

* **critic warm-up**: the value head BC fitted on demo returns has not seen the policy's
  own rollouts (nor a dense reward). For the first ``critic_warmup_rollouts`` rollouts only
  the critic (``mlp_extractor.value_net`` and ``value_net``) is trained, on features of
  the frozen shared trunk; the actor, trunk and log-std are not touched;
* **its own learning rate**: the critic's parameter group runs at ``critic_lr``, the rest
  at the (lower) ``lr``;
* **few epochs and ``target_kl``**: a small number of passes over each fresh rollout,
  stopped early when the approximate KL to the rollout policy passes ``1.5 * target_kl``;
* **the BC log-std**: loaded with the weights, not reset to SB3's ``log_std_init``;
* an optional **behaviour-cloning term** (DAPG-style): ``bc_coef * bc_decay**k`` times the
  per-dimension NLL of expert actions on demo batches, added to the PPO loss at update k;
* an optional **frozen trunk** (``trunk_lr_scale=0``): PPO adapts the heads on the features
  BC learned; measured, updates of the whole network from a weak BC start lowered its success;
* an optional **self-imitation term** (``sil_coef``, :class:`SuccessMemory`): the NLL of the
  actions of the agent's own successful episodes;
* optional **potential-based shaping** (``shaping``, :mod:`vla_gym.agents.shaping`) by the
  task's dense progress, which keeps the sparse task's optimal policies;
* an optional **exploration std** (``start_log_std``) in place of BC's, which measures the
  imitation error rather than a useful amount of exploration;
* optional **privileged auxiliary losses on the trunk** (``aux_epochs``,
  :mod:`vla_gym.agents.privileged`): with PPO's gradient kept out of the trunk
  (``trunk_lr_scale=0``), the trunk still learns, from BC's two auxiliary losses (where the
  goal object is, relative to the gripper and in the image) on the rollout's own frames,
  with the simulator's state as the label.

Outputs in ``out``: ``policy.pt`` (best eval success on held-out seeds, then shortest
episodes), ``last.pt`` (training state for ``resume``), ``config.json``,
``metrics.jsonl`` (one line per evaluation) and TensorBoard logs in ``tb/``: ``eval/success_rate``
and ``eval/mean_length`` (deterministic, held-out seeds), ``rollout/success_rate`` and
``rollout/ep_len_mean`` (the training episodes), ``train/value_loss``,
``train/explained_variance``, ``train/approx_kl``, ``train/clip_fraction``,
``train/entropy_loss``, ``train/std``, ``train/sil_loss``, ``train/aux_target_loss``,
``train/aux_attention_loss``, on a multi-task env ``rollout/success_rate/<task>`` and
``eval/success_rate/<task>``, and ``time/env_steps_per_second``
(rollouts and updates; evaluations excluded).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import explained_variance, set_random_seed
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.preprocessing import check_for_nested_spaces
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from vla_gym.envs.registration import DEFAULT_ENV_ID
from vla_gym.agents.bounds import MAX_SEED, bounded_int, finite_float
from vla_gym.agents.checkpoint import (
    CheckpointError,
    NonFiniteError,
    check_task_vocabulary,
    check_training_state,
    non_finite_tensors,
    load_policy,
    read_checkpoint,
    resolve_device,
    save_checkpoint,
)
from vla_gym.agents.network import MAX_LOG_STD_INIT, MIN_LOG_STD_INIT, NetworkConfig, VLAActorCriticPolicy
from vla_gym.agents.privileged import (
    PrivilegedRollout,
    PrivilegedTargets,
    auxiliary_losses,
    rollout_labels,
    valid_targets,
)
from vla_gym.data.format import env_args as make_env_args
from vla_gym.fileio import append_jsonl, atomic_write_text

VEC_ENVS = ("auto", "subproc", "dummy")
#: Seeds of the training envs derive from this (demos use 0+, the benchmark 100000+,
#: BC's rollout checks 10000000+).
TRAIN_SEED = 20_000_000
#: First seed of the evaluation callback (checkpoint selection); the train-agent report
#: evaluates on other seeds (100000+), so the reported figures are not selected on.
EVAL_SEED = 300_000
#: Fields that may change between a run and its resumption.
RESUMABLE_CHANGES = frozenset({"device", "progress", "timesteps", "out", "resume"})
ADAM_EPS = 1e-5  # SB3's PPO default
#: Training episodes per task behind ``rollout/success_rate/<task>`` (SB3's window for the overall rate).
TASK_SUCCESS_WINDOW = 100
#: Bounds of the integer fields of :class:`PPOConfig` (None: no upper bound).
INT_BOUNDS: dict[str, tuple[int, int | None]] = {
    "timesteps": (1, None), "n_envs": (1, 256), "n_steps": (1, 1_000_000), "batch_size": (1, 1_000_000),
    "n_epochs": (1, 1_000), "critic_warmup_rollouts": (0, None), "critic_warmup_epochs": (1, 1_000),
    "bc_batch_size": (1, 65_536), "eval_every": (0, None), "eval_episodes": (1, 1_000_000), "eval_seed": (0, 2**31 - 1),
    "checkpoint_every": (1, None), "seed": (0, MAX_SEED), "sil_capacity": (1, 1_000_000),
    "aux_epochs": (0, 1_000), "aux_batch_size": (1, 65_536),
}
#: A rollout held in RAM may take at most this many bytes (see ``_check_rollout_size``).
MAX_ROLLOUT_BYTES = 16 * 2**30
RGB_BYTES, DEPTH_BYTES, OTHER_FRAME_BYTES = 3, 4, 8 * 4 + 128 + 64
#: Entries of a PPO ``last.pt`` besides the weights, and keys of its meta.
TRAINING_STATE_KEYS = ("optimizer", "torch_rng")  # and "aux_optimizer" with aux_epochs > 0
TRAINING_META_KEYS = ("ppo", "timesteps", "n_updates", "rollouts_trained", "history", "best")


def check_aux_trunk(aux_epochs: int, trunk_lr_scale: float) -> None:
    """The auxiliary passes train the trunk alone: ``aux_epochs > 0`` needs ``trunk_lr_scale == 0``."""
    if aux_epochs and trunk_lr_scale != 0:
        raise ValueError(
            f"aux_epochs={aux_epochs} trains the trunk with the auxiliary losses alone and needs "
            f"trunk_lr_scale=0 (got {trunk_lr_scale}); set aux_epochs=0 to train the trunk with PPO's loss"
        )


@dataclass
class PPOConfig:
    """Everything that defines a PPO fine-tuning run (saved in every checkpoint).

    Args:
        init: BC checkpoint (``policy.pt`` of ``vla-gym train-bc``) to start from; None
            trains the network given by ``network`` from scratch.
        out: run directory.
        env_id, env_kwargs: the env to train on (e.g. ``VLAPickDense-v0`` for the dense
            reward); its observations must have the shapes the checkpoint was trained on.
        timesteps: env steps in total (over all envs).
        n_envs: parallel envs; ``vec_env`` "subproc" (worker processes), "dummy" (this
            process) or "auto" (subproc when ``n_envs > 1``).
        n_steps: steps per env per rollout (a rollout is ``n_steps * n_envs`` steps).
        batch_size: minibatch size of the PPO update.
        n_epochs: passes over each rollout (few: more over-fits fresh data and drifts).
        lr: Adam learning rate of the actor and the shared trunk.
        critic_lr: learning rate of the critic (``mlp_extractor.value_net``, ``value_net``).
        trunk_lr_scale: the shared trunk's (vision, language, fusion) learning rate as a
            multiple of ``lr``; 0 freezes it, so PPO adapts the heads on BC's features (and
            each update skips the trunk's backward pass).
        gamma, gae_lambda: discount and GAE lambda.
        clip_range: PPO ratio clip.
        ent_coef, vf_coef: entropy bonus and value-loss weight.
        max_grad_norm: global gradient-norm clip.
        target_kl: stop a rollout's update once the approximate KL passes 1.5x this (None: never).
        critic_warmup_rollouts: first rollouts that train only the critic, the actor frozen.
        critic_warmup_epochs: passes over each of those rollouts.
        bc_coef: initial weight of the behaviour-cloning NLL term on demo batches (0 = off).
        bc_decay: the weight is multiplied by this after every PPO update.
        bc_data: demo file for that term (default: the demos the ``init`` checkpoint was trained on).
        bc_batch_size: demo frames per minibatch of that term.
        sil_coef: weight of the self-imitation term: the NLL of the actions of the agent's own
            successful episodes (:class:`SuccessMemory`), batches of ``batch_size`` (0 = off).
        sil_capacity: frames of successful episodes kept for it (the newest).
        shaping: weight of potential-based reward shaping with the task's dense progress
            (:class:`~vla_gym.agents.shaping.PotentialShaping`; 0 = the env's reward alone).
        start_log_std: if given, PPO explores from this log-std (all action dimensions) instead
            of the one BC fitted: BC's std measures its imitation error, often too wide for
            the rollouts to resemble the deterministic policy being improved.
        detach_critic: the value loss trains only the critic's MLP and head, not the shared
            trunk (vision, language, fusion), which then learns from the policy loss alone.
        aux_epochs: passes of the privileged auxiliary losses (goal offset from the gripper,
            goal position in the image; :mod:`vla_gym.agents.privileged`) over each rollout's
            frames after its PPO update, training the trunk alone (0 = off; needs
            ``trunk_lr_scale=0``, so PPO's own gradient trains only the heads).
        aux_lr: Adam learning rate of those passes.
        aux_batch_size: frames per step of those passes.
        aux_target_coef, aux_attention_coef: weights of the two losses (BC's defaults).
        network: :class:`NetworkConfig` fields, only when ``init`` is None.
        eval_every: env steps between evaluations (also at the start and the end).
        eval_episodes: episodes per evaluation, on seeds ``eval_seed, eval_seed + 1, ...``.
        eval_seed: first evaluation seed.
        checkpoint_every: rollouts between ``last.pt`` saves.
        device: "auto" (CUDA when present), "cpu" or "cuda"; the envs step on CPU.
        seed: seeds torch, numpy and the training envs.
        resume: continue from ``out/last.pt`` if it exists.
        progress: show a tqdm bar.
    """

    init: str | None = None
    out: str = "runs/ppo"
    env_id: str = DEFAULT_ENV_ID
    env_kwargs: dict[str, Any] | None = None
    timesteps: int = 200_000
    n_envs: int = 8
    vec_env: str = "auto"
    n_steps: int = 256
    batch_size: int = 256
    n_epochs: int = 3
    lr: float = 3e-5
    critic_lr: float = 3e-4
    trunk_lr_scale: float = 1.0
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float | None = 0.02
    critic_warmup_rollouts: int = 2
    critic_warmup_epochs: int = 10
    bc_coef: float = 0.0
    bc_decay: float = 0.9
    bc_data: str | None = None
    bc_batch_size: int = 64
    shaping: float = 0.0
    sil_coef: float = 0.0
    sil_capacity: int = 8192
    start_log_std: float | None = None
    detach_critic: bool = False
    aux_epochs: int = 0
    aux_lr: float = 3e-4
    aux_batch_size: int = 128
    aux_target_coef: float = 1.0
    aux_attention_coef: float = 10.0
    network: dict[str, Any] | None = None
    eval_every: int = 10_000
    eval_episodes: int = 50
    eval_seed: int = EVAL_SEED
    checkpoint_every: int = 1
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        # Every number is a real int or a finite float within bounds: NaN or inf in a
        # learning rate or loss weight would train a poisoned policy (and checkpoint it).
        for name, (low, high) in INT_BOUNDS.items():
            setattr(self, name, bounded_int(name, getattr(self, name), low, high))
        for name in ("lr", "critic_lr", "clip_range", "max_grad_norm", "aux_lr"):
            setattr(self, name, finite_float(name, getattr(self, name), 0.0, low_open=True))
        for name in ("ent_coef", "vf_coef", "bc_coef", "shaping", "sil_coef", "aux_target_coef", "aux_attention_coef"):
            setattr(self, name, finite_float(name, getattr(self, name), 0.0))
        self.trunk_lr_scale = finite_float("trunk_lr_scale", self.trunk_lr_scale, 0.0, 10.0)
        for name in ("gamma", "gae_lambda", "bc_decay"):
            setattr(self, name, finite_float(name, getattr(self, name), 0.0, 1.0))
        if self.start_log_std is not None:
            self.start_log_std = finite_float("start_log_std", self.start_log_std, MIN_LOG_STD_INIT, MAX_LOG_STD_INIT)
        if self.target_kl is not None:
            try:
                self.target_kl = finite_float("target_kl", self.target_kl, 0.0, low_open=True)
            except ValueError:
                raise ValueError(f"target_kl must be > 0 or None, got {self.target_kl!r}") from None
        check_aux_trunk(self.aux_epochs, self.trunk_lr_scale)
        if self.vec_env not in VEC_ENVS:
            raise ValueError(f"vec_env={self.vec_env!r} is not available; choose one of {VEC_ENVS}")
        if self.batch_size > self.n_steps * self.n_envs:
            raise ValueError(
                f"batch_size={self.batch_size} is larger than a rollout (n_steps * n_envs = "
                f"{self.n_steps * self.n_envs}); lower it or collect longer rollouts"
            )
        if self.init is not None and self.network is not None:
            raise ValueError("give either init (a BC checkpoint, whose network is used) or network, not both")
        from vla_gym.envs import ENV_IDS

        if self.env_id not in ENV_IDS:
            raise ValueError(f"env_id={self.env_id!r} is not a vla_gym env; choose one of {sorted(ENV_IDS)}")
        resolve_device(self.device)
        if self.network is not None:
            self.network = NetworkConfig(**self.network).to_dict()
        self._check_rollout_size()

    def _check_rollout_size(self) -> None:
        """SB3 keeps a rollout of ``n_steps * n_envs`` observations in RAM: bounded here."""
        from vla_gym.data.format import env_config_dict

        size = env_config_dict(self.env_id, self.env_kwargs)["image_size"]
        frame_bytes = size * size * (RGB_BYTES + DEPTH_BYTES) + OTHER_FRAME_BYTES
        needed = self.n_steps * self.n_envs * frame_bytes
        if needed > MAX_ROLLOUT_BYTES:
            raise ValueError(
                f"a rollout of n_steps * n_envs = {self.n_steps * self.n_envs} frames of {size} px needs "
                f"{needed / 2**30:.1f} GiB; the limit is {MAX_ROLLOUT_BYTES / 2**30:.0f} GiB (lower n_steps or n_envs)"
            )

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass
class PPOResult:
    """What :func:`train_ppo` did."""

    policy_path: str
    last_path: str
    timesteps: int
    steps_per_second: float  # env steps per second of training, updates included, evaluations excluded
    train_seconds: float
    eval_seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per evaluation
    best: dict[str, Any] = field(default_factory=dict)


def critic_parameters(policy: VLAActorCriticPolicy) -> list[torch.nn.Parameter]:
    """The critic's own parameters: its MLP and the value head (not the shared trunk)."""
    return [*policy.mlp_extractor.value_net.parameters(), *policy.value_net.parameters()]


class DemoBatches:
    """Random batches of expert frames for the behaviour-cloning term, from a demo file's
    train split held in RAM, laid out as the policy's observation space wants them."""

    def __init__(self, path: str, batch_size: int, seed: int, policy: VLAActorCriticPolicy) -> None:
        from vla_gym.data.dataset import DemoDataset

        self.dataset = DemoDataset(path, "train", in_memory=True)
        if len(self.dataset) == 0:
            raise ValueError(f"demo file {path!r} has no successful training frames for the BC term")
        wanted = _image_size(policy)
        if self.dataset.image_size != wanted:
            raise ValueError(
                f"bc_data {path!r} holds {self.dataset.image_size} px frames, but the policy takes {wanted} px "
                "observations; collect the demos with the env's image_size"
            )
        self.batch_size = batch_size
        self.rng = np.random.default_rng([seed, 1])
        self.device = policy.device
        self.rgb_channels_first = policy.features_extractor.rgb_channels_first
        self.depth_channels_first = policy.features_extractor.depth_channels_first

    def __call__(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(observations, expert actions (B, 4)) on the policy's device."""
        index = self.rng.integers(0, len(self.dataset), self.batch_size)
        batch = self.dataset.__getitems__(index)
        obs = {k: torch.as_tensor(batch[k], device=self.device) for k in ("rgb", "depth", "proprio", "instruction")}
        if self.rgb_channels_first:
            obs["rgb"] = obs["rgb"].permute(0, 3, 1, 2)
        if self.depth_channels_first:
            obs["depth"] = obs["depth"].permute(0, 3, 1, 2)
        return obs, torch.as_tensor(batch["action"], device=self.device)


class SuccessMemory:
    """The agent's own successful episodes from its rollouts, for the self-imitation term.

    Self-imitation (Oh et al., 2018, "Self-Imitation Learning", with PPO): besides the
    clipped surrogate, the policy maximises the likelihood of the actions it sampled in
    episodes that reached the goal. Whole episodes are kept per env while they run and
    stored if they end in success (``info["is_success"]``); the oldest are dropped past
    ``capacity`` frames. Held in RAM only: a resumed run starts with an empty memory.

    ``encode``, if given, maps a stored episode's stacked observations to what is kept
    instead of them (with a frozen trunk: its features, shape (T, features_dim)), so a
    sample costs no trunk forward pass and a frame takes a few KB, not an image's worth.
    """

    def __init__(self, n_envs: int, capacity: int, seed: int, device: torch.device,
                 encode: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None) -> None:
        self.capacity, self.device, self.encode = capacity, device, encode
        self.running: list[list[tuple[dict[str, np.ndarray], np.ndarray]]] = [[] for _ in range(n_envs)]
        self.frames: list[tuple[Any, np.ndarray]] = []  # stored episodes' frames, oldest first
        self.episode_lengths: deque[int] = deque()
        self.rng = np.random.default_rng([seed, 2])

    def __len__(self) -> int:
        return len(self.frames)

    def record(self, obs: dict[str, np.ndarray], actions: np.ndarray, dones: np.ndarray, infos: list[dict]) -> None:
        """One vectorised step: ``obs`` before it, the sampled ``actions``, and its outcome."""
        for i, trace in enumerate(self.running):
            trace.append(({k: np.array(v[i]) for k, v in obs.items()}, np.array(actions[i], dtype=np.float32)))
            if dones[i]:
                if infos[i].get("is_success"):
                    self._store(trace)
                self.running[i] = []

    def _store(self, trace: list[tuple[dict[str, np.ndarray], np.ndarray]]) -> None:
        if self.encode is not None:
            obs = {k: torch.as_tensor(np.stack([f[0][k] for f in trace]), device=self.device) for k in trace[0][0]}
            with torch.no_grad():
                encoded = self.encode(obs)
            trace = [(row, frame[1]) for row, frame in zip(encoded, trace)]
        self.frames.extend(trace)
        self.episode_lengths.append(len(trace))
        while len(self.frames) > self.capacity and len(self.episode_lengths) > 1:
            del self.frames[: self.episode_lengths.popleft()]

    def sample(self, batch_size: int) -> tuple[Any, torch.Tensor]:
        """``batch_size`` frames drawn uniformly: (observations, or their encodings (B, F), and
        actions (B, 4)) on the device."""
        picks = [self.frames[i] for i in self.rng.integers(0, len(self.frames), batch_size)]
        actions = torch.as_tensor(np.stack([f[1] for f in picks]), device=self.device)
        if self.encode is not None:
            return torch.stack([f[0] for f in picks]), actions
        obs = {k: torch.as_tensor(np.stack([f[0][k] for f in picks]), device=self.device) for k in picks[0][0]}
        return obs, actions


class VLAPPO(PPO):
    """SB3 PPO with a critic warm-up, a separate critic learning rate and an optional
    decaying behaviour-cloning term (see the module docstring).

    Args (besides PPO's):
        critic_lr_scale: critic learning rate / actor learning rate.
        trunk_lr_scale: learning rate of the shared trunk (the features extractor: vision,
            language, fusion) / actor learning rate; 0 freezes it.
        sil_coef, sil_capacity: weight of the self-imitation term (the NLL of the actions of
            the agent's own successful episodes, see :class:`SuccessMemory`) and how many of
            their frames are kept.
        critic_warmup_rollouts, critic_warmup_epochs: see :class:`PPOConfig`.
        bc_coef, bc_decay: weight of the BC term at the first PPO update, and its decay per update.
        demo_batches: ``() -> (obs, actions)`` for the BC term (needed by ``learn`` when
            ``bc_coef > 0``; it may be set after construction, once the policy exists).
        memory_seed: seeds the self-imitation memory's sampling (the run's training seed).
        aux_epochs, aux_lr, aux_batch_size, aux_target_coef, aux_attention_coef: the
            privileged auxiliary passes over each rollout (see :class:`PPOConfig`); they
            need a frozen trunk and envs wrapped in
            :class:`~vla_gym.agents.privileged.PrivilegedTargets`.

    With a frozen trunk the update computes the rollout's features once (no gradient) and
    runs every epoch on them, and the self-imitation memory keeps features, not frames: an
    epoch then costs the heads' forward and backward passes alone.
    """

    def __init__(
        self,
        *args: Any,
        critic_lr_scale: float = 10.0,
        trunk_lr_scale: float = 1.0,
        sil_coef: float = 0.0,
        sil_capacity: int = 8192,
        critic_warmup_rollouts: int = 2,
        critic_warmup_epochs: int = 10,
        bc_coef: float = 0.0,
        bc_decay: float = 0.9,
        demo_batches: Callable[[], tuple[dict[str, torch.Tensor], torch.Tensor]] | None = None,
        detach_critic: bool = False,
        memory_seed: int = 0,
        aux_epochs: int = 0,
        aux_lr: float = 3e-4,
        aux_batch_size: int = 128,
        aux_target_coef: float = 1.0,
        aux_attention_coef: float = 10.0,
        **kwargs: Any,
    ) -> None:
        self.memory_seed = memory_seed
        self.aux_epochs, self.aux_lr, self.aux_batch_size = aux_epochs, aux_lr, aux_batch_size
        self.aux_target_coef, self.aux_attention_coef = aux_target_coef, aux_attention_coef
        self.aux_optimizer: torch.optim.Optimizer | None = None
        self.privileged: PrivilegedRollout | None = None
        self.critic_lr_scale = critic_lr_scale
        self.trunk_lr_scale = trunk_lr_scale
        self.sil_coef = sil_coef
        self.sil_capacity = sil_capacity
        self.success_memory: SuccessMemory | None = None
        self.critic_warmup_rollouts = critic_warmup_rollouts
        self.critic_warmup_epochs = critic_warmup_epochs
        self.bc_coef = bc_coef
        self.bc_decay = bc_decay
        self.demo_batches = demo_batches
        self.detach_critic = detach_critic
        self.rollouts_trained = 0
        super().__init__(*args, **kwargs)

    @staticmethod
    def _wrap_env(env: Any, verbose: int = 0, monitor_wrapper: bool = True) -> VecEnv:
        """SB3's wrapping (``Monitor``, ``DummyVecEnv``) without ``VecTransposeImage``: the VLA
        network reads the env's channel-last images as they come (a channels-last view is
        what its conv trunk runs fastest on), so no rollout frame is transposed in numpy."""
        if not isinstance(env, VecEnv):
            if monitor_wrapper:
                env = Monitor(env)
            env = DummyVecEnv([lambda: env])
        check_for_nested_spaces(env.observation_space)
        return env

    def _setup_learn(self, *args: Any, **kwargs: Any):
        if self.bc_coef > 0 and self.demo_batches is None:
            raise ValueError("bc_coef > 0 needs demo_batches (a demo file) for the behaviour-cloning term")
        return super()._setup_learn(*args, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        check_aux_trunk(self.aux_epochs, self.trunk_lr_scale)
        if self.sil_coef > 0:
            # Features go stale once the auxiliary passes move the trunk: then keep frames.
            encode = self.policy.extract_features if self.trunk_frozen and not self.aux_epochs else None
            self.success_memory = SuccessMemory(self.n_envs, self.sil_capacity, self.memory_seed, self.device, encode)
        critic = {id(p) for p in critic_parameters(self.policy)}
        trunk = list(self.policy.features_extractor.parameters())
        if self.aux_epochs:  # PPO's losses see the trunk's features without gradient
            self.aux_optimizer = torch.optim.Adam(trunk, lr=self.aux_lr, eps=ADAM_EPS)
            self.privileged = PrivilegedRollout(self.n_steps, self.n_envs)
        elif self.trunk_lr_scale == 0:  # frozen: no gradient is even computed through it
            for param in trunk:
                param.requires_grad_(False)
        trunk_ids = {id(p) for p in trunk}
        lr = self.lr_schedule(1)
        groups = [
            {"params": [p for p in self.policy.parameters() if id(p) not in critic | trunk_ids], "lr": lr,
             "lr_scale": 1.0, "name": "actor"},
            {"params": critic_parameters(self.policy), "lr": lr * self.critic_lr_scale,
             "lr_scale": self.critic_lr_scale, "name": "critic"},
        ]
        if self.trunk_lr_scale > 0:
            groups.append({"params": trunk, "lr": lr * self.trunk_lr_scale, "lr_scale": self.trunk_lr_scale,
                           "name": "trunk"})
        self.policy.optimizer = self.policy.optimizer_class(groups, **self.policy.optimizer_kwargs)

    def _update_learning_rate(self, optimizers: Any) -> None:
        lr = self.lr_schedule(self._current_progress_remaining)
        self.logger.record("train/learning_rate", lr)
        self.logger.record("train/critic_learning_rate", lr * self.critic_lr_scale)
        for group in self.policy.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]

    @property
    def trunk_frozen(self) -> bool:
        return self.trunk_lr_scale == 0

    @property
    def in_critic_warmup(self) -> bool:
        return self.rollouts_trained < self.critic_warmup_rollouts

    def bc_weight(self) -> float:
        """Weight of the BC term at the next PPO update."""
        updates = max(self.rollouts_trained - self.critic_warmup_rollouts, 0)
        return self.bc_coef * self.bc_decay**updates

    def train(self) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        if self.in_critic_warmup:
            self._warm_up_critic()
        else:
            self._train_actor_critic()
        if self.aux_epochs:
            self._train_trunk_auxiliary()
        bad = next(non_finite_tensors(dict(self.policy.named_parameters()), "policy"), None)
        if bad is not None:
            raise NonFiniteError(
                f"PPO diverged: after update {self._n_updates}, {bad} holds NaN or inf "
                "(lower lr, critic_lr or the loss weights); the last saved checkpoint is kept"
            )
        self.rollouts_trained += 1
        self.logger.record("train/critic_warmup", float(self.in_critic_warmup))
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/std", torch.exp(self.policy.log_std).mean().item())
        self.logger.record(
            "train/explained_variance",
            explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten()),
        )

    def _warm_up_critic(self) -> None:
        """Regress the critic on this rollout's returns; the trunk's features are computed
        once without gradients, so the actor, trunk and log-std stay exactly as they are."""
        features, returns = [], []
        with torch.no_grad():
            for data in self.rollout_buffer.get(self.batch_size):
                features.append(self.policy.extract_features(data.observations))
                returns.append(data.returns)
        features, returns = torch.cat(features), torch.cat(returns)
        losses = []
        for _ in range(self.critic_warmup_epochs):
            for index in torch.randperm(len(returns), device=returns.device).split(self.batch_size):
                values = self.policy.value_net(self.policy.mlp_extractor.forward_critic(features[index])).flatten()
                loss = F.mse_loss(values, returns[index])
                self.policy.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(critic_parameters(self.policy), self.max_grad_norm)
                self.policy.optimizer.step()
                losses.append(loss.item())
        self._n_updates += self.critic_warmup_epochs
        self.logger.record("train/value_loss", float(np.mean(losses)))

    def _features(self, inputs: dict[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """The trunk's features (B, F) of observations, or ``inputs`` itself if they already
        are; with a frozen trunk no gradient reaches it."""
        if isinstance(inputs, torch.Tensor):
            return inputs
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.trunk_frozen):
            return self.policy.extract_features(inputs)

    def _rollout_frames(self) -> dict[str, torch.Tensor]:
        """The rollout's observations (n_steps * n_envs, ...) in the buffer's flattened order."""
        buffer = self.rollout_buffer
        out = {}
        for key, value in buffer.observations.items():
            if not buffer.generator_ready:  # (n_steps, n_envs, ...) -> env-major, as SB3 flattens
                value = value.swapaxes(0, 1).reshape(-1, *value.shape[2:])
            out[key] = torch.as_tensor(value, device=self.device)
        return out

    def _train_trunk_auxiliary(self) -> None:
        """``aux_epochs`` passes of the privileged auxiliary losses over the rollout's frames,
        stepping the trunk's own optimizer (the heads and the critic are not touched)."""
        frames = self._rollout_frames()
        targets = torch.as_tensor(self.privileged.flat(), device=self.device)
        usable = valid_targets(targets).nonzero().flatten()
        extractor, trunk = self.policy.features_extractor, self.aux_optimizer.param_groups[0]["params"]
        logs: dict[str, list[float]] = {"target": [], "attention": []}
        self.logger.record("train/aux_frames_dropped", 1.0 - len(usable) / len(targets))
        for _ in range(self.aux_epochs if len(usable) else 0):
            for index in usable[torch.randperm(len(usable), device=self.device)].split(self.aux_batch_size):
                obs = {k: v[index] for k, v in frames.items()}
                with extractor.keeping_auxiliary():
                    extractor(obs)
                offset_loss, where_loss = auxiliary_losses(
                    extractor.pop_auxiliary(), *rollout_labels(targets[index], obs["proprio"][:, :3])
                )
                loss = self.aux_target_coef * offset_loss + self.aux_attention_coef * where_loss
                self.aux_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trunk, self.max_grad_norm)
                self.aux_optimizer.step()
                logs["target"].append(offset_loss.item())
                logs["attention"].append(where_loss.item())
        if logs["target"]:
            self.logger.record("train/aux_target_loss", float(np.mean(logs["target"])))
            self.logger.record("train/aux_attention_loss", float(np.mean(logs["attention"])))

    def _evaluate_actions(self, inputs, actions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SB3's ``evaluate_actions`` on observations or precomputed features; with
        ``detach_critic`` the value loss stops at the trunk."""
        features = self._features(inputs)
        policy = self.policy
        distribution = policy._get_action_dist_from_latent(policy.mlp_extractor.forward_actor(features))
        critic_input = features.detach() if self.detach_critic else features
        values = policy.value_net(policy.mlp_extractor.forward_critic(critic_input))
        return values, distribution.log_prob(actions), distribution.entropy()

    def _imitation_nll(self, inputs, actions: torch.Tensor) -> torch.Tensor:
        """Per-dimension NLL of ``actions`` (B, 4) under the policy, from observations or
        features: the BC and self-imitation terms."""
        features = self._features(inputs)
        distribution = self.policy._get_action_dist_from_latent(self.policy.mlp_extractor.forward_actor(features))
        return -distribution.log_prob(actions).mean() / actions.shape[1]

    def _minibatches(self) -> Any:
        """Per epoch, an iterator over the rollout's minibatches (SB3's ``RolloutBufferSamples``).
        With a frozen trunk their ``observations`` are the features, computed once here."""
        if not self.trunk_frozen:
            for _ in range(self.n_epochs):
                yield self.rollout_buffer.get(self.batch_size)
            return
        whole = next(self.rollout_buffer.get(None))
        with torch.no_grad():
            chunks = torch.arange(len(whole.actions), device=self.device).split(self.batch_size)
            features = torch.cat([self.policy.extract_features({k: v[i] for k, v in whole.observations.items()})
                                  for i in chunks])
        whole = whole._replace(observations=features)
        for _ in range(self.n_epochs):
            order = torch.randperm(len(features), device=self.device).split(self.batch_size)
            yield (type(whole)(*(field[i] for field in whole)) for i in order)

    def _train_actor_critic(self) -> None:
        """SB3's PPO update (clipped surrogate, value loss, entropy, KL early stop) plus the BC term."""
        clip_range = self.clip_range(self._current_progress_remaining)
        bc_weight = self.bc_weight()
        logs: dict[str, list[float]] = {k: [] for k in ("pg", "value", "entropy", "clip", "kl", "bc", "sil")}
        continue_training = True
        for epoch, minibatches in enumerate(self._minibatches()):
            for data in minibatches:
                values, log_prob, entropy = self._evaluate_actions(data.observations, data.actions)
                advantages = data.advantages
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                log_ratio = log_prob - data.old_log_prob
                ratio = torch.exp(log_ratio)
                policy_loss = -torch.min(
                    advantages * ratio, advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
                ).mean()
                value_loss = F.mse_loss(data.returns, values.flatten())
                entropy_loss = -torch.mean(entropy) if entropy is not None else torch.mean(log_prob)
                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                if bc_weight > 0:
                    bc_loss = self._imitation_nll(*self.demo_batches())
                    loss = loss + bc_weight * bc_loss
                    logs["bc"].append(bc_loss.item())
                memory = self.success_memory
                if memory is not None and len(memory) >= self.batch_size:
                    sil_loss = self._imitation_nll(*memory.sample(self.batch_size))
                    loss = loss + self.sil_coef * sil_loss
                    logs["sil"].append(sil_loss.item())
                with torch.no_grad():
                    approx_kl = torch.mean((ratio - 1) - log_ratio).item()
                logs["kl"].append(approx_kl)
                if self.target_kl is not None and approx_kl > 1.5 * self.target_kl:
                    continue_training = False
                    break
                logs["pg"].append(policy_loss.item())
                logs["value"].append(value_loss.item())
                logs["entropy"].append(entropy_loss.item())
                logs["clip"].append(torch.mean((torch.abs(ratio - 1) > clip_range).float()).item())
                self.policy.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
            self._n_updates += 1
            if not continue_training:
                break
        for key, name in (("pg", "policy_gradient_loss"), ("value", "value_loss"), ("entropy", "entropy_loss"),
                          ("clip", "clip_fraction"), ("kl", "approx_kl"), ("bc", "bc_loss"), ("sil", "sil_loss")):
            if logs[key]:
                self.logger.record(f"train/{name}", float(np.mean(logs[key])))
        self.logger.record("train/bc_weight", bc_weight)
        if self.success_memory is not None:
            self.logger.record("train/sil_frames", len(self.success_memory))
        self.logger.record("train/epochs_done", epoch + 1)
        self.logger.record("train/clip_range", clip_range)


class _EvalAndCheckpoint(BaseCallback):
    """Evaluates on fixed held-out seeds (at the start, every ``eval_every`` env steps and
    at the end), logs ``eval/*``, keeps the best policy and saves ``last.pt``."""

    def __init__(self, trainer: "_Trainer") -> None:
        super().__init__()
        self.trainer = trainer
        self.rollouts_since_save = 0
        self.bar = None
        self.train_start: float | None = None
        self.task_outcomes: dict[str, deque[bool]] = {}  # each task's last training episodes
        self.steps_at_start = 0
        self.eval_at_start = 0.0

    def _on_training_start(self) -> None:
        if self.model.privileged is not None:
            self.model.privileged.start(self.training_env.reset_infos)
        if self.trainer.config.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.trainer.config.timesteps, initial=self.num_timesteps, desc="ppo", unit="step")
        if not self.trainer.history:
            self.trainer.evaluate()  # the level PPO starts from
        self.train_start, self.steps_at_start = time.perf_counter(), self.num_timesteps
        self.eval_at_start = self.trainer.eval_seconds

    def _on_rollout_start(self) -> None:
        trainer = self.trainer
        last = trainer.history[-1]["timesteps"] if trainer.history else -1
        if trainer.config.eval_every and self.num_timesteps - last >= trainer.config.eval_every:
            trainer.evaluate()
        self.rollouts_since_save += 1
        if self.rollouts_since_save >= trainer.config.checkpoint_every:
            trainer.save_last()
            self.rollouts_since_save = 0

    def _on_rollout_end(self) -> None:
        """Env steps per second of training so far (rollouts and updates; evaluations,
        worker start-up and checkpoint writes excluded), logged with the rollout's scalars."""
        trainer = self.trainer
        if self.train_start is None:
            return
        elapsed = time.perf_counter() - self.train_start - (trainer.eval_seconds - self.eval_at_start)
        steps = self.num_timesteps - self.steps_at_start
        if elapsed > 0 and steps > 0:
            self.logger.record("time/env_steps_per_second", steps / elapsed)
        if len(self.task_outcomes) > 1:
            for task, outcomes in sorted(self.task_outcomes.items()):
                self.logger.record(f"rollout/success_rate/{task}", float(np.mean(outcomes)))

    def _on_step(self) -> bool:
        model = self.model
        for done, info in zip(self.locals["dones"], self.locals["infos"]):
            if done and "task" in info:
                outcomes = self.task_outcomes.setdefault(info["task"], deque(maxlen=TASK_SUCCESS_WINDOW))
                outcomes.append(bool(info.get("is_success")))
        if model.privileged is not None:
            model.privileged.record(
                model.rollout_buffer.pos, self.locals["dones"], self.locals["infos"], self.training_env.reset_infos
            )
        if model.success_memory is not None:
            model.success_memory.record(model._last_obs, self.locals["actions"], self.locals["dones"], self.locals["infos"])
        if self.bar is not None:
            self.bar.update(self.training_env.num_envs)
            if self.trainer.history:
                self.bar.set_postfix(eval_success=f"{self.trainer.history[-1]['success_rate']:.0%}", refresh=False)
        return True

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if not self.trainer.history or self.trainer.history[-1]["timesteps"] != self.num_timesteps:
            self.trainer.evaluate()
        self.trainer.save_last()


class _Trainer:
    """The state of one run: model, eval env, history, best; saves and evaluates."""

    def __init__(self, config: PPOConfig) -> None:
        self.config = config
        self.out = Path(config.out)
        self.device = resolve_device(config.device)
        self.last_path, self.policy_path = self.out / "last.pt", self.out / "policy.pt"
        self.env_args = make_env_args(config.env_id, config.env_kwargs)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.eval_seconds = 0.0
        self.init_meta: dict[str, Any] | None = None
        state = None
        if config.resume and self.last_path.exists():
            state = read_checkpoint(self.last_path, map_location=self.device)
            _check_resumable(self.last_path, state, config)
        init_policy = None
        if config.init is not None:
            init_policy = load_policy(config.init, device=self.device)
            self.init_meta = init_policy.checkpoint_meta
            _check_observations(config.init, init_policy, self.env_args)
            # Words the vocabulary lacks read as <unk>: fine-tuning could never learn them.
            check_task_vocabulary(
                config.init, init_policy.network_config, self.env_args["env_config"]["tasks"],
                env_name=self.env_args["env_name"], strict=True,
            )
            network = self.init_meta["network"]
        elif state is not None:  # the resumed run's own network (vocabulary included)
            network = state["meta"]["network"]
        else:
            network = config.network or NetworkConfig().to_dict()
        set_random_seed(config.seed, using_cuda=self.device.type == "cuda")
        start = int(state["meta"]["timesteps"]) if state else 0
        self.env = _make_vec_env(config, _train_env_seed(config.seed, start))
        model_kwargs = dict(
            learning_rate=config.lr, n_steps=config.n_steps, batch_size=config.batch_size, n_epochs=config.n_epochs,
            gamma=config.gamma, gae_lambda=config.gae_lambda, clip_range=config.clip_range,
            ent_coef=config.ent_coef, vf_coef=config.vf_coef, max_grad_norm=config.max_grad_norm,
            target_kl=config.target_kl, tensorboard_log=str(self.out / "tb"), device=self.device, verbose=0,
            policy_kwargs={"network": network, "ortho_init": False, "optimizer_kwargs": {"eps": ADAM_EPS}},
            critic_lr_scale=config.critic_lr / config.lr, trunk_lr_scale=config.trunk_lr_scale,
            sil_coef=config.sil_coef, sil_capacity=config.sil_capacity,
            critic_warmup_rollouts=config.critic_warmup_rollouts,
            critic_warmup_epochs=config.critic_warmup_epochs, bc_coef=config.bc_coef, bc_decay=config.bc_decay,
            detach_critic=config.detach_critic, memory_seed=config.seed, aux_epochs=config.aux_epochs,
            aux_lr=config.aux_lr, aux_batch_size=config.aux_batch_size, aux_target_coef=config.aux_target_coef,
            aux_attention_coef=config.aux_attention_coef,
        )
        try:
            self.model = VLAPPO(VLAActorCriticPolicy, self.env, **model_kwargs)
            self.network = self.model.policy.network_config.to_dict()  # a sentence encoder's size filled in
            if config.bc_coef > 0:
                self.model.demo_batches = DemoBatches(self._bc_data(), config.bc_batch_size, config.seed, self.model.policy)
            if state is not None:
                self._restore(state)
            elif init_policy is not None:
                self.model.policy.load_state_dict(init_policy.state_dict())
                if config.start_log_std is not None:
                    with torch.no_grad():
                        self.model.policy.log_std.fill_(config.start_log_std)
        except BaseException:
            self.env.close()
            raise
        self.eval_env = gym.make(config.env_id, **(config.env_kwargs or {}))

    def _bc_data(self) -> str:
        if self.config.bc_data is not None:
            return self.config.bc_data
        data = (self.init_meta or {}).get("bc", {}).get("data")
        if not data:
            raise ValueError("bc_coef > 0 needs bc_data: a demo file (the init checkpoint names none)")
        return data

    def meta(self) -> dict[str, Any]:
        model = self.model
        return {
            "env": self.env_args,
            "network": self.network,
            "ppo": self.config.to_dict(),
            "init": self.config.init,
            "bc": (self.init_meta or {}).get("bc"),
            "timesteps": int(model.num_timesteps),
            "n_updates": int(model._n_updates),
            "rollouts_trained": int(model.rollouts_trained),
            "history": self.history,
            "best": self.best,
            "demo_rng": model.demo_batches.rng.bit_generator.state if isinstance(model.demo_batches, DemoBatches) else None,
        }

    def save_last(self) -> None:
        extra = {"aux_optimizer": self.model.aux_optimizer.state_dict()} if self.model.aux_optimizer else {}
        save_checkpoint(
            self.last_path, self.model.policy, self.meta(),
            optimizer=self.model.policy.optimizer.state_dict(), torch_rng=torch.get_rng_state(), **extra,
        )

    def _restore(self, state: dict[str, Any]) -> None:
        meta, model = state["meta"], self.model
        model.policy.load_state_dict(state["policy"])
        model.policy.optimizer.load_state_dict(state["optimizer"])
        if model.aux_optimizer is not None:
            model.aux_optimizer.load_state_dict(state["aux_optimizer"])
        torch.set_rng_state(state["torch_rng"].cpu())
        model.num_timesteps = int(meta["timesteps"])
        model._n_updates = int(meta["n_updates"])
        model.rollouts_trained = int(meta["rollouts_trained"])
        self.history, self.best = meta["history"], meta["best"]
        if meta.get("demo_rng") and isinstance(model.demo_batches, DemoBatches):
            model.demo_batches.rng.bit_generator.state = meta["demo_rng"]

    def evaluate(self) -> dict[str, Any]:
        """Deterministic success rate on the fixed eval seeds; logs it and keeps the best policy."""
        from vla_gym.evaluation import evaluate

        config, model = self.config, self.model
        start = time.perf_counter()
        seeds = range(config.eval_seed, config.eval_seed + config.eval_episodes)
        try:
            result = evaluate(self.eval_env, lambda _: model.policy, seeds)
        finally:
            model.policy.set_training_mode(False)
        low, high = result.interval
        record = {
            "timesteps": int(model.num_timesteps), "success_rate": result.success_rate, "ci_low": low, "ci_high": high,
            "mean_length": result.mean_length, "episodes": result.episodes, "successes": result.successes,
            "critic_warmup": bool(model.in_critic_warmup),
            "rollout_success_rate": float(np.mean(model.ep_success_buffer)) if model.ep_success_buffer else None, "log_std": model.policy.log_std.detach().cpu().tolist(),
        }
        per_task = result.per_task_stats()
        if len(per_task) > 1:  # a multi-task env: each task's success too
            record["per_task"] = {task: cell["success_rate"] for task, cell in per_task.items()}
        self.history.append(record)
        if _better(record, self.best):
            self.best = {k: v for k, v in record.items() if k != "log_std"}
            save_checkpoint(self.policy_path, model.policy, self.meta())
        append_jsonl(self.out / "metrics.jsonl", record)
        model.logger.record("eval/success_rate", record["success_rate"])
        model.logger.record("eval/mean_length", record["mean_length"])
        for task, rate in record.get("per_task", {}).items():
            model.logger.record(f"eval/success_rate/{task}", rate)
        model.logger.dump(model.num_timesteps)
        self.eval_seconds += time.perf_counter() - start
        if config.progress:
            from tqdm.auto import tqdm

            tqdm.write(
                f"step {record['timesteps']}: eval success {record['success_rate']:.1%} "
                f"({low:.1%}-{high:.1%}), mean length {record['mean_length']:.1f}"
            )
        return record

    def close(self) -> None:
        self.env.close()
        self.eval_env.close()


def train_ppo(config: PPOConfig, before_learn: Callable[[VLAPPO], None] | None = None) -> PPOResult:
    """Fine-tune (or train) the VLA actor-critic with PPO; see the module docstring for outputs.

    ``before_learn(model)``, if given, runs once the weights are in place (from the BC
    checkpoint or the resumed ``last.pt``) and before the first evaluation: a seam to add
    callbacks' state or to perturb the model (``benchmarks/ppo_handover.py`` uses it to
    reproduce the hand-over failures these defaults avoid).
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    trainer = _Trainer(config)
    atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    model = trainer.model
    callback = _EvalAndCheckpoint(trainer)
    try:
        if before_learn is not None:
            before_learn(model)
        start_steps, start = model.num_timesteps, time.perf_counter()
        remaining = config.timesteps - model.num_timesteps
        if remaining > 0:
            model.learn(remaining, callback=callback, reset_num_timesteps=False, tb_log_name="ppo")
        elif not trainer.history:
            model._setup_learn(0, None, reset_num_timesteps=False, tb_log_name="ppo")
            trainer.evaluate()
    except KeyboardInterrupt:
        trainer.save_last()  # the weights and optimizer are consistent here: resume continues
        raise
    finally:
        if callback.bar is not None:
            callback.bar.close()
        trainer.close()
    total = time.perf_counter() - start
    train_seconds = max(total - trainer.eval_seconds, 1e-9)
    done = model.num_timesteps - start_steps
    return PPOResult(
        str(trainer.policy_path), str(trainer.last_path), int(model.num_timesteps),
        done / train_seconds if done else float("nan"), train_seconds, trainer.eval_seconds,
        trainer.history, trainer.best,
    )


def _make_vec_env(config: PPOConfig, seed: int):
    kind = config.vec_env
    if kind == "auto":
        kind = "subproc" if config.n_envs > 1 else "dummy"
    shaping = {"shaping": config.shaping, "gamma": config.gamma} if config.shaping else {}
    privileged = {"privileged": True} if config.aux_epochs else {}
    return make_vec_env(
        _make_env, n_envs=config.n_envs, seed=seed,
        env_kwargs={"env_id": config.env_id, "env_kwargs": config.env_kwargs or {}, **shaping, **privileged},
        vec_env_cls=SubprocVecEnv if kind == "subproc" else DummyVecEnv,
    )


def _make_env(
    env_id: str, env_kwargs: dict[str, Any], shaping: float = 0.0, gamma: float = 0.99, privileged: bool = False
) -> gym.Env:
    """Env factory for the vectorised envs; importing vla_gym registers the ids in worker processes."""
    importlib.import_module("vla_gym")
    env = gym.make(env_id, **env_kwargs)
    if privileged:
        env = PrivilegedTargets(env)
    if shaping:
        from vla_gym.agents.shaping import PotentialShaping

        env = PotentialShaping(env, shaping, gamma)
    return env


def _train_env_seed(seed: int, timesteps: int) -> int:
    """First seed of the training envs; a resumed run gets new episodes, not a replay."""
    return TRAIN_SEED + int(np.random.SeedSequence([seed, timesteps]).generate_state(1)[0] % 1_000_000_000)


def _check_observations(path: str, policy: VLAActorCriticPolicy, env_args: dict[str, Any]) -> None:
    from vla_gym.envs.spaces import make_observation_space

    wanted = {k: s.shape for k, s in policy.observation_space.spaces.items()}
    given = {k: s.shape for k, s in make_observation_space(env_args["env_config"]["image_size"]).spaces.items()}
    if wanted != given:
        raise CheckpointError(
            f"checkpoint {path!r} was trained on observations shaped {wanted}, but {env_args['env_name']} with "
            f"{env_args['env_kwargs']} gives {given}"
        )


def _check_resumable(path: Path, state: dict[str, Any], config: PPOConfig) -> None:
    """``state`` must be a PPO ``last.pt`` made with ``config`` (up to :data:`RESUMABLE_CHANGES`)."""
    check_training_state(
        path, state, "ppo", config.to_dict(), meta_keys=TRAINING_META_KEYS,
        state_keys=TRAINING_STATE_KEYS + (("aux_optimizer",) if config.aux_epochs else ()),
        may_change=RESUMABLE_CHANGES, guess="a train-bc run directory?",
        remedy="resume a train-ppo run directory, or start PPO into a new out directory",
    )


def _image_size(policy: VLAActorCriticPolicy) -> int:
    """Side (px) of the rgb observations ``policy`` takes (channel-first or channel-last)."""
    shape = policy.observation_space["rgb"].shape
    return int(shape[1] if policy.features_extractor.rgb_channels_first else shape[0])


def _better(record: dict[str, Any], best: dict[str, Any]) -> bool:
    """Higher eval success wins; at equal success, shorter episodes (PPO optimises speed)."""
    if not best:
        return True
    if record["success_rate"] != best["success_rate"]:
        return record["success_rate"] > best["success_rate"]
    return record["mean_length"] < best["mean_length"]
