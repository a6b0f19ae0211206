"""Generalisation splits: object combinations, instructions, camera jitter, and the
collector's train-split default."""

from __future__ import annotations

import json
import re
import warnings

import h5py
import numpy as np
import pytest

from vla_gym.envs.language import words_of_split
from vla_gym.envs.spaces import AGENT_CAMERA
from vla_gym.envs.tabletop_env import TabletopConfig
from vla_gym.envs.pybullet_sim import Camera
from vla_gym.envs.scene import (
    COLOURS,
    HELD_OUT_COMBINATIONS,
    SHAPES,
    is_held_out,
    sample_scene,
)

SCENE_DRAWS = 3000
ENV_SEEDS = 150


def test_held_out_combinations_leave_every_colour_and_shape_in_training():
    assert len(HELD_OUT_COMBINATIONS) == len(COLOURS)
    assert {colour for colour, _ in HELD_OUT_COMBINATIONS} == set(COLOURS)
    assert {shape for _, shape in HELD_OUT_COMBINATIONS} == set(SHAPES)
    assert not is_held_out("red", "cube")  # the canonical goal stays in training


@pytest.mark.parametrize("num_objects", [2, 4, 6])
def test_sampled_scenes_respect_the_object_split(num_objects):
    rng = np.random.default_rng(0)
    seen = {"train": set(), "test": set()}
    for _ in range(SCENE_DRAWS):
        train, train_target = sample_scene(rng, num_objects, "train")
        test, test_target = sample_scene(rng, num_objects, "test")
        assert not any(is_held_out(s.colour, s.shape) for s in train)
        assert is_held_out(test[test_target].colour, test[test_target].shape)
        for specs in (train, test):
            assert len({s.colour for s in specs}) == num_objects
        seen["train"] |= {(s.colour, s.shape) for s in train}
        seen["test"].add((test[test_target].colour, test[test_target].shape))
    all_pairs = {(c, s) for c in COLOURS for s in SHAPES}
    assert seen["train"] == all_pairs - HELD_OUT_COMBINATIONS  # every seen pair is drawn
    assert seen["test"] == set(HELD_OUT_COMBINATIONS)  # every held-out pair is a goal


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


@pytest.mark.parametrize("env_id", ["VLAPick-v0", "VLAPickDense-v0"])
def test_train_split_envs_never_show_held_out_material(env_id, make_env):
    """Over many seeds no train-split pick episode shows a held-out combination or a
    test-only instruction word, and every test-split episode's goal is held out (every
    task's words and pairs: ``tests/test_tasks.py``)."""
    test_only = words_of_split("test") - words_of_split("train") - set(COLOURS)
    train_env = make_env(env_id, image_size=16)
    test_env = make_env(env_id, image_size=16, object_split="test", instruction_split="test")
    for seed in range(ENV_SEEDS):
        _, info = train_env.reset(seed=seed)
        assert not any(is_held_out(o["colour"], o["shape"]) for o in info["objects"]), (seed, info["objects"])
        assert not _words(info["instruction"]) & test_only, (seed, info["instruction"])
        _, info = test_env.reset(seed=seed)
        assert is_held_out(info["target"]["colour"], info["target"]["shape"]), (seed, info)
        assert _words(info["instruction"]) & test_only, (seed, info["instruction"])


def test_object_split_is_seeded(make_env):
    env = make_env(object_split="test", image_size=16)
    _, first = env.reset(seed=7)
    env.reset(seed=8)
    _, again = env.reset(seed=7)
    assert first == again


def test_camera_jitter_moves_the_view_not_the_scene(make_env):
    still = make_env()
    moved = make_env(camera_jitter=(0.03, 3.0))
    obs_still, info_still = still.reset(seed=3)
    obs_moved, info_moved = moved.reset(seed=3)
    assert info_still == info_moved  # same scene, goal and instruction
    np.testing.assert_array_equal(obs_still["proprio"], obs_moved["proprio"])
    assert np.abs(obs_still["rgb"].astype(int) - obs_moved["rgb"]).mean() > 1.0
    camera = moved.unwrapped.agent_camera
    assert np.all(np.abs(np.subtract(camera.eye, AGENT_CAMERA.eye)) <= 0.03)
    assert camera != AGENT_CAMERA and still.unwrapped.agent_camera == AGENT_CAMERA
    # The angle between the jittered and the fixed viewing direction is at most 3 degrees about each axis.
    forward = np.subtract(camera.target, camera.eye)
    base = np.subtract(AGENT_CAMERA.target, AGENT_CAMERA.eye)
    cos = forward @ base / np.linalg.norm(forward) / np.linalg.norm(base)
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))) <= 3.0 * np.sqrt(3) + 1e-6
    # Seeded: the same seed gives the same camera again, another seed another one.
    moved.reset(seed=4)
    other = moved.unwrapped.agent_camera
    obs_again, _ = moved.reset(seed=3)
    assert moved.unwrapped.agent_camera == camera != other
    np.testing.assert_array_equal(obs_again["rgb"], obs_moved["rgb"])


