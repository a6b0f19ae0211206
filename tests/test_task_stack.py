"""The stack task: its success predicate on hand-placed states, reset options, split rules,
instructions, dense reward and the scripted stacker (which follows a nudged base)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.task_helpers import (
    TEST_IMAGE_SIZE,
    check_moving_or_held_target_is_not_success,
    body_name,
    instruction_words,
    place,
    run_expert,
    seed_with,
    settle,
    task_env_fixture,
)
from vla_gym.envs.experts.scripted import ScriptedExpert
from vla_gym.envs.experts.skills import CarryAbove
from vla_gym.envs.scene import COLOURS, HELD_OUT_COMBINATIONS, OBJECT_HALF_SIZE
from vla_gym.envs.tasks.stack import FLAT_SHAPES, REST_TOLERANCE, StackTask

ENV_ID = "VLAStack-v0"
SETTLE_STEPS = 6

stack_env = task_env_fixture(ENV_ID)


def _place_on(env, upper: str, lower: str, offset=(0.0, 0.0)) -> None:
    """Put body or role ``upper`` on top of ``lower``, centres ``offset`` (m, x/y) apart."""
    sim, lower_body = env.unwrapped.sim, body_name(env, lower)
    top = float(sim.aabb(lower_body)[1][2])
    place(env, upper, sim.base_position(lower_body)[:2] + np.asarray(offset), bottom=top)


def _free_xy(env) -> np.ndarray:
    """A table point (m) at least 0.1 m from every object: x/y of the scene's free corner."""
    sim = env.unwrapped.sim
    centres = [sim.base_position(f"object_{i}")[:2] for i in range(len(env.unwrapped.task.episode.objects))]
    grid = [np.array([x, y]) for x in np.linspace(0.36, 0.68, 9) for y in np.linspace(-0.26, 0.26, 14)]
    return max(grid, key=lambda xy: min(np.linalg.norm(xy - c) for c in centres))


# --- success predicate ------------------------------------------------------------------------
@pytest.mark.parametrize("offset", [(0.0, 0.0), (0.012, -0.01)])
def test_target_resting_on_the_base_succeeds(stack_env, offset):
    stack_env.reset(seed=0)
    _place_on(stack_env, "target", "base", offset)
    info = settle(stack_env, SETTLE_STEPS)
    assert info["is_success"] is True and info["subgoals_done"] == info["num_subgoals"] == 1


def test_target_beside_the_base_is_not_success(stack_env):
    stack_env.reset(seed=0)
    place(stack_env, "base", _free_xy(stack_env))
    base_xy = stack_env.unwrapped.role_position("base")[:2]
    place(stack_env, "target", base_xy + np.array([2 * OBJECT_HALF_SIZE + 0.005, 0.0]))  # touching its side
    info = settle(stack_env, SETTLE_STEPS)
    assert info["is_success"] is False and info["subgoals_done"] == 0


def test_wrong_object_and_swapped_stack_are_not_success(stack_env):
    seed, info = seed_with(
        stack_env, lambda i: sum(o["shape"] in FLAT_SHAPES for o in i["objects"] if o not in i["roles"].values()) > 0
    )
    task = stack_env.unwrapped.task
    roles = task.episode.roles
    other = next(
        f"object_{i}"
        for i, o in enumerate(task.episode.objects)
        if o.shape in FLAT_SHAPES and i not in (roles["target"].index, roles["base"].index)
    )
    _place_on(stack_env, "target", other)  # stacked on the wrong object
    info = settle(stack_env, SETTLE_STEPS)
    assert info["is_success"] is False
    assert task.bottom_height(roles["target"]) > REST_TOLERANCE  # it does rest on the other one
    stack_env.reset(seed=seed)
    _place_on(stack_env, "base", "target")  # the base on the target
    assert settle(stack_env, SETTLE_STEPS)["is_success"] is False


def test_base_lifted_off_the_table_is_not_success(stack_env):
    seed, info = seed_with(
        stack_env, lambda i: sum(o["shape"] == "cube" for o in i["objects"] if o not in i["roles"].values()) > 0
    )
    task = stack_env.unwrapped.task
    roles = task.episode.roles
    plinth = next(
        f"object_{i}"
        for i, o in enumerate(task.episode.objects)
        if o.shape == "cube" and i not in (roles["target"].index, roles["base"].index)
    )
    place(stack_env, plinth, _free_xy(stack_env))
    settle(stack_env, 2)
    _place_on(stack_env, "base", plinth)
    settle(stack_env, 2)
    _place_on(stack_env, "target", "base")
    info = settle(stack_env, SETTLE_STEPS)
    evaluation = task.evaluate()
    assert evaluation["on_top"] and not evaluation["base_on_table"]
    assert info["is_success"] is False


def test_a_moving_or_held_target_is_not_success(stack_env):
    # Held on top of the base by the expert's grip, just before it lets go: not yet success.
    check_moving_or_held_target_is_not_success(
        stack_env, lambda: _place_on(stack_env, "target", "base"), 2, "on_top", "on_top", StackTask.max_episode_steps
    )


