"""The push task: its success predicate on hand-placed states, its feasibility sampling,
reset options, split rules, dense reward and the scripted pusher."""

from __future__ import annotations

import numpy as np
import pytest

from tests.task_helpers import (
    NEUTRAL,
    TEST_IMAGE_SIZE,
    instruction_words,
    place,
    run_expert,
    seed_with,
    settle,
    task_env_fixture,
    teleport,
)
from vla_gym.envs.experts.scripted import ScriptedExpert
from vla_gym.envs.scene import COLOURS, HELD_OUT_COMBINATIONS, ZONE_HALF_SIZE, FixtureSpec, ObjectSpec
from vla_gym.envs.tasks.push import (
    CORRIDOR_HALF_WIDTH,
    GOAL_SHAPES,
    MAX_LIFT,
    MIN_PUSH_DISTANCE,
    PushTask,
    push_feasible,
)

ENV_ID = "VLAPush-v0"
SETTLE_STEPS = 4
#: Seeds searched for a scene a test needs.
PUSH_SCENE_SEEDS = range(60)

push_env = task_env_fixture(ENV_ID)


def _place(env, role_or_body: str, xy, height: float | None = None) -> None:
    """Teleport a body (a role name, or a body name) to ``xy`` (m), resting or at ``height`` (m)."""
    if height is None:
        place(env, role_or_body, xy, drop=0.0)
    else:
        teleport(env, role_or_body, [*xy, height])


def _settle(env, steps: int = SETTLE_STEPS) -> dict:
    """:func:`~tests.task_helpers.settle`, every step even past the end of the episode."""
    return settle(env, steps, stop_when_terminated=False)


def _zone_xy(env, role: str = "zone") -> np.ndarray:
    task = env.unwrapped.task
    return np.asarray(task.episode.spec_of(task.episode.roles[role]).xy)


# --- success predicate ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "offset, inside", [((0.0, 0.0), True), ((0.05, -0.05), True), ((ZONE_HALF_SIZE + 0.012, 0.0), False)]
)
def test_target_slid_into_the_zone_succeeds(push_env, offset, inside):
    push_env.reset(seed=0)
    _place(push_env, "target", _zone_xy(push_env) + np.asarray(offset))
    info = _settle(push_env)
    assert info["is_success"] is inside


def test_target_dropped_into_the_zone_is_a_carry_not_a_push(push_env):
    push_env.reset(seed=0)
    _place(push_env, "target", _zone_xy(push_env), height=0.12)
    info = _settle(push_env, 12)  # it falls and comes to rest inside the zone
    task = push_env.unwrapped.task
    assert task.bottom_height(task.episode.roles["target"]) < MAX_LIFT
    assert task.evaluate()["inside"] and task.evaluate()["lifted"]
    assert info["is_success"] is False


def test_another_object_or_another_zone_is_not_success(push_env):
    seed, info = seed_with(push_env, lambda i: len(i["fixtures"]) == 2 and len(i["objects"]) >= 3, PUSH_SCENE_SEEDS)
    task = push_env.unwrapped.task
    zone = task.episode.roles["zone"]
    other_zone = next(i for i in range(len(task.episode.fixtures)) if i != zone.index)
    _place(push_env, "target", np.asarray(task.episode.fixtures[other_zone].xy))
    assert _settle(push_env)["is_success"] is False
    push_env.reset(seed=seed)
    other = next(i for i in range(len(task.episode.objects)) if i != task.episode.roles["target"].index)
    _place(push_env, f"object_{other}", _zone_xy(push_env))
    assert _settle(push_env)["is_success"] is False


def test_dense_reward_grows_as_the_target_nears_the_zone_and_drops_once_lifted(make_env):
    env = make_env("VLAPushDense-v0", image_size=TEST_IMAGE_SIZE)
    env.reset(seed=1)
    zone = _zone_xy(env)
    start = env.unwrapped.role_position("target")[:2]
    outward = (start - zone) / np.linalg.norm(start - zone)
    near = 0.09  # m from the zone centre: just outside the zone's corner (0.085)
    rewards = []
    for distance in (np.linalg.norm(start - zone), (np.linalg.norm(start - zone) + near) / 2, near):
        _place(env, "target", zone + distance * outward)  # along the sampled, clear corridor
        rewards.append(env.step(NEUTRAL)[1])
    assert all(0.0 <= r < 1.0 for r in rewards) and rewards[0] < rewards[1] < rewards[2]
    _place(env, "target", zone + near * outward, height=0.1)
    assert env.step(NEUTRAL)[1] < 0.3  # the push term is gone for good


