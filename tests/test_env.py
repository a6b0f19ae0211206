"""The pick env ids in depth: API conformance, seeding, options, bad input, rewards, vector envs.

Every other registered id gets the generic checks in ``tests/test_tasks.py``.
"""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pybullet as p
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from tests.conftest import ALL_ENV_IDS, assert_obs_equal
from vla_gym.envs import decode_instruction
from vla_gym.envs.experts import ScriptedExpert
from vla_gym.envs.scene import MIN_OBJECT_SPACING, PALETTE
from vla_gym.envs.spaces import AGENT_CAMERA, MAX_EE_STEP, PROPRIO_DIM, VIEWER_SIZE
from vla_gym.envs.tasks.pick import LIFT_HEIGHT, PickTask

MAX_EPISODE_STEPS = PickTask.max_episode_steps
PICK_ENV_IDS = ["VLAPick-v0", "VLAPickDense-v0"]


@pytest.fixture(params=PICK_ENV_IDS)
def env_id(request) -> str:
    """This module's tests run on the pick ids (overrides the fixture over every id)."""
    return request.param


def object_position(env, colour: str) -> np.ndarray:
    unwrapped = env.unwrapped
    return unwrapped.sim.base_position(f"object_{unwrapped.scene.index_of(colour)}")


def test_gymnasium_check_env(env_id, make_env):
    gym_check_env(make_env(env_id).unwrapped, skip_render_check=True)


def test_sb3_check_env(env_id, make_env):
    sb3_check_env(make_env(env_id), warn=True)


def test_spaces_and_first_observation(env_id, make_env):
    env = make_env(env_id)
    obs, info = env.reset(seed=0)
    assert env.action_space == gym.spaces.Box(-1, 1, (4,), np.float32)
    assert obs["rgb"].shape == (84, 84, 3) and obs["rgb"].dtype == np.uint8
    assert obs["depth"].shape == (84, 84, 1) and obs["depth"].dtype == np.float32
    assert AGENT_CAMERA.near <= obs["depth"].min() and obs["depth"].max() <= AGENT_CAMERA.far
    assert obs["proprio"].shape == (PROPRIO_DIM,)
    assert decode_instruction(obs["instruction"]) == info["instruction"]
    assert info["target"] in info["objects"] and info["is_success"] is False
    assert env.spec.max_episode_steps == MAX_EPISODE_STEPS
    assert info["task"] == "pick" and info["roles"] == {"target": info["target"]} and info["fixtures"] == []
    # The picture is not blank: the table, the objects and the robot show.
    assert len(np.unique(obs["rgb"].reshape(-1, 3), axis=0)) > 20


def test_image_size_kwarg(make_env):
    obs, _ = make_env("VLAPick-v0", image_size=64).reset(seed=0)
    assert obs["rgb"].shape == (64, 64, 3) and obs["depth"].shape == (64, 64, 1)


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_same_seed_same_episode(env_id, make_env, seed):
    env_a, env_b = make_env(env_id), make_env(env_id)
    # env_b has lived through other episodes first: no state may leak across resets.
    env_b.reset(seed=seed + 1)
    for _ in range(10):
        env_b.step(env_b.action_space.sample())
    obs_a, info_a = env_a.reset(seed=seed)
    obs_b, info_b = env_b.reset(seed=seed)
    assert_obs_equal(obs_a, obs_b)
    assert info_a == info_b
    actions = np.random.default_rng(seed).uniform(-1, 1, (25, 4)).astype(np.float32)
    for action in actions:
        out_a, out_b = env_a.step(action), env_b.step(action)
        assert_obs_equal(out_a[0], out_b[0])
        assert out_a[1:] == out_b[1:]


def test_contact_rich_episode_independent_of_history(make_env):
    """A grasp-and-lift episode is the same in a fresh env and in one that ran others.

    Random actions rarely touch anything; the expert grasps, which is where PyBullet's
    contact order would leak history without deterministic overlapping pairs.
    """
    def run(env, seed):
        policy = ScriptedExpert(env, noise_std=0.3, seed=seed)
        obs, _ = env.reset(seed=seed)
        trajectory, done = [obs["proprio"]], False
        while not done:
            obs, _, terminated, truncated, _ = env.step(policy.predict(obs, deterministic=False)[0])
            trajectory.append(obs["proprio"])
            done = terminated or truncated
        return np.stack(trajectory)

    lived = make_env()
    for seed in (1, 2, 3):
        run(lived, seed + 100)
        np.testing.assert_array_equal(run(lived, seed), run(make_env(), seed))


def test_different_seeds_differ(make_env):
    env = make_env()
    infos = [env.reset(seed=s)[1] for s in range(5)]
    assert len({str(i["objects"]) for i in infos}) > 1


def test_recreation_from_spec(env_id, make_env):
    env = make_env(env_id, image_size=64)
    spec = pickle.loads(pickle.dumps(env.spec))
    clone = make_env(spec)
    assert clone.unwrapped.config == env.unwrapped.config
    assert_obs_equal(env.reset(seed=3)[0], clone.reset(seed=3)[0])