@pytest.mark.parametrize(
    "value, message",
    [
        (0.02, "must be 0 or a"),
        ((0.02,), "must be 0 or a"),
        ((-0.01, 1.0), "shift must lie in"),
        ((0.01, 45.0), "rotation in"),
        ("big", "must be 0 or a"),
    ],
)
def test_bad_camera_jitter_raises(value, message):
    with pytest.raises(ValueError, match=message):
        TabletopConfig(camera_jitter=value)


def test_bad_object_split_raises():
    with pytest.raises(ValueError, match=r"object_split='val' is not available; choose one of \('train', 'test'\)"):
        TabletopConfig(object_split="val")


def test_camera_jitter_zero_means_fixed():
    assert TabletopConfig(camera_jitter=0).camera_jitter == (0.0, 0.0)


def test_camera_round_trips_through_json():
    camera = AGENT_CAMERA.jittered(np.random.default_rng(0), 0.02, 2.0)
    assert Camera.from_dict(json.loads(json.dumps(camera.to_dict()))) == camera


def test_collector_defaults_to_the_train_splits_and_warns_otherwise(tmp_path):
    from vla_gym.data import CollectConfig

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CollectConfig(out=str(tmp_path / "a.h5"))  # train splits: no warning
    with pytest.warns(UserWarning, match="object_split='test'"):
        CollectConfig(out=str(tmp_path / "b.h5"), env_kwargs={"object_split": "test"})


def test_demos_under_camera_jitter_label_the_goal_pixel_with_the_episode_camera(tmp_path):
    """With camera jitter the auxiliary goal-pixel label comes from each episode's own camera."""
    from vla_gym.data import CollectConfig, DemoDataset, collect_demos
    from vla_gym.data.dataset import image_coordinates

    path = tmp_path / "jitter.h5"
    collect_demos(
        CollectConfig(out=str(path), episodes=2, workers=0, seed=0, valid_fraction=0.0,
                      env_kwargs={"camera_jitter": [0.05, 5.0], "image_size": 32}),
        progress=False,
    )
    with h5py.File(path, "r") as handle:
        stored = [Camera.from_dict(json.loads(handle["data"][n].attrs["camera"])) for n in ("demo_0", "demo_1")]
        targets = handle["data/demo_0/states/target_positions"][()]
    assert stored[0] != stored[1] and AGENT_CAMERA not in stored
    for in_memory in (False, True):
        data = DemoDataset(path, split="all", in_memory=in_memory)
        np.testing.assert_allclose(data[0]["target_uv"], image_coordinates(targets[0], 32, stored[0]), atol=1e-6)
        assert np.abs(data[0]["target_uv"] - image_coordinates(targets[0], 32)).max() > 0.01


def test_egl_renderer_draws_the_same_geometry_or_falls_back_with_a_warning(make_env):
    tiny = make_env(image_size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        egl = make_env(image_size=32, renderer="egl")
    ran = egl.unwrapped.sim.renderer
    assert ran in ("egl", "tiny")
    assert (ran == "tiny") == any("falling back to renderer='tiny'" in str(w.message) for w in caught)
    a, _ = tiny.reset(seed=2)
    b, _ = egl.reset(seed=2)
    assert b["rgb"].shape == (32, 32, 3) and b["rgb"].dtype == np.uint8
    assert np.abs(a["depth"] - b["depth"]).mean() < 0.05  # metres: the same scene from the same camera


def test_egl_falls_back_to_tiny_with_a_warning_when_the_plugin_is_missing(monkeypatch, make_env):
    import vla_gym.envs.pybullet_sim as sim_module

    monkeypatch.setattr(sim_module.pkgutil, "get_loader", lambda name: None)
    with pytest.warns(UserWarning, match="EGL renderer could not load; falling back to renderer='tiny'"):
        env = make_env(image_size=16, renderer="egl")
    assert env.unwrapped.sim.renderer == "tiny"
    obs, _ = env.reset(seed=0)
    assert obs["rgb"].shape == (16, 16, 3)


def test_held_out_splits_names_the_test_sides():
    from vla_gym.data.format import env_config_dict, held_out_splits

    assert held_out_splits(env_config_dict("VLAPick-v0")) == []
    config = env_config_dict("VLAPick-v0", {"object_split": "test", "instruction_split": "test"})
    assert held_out_splits(config) == ["instruction_split='test'", "object_split='test'"]
