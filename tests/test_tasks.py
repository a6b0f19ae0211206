"""Generic checks over every registered env id and every task: API conformance, seeding,
options, instruction and object splits, dense rewards, the multi-task env and the
execution shifts. Each task's own predicates are tested in ``tests/test_task_<name>.py``."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from tests.conftest import assert_obs_equal
from vla_gym.envs import ENV_IDS, TASKS, decode_instruction
from vla_gym.envs.registration import MAX_EPISODE_STEPS, MULTI_TASK_ENV_ID, TASK_ENV_IDS
from vla_gym.envs.scene import COLOURS, HELD_OUT_COMBINATIONS, HELD_OUT_RECEPTACLES, RECEPTACLES

TASK_NAMES = sorted(TASKS)
SPLIT_SEEDS = range(40)


@pytest.fixture(params=TASK_NAMES)
def task(request) -> str:
    return request.param


def test_every_task_has_a_sparse_and_a_dense_id():
    for task, env_id in TASK_ENV_IDS.items():
        assert ENV_IDS[env_id] == {"tasks": task, "reward_type": "sparse"}
        assert ENV_IDS[env_id.replace("-v0", "Dense-v0")] == {"tasks": task, "reward_type": "dense"}
        assert MAX_EPISODE_STEPS[env_id] == TASKS[task].max_episode_steps
    assert MAX_EPISODE_STEPS[MULTI_TASK_ENV_ID] == max(t.max_episode_steps for t in TASKS.values())


def test_gymnasium_and_sb3_check_env(env_id, make_env):
    gym_check_env(make_env(env_id).unwrapped, skip_render_check=True)
    sb3_check_env(make_env(env_id), warn=False)


def test_same_seed_same_episode(env_id, make_env):
    env_a, env_b = make_env(env_id), make_env(env_id)
    env_b.reset(seed=8)  # env_b lived through another episode first
    for _ in range(5):
        env_b.step(env_b.action_space.sample())
    obs_a, info_a = env_a.reset(seed=7)
    obs_b, info_b = env_b.reset(seed=7)
    assert_obs_equal(obs_a, obs_b)
    assert info_a == info_b
    for action in np.random.default_rng(7).uniform(-1, 1, (12, 4)).astype(np.float32):
        out_a, out_b = env_a.step(action), env_b.step(action)
        assert_obs_equal(out_a[0], out_b[0])
        assert out_a[1:] == out_b[1:]


def test_info_describes_the_episode(env_id, make_env):
    obs, info = make_env(env_id).reset(seed=3)
    assert info["task"] in TASKS and decode_instruction(obs["instruction"]) == info["instruction"]
    assert info["roles"]["target"] == info["target"] and info["target"] in info["objects"]
    for role in info["roles"].values():
        assert role in info["objects"] or role in info["fixtures"]
    assert info["subgoals_done"] == 0 and info["num_subgoals"] >= 1 and info["is_success"] is False
    if ENV_IDS[env_id]["tasks"] != "all":
        assert info["task"] == ENV_IDS[env_id]["tasks"]


def test_option_target_changes_goal_not_scene(task, make_env):
    env = make_env(TASK_ENV_IDS[task])
    for seed in range(10):
        obs, info = env.reset(seed=seed)
        others = [o for o in info["objects"] if o not in info["roles"].values()]
        for other in others:
            try:
                obs2, info2 = env.reset(seed=seed, options={"target": other["colour"]})
            except ValueError as err:  # a task may refuse a target it cannot describe uniquely
                assert other["colour"] in str(err)
                continue
            assert info2["objects"] == info["objects"] and info2["fixtures"] == info["fixtures"]
            assert info2["target"] == other and info2["instruction"] != info["instruction"]
            if task != "spatial_pick":  # which names its target by a relation, not by colour
                assert other["colour"] in info2["instruction"]
            np.testing.assert_array_equal(obs["rgb"], obs2["rgb"])
            return
    pytest.fail(f"no seed of {task} let the target option pick another object")


def test_options_are_checked_before_the_sim(task, make_env):
    env = make_env(TASK_ENV_IDS[task])
    obs, info = env.reset(seed=2)
    absent = next(c for c in COLOURS if c not in [o["colour"] for o in info["objects"]])
    for options in ({"target": absent}, {"goal": "red"}, {"task": task}, {"instruction": ""}):
        with pytest.raises(ValueError):
            env.reset(seed=2, options=options)
    with pytest.raises(TypeError, match="dict"):
        env.reset(seed=2, options="notadict")
    assert_obs_equal(env.unwrapped._observation(), obs)  # the running episode is untouched


# --- language splits ---------------------------------------------------------------------
def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_instruction_splits_share_no_test_word(task, make_env):
    train_words, test_words = TASKS[task].words("train"), TASKS[task].words("test")
    test_only = test_words - train_words
    assert test_only, f"{task}: the test split has no word of its own"
    train_env = make_env(TASK_ENV_IDS[task])
    test_env = make_env(TASK_ENV_IDS[task], instruction_split="test")
    for seed in SPLIT_SEEDS:
        train_text = train_env.reset(seed=seed)[1]["instruction"]
        test_text = test_env.reset(seed=seed)[1]["instruction"]
        assert words(train_text) <= train_words | set(COLOURS), train_text
        assert not words(train_text) & test_only, train_text
        assert words(test_text) <= test_words | set(COLOURS), test_text
        assert words(test_text) & test_only, f"{test_text!r} has no test-only word"
        assert len(test_text.encode()) <= 128 and len(train_text.encode()) <= 128


def test_object_split_holds_out_pairs(task, make_env):
    train_env = make_env(TASK_ENV_IDS[task], num_objects=6)
    test_env = make_env(TASK_ENV_IDS[task], object_split="test")
    for seed in SPLIT_SEEDS:
        info = train_env.reset(seed=seed)[1]
        assert not {(o["colour"], o["shape"]) for o in info["objects"]} & HELD_OUT_COMBINATIONS
        assert not {(f["colour"], f["kind"]) for f in info["fixtures"]} & HELD_OUT_RECEPTACLES
        info = test_env.reset(seed=seed)[1]
        assert (info["target"]["colour"], info["target"]["shape"]) in HELD_OUT_COMBINATIONS
        for role in info["roles"].values():
            if role.get("kind") in RECEPTACLES and role is not info["target"]:
                assert (role["colour"], role["kind"]) in HELD_OUT_RECEPTACLES or task == "rearrange"


# --- rewards -------------------------------------------------------------------------------
def test_dense_reward_in_unit_interval(task, make_env):
    env = make_env(TASK_ENV_IDS[task].replace("-v0", "Dense-v0"))
    env.reset(seed=1)
    rewards = [env.step(env.action_space.sample())[1] for _ in range(15)]
    assert all(0.0 <= r <= 1.0 for r in rewards) and len(set(rewards)) > 1


# --- the multi-task env ----------------------------------------------------------------------
def test_multi_task_draws_every_task_and_truncates_at_its_own_limit(make_env):
    env = make_env(MULTI_TASK_ENV_ID)
    seen = {env.reset(seed=s)[1]["task"] for s in range(60)}
    assert seen == set(TASKS)
    _, info = env.reset(seed=0, options={"task": "pick"})
    assert info["task"] == "pick"
    for step in range(1, TASKS["pick"].max_episode_steps + 1):
        _, _, terminated, truncated, _ = env.step(np.zeros(4, np.float32))
        assert not terminated and truncated == (step == TASKS["pick"].max_episode_steps)


def test_multi_task_subset_and_bad_tasks(make_env):
    env = make_env(MULTI_TASK_ENV_ID, tasks=["pick", TASK_NAMES[-1]])
    assert {env.reset(seed=s)[1]["task"] for s in range(20)} == {"pick", TASK_NAMES[-1]}
    with pytest.raises(ValueError, match="task"):
        env.reset(seed=0, options={"task": "juggle"})
    for bad in ("juggle", [], ["pick", "pick"], 3):
        with pytest.raises(ValueError, match="tasks"):
            gym.make(MULTI_TASK_ENV_ID, tasks=bad)


# --- execution shifts ------------------------------------------------------------------------
def test_start_pose_shift_moves_the_arm_not_the_scene(make_env):
    plain, shifted = make_env(), make_env(execution_shift="start_pose")
    obs_a, info_a = plain.reset(seed=4)
    obs_b, info_b = shifted.reset(seed=4)
    assert info_a == info_b
    assert np.linalg.norm(obs_a["proprio"][:3] - obs_b["proprio"][:3]) > 0.02


def test_perturb_shift_pushes_the_target_once(make_env):
    env = make_env(execution_shift="perturb")
    moved = 0
    for seed in range(6):
        env.reset(seed=seed)
        start = env.unwrapped.role_position("target")
        for _ in range(14):
            env.step(np.array([0.0, 0.0, 0.0, -1.0], np.float32))
        moved += np.linalg.norm(env.unwrapped.role_position("target")[:2] - start[:2]) > 0.02
    assert moved >= 4


@pytest.mark.parametrize("value", ["teleport", ["start_pose", "x"], 1.5])
def test_bad_execution_shift(value):
    with pytest.raises(ValueError, match="execution_shift"):
        gym.make("VLAPick-v0", execution_shift=value)


def test_goal_points_give_the_object_to_move_and_where_it_must_go(task, make_env):
    """Privileged labels of BC's auxiliary losses: row 0 is the object the instruction
    moves, row 1 a place that fits the task's success predicate."""
    env = make_env(TASK_ENV_IDS[task], image_size=32)
    for seed in range(3):
        env.reset(seed=seed)
        base = env.unwrapped
        points = base.goal_points()
        assert points.shape == (2, 3) and points.dtype == np.float32 and np.isfinite(points).all()
        np.testing.assert_allclose(points[0], base.role_position("target"), atol=1e-6)
        episode = base.task.episode
        half_height = episode.spec_of(episode.roles["target"]).half_height
        if task in ("pick", "spatial_pick"):  # straight above the object, lifted clear of the table
            np.testing.assert_allclose(points[1, :2], points[0, :2], atol=1e-6)
            assert points[1, 2] - half_height >= 0.05
        elif task == "push":  # the zone's centre, at the object's height
            zone = episode.spec_of(episode.roles["zone"])
            assert zone.contains_xy(points[1]) and points[1, 2] == pytest.approx(points[0, 2])
        elif task == "stack":  # on top of the base
            base_xy = base.role_position("base")[:2]
            np.testing.assert_allclose(points[1, :2], base_xy, atol=1e-6)
            assert points[1, 2] > base.role_position("base")[2] + half_height
        else:  # place, rearrange: resting on the receptacle's floor
            fixture = episode.spec_of(episode.roles["receptacle"])
            assert fixture.contains_xy(points[1])
            assert points[1, 2] == pytest.approx(fixture.floor_height + half_height)
