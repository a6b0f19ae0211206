"""Privileged auxiliary losses: the env's goal labels, their alignment with the rollout, and PPO's trunk passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vla_gym.agents.checkpoint import load_policy, read_checkpoint
from vla_gym.agents.network import TARGET_OFFSET_SCALE
from vla_gym.agents.ppo import PPOConfig, _Trainer, train_ppo
from vla_gym.agents.privileged import (
    INFO_KEY,
    MIN_TARGET_HEIGHT,
    PRIVILEGED_DIM,
    PrivilegedRollout,
    PrivilegedTargets,
    auxiliary_losses,
    valid_destinations,
    valid_targets,
)
from vla_gym.data.dataset import image_coordinates
from vla_gym.envs import ENV_IDS

from tests.test_ppo import ROLLOUT, tiny_ppo


@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_privileged_targets_name_the_subgoal_object_and_destination_of_each_observation(make_env, env_id):
    env = PrivilegedTargets(make_env(env_id))
    _, info = env.reset(seed=3)
    base = env.unwrapped
    for step in range(4):
        target = info[INFO_KEY]
        assert target.shape == (PRIVILEGED_DIM,) and target.dtype == np.float32
        points = base.goal_points()
        if base.task.name != "rearrange":  # rearrange's first subgoal object may be another role
            np.testing.assert_allclose(points[0], base.role_position("target"), atol=1e-6)
        for row, point in enumerate(points):
            np.testing.assert_allclose(target[5 * row: 5 * row + 3], point, atol=1e-6)
            uv = image_coordinates(point, 84, base.agent_camera)
            np.testing.assert_allclose(target[5 * row + 3: 5 * row + 5], uv, atol=1e-6)
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            break


def test_privileged_targets_follow_the_camera_under_jitter(make_env):
    env = PrivilegedTargets(make_env("VLAPick-v0", camera_jitter=(0.03, 3.0)))
    uvs = [env.reset(seed=s)[1][INFO_KEY][3:5] for s in (0, 0, 1)]
    np.testing.assert_array_equal(uvs[0], uvs[1])
    camera = env.unwrapped.agent_camera
    np.testing.assert_allclose(uvs[2], image_coordinates(env.unwrapped.role_position("target"), 84, camera), atol=1e-6)


def test_privileged_rollout_lines_targets_up_with_the_observation_acted_on():
    """After an episode's last step the next observation is the new episode's first: its
    targets come from the VecEnv's reset infos, not from the terminal step's info."""
    rollout = PrivilegedRollout(n_steps=3, n_envs=2)
    label = lambda v: {INFO_KEY: np.full(PRIVILEGED_DIM, v, np.float32)}  # noqa: E731
    rollout.start([label(0), label(100)])
    rollout.record(0, np.array([False, True]), [label(1), label(101)], [label(-1), label(200)])
    rollout.record(1, np.array([True, False]), [label(2), label(201)], [label(300), label(-1)])
    rollout.record(2, np.array([False, False]), [label(301), label(202)], [label(-1), label(-1)])
    assert rollout.rows[:, :, 0].tolist() == [[0, 100], [1, 200], [300, 201]]
    assert rollout.flat()[:, 0].tolist() == [0, 1, 300, 100, 200, 201]  # env-major, as SB3's buffer
    with pytest.raises(KeyError, match="PrivilegedTargets"):
        rollout.record(0, np.array([False, False]), [{}, {}], [{}, {}])


def test_privileged_rollout_needs_the_reset_infos_first():
    with pytest.raises(RuntimeError, match="start"):
        PrivilegedRollout(1, 1).record(0, np.array([False]), [{INFO_KEY: np.zeros(PRIVILEGED_DIM)}], [{}])


def test_targets_off_the_table_or_out_of_view_are_not_learned_from():
    destination = [0.4, 0.1, 0.03, 0.0, 0.5]
    targets = torch.tensor([
        [0.5, 0.0, 0.025, 0.1, -0.2, *destination],  # on the table, in view
        [0.5, 0.0, MIN_TARGET_HEIGHT - 0.5, 0.1, 0.2, *destination],  # fell off the table
        [0.5, 0.0, 0.025, 1.3, 0.0, *destination],  # out of the image
        [0.5, 0.0, 0.025, 0.1, -0.2, 0.4, 0.1, 0.03, 0.0, -1.2],  # its destination out of the image
    ])
    assert valid_targets(targets).tolist() == [True, False, False, True]
    assert valid_destinations(targets).tolist() == [True, True, True, False]


def test_auxiliary_losses_are_zero_on_exact_predictions_and_scale_the_offset():
    offset = torch.tensor([[0.05, -0.02, 0.1]])
    uv = torch.tensor([[0.3, -0.4]])
    aux = {"target_offset": offset / TARGET_OFFSET_SCALE, "where": torch.stack([uv, uv + 1], dim=1)}
    assert [x.item() for x in auxiliary_losses(aux, offset, uv)] == [0.0, 0.0]
    aux["target_offset"] = aux["target_offset"] + 1.0
    assert auxiliary_losses(aux, offset, uv)[0].item() == pytest.approx(1.0)


def test_destination_terms_supervise_the_second_read_out_and_head_on_masked_frames():
    offset, uv = torch.zeros(2, 3), torch.zeros(2, 2)
    dest_offset = torch.tensor([[0.1, 0.0, 0.0], [0.2, 0.0, 0.0]])
    dest_uv = torch.tensor([[0.5, 0.5], [-0.5, 0.5]])
    aux = {
        "target_offset": torch.zeros(2, 3),
        "destination_offset": dest_offset / TARGET_OFFSET_SCALE,
        "where": torch.stack([uv, dest_uv], dim=1),
    }
    both_known = (dest_offset, dest_uv, torch.ones(2))
    assert [x.item() for x in auxiliary_losses(aux, offset, uv, both_known)] == [0.0, 0.0]
    aux["destination_offset"] = aux["destination_offset"] + torch.tensor([[0.0], [3.0]])
    aux["where"] = aux["where"] + torch.tensor([0.0, 1.0])[None, :, None] * torch.tensor([[0.0], [2.0]])[:, :, None]
    only_first = (dest_offset, dest_uv, torch.tensor([1.0, 0.0]))
    assert [x.item() for x in auxiliary_losses(aux, offset, uv, only_first)] == [0.0, 0.0]  # frame 1 masked out
    offset_loss, where_loss = auxiliary_losses(aux, offset, uv, both_known)
    assert offset_loss.item() == pytest.approx(9.0 / 2) and where_loss.item() == pytest.approx(4.0 / 2)
    without_head = {k: v for k, v in aux.items() if k != "destination_offset"}  # destination_head=False
    assert [x.item() for x in auxiliary_losses(without_head, offset, uv, both_known)] == [0.0, 0.0]


def test_aux_passes_need_a_frozen_trunk(bc_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="needs trunk_lr_scale=0"):
        tiny_ppo(bc_checkpoint, tmp_path, aux_epochs=1, trunk_lr_scale=1.0)
    with pytest.raises(ValueError, match=r"aux_epochs must be an int in \[0, 1000\]"):
        tiny_ppo(bc_checkpoint, tmp_path, aux_epochs=-1, trunk_lr_scale=0.0)


def test_aux_passes_train_the_trunk_and_ppo_the_heads(bc_checkpoint, tmp_path):
    """With aux_epochs, the trunk moves (by the auxiliary losses alone), the critic warm-up and
    PPO move the heads, the losses are logged, and the run resumes with the trunk's optimizer."""
    out = tmp_path / "ppo"
    bc = load_policy(bc_checkpoint, device="cpu").state_dict()
    config = tiny_ppo(bc_checkpoint, out, timesteps=2 * ROLLOUT, trunk_lr_scale=0.0, aux_epochs=1, aux_batch_size=32,
                      sil_coef=1.0, batch_size=32)
    train_ppo(config)
    state = read_checkpoint(out / "last.pt")
    final = state["policy"]
    moved = {n for n in bc if bc[n].is_floating_point() and not torch.equal(final[n], bc[n])}
    assert any(n.startswith("features_extractor.convs.") for n in moved), "the auxiliary passes did not move the trunk"
    assert any(n.startswith("action_net") for n in moved), "PPO did not move the action head"
    assert "aux_optimizer" in state
    events = EventAccumulator(str(next((out / "tb").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    for tag in ("train/aux_target_loss", "train/aux_attention_loss", "train/aux_frames_dropped"):
        values = [e.value for e in events.Scalars(tag)]
        assert len(values) == 2 and all(np.isfinite(values)), tag
    resumed = train_ppo(PPOConfig(**{**config.to_dict(), "timesteps": 3 * ROLLOUT, "resume": True}))
    assert resumed.timesteps == 3 * ROLLOUT


def test_aux_passes_keep_the_ppo_gradient_out_of_the_trunk(bc_checkpoint, demo_file, tmp_path):
    from vla_gym.agents.ppo import DemoBatches

    trainer = _Trainer(tiny_ppo(bc_checkpoint, tmp_path / "ppo", trunk_lr_scale=0.0, aux_epochs=1))
    try:
        model = trainer.model
        obs, actions = DemoBatches(demo_file, 8, 0, model.policy)()
        assert all(p.requires_grad for p in model.policy.features_extractor.parameters())
        _, log_prob, _ = model._evaluate_actions(obs, actions)
        (log_prob.sum() + model._imitation_nll(obs, actions)).backward()
        assert all(p.grad is None for p in model.policy.features_extractor.parameters())
        assert all(p.grad is not None for p in model.policy.action_net.parameters())
    finally:
        trainer.close()


#: Two tasks of 50-step episodes, so that both end episodes within the tiny run.
SHORT_TASKS = ["pick", "spatial_pick"]


def test_multi_task_ppo_logs_each_tasks_success(bc_checkpoint, tmp_path):
    """On VLAMultiTask-v0 (two tasks here) every task's training and evaluation success is
    logged, and the per-task evaluation is in metrics.jsonl."""
    import json

    out = tmp_path / "ppo"
    train_ppo(tiny_ppo(bc_checkpoint, out, env_id="VLAMultiTask-v0", env_kwargs={"tasks": SHORT_TASKS},
                       timesteps=2 * ROLLOUT, eval_episodes=6, trunk_lr_scale=0.0, aux_epochs=1))
    events = EventAccumulator(str(next((out / "tb").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    tasks = sorted(SHORT_TASKS)
    tags = events.Tags()["scalars"]
    for task in tasks:
        assert f"eval/success_rate/{task}" in tags
        assert f"rollout/success_rate/{task}" in tags
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(records[-1]["per_task"]) == tasks
