"""Privileged auxiliary losses: what the trunk learns from the simulator's state, in BC and in PPO.

Besides the action, BC teaches the shared trunk two things it can only be told in
simulation: the goal object's offset from the gripper (``target_head`` on the fused
features) and where the goal object is in the image (the first head of the
instruction-to-pixel attention). :func:`auxiliary_losses` computes both; BC adds them to
its loss on demo frames.

PPO can use the very same losses on its own rollout frames (``PPOConfig.aux_epochs``):
:class:`PrivilegedTargets` adds the goal object's position and image coordinates to each
step's ``info``, :class:`PrivilegedRollout` lines them up with the rollout buffer's
observations, and after each PPO update the trunk takes ``aux_epochs`` passes of these
losses over the rollout while PPO's own gradient trains only the heads.

Why (benchmarks/RESULTS.md, "PPO from a weak BC start"): from a weak BC start (1000 demos,
3 epochs) three more epochs of BC with the trunk frozen reached 64 % success, with the
trunk trained by these two losses alone (the heads by BC) 88 %, and the whole network 90 %:
the weak policy's trunk does not localise the named object precisely enough, and a
policy-gradient step through the trunk loses the grounding. The auxiliary losses refine the
localisation on the states the policy itself visits, with a signal that cannot drift onto
another object.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from vla_gym.agents.network import TARGET_OFFSET_SCALE

#: ``info`` key of :class:`PrivilegedTargets`: float32 (10,): the centre (x, y, z) in metres
#: of the object the current subgoal moves, then its image coordinates (u, v) in [-1, 1] in
#: the agent camera; then the same for where that centre must go (``Task.goal_points``).
INFO_KEY = "privileged_target"
PRIVILEGED_DIM = 10
#: A target below this height (m; the table top is at z = 0) has fallen off the table: a
#: label no demo holds (metres away, growing as it falls), so such frames are left out.
MIN_TARGET_HEIGHT = -0.01


def valid_targets(targets: torch.Tensor) -> torch.Tensor:
    """Bool mask (B,) of privileged targets (B, 10) fit to learn from: the object to move on
    or above the table and inside the camera image."""
    return (targets[:, 2] >= MIN_TARGET_HEIGHT) & (targets[:, 3:5].abs() <= 1.0).all(dim=1)


def valid_destinations(targets: torch.Tensor) -> torch.Tensor:
    """Bool mask (B,) of privileged targets (B, 10) whose destination is inside the camera image."""
    return (targets[:, 8:10].abs() <= 1.0).all(dim=1)


def rollout_labels(
    targets: torch.Tensor, ee: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`auxiliary_losses`' labels from privileged targets (B, 10) and the end-effector
    positions (B, 3): the object's offset from the end effector (m), its image coordinates, and
    the destination's (offset, image coordinates, mask of destinations inside the image)."""
    destination = (targets[:, 5:8] - ee, targets[:, 8:10], valid_destinations(targets))
    return targets[:, :3] - ee, targets[:, 3:5], destination


