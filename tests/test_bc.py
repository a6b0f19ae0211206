"""Behaviour cloning: loss falls, checkpoints round-trip, resume continues, bad input is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import TWO_TASKS, interrupt_on_call
from vla_gym.agents import bc as bc_module
from vla_gym.agents.bc import PER_TASK_TERMS, BCConfig, lr_factor, train_bc, validate
from vla_gym.agents.checkpoint import CheckpointError, load_policy, read_checkpoint, resolve_device
from vla_gym.data import DemoDataset
from vla_gym.data.dataset import collate_batch

SMALL = {"channels": [8, 16, 16], "features_dim": 64, "net_arch": {"pi": [64], "vf": [64]}}
NO_AUGMENT = {"shift_pixels": 0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "depth_noise_std": 0.0}


class PickledPayload:
    """An arbitrary class instance: weights_only loading must refuse to unpickle it."""


def tiny_config(demo_file, out, **overrides) -> BCConfig:
    settings = dict(
        data=demo_file, out=str(out), epochs=2, batch_size=32, lr=3e-3, warmup_steps=2, network=SMALL,
        rollout_every=0, checkpoint_every=0, device="cpu", progress=False, paraphrase_prob=0.0,
    )
    settings.update(overrides)
    return BCConfig(**settings)


def action_mse(policy, demo_file) -> float:
    dataset = DemoDataset(demo_file, "train", in_memory=True)
    batch = collate_batch(dataset.__getitems__(np.arange(len(dataset))))
    obs = {k: batch[k] for k in ("rgb", "depth", "proprio", "instruction")}
    policy.set_training_mode(False)
    with torch.no_grad():
        mean = policy.get_distribution(obs).distribution.mean
    return float(((mean - batch["action"]) ** 2).mean())


def test_tiny_bc_run_drives_the_loss_down(demo_file, tmp_path):
    config = tiny_config(demo_file, tmp_path / "run", epochs=60, augment=NO_AUGMENT, value_coef=0.0, seed=1)
    initial = bc_module.build_policy(
        json.loads(json.dumps(DemoDataset(demo_file).env_args)), SMALL, "cpu"
    )
    torch.manual_seed(1)
    result = train_bc(config)
    first, last = result.history[0], result.history[-1]
    trained = load_policy(result.last_path, device="cpu")
    before, after = action_mse(initial, demo_file), action_mse(trained, demo_file)
    assert after < before / 5, (before, after)
    assert last["train_nll"] < first["train_nll"] - 1.0  # per-dimension NLL, in nats
    assert (tmp_path / "run" / "policy.pt").exists() and (tmp_path / "run" / "config.json").exists()
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 60 and "valid_nll" in json.loads(lines[-1])


def test_checkpoint_round_trip_gives_identical_actions(demo_file, tmp_path, make_env):
    result = train_bc(tiny_config(demo_file, tmp_path / "run", epochs=1, rollout_every=1, rollout_episodes=1))
    assert "rollout_success_rate" in result.history[-1]
    first = load_policy(result.policy_path, device="cpu")
    second = load_policy(result.policy_path, device="cpu")
    env = make_env()
    obs, _ = env.reset(seed=5)
    for _ in range(5):
        a, _ = first.predict(obs, deterministic=True)
        b, _ = second.predict(obs, deterministic=True)
        np.testing.assert_array_equal(a, b)
        obs = env.step(a)[0]
    payload = read_checkpoint(result.policy_path)
    assert payload["meta"]["network"]["channels"] == SMALL["channels"]
    assert payload["meta"]["env"]["env_name"] == "VLAPick-v0"


def test_resume_continues_the_step_count(demo_file, tmp_path):
    out = tmp_path / "run"
    one = train_bc(tiny_config(demo_file, out, epochs=1))
    steps_per_epoch = one.steps
    two = train_bc(tiny_config(demo_file, out, epochs=2, resume=True))
    assert two.steps == 2 * steps_per_epoch and two.epochs == 2
    assert [h["epoch"] for h in two.history] == [1, 2]


def test_interrupted_run_resumes_mid_epoch(demo_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = tiny_config(demo_file, out, epochs=2, batch_size=16)
    real = bc_module.augment_batch
    monkeypatch.setattr(bc_module, "augment_batch", interrupt_on_call(real, 4))  # on the fourth batch
    with pytest.raises(KeyboardInterrupt):
        train_bc(config)
    saved = read_checkpoint(out / "last.pt")["meta"]
    assert saved["step"] == 3 and saved["batch_in_epoch"] == 3 and saved["epoch"] == 0
    monkeypatch.setattr(bc_module, "augment_batch", real)
    resumed = train_bc(tiny_config(demo_file, out, epochs=2, batch_size=16, resume=True))
    full = train_bc(tiny_config(demo_file, tmp_path / "full", epochs=2, batch_size=16))
    assert resumed.steps == full.steps


def test_resume_with_another_config_names_the_field(demo_file, tmp_path):
    out = tmp_path / "run"
    train_bc(tiny_config(demo_file, out, epochs=1))
    with pytest.raises(CheckpointError, match=r"lr: checkpoint 0.003 vs requested 0.001"):
        train_bc(tiny_config(demo_file, out, epochs=2, lr=1e-3, resume=True))


def test_load_into_another_network_config_names_the_field(demo_file, tmp_path):
    result = train_bc(tiny_config(demo_file, tmp_path / "run", epochs=1))
    with pytest.raises(CheckpointError, match=r"network.features_dim: checkpoint 64 vs requested 32"):
        load_policy(result.policy_path, device="cpu", network={**SMALL, "features_dim": 32})


def test_bad_checkpoints_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policy(tmp_path / "missing.pt", device="cpu")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_policy(garbage, device="cpu")

    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "vla_gym.policy", "object": PickledPayload()}, pickled)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_policy(pickled, device="cpu")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a vla_gym policy checkpoint"):
        load_policy(foreign, device="cpu")


def test_bad_bc_config_and_data(demo_file, tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        tiny_config(demo_file, tmp_path, epochs=0)
    with pytest.raises(TypeError):
        tiny_config(demo_file, tmp_path, augment={"hue": 0.1})
    with pytest.raises(ValueError, match="image_size: file 84 vs requested 64"):
        train_bc(tiny_config(demo_file, tmp_path, env_id="VLAPick-v0", env_kwargs={"image_size": 64}))
    with pytest.raises(ValueError, match="does not exist"):
        train_bc(tiny_config(str(tmp_path / "none.h5"), tmp_path))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_lr_schedule_warms_up_then_decays():
    factors = [lr_factor(s, 10, 100, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)


def test_validation_loss_per_task_on_a_multi_task_file(balanced_file, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(balanced_file, out, epochs=1, batch_size=16)
    result = train_bc(config)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {k for k in record if "/" in k} == {f"valid_{term}/{task}" for term in PER_TASK_TERMS for task in TWO_TASKS}
    # Each task's value is the validation of that task's episodes alone.
    policy = load_policy(result.last_path, device="cpu")
    for task in TWO_TASKS:
        alone = validate(policy, DemoDataset(balanced_file, "valid", tasks=[task]), config, torch.device("cpu"))
        assert {k for k in alone if "/" in k} == set()  # one task in the split: the overall keys only
        for term in PER_TASK_TERMS:
            assert record[f"valid_{term}/{task}"] == pytest.approx(alone[term], rel=1e-4), (term, task)
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert {f"valid/{term}/{task}" for term in PER_TASK_TERMS for task in TWO_TASKS} <= set(events.Tags()["scalars"])


def test_single_task_validation_keeps_its_keys(demo_file, tmp_path):
    result = train_bc(tiny_config(demo_file, tmp_path / "run", epochs=1))
    assert [k for k in result.history[-1] if "/" in k] == []
    assert {"valid_nll", "valid_action_mse", "valid_loss"} <= set(result.history[-1])


def test_gripper_change_repeats_mark_the_frames_around_a_grasp_in_one_episode():
    # Episode A closes at step 2; episode B starts open right after A ends closed (not a change).
    gripper = [-1, -1, 1, 1, 1, 1] + [-1, -1, -1]
    actions = np.zeros((9, 4), np.float32)
    actions[:, 3] = gripper
    repeats = bc_module.gripper_change_repeats(actions, np.array([0, 6, 9]), window=1, repeat=3)
    assert repeats.tolist() == [1, 3, 3, 3, 1, 1, 1, 1, 1]
    assert bc_module.gripper_change_repeats(actions, np.array([0, 6, 9]), window=0, repeat=3).tolist() == [
        1, 1, 3, 1, 1, 1, 1, 1, 1]
    order = bc_module._epoch_order(9, 0, 0, repeats)
    assert np.bincount(order, minlength=9).tolist() == repeats.tolist()


def test_gripper_repeat_lengthens_the_epoch_by_the_repeated_frames(demo_file, tmp_path):
    plain = train_bc(tiny_config(demo_file, tmp_path / "plain", epochs=1, batch_size=16))
    dataset = DemoDataset(demo_file, "train", in_memory=True)
    repeats = bc_module.gripper_change_repeats(dataset.actions(), dataset.starts, 2, 4)
    assert repeats.max() == 4 and repeats.sum() > len(dataset)  # the demos grasp
    assert np.array_equal(DemoDataset(demo_file, "train").actions(), dataset.actions())  # lazy reads agree
    repeated = train_bc(tiny_config(demo_file, tmp_path / "rep", epochs=1, batch_size=16, gripper_repeat=4))
    assert plain.steps == -(-len(dataset) // 16) and repeated.steps == -(-int(repeats.sum()) // 16)
    with pytest.raises(ValueError, match="gripper_repeat"):
        tiny_config(demo_file, tmp_path / "x", gripper_repeat=0)
