"""PPO fine-tuning: starts from the BC weights, warms the critic up alone, resumes, refuses bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vla_gym.agents.checkpoint import CheckpointError, load_policy, read_checkpoint
from vla_gym.agents.ppo import (
    DemoBatches,
    PPOConfig,
    VLAPPO,
    _Trainer,
    critic_parameters,
    train_ppo,
)
from vla_gym.agents.network import VLAActorCriticPolicy

ROLLOUT = 2 * 64  # n_envs * n_steps of the runs below


def tiny_ppo(init, out, **overrides) -> PPOConfig:
    settings = dict(
        init=init, out=str(out), timesteps=ROLLOUT, n_envs=2, vec_env="dummy", n_steps=64, batch_size=64,
        n_epochs=2, eval_every=ROLLOUT, eval_episodes=1, critic_warmup_rollouts=1, device="cpu", progress=False,
    )
    settings.update(overrides)
    return PPOConfig(**settings)


def critic_names(policy) -> set[str]:
    ids = {id(p) for p in critic_parameters(policy)}
    return {name for name, p in policy.named_parameters() if id(p) in ids}


def test_ppo_starts_from_the_bc_weights_exactly(bc_checkpoint, tmp_path):
    bc = load_policy(bc_checkpoint, device="cpu")
    trainer = _Trainer(tiny_ppo(bc_checkpoint, tmp_path / "ppo"))
    try:
        model = trainer.model
        ppo_state, bc_state = model.policy.state_dict(), bc.state_dict()
        assert ppo_state.keys() == bc_state.keys()
        for name, tensor in bc_state.items():  # weights, the BC log-std and the proprio statistics
            torch.testing.assert_close(ppo_state[name], tensor, rtol=0, atol=0, msg=name)
        assert float(model.policy.log_std.detach().mean()) != 0.0  # not SB3's log_std_init
        # The images stay uint8 in the rollout buffer (4x less memory than float32).
        assert model.rollout_buffer.observations["rgb"].dtype == np.uint8
        groups = {g["name"]: g for g in model.policy.optimizer.param_groups}
        assert groups["critic"]["lr"] == pytest.approx(10 * groups["actor"]["lr"])
    finally:
        trainer.close()


@pytest.mark.parametrize("env_id", ["VLAPick-v0", "VLAPickDense-v0", "VLAMultiTaskDense-v0"])
def test_critic_warmup_leaves_the_actor_unchanged_then_ppo_moves_it(bc_checkpoint, tmp_path, env_id):
    out = tmp_path / "ppo"
    bc = load_policy(bc_checkpoint, device="cpu").state_dict()
    warm = train_ppo(tiny_ppo(bc_checkpoint, out, env_id=env_id))  # one rollout: critic warm-up only
    assert warm.timesteps == ROLLOUT
    after_warmup = read_checkpoint(out / "last.pt")["policy"]
    critic = critic_names(load_policy(bc_checkpoint, device="cpu"))
    assert critic and all(".value_net." in n or n.startswith("value_net.") for n in critic)
    for name, tensor in bc.items():
        if name in critic:
            continue
        torch.testing.assert_close(after_warmup[name], tensor, rtol=0, atol=0, msg=name)
    assert any(not torch.equal(after_warmup[n], bc[n]) for n in critic), "the critic did not train"

    # Resume into a longer run: one PPO update, which moves the actor.
    resumed = train_ppo(tiny_ppo(bc_checkpoint, out, env_id=env_id, timesteps=2 * ROLLOUT, resume=True))
    assert resumed.timesteps == 2 * ROLLOUT
    assert [r["timesteps"] for r in resumed.history] == [0, ROLLOUT, 2 * ROLLOUT]
    assert [r["critic_warmup"] for r in resumed.history] == [True, False, False]
    final = read_checkpoint(out / "last.pt")
    assert final["meta"]["rollouts_trained"] == 2
    actor = [n for n in bc if n not in critic and n.startswith(("mlp_extractor.policy_net", "action_net"))]
    assert any(not torch.equal(final["policy"][n], after_warmup[n]) for n in actor), "PPO did not move the actor"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["timesteps"] for r in lines] == [0, ROLLOUT, 2 * ROLLOUT]
    events = EventAccumulator(str(next((out / "tb").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/success_rate")] == [0, ROLLOUT, 2 * ROLLOUT]
    # The kept policy is a plain checkpoint that load_policy reads back.
    best = load_policy(out / "policy.pt", device="cpu")
    assert isinstance(best, VLAActorCriticPolicy)
    assert read_checkpoint(out / "policy.pt")["meta"]["best"]["timesteps"] in (0, ROLLOUT, 2 * ROLLOUT)


def test_interrupted_run_saves_and_resumes_to_the_end(bc_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "ppo"
    real_train, calls = VLAPPO.train, {"n": 0}

    def interrupt_second_update(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_train(self)

    monkeypatch.setattr(VLAPPO, "train", interrupt_second_update)
    with pytest.raises(KeyboardInterrupt):
        train_ppo(tiny_ppo(bc_checkpoint, out, timesteps=3 * ROLLOUT))
    saved = read_checkpoint(out / "last.pt")["meta"]
    assert saved["timesteps"] == 2 * ROLLOUT and saved["rollouts_trained"] == 1
    monkeypatch.setattr(VLAPPO, "train", real_train)
    resumed = train_ppo(tiny_ppo(bc_checkpoint, out, timesteps=3 * ROLLOUT, resume=True))
    assert resumed.timesteps == 3 * ROLLOUT
    assert read_checkpoint(out / "last.pt")["meta"]["rollouts_trained"] == 2


def test_resume_with_another_config_names_the_field(bc_checkpoint, tmp_path):
    out = tmp_path / "ppo"
    train_ppo(tiny_ppo(bc_checkpoint, out))
    with pytest.raises(CheckpointError, match=r"lr: checkpoint 3e-05 vs requested 0.001"):
        train_ppo(tiny_ppo(bc_checkpoint, out, timesteps=2 * ROLLOUT, lr=1e-3, resume=True))


def test_bc_term_batches_match_the_policy_layout(bc_checkpoint, demo_file, tmp_path):
    trainer = _Trainer(tiny_ppo(bc_checkpoint, tmp_path / "ppo", bc_coef=0.5, bc_decay=0.5))
    try:
        model = trainer.model
        assert isinstance(model.demo_batches, DemoBatches)  # from the BC checkpoint's own demo file
        obs, actions = model.demo_batches()
        space = model.policy.observation_space
        assert tuple(obs["rgb"].shape[1:]) == space["rgb"].shape and obs["rgb"].dtype == torch.uint8
        assert tuple(obs["depth"].shape[1:]) == space["depth"].shape
        assert actions.shape == (64, 4)
        _, log_prob, _ = model.policy.evaluate_actions(obs, actions)
        assert torch.isfinite(log_prob).all()
        model.rollouts_trained = 1  # warm-up done: first PPO update
        assert model.bc_weight() == pytest.approx(0.5)
        model.rollouts_trained = 3
        assert model.bc_weight() == pytest.approx(0.125)
    finally:
        trainer.close()


def test_bc_term_needs_demos():
    model = VLAPPO(VLAActorCriticPolicy, "VLAPick-v0", bc_coef=0.1, n_steps=64, batch_size=64, device="cpu")
    with pytest.raises(ValueError, match="needs demo_batches"):
        model.learn(64)
    model.env.close()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"batch_size": 512}, "larger than a rollout"),
        ({"n_epochs": 0}, r"n_epochs must be an int in \[1, 1000\], got 0"),
        ({"vec_env": "threads"}, "choose one of"),
        ({"env_id": "CartPole-v1"}, "not a vla_gym env"),
        ({"gamma": 1.5}, r"gamma must be a finite number in \[0.0, 1.0\], got 1.5"),
        ({"target_kl": 0.0}, "target_kl must be > 0 or None"),
        ({"network": {"features_dim": 32}}, "either init"),
    ],
)
def test_bad_ppo_config_is_refused(bc_checkpoint, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_ppo(bc_checkpoint, tmp_path, **overrides)


def test_checkpoint_for_another_image_size_is_refused(bc_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="trained on observations shaped"):
        train_ppo(tiny_ppo(bc_checkpoint, tmp_path / "ppo", env_kwargs={"image_size": 64}))


@pytest.mark.parametrize("detach", [False, True])
def test_detach_critic_keeps_the_value_gradient_out_of_the_trunk(bc_checkpoint, demo_file, tmp_path, detach):
    trainer = _Trainer(tiny_ppo(bc_checkpoint, tmp_path / "ppo", detach_critic=detach))
    try:
        model = trainer.model
        obs, actions = DemoBatches(demo_file, 8, 0, model.policy)()
        values, log_prob, _ = model._evaluate_actions(obs, actions)
        values.sum().backward(retain_graph=True)
        trunk = [p.grad for p in model.policy.features_extractor.fuse.parameters()]
        assert all(g is not None for g in (p.grad for p in critic_parameters(model.policy)))
        assert all(g is None for g in trunk) == detach
        model.policy.zero_grad(set_to_none=True)
        log_prob.sum().backward()  # the policy loss still trains the trunk
        assert all(p.grad is not None for p in model.policy.features_extractor.fuse.parameters())
    finally:
        trainer.close()


#: What every PPO run must log to TensorBoard (issue: success, length, value loss, explained
#: variance, approx KL, clip fraction, entropy/std, env steps/s).
TENSORBOARD_SCALARS = (
    "rollout/success_rate", "rollout/ep_len_mean", "eval/success_rate", "eval/mean_length", "train/value_loss",
    "train/explained_variance", "train/approx_kl", "train/clip_fraction", "train/entropy_loss", "train/std",
    "time/env_steps_per_second",
)


def test_tiny_ppo_run_moves_the_weights_and_logs_every_scalar(bc_checkpoint, tmp_path):
    out = tmp_path / "ppo"
    bc = load_policy(bc_checkpoint, device="cpu").state_dict()
    train_ppo(tiny_ppo(bc_checkpoint, out, timesteps=2 * ROLLOUT))  # a critic warm-up, then one PPO update
    final = read_checkpoint(out / "last.pt")["policy"]
    moved = [n for n in bc if n.startswith(("features_extractor.", "mlp_extractor.policy_net", "action_net"))
             and not torch.equal(final[n], bc[n])]
    assert any(n.startswith("features_extractor.convs.") for n in moved), "PPO did not move the trunk"
    assert any(n.startswith("action_net") for n in moved), "PPO did not move the action head"
    events = EventAccumulator(str(next((out / "tb").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    missing = [tag for tag in TENSORBOARD_SCALARS if tag not in events.Tags()["scalars"]]
    assert not missing, f"not logged to TensorBoard: {missing}"
    for tag in TENSORBOARD_SCALARS:
        assert all(np.isfinite(e.value) for e in events.Scalars(tag)), tag
    assert events.Scalars("time/env_steps_per_second")[-1].value > 0


def test_potential_shaping_telescopes_and_keeps_the_env_reward(make_env):
    """The added terms sum to gamma^T phi(s_T) - phi(s_0) (phi = 0 after a terminal step): the
    return differs from the sparse one by a constant of the start state, whatever the policy."""
    from vla_gym.agents.shaping import PotentialShaping
    from vla_gym.envs.experts.scripted import ScriptedExpert

    env = PotentialShaping(make_env("VLAPick-v0"), coef=1.0, gamma=1.0)
    obs, _ = env.reset(seed=0)
    phi_start = env.unwrapped.progress()
    assert 0.0 <= phi_start < 1.0
    expert = ScriptedExpert(env.unwrapped, seed=0)
    shaping, env_return, terminated, truncated = [], 0.0, False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(expert.act())
        shaping.append(info["shaping"])
        env_return += info["env_reward"]
        assert reward == pytest.approx(info["env_reward"] + info["shaping"])
    assert terminated and env_return == 1.0  # the expert succeeds; the sparse reward is untouched
    assert sum(shaping) == pytest.approx(-phi_start)  # telescoped, phi(terminal) = 0
    assert max(shaping) > 0  # progress is paid for on the way
    with pytest.raises(ValueError, match="coef > 0"):
        PotentialShaping(make_env("VLAPick-v0"), coef=0.0, gamma=0.99)


def test_success_memory_keeps_whole_successful_episodes_newest_first():
    from vla_gym.agents.ppo import SuccessMemory

    memory = SuccessMemory(n_envs=2, capacity=5, seed=0, device=torch.device("cpu"))
    obs = lambda t: {"proprio": np.full((2, 8), t, dtype=np.float32)}  # noqa: E731
    no, done = np.array([False, False]), np.array([True, True])
    for t in range(3):
        memory.record(obs(t), np.full((2, 4), t, dtype=np.float32), no, [{}, {}])
    memory.record(obs(3), np.full((2, 4), 3, dtype=np.float32), done, [{"is_success": True}, {"is_success": False}])
    assert len(memory) == 4  # env 0's four frames; env 1 failed and is dropped
    for t in range(2):
        memory.record(obs(10 + t), np.full((2, 4), 10 + t, dtype=np.float32), done if t else no,
                      [{"is_success": True}, {"is_success": True}])
    assert len(memory) == 4 and len(memory.episode_lengths) == 2  # the oldest episode went past capacity 5
    batch, actions = memory.sample(16)
    assert batch["proprio"].shape == (16, 8) and actions.shape == (16, 4)
    assert set(actions[:, 0].tolist()) <= {10.0, 11.0}
    torch.testing.assert_close(batch["proprio"][:, 0], actions[:, 0])  # each frame keeps its own action


def test_self_imitation_term_trains_on_own_successes(bc_checkpoint, tmp_path):
    out = tmp_path / "ppo"
    result = train_ppo(tiny_ppo(bc_checkpoint, out, timesteps=2 * ROLLOUT, critic_warmup_rollouts=0, sil_coef=1.0,
                                batch_size=8, shaping=1.0, trunk_lr_scale=0.0, start_log_std=-2.0))
    assert result.timesteps == 2 * ROLLOUT
    final = read_checkpoint(out / "last.pt")["policy"]
    bc = load_policy(bc_checkpoint, device="cpu").state_dict()
    for name in bc:  # the frozen trunk stays BC's
        if name.startswith("features_extractor.") and bc[name].is_floating_point():
            torch.testing.assert_close(final[name], bc[name], rtol=0, atol=0, msg=name)
    torch.testing.assert_close(final["log_std"], torch.full((4,), -2.0), rtol=0, atol=0.5)


def test_frozen_trunk_updates_on_features_computed_once_match_the_observation_path(bc_checkpoint, tmp_path):
    """With the trunk frozen, an epoch's minibatches carry the rollout's features, computed once:
    every sample appears once per epoch, and the losses equal those from the observations."""
    trainer = _Trainer(tiny_ppo(bc_checkpoint, tmp_path / "ppo", trunk_lr_scale=0.0, batch_size=32, n_epochs=2))
    try:
        model = trainer.model
        model._setup_learn(ROLLOUT, None)
        model.collect_rollouts(model.env, model._init_callback(None), model.rollout_buffer, model.n_steps)
        model.policy.set_training_mode(True)
        epochs = [list(batches) for batches in model._minibatches()]
        assert len(epochs) == 2
        whole = next(model.rollout_buffer.get(None))
        for batches in epochs:
            assert all(isinstance(b.observations, torch.Tensor) for b in batches)
            actions = torch.cat([b.actions for b in batches])
            assert sorted(map(tuple, actions.tolist())) == sorted(map(tuple, whole.actions.tolist()))
        batch = epochs[0][0]
        rows = [next(i for i in range(len(whole.actions)) if torch.equal(whole.actions[i], a)) for a in batch.actions]
        obs = {k: v[rows] for k, v in whole.observations.items()}
        from_features = model._evaluate_actions(batch.observations, batch.actions)
        from_obs = model._evaluate_actions(obs, batch.actions)
        for a, b in zip(from_features, from_obs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model._imitation_nll(batch.observations, batch.actions),
                                   model._imitation_nll(obs, batch.actions), rtol=1e-5, atol=1e-5)
    finally:
        trainer.close()


def test_success_memory_keeps_encodings_when_given_an_encoder():
    from vla_gym.agents.ppo import SuccessMemory

    encode = lambda obs: obs["proprio"].sum(dim=1, keepdim=True) * torch.ones(1, 3)  # noqa: E731
    memory = SuccessMemory(n_envs=1, capacity=10, seed=0, device=torch.device("cpu"), encode=encode)
    for t, done in enumerate([False, True]):
        memory.record({"proprio": np.full((1, 2), t, dtype=np.float32)}, np.full((1, 4), t, dtype=np.float32),
                      np.array([done]), [{"is_success": done}])
    features, actions = memory.sample(8)
    assert features.shape == (8, 3) and actions.shape == (8, 4)
    torch.testing.assert_close(features[:, 0], 2 * actions[:, 0])  # frame t encodes to 2t, its action is t