def auxiliary_losses(
    aux: dict[str, torch.Tensor],
    target_offset: torch.Tensor,
    target_uv: torch.Tensor,
    destination: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(offset loss, attention loss) of one batch: mean squared errors.

    With a destination read-out (``aux`` holds ``destination_offset``: the network's
    ``destination_head``) and ``destination`` labels, each loss also gets the destination's
    term, averaged over the frames whose mask is 1: the offset read-out's, and the second
    attention head's (if the network has one).

    Args:
        aux: the features extractor's auxiliary outputs (``pop_auxiliary``): ``target_offset``
            (B, 3) in units of :data:`TARGET_OFFSET_SCALE`, ``where`` (B, heads, 2), and
            optionally ``destination_offset`` (B, 3).
        target_offset: the centre of the object to move minus the end-effector position (B, 3), metres.
        target_uv: that centre's image coordinates (B, 2) in [-1, 1].
        destination: where the object must go, as (offset from the end effector (B, 3) m,
            image coordinates (B, 2), mask (B,) of frames that have one).
    """
    offset_loss = F.mse_loss(aux["target_offset"].float(), target_offset.float() / TARGET_OFFSET_SCALE)
    if "plane_offset" in aux:  # the fovea's table-plane estimate of the same offset, across the table
        offset_loss = offset_loss + F.mse_loss(aux["plane_offset"].float(), target_offset[:, :2].float() / TARGET_OFFSET_SCALE)
    where_loss = F.mse_loss(aux["where"][:, 0].float(), target_uv.float())
    if "where_fine" in aux:  # the fovea's estimate of the same point
        where_loss = where_loss + F.mse_loss(aux["where_fine"].float(), target_uv.float())
    if destination is None or "destination_offset" not in aux:
        return offset_loss, where_loss
    offset, uv, mask = (t.float() for t in destination)
    weights = mask / mask.sum().clamp_min(1.0)
    offset_error = (aux["destination_offset"].float() - offset / TARGET_OFFSET_SCALE) ** 2
    offset_loss = offset_loss + (offset_error.mean(dim=1) * weights).sum()
    if aux["where"].shape[1] > 1:
        where_error = (aux["where"][:, 1].float() - uv) ** 2
        where_loss = where_loss + (where_error.mean(dim=1) * weights).sum()
    return offset_loss, where_loss


class PrivilegedTargets(gym.Wrapper):
    """Adds ``info["privileged_target"]`` (see :data:`INFO_KEY`) at reset and at every step:
    the current subgoal's object and destination in the observation just returned. For
    training only: the policy never sees it."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        if not hasattr(env.unwrapped, "goal_points"):
            raise TypeError(f"{env.unwrapped!r} has no goal_points(): privileged targets need a vla_gym tabletop env")
        self.image_size = int(env.observation_space["rgb"].shape[0])

    def _target(self) -> np.ndarray:
        from vla_gym.data.dataset import image_coordinates

        base = self.env.unwrapped
        points = np.asarray(base.goal_points(), dtype=np.float32)  # (2, 3): object, destination
        uv = image_coordinates(points, self.image_size, base.agent_camera)
        return np.concatenate([points, uv], axis=1).reshape(-1).astype(np.float32)

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, INFO_KEY: self._target()}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, INFO_KEY: self._target()}


class PrivilegedRollout:
    """The privileged targets of a rollout's observations, shape (n_steps, n_envs, 10), in the
    rollout buffer's order.

    ``info`` after a step describes the observation that step returned; after an episode's
    last step that observation is the next episode's first, whose targets are in the
    VecEnv's ``reset_infos``.
    """

    def __init__(self, n_steps: int, n_envs: int) -> None:
        self.rows = np.zeros((n_steps, n_envs, PRIVILEGED_DIM), dtype=np.float32)
        self.current: np.ndarray | None = None  # (n_envs, 10): of the observation about to be acted on

    def start(self, reset_infos: list[dict[str, Any]]) -> None:
        """Targets of the observations from the VecEnv's reset."""
        self.current = np.stack([_targets_of(info) for info in reset_infos])

    def record(self, index: int, dones: np.ndarray, infos: list[dict], reset_infos: list[dict]) -> None:
        """One vectorised step, stored at buffer row ``index`` (the observation acted on)."""
        if self.current is None:
            raise RuntimeError("PrivilegedRollout.start() must see the VecEnv's reset infos first")
        self.rows[index] = self.current
        self.current = np.stack([
            _targets_of(reset_infos[i] if done else info) for i, (done, info) in enumerate(zip(dones, infos))
        ])

    def flat(self) -> np.ndarray:
        """(n_steps * n_envs, 10), ordered as SB3's buffer flattens its arrays (env-major)."""
        return self.rows.swapaxes(0, 1).reshape(-1, PRIVILEGED_DIM)


def _targets_of(info: dict[str, Any]) -> np.ndarray:
    try:
        return np.asarray(info[INFO_KEY], dtype=np.float32)
    except KeyError:
        raise KeyError(
            f"step info lacks {INFO_KEY!r}: the training envs must be wrapped in PrivilegedTargets "
            "for PPO's auxiliary losses"
        ) from None