def test_async_vector_env(env_id):
    envs = gym.make_vec(env_id, num_envs=2, vectorization_mode="async")
    try:
        obs, info = envs.reset(seed=[0, 1])
        assert obs["rgb"].shape == (2, 84, 84, 3)
        # Worker processes build the same episode as this process for the same seed.
        local = gym.make(env_id)
        local_obs, _ = local.reset(seed=1)
        local.close()
        assert_obs_equal({k: v[1] for k, v in obs.items()}, local_obs)
        texts = decode_instruction(obs["instruction"])
        assert list(texts) == list(info["instruction"])
        for _ in range(3):
            obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
        assert reward.shape == (2,) and obs["proprio"].shape == (2, PROPRIO_DIM)
    finally:
        envs.close()


def test_many_envs_in_one_process_and_close(make_env):
    envs = [make_env() for _ in range(3)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
        env.step(env.action_space.sample())
    client_id = envs[0].unwrapped.sim.client._client
    envs[0].close()
    assert not p.isConnected(physicsClientId=client_id)
    envs[0].close()  # closing twice is harmless
    envs[1].step(envs[1].action_space.sample())  # the others live on


def test_scene_has_distinct_spaced_distractors(make_env):
    env = make_env()
    for seed in range(30):
        _, info = env.reset(seed=seed)
        colours = [o["colour"] for o in info["objects"]]
        assert 3 <= len(colours) <= 5 and len(set(colours)) == len(colours)
        assert set(colours) <= set(PALETTE)
        xy = np.array([spec.xy for spec in env.unwrapped.scene.objects])
        dists = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy))
        assert dists.min() >= MIN_OBJECT_SPACING


def test_num_objects_kwarg(make_env):
    env = make_env(num_objects=6)
    assert len(env.reset(seed=0)[1]["objects"]) == 6


# --- reset options ----------------------------------------------------------------------
def test_option_target_changes_goal_not_scene(env_id, make_env):
    env = make_env(env_id)
    obs, info = env.reset(seed=11)
    other = next(o for o in info["objects"] if o != info["target"])
    obs2, info2 = env.reset(seed=11, options={"target": other["colour"]})
    assert info2["objects"] == info["objects"]
    assert info2["target"] == other
    assert other["colour"] in info2["instruction"]
    np.testing.assert_array_equal(obs["rgb"], obs2["rgb"])  # same scene, same picture


def test_option_instruction_replaces_text(make_env):
    env = make_env()
    text = "could you please hand me the thing"
    obs, info = env.reset(seed=2, options={"instruction": text})
    assert info["instruction"] == text and decode_instruction(obs["instruction"]) == text
    _, info_plain = env.reset(seed=2)
    assert info_plain["objects"] == info["objects"] and info_plain["target"] == info["target"]


def test_option_unknown_target_colour(make_env):
    env = make_env()
    _, info = env.reset(seed=0)
    absent = next(c for c in PALETTE if c not in [o["colour"] for o in info["objects"]])
    with pytest.raises(ValueError, match="colours present") as err:
        env.reset(seed=0, options={"target": absent})
    for obj in info["objects"]:
        assert obj["colour"] in str(err.value)


@pytest.mark.parametrize("options", [{"goal": "red"}, {"instruction": ""}, {"instruction": "x" * 200}])
def test_bad_options(make_env, options):
    env = make_env()
    obs, info = env.reset(seed=9)
    with pytest.raises(ValueError):
        env.reset(seed=0, options=options)
    # The failed reset left the running episode untouched.
    assert env.unwrapped.scene.objects and env.unwrapped.instruction == info["instruction"]
    assert_obs_equal(env.unwrapped._observation(), obs)


# --- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "action, message",
    [
        (np.zeros(3), "shape"),
        (np.zeros((1, 4)), "shape"),
        (np.zeros(5), "shape"),
        (np.array([0.0, np.nan, 0.0, 0.0]), "finite"),
        (np.array([np.inf, 0.0, 0.0, 0.0]), "finite"),
    ],
)
def test_bad_actions_raise(env_id, make_env, action, message):
    env = make_env(env_id)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)


def test_out_of_range_actions_are_clipped(make_env):
    env_a, env_b = make_env(), make_env()
    env_a.reset(seed=4)
    env_b.reset(seed=4)
    obs_a = env_a.step(np.array([5.0, -3.0, 2.0, 9.0]))[0]
    obs_b = env_b.step(np.array([1.0, -1.0, 1.0, 1.0]))[0]
    assert_obs_equal(obs_a, obs_b)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"colour_count": 3}, TypeError),
        ({"image_size": 8}, ValueError),
        ({"num_objects": 9}, ValueError),
        ({"num_objects": (4, 3)}, ValueError),
        ({"reward_type": "shaped"}, ValueError),
        ({"instruction_split": "val"}, ValueError),
        ({"robot_mesh": "medium"}, ValueError),
        ({"renderer": "vulkan"}, ValueError),
        ({"render_mode": "ansi"}, ValueError),
    ],
)
def test_bad_kwargs_raise(kwargs, error):
    with pytest.raises(error, match="|".join(kwargs)):
        gym.make("VLAPick-v0", **kwargs)


