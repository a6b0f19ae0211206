"""Grounding frames: collected deterministically with consistent labels, read back checked,
and used by BC (their losses logged, moving the trunk, resumed exactly); bad input refused."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from tests.conftest import TWO_TASK_KWARGS, TWO_TASKS, interrupt_on_call
from vla_gym.agents import bc as bc_module
from vla_gym.agents.bc import BCConfig, train_bc
from vla_gym.agents.checkpoint import read_checkpoint
from vla_gym.cli import main
from vla_gym.data.dataset import image_coordinates
from vla_gym.data.grounding import (
    FRAME_KEYS,
    GroundingConfig,
    GroundingDataError,
    collect_grounding_frames,
    read_grounding_frames,
)
from vla_gym.envs.spaces import AGENT_CAMERA

SMALL = {"channels": [8, 16, 16], "features_dim": 64, "net_arch": {"pi": [64], "vf": [64]}}


@pytest.fixture(scope="module")
def pick_frames(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("grounding") / "pick.h5"
    collect_grounding_frames(GroundingConfig(out=str(path), env_id="VLAPick-v0", frames=24, workers=0))
    return str(path)


def test_frames_are_labelled_with_the_named_object_and_collected_deterministically(pick_frames, tmp_path):
    frames = read_grounding_frames(pick_frames)
    assert len(frames) == 24 and frames.tasks == ("pick",) and frames.image_size == 84
    a = frames.arrays
    # Both labels name one point: the offset from the end effector, seen through the camera, is the uv.
    goal = a["proprio"][:, :3] + a["target_offset"]
    np.testing.assert_allclose(image_coordinates(goal, 84, AGENT_CAMERA), a["target_uv"], atol=1e-4)
    assert (np.abs(a["target_uv"]) < 1).all()  # the named object is in view
    assert np.ptp(a["proprio"][:, 0]) > 0.01  # the random moves put the end effector elsewhere
    texts = {bytes(row).rstrip(b"\0").decode() for row in a["instruction"]}
    assert len(texts) > 5  # the scenes' own instructions
    again = tmp_path / "again.h5"  # in two worker processes: the same frames
    collect_grounding_frames(GroundingConfig(out=str(again), env_id="VLAPick-v0", frames=24, workers=2))
    for key, value in read_grounding_frames(again).arrays.items():
        np.testing.assert_array_equal(value, a[key], err_msg=key)


def test_multi_task_frames_name_each_scenes_task(tmp_path):
    path = tmp_path / "two.h5"
    collect_grounding_frames(GroundingConfig(out=str(path), env_id="VLAMultiTask-v0", env_kwargs=TWO_TASK_KWARGS,
                                             frames=8, workers=0, max_moves=0))
    frames = read_grounding_frames(path)
    assert frames.tasks == TWO_TASKS and frames.arrays["tasks"].tolist() == [0, 1] * 4  # balanced, in turn
    start = frames.arrays["proprio"][:, :3]
    np.testing.assert_allclose(start, start[0:1].repeat(len(start), 0), atol=1e-5)  # max_moves=0: the start pose


def test_bad_grounding_files_and_configs_are_refused(pick_frames, demo_file, tmp_path):
    with pytest.raises(GroundingDataError, match="does not exist"):
        read_grounding_frames(tmp_path / "missing.h5")
    with pytest.raises(GroundingDataError, match="is not a grounding file"):
        read_grounding_frames(demo_file)
    broken = tmp_path / "broken.h5"
    with h5py.File(pick_frames) as src, h5py.File(broken, "w") as dst:
        dst.attrs.update(src.attrs)
        for key in FRAME_KEYS:
            dst[key] = src[key][:10] if key != "target_uv" else src[key][:9]
    with pytest.raises(GroundingDataError, match="the same number"):
        read_grounding_frames(broken)
    with pytest.raises(ValueError, match="frames must be an int from 1"):
        GroundingConfig(out="x.h5", frames=0)
    with pytest.raises(ValueError, match="num_objects"):
        GroundingConfig(out="x.h5", env_kwargs={"num_objects": 99})


def bc_config(demo_file, out, grounding, **overrides) -> BCConfig:
    settings = dict(
        data=demo_file, out=str(out), epochs=2, batch_size=16, lr=3e-3, warmup_steps=2, network=SMALL,
        rollout_every=0, checkpoint_every=0, device="cpu", progress=False, paraphrase_prob=0.0,
        grounding_data=grounding, grounding_batch_size=8,
    )
    settings.update(overrides)
    return BCConfig(**settings)


def test_bc_adds_the_grounding_losses_and_resumes_them_exactly(pick_frames, demo_file, tmp_path, monkeypatch):
    full = train_bc(bc_config(demo_file, tmp_path / "full", pick_frames))
    record = full.history[-1]
    assert record["train_grounding_target_loss"] > 0 and record["train_grounding_attention_loss"] > 0
    plain = train_bc(bc_config(demo_file, tmp_path / "plain", None))
    assert "train_grounding_target_loss" not in plain.history[-1]
    # The grounding frames change what the trunk learns from the same demos and seed.
    assert not torch.equal(_trunk(full.policy_path), _trunk(plain.policy_path))
    assert "grounding_rng" in read_checkpoint(tmp_path / "full" / "last.pt")

    out = tmp_path / "resumed"  # stopped on the fourth batch, then resumed: the same weights as straight through
    real = bc_module.augment_batch
    monkeypatch.setattr(bc_module, "augment_batch", interrupt_on_call(real, 7))  # two calls per step
    with pytest.raises(KeyboardInterrupt):
        train_bc(bc_config(demo_file, out, pick_frames))
    monkeypatch.setattr(bc_module, "augment_batch", real)
    resumed = train_bc(bc_config(demo_file, out, pick_frames, resume=True))
    assert resumed.steps == full.steps
    torch.testing.assert_close(_trunk(out / "last.pt"), _trunk(tmp_path / "full" / "last.pt"))


def _trunk(path) -> torch.Tensor:
    return read_checkpoint(path)["policy"]["features_extractor.convs.0.weight"]


def test_grounding_frames_must_match_the_demos(pick_frames, demo_file, balanced_file, tmp_path):
    small = tmp_path / "small.h5"
    collect_grounding_frames(GroundingConfig(out=str(small), frames=2, workers=0, env_kwargs={"image_size": 64}))
    with pytest.raises(ValueError, match="64 px images and the demos 84 px"):
        train_bc(bc_config(demo_file, tmp_path / "a", str(small)))
    two = tmp_path / "two.h5"
    collect_grounding_frames(GroundingConfig(out=str(two), env_id="VLAMultiTask-v0", env_kwargs=TWO_TASK_KWARGS,
                                             frames=4, workers=0))
    with pytest.raises(ValueError, match=r"holds tasks \['place'\] that the demos' env"):
        train_bc(bc_config(demo_file, tmp_path / "b", str(two)))
    train_bc(bc_config(balanced_file, tmp_path / "c", pick_frames, epochs=1))  # pick frames for pick + place demos


def test_cli_collects_grounding_frames_and_train_bc_checks_the_file(tmp_path, demo_file, capsys):
    out = tmp_path / "g.h5"
    assert main(["collect-grounding", "--frames", "3", "--workers", "0", "--out", str(out), "--no-progress"]) == 0
    assert len(read_grounding_frames(out)) == 3
    for argv, message in (
        (["collect-grounding", "--frames", "3", "--out", str(out)], "exists; pass --overwrite"),
        (["train-bc", "--data", demo_file, "--grounding-data", str(tmp_path / "none.h5"), "--out",
          str(tmp_path / "run"), "--no-progress"], "--grounding-data"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