# --- sampling ---------------------------------------------------------------------------------
def test_sampled_pushes_are_feasible_and_follow_the_object_split():
    task = PushTask(None)
    for seed in range(60):
        for split in ("train", "test"):
            episode = task.sample_scene(np.random.default_rng(seed), 6, split)
            target, zone = episode.roles["target"], episode.roles["zone"]
            spec = episode.objects[target.index]
            assert zone.kind == "fixture" and episode.fixtures[zone.index].kind == "zone"
            assert 1 <= len(episode.fixtures) <= 2 and spec.shape in GOAL_SHAPES
            assert push_feasible(episode.objects, episode.fixtures, target.index, zone.index)
            assert np.linalg.norm(np.subtract(spec.xy, episode.fixtures[zone.index].xy)) >= MIN_PUSH_DISTANCE
            pairs = {(o.colour, o.shape) for o in episode.objects}
            if split == "train":
                assert not pairs & HELD_OUT_COMBINATIONS
            else:
                assert (spec.colour, spec.shape) in HELD_OUT_COMBINATIONS


def test_an_object_in_the_corridor_makes_the_push_infeasible():
    zone = [FixtureSpec("yellow", "zone", (0.62, 0.0))]
    target = ObjectSpec("red", "cube", (0.40, 0.0), 0.0)
    clear = ObjectSpec("blue", "cube", (0.50, CORRIDOR_HALF_WIDTH + 0.01), 0.0)
    blocking = ObjectSpec("blue", "cube", (0.50, CORRIDOR_HALF_WIDTH - 0.01), 0.0)
    behind = ObjectSpec("blue", "cube", (0.40 - 0.075, 0.05), 0.0)  # beside the approach point
    assert push_feasible([target, clear], zone, 0, 0)
    assert not push_feasible([target, blocking], zone, 0, 0)
    assert not push_feasible([target, behind], zone, 0, 0)
    assert not push_feasible([ObjectSpec("red", "cube", (0.50, 0.0), 0.0)], zone, 0, 0)  # too close


# --- reset options and instructions ---------------------------------------------------------------
def test_role_options_rebind_target_and_zone(push_env):
    seed, info = seed_with(
        push_env,
        lambda i: len(i["fixtures"]) == 2 and any(o["shape"] in GOAL_SHAPES and o != i["target"] for o in i["objects"]),
        PUSH_SCENE_SEEDS,
    )
    other = next(o for o in info["objects"] if o["shape"] in GOAL_SHAPES and o != info["target"])
    other_zone = next(f for f in info["fixtures"] if f != info["roles"]["zone"])
    _, info2 = push_env.reset(seed=seed, options={"target": other["colour"], "zone": other_zone["colour"]})
    assert info2["target"] == other and info2["roles"]["zone"] == other_zone
    assert info2["objects"] == info["objects"] and info2["fixtures"] == info["fixtures"]
    words = info2["instruction"].split()
    assert other["colour"] in words and other_zone["colour"] in words


def test_absent_colour_and_sphere_target_are_refused(push_env):
    _, info = push_env.reset(seed=2)
    absent = next(c for c in COLOURS if c not in [o["colour"] for o in info["objects"]])
    with pytest.raises(ValueError, match=absent):
        push_env.reset(seed=2, options={"target": absent})
    absent_zone = next(c for c in COLOURS if c not in [f["colour"] for f in info["fixtures"]])
    with pytest.raises(ValueError, match=absent_zone):
        push_env.reset(seed=2, options={"zone": absent_zone})
    seed, info = seed_with(push_env, lambda i: any(o["shape"] == "sphere" for o in i["objects"]), PUSH_SCENE_SEEDS)
    sphere = next(o["colour"] for o in info["objects"] if o["shape"] == "sphere")
    with pytest.raises(ValueError, match=f"{sphere}.*sphere"):
        push_env.reset(seed=seed, options={"target": sphere})


@pytest.mark.parametrize("split", ["train", "test"])
def test_instruction_names_target_and_zone(make_env, split):
    env = make_env(ENV_ID, image_size=TEST_IMAGE_SIZE, instruction_split=split)
    for seed in range(8):
        _, info = env.reset(seed=seed)
        words = instruction_words(info["instruction"])
        assert info["target"]["colour"] in words and info["roles"]["zone"]["colour"] in words
        assert set(words) - set(COLOURS) <= PushTask.words(split)


# --- the expert ---------------------------------------------------------------------------------------
def test_expert_pushes_without_lifting(push_env):
    for seed in range(5):
        push_env.reset(seed=seed)
        info = run_expert(push_env, ScriptedExpert(push_env), PushTask.max_episode_steps)[1][-1]
        assert info["is_success"], f"seed {seed}: {info['instruction']}"
        assert push_env.unwrapped.task.peak_bottom <= MAX_LIFT