# --- reset options and splits ---------------------------------------------------------------------
def test_role_options_rebind_target_and_base(stack_env):
    seed, info = seed_with(stack_env, lambda i: sum(o["shape"] in FLAT_SHAPES for o in i["objects"]) >= 3)
    flat = [o for o in info["objects"] if o["shape"] in FLAT_SHAPES and o not in info["roles"].values()]
    swap = {"target": info["roles"]["base"]["colour"], "base": info["target"]["colour"]}
    _, swapped = stack_env.reset(seed=seed, options=swap)
    assert swapped["roles"]["base"] == info["target"] and swapped["target"] == info["roles"]["base"]
    _, info2 = stack_env.reset(seed=seed, options={"base": flat[0]["colour"]})
    assert info2["roles"]["base"] == flat[0] and info2["objects"] == info["objects"]
    words = instruction_words(info2["instruction"])
    assert flat[0]["colour"] in words and info["target"]["colour"] in words


def test_absent_colour_sphere_and_one_body_for_two_roles_are_refused(stack_env):
    _, info = stack_env.reset(seed=2)
    absent = next(c for c in COLOURS if c not in [o["colour"] for o in info["objects"]])
    for role in ("target", "base"):
        with pytest.raises(ValueError, match=absent):
            stack_env.reset(seed=2, options={role: absent})
    with pytest.raises(ValueError, match="same body"):
        stack_env.reset(seed=2, options={"target": info["roles"]["base"]["colour"]})
    seed, info = seed_with(stack_env, lambda i: any(o["shape"] == "sphere" for o in i["objects"]))
    sphere = next(o["colour"] for o in info["objects"] if o["shape"] == "sphere")
    for role in ("target", "base"):
        with pytest.raises(ValueError, match=f"{sphere}.*sphere"):
            stack_env.reset(seed=seed, options={role: sphere})


def test_sampled_scenes_follow_the_object_split():
    task = StackTask(None)
    for seed in range(60):
        for split in ("train", "test"):
            num_objects = 2 + seed % 5
            episode = task.sample_scene(np.random.default_rng(seed), num_objects, split)
            target, base = episode.objects[episode.roles["target"].index], episode.objects[episode.roles["base"].index]
            assert len(episode.objects) == num_objects and not episode.fixtures
            assert episode.roles["target"] != episode.roles["base"]
            assert target.shape in FLAT_SHAPES and base.shape in FLAT_SHAPES
            pairs = {(o.colour, o.shape) for o in episode.objects}
            if split == "train":
                assert not pairs & HELD_OUT_COMBINATIONS
            else:
                assert (target.colour, target.shape) in HELD_OUT_COMBINATIONS
    with pytest.raises(ValueError, match="at least 2 objects"):
        task.sample_scene(np.random.default_rng(0), 1, "train")


@pytest.mark.parametrize("split", ["train", "test"])
def test_instruction_names_target_then_base(make_env, split):
    env = make_env(ENV_ID, image_size=TEST_IMAGE_SIZE, instruction_split=split)
    for seed in range(8):
        _, info = env.reset(seed=seed)
        words = instruction_words(info["instruction"])
        target, base = info["target"]["colour"], info["roles"]["base"]["colour"]
        assert target in words and base in words and words.index(target) < words.index(base)
        assert set(words) - set(COLOURS) <= StackTask.words(split)


# --- dense reward and the expert -----------------------------------------------------------------------
def test_expert_stacks_and_dense_reward_grows(make_env):
    env = make_env("VLAStackDense-v0", image_size=TEST_IMAGE_SIZE)
    for seed in range(5):
        env.reset(seed=seed)
        rewards, infos = run_expert(env, ScriptedExpert(env), StackTask.max_episode_steps)
        info = infos[-1]
        assert info["is_success"], f"seed {seed}: {info['instruction']}"
        assert rewards[-1] == 1.0 and all(0.0 <= r < 1.0 for r in rewards[:-1])
        assert rewards[-2] > 0.6 > rewards[0]


def test_expert_follows_a_nudged_base(stack_env):
    stack_env.reset(seed=3)
    unwrapped = stack_env.unwrapped
    expert = ScriptedExpert(stack_env)
    nudged = False
    for _ in range(StackTask.max_episode_steps):
        _, _, terminated, truncated, info = stack_env.step(expert.act())
        if not nudged and isinstance(expert.current_skill(), CarryAbove):
            base_xy = unwrapped.role_position("base")[:2]
            target_xy = unwrapped.role_position("target")[:2]
            away = (base_xy - target_xy) / np.linalg.norm(base_xy - target_xy)
            place(stack_env, "base", base_xy + 0.04 * np.array([-away[1], away[0]]))  # 4 cm sideways
            nudged = True
        if terminated or truncated:
            break
    assert nudged and info["is_success"]