# --- success and rewards ------------------------------------------------------------------
def test_wrong_object_lift_is_not_success(env_id, make_env):
    env = make_env(env_id)
    obs, info = env.reset(seed=5)
    wrong = next(o["colour"] for o in info["objects"] if o != info["target"])
    policy = ScriptedExpert(env, roles={"target": wrong})
    unwrapped = env.unwrapped
    lifted = False
    for _ in range(MAX_EPISODE_STEPS):
        obs, reward, terminated, truncated, info = env.step(policy.predict(obs)[0])
        lo, _ = unwrapped.sim.aabb(f"object_{unwrapped.scene.index_of(wrong)}")
        lifted |= lo[2] >= 2 * LIFT_HEIGHT
        assert not info["is_success"] and not terminated and reward < 1.0
        if truncated:
            break
    assert lifted, "the scripted expert should have lifted the wrong object high"
    # The grasp holds to the end of the episode.
    lo, _ = unwrapped.sim.aabb(f"object_{unwrapped.scene.index_of(wrong)}")
    assert lo[2] >= 2 * LIFT_HEIGHT


def drive_ee_to(env, goal: np.ndarray, steps: int, grip: float = -1.0) -> None:
    """Move the end effector towards ``goal`` (m) with proportional actions."""
    for _ in range(steps):
        delta = (goal - env.unwrapped.robot.ee_position()) / MAX_EE_STEP
        env.step(np.array([*np.clip(delta, -1, 1), grip], dtype=np.float32))


def test_resting_objects_wake_up_when_pushed(make_env):
    # Objects start asleep (they are spawned at rest); a push must still move them.
    env = make_env(num_objects=2)
    _, info = env.reset(seed=3)
    colour = info["objects"][0]["colour"]
    start = object_position(env, colour)
    behind = start + np.array([-0.09, 0.0, 0.0])
    # Closed fingers, so the object cannot pass between them.
    drive_ee_to(env, behind + np.array([0.0, 0.0, 0.1]), 12, grip=1.0)
    drive_ee_to(env, behind, 8, grip=1.0)
    drive_ee_to(env, start + np.array([0.08, 0.0, 0.0]), 10, grip=1.0)
    moved = object_position(env, colour) - start
    assert moved[0] > 0.03, f"the pushed object moved only {moved} m"


def test_expert_success_terminates_with_reward_one(env_id, make_env):
    env = make_env(env_id)
    obs, _ = env.reset(seed=6)
    policy = ScriptedExpert(env)
    for _ in range(MAX_EPISODE_STEPS):
        obs, reward, terminated, truncated, info = env.step(policy.predict(obs)[0])
        if terminated or truncated:
            break
    assert terminated and not truncated and info["is_success"] and reward == 1.0
    task = env.unwrapped.task
    assert task.bottom_height(task.episode.roles["target"]) >= LIFT_HEIGHT


def test_dense_reward_in_unit_interval_and_informative(make_env):
    env = make_env("VLAPickDense-v0")
    expert_rewards, random_rewards = [], []
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        policy = ScriptedExpert(env)
        for _ in range(MAX_EPISODE_STEPS):
            obs, r, terminated, truncated, _ = env.step(policy.predict(obs)[0])
            expert_rewards.append(r)
            if terminated or truncated:
                break
        env.reset(seed=seed)
        for _ in range(20):
            random_rewards.append(env.step(env.action_space.sample())[1])
    rewards = np.array(expert_rewards + random_rewards)
    assert rewards.min() >= 0.0 and rewards.max() <= 1.0
    assert np.mean(expert_rewards) > np.mean(random_rewards) + 0.1


def test_sparse_reward_is_binary(make_env):
    env = make_env("VLAPick-v0")
    env.reset(seed=0)
    rewards = {env.step(env.action_space.sample())[1] for _ in range(30)}
    assert rewards <= {0.0, 1.0}


# --- rendering -----------------------------------------------------------------------------
def test_rgb_array_render(make_env):
    env = make_env(render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (VIEWER_SIZE[1], VIEWER_SIZE[0], 3) and frame.dtype == np.uint8


def test_full_robot_mesh_renders_the_same_scene(make_env):
    low = make_env(robot_mesh="lowpoly").reset(seed=0)[0]
    full = make_env(robot_mesh="full").reset(seed=0)[0]
    # Same geometry and camera: depth agrees almost everywhere, only the arm's surface differs.
    close = np.abs(low["depth"] - full["depth"]) < 0.01
    assert 0.85 < close.mean() < 1.0


@pytest.mark.parametrize("env_id_", ALL_ENV_IDS)
def test_env_ids_registered(env_id_):
    assert env_id_ in gym.registry
