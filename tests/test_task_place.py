"""The place task: its success predicate on hand-placed states (the right object resting in
the right receptacle, released and still), reset options, split rules, instructions, dense
reward and the scripted placer."""

from __future__ import annotations

import numpy as np
import pybullet as p
import pytest

from tests.task_helpers import (
    TEST_IMAGE_SIZE,
    check_moving_or_held_target_is_not_success,
    instruction_words,
    place,
    place_in,
    run_expert,
    seed_with,
    settle,
    spec,
    task_env_fixture,
)
from vla_gym.envs.experts.scripted import ScriptedExpert
from vla_gym.envs.scene import COLOURS, HELD_OUT_COMBINATIONS, HELD_OUT_RECEPTACLES, RECEPTACLES
from vla_gym.envs.tasks.base import Role
from vla_gym.envs.tasks.place import NUM_RECEPTACLES, REST_TOLERANCE, PlaceTask, lowest_point, object_in_receptacle

ENV_ID = "VLAPlace-v0"
SETTLE_STEPS = 8

place_env = task_env_fixture(ENV_ID)


def _other_fixture(env) -> str:
    receptacle = env.unwrapped.task.episode.roles["receptacle"].index
    return next(f"fixture_{i}" for i in range(NUM_RECEPTACLES) if i != receptacle)


def _other_object(env) -> str:
    target = env.unwrapped.task.episode.roles["target"].index
    return next(f"object_{i}" for i in range(len(env.unwrapped.task.episode.objects)) if i != target)


# --- success predicate ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", RECEPTACLES)
@pytest.mark.parametrize("offset", [(0.0, 0.0), (0.01, -0.008)])
def test_target_resting_in_the_receptacle_succeeds(place_env, kind, offset):
    seed_with(place_env, lambda i: i["roles"]["receptacle"]["kind"] == kind)
    place_in(place_env, "target", "receptacle", offset)
    info = settle(place_env, SETTLE_STEPS)
    assert info["is_success"] is True and info["subgoals_done"] == info["num_subgoals"] == 1


def test_wrong_receptacle_or_wrong_object_is_not_success(place_env):
    place_env.reset(seed=0)
    task = place_env.unwrapped.task
    other_fixture = _other_fixture(place_env)
    place_in(place_env, "target", other_fixture)
    info = settle(place_env, SETTLE_STEPS)
    assert info["is_success"] is False
    assert object_in_receptacle(task, "target", Role("fixture", int(other_fixture.split("_")[1])))  # placed, elsewhere
    place_env.reset(seed=0)
    other_object = _other_object(place_env)
    place_in(place_env, other_object, "receptacle")
    info = settle(place_env, SETTLE_STEPS)
    assert info["is_success"] is False
    assert object_in_receptacle(task, Role("object", int(other_object.split("_")[1])), "receptacle")


def test_target_beside_or_on_top_of_something_in_the_receptacle_is_not_success(place_env):
    place_env.reset(seed=0)
    receptacle = spec(place_env, "receptacle")
    beside = np.asarray(receptacle.xy) + np.array([receptacle.inner_radius + 0.04, 0.0])  # on the table, just outside
    place(place_env, "target", beside)
    assert settle(place_env, SETTLE_STEPS)["is_success"] is False
    # On top of a cube that rests in the receptacle: inside its footprint, but not on its floor.
    def fits(info: dict) -> bool:
        first = info["objects"][0]
        return info["target"]["shape"] != "sphere" and first["shape"] == "cube" and info["target"] != first

    seed_with(place_env, fits)
    task, receptacle = place_env.unwrapped.task, spec(place_env, "receptacle")
    place_in(place_env, "object_0", "receptacle")
    settle(place_env, 3)
    place(place_env, "target", receptacle.xy, bottom=float(place_env.unwrapped.sim.aabb("object_0")[1][2]))
    info = settle(place_env, SETTLE_STEPS)
    evaluation = task.evaluate()
    assert evaluation["inside"] and not evaluation["resting"] and info["is_success"] is False
    assert lowest_point(task, task.episode.roles["target"]) > receptacle.floor_height + REST_TOLERANCE


def test_a_moving_or_held_target_is_not_success(place_env):
    # Held inside the receptacle by the expert's grip, before it lets go: not yet success.
    check_moving_or_held_target_is_not_success(
        place_env, lambda: place_in(place_env, "target", "receptacle"), 3, "resting", "inside",
        PlaceTask.max_episode_steps,
    )


def test_a_cylinder_lying_on_its_side_in_a_bowl_rests_there(place_env):
    """Resting is judged by the exact lowest point (PyBullet's box of a lying cylinder can be loose)."""
    def fits(info: dict) -> bool:
        shapes = [o["shape"] for o in info["objects"]]
        return info["roles"]["receptacle"]["kind"] == "bowl" and "cylinder" in shapes

    seed, info = seed_with(place_env, fits)
    cylinder = next(c["colour"] for c in info["objects"] if c["shape"] == "cylinder")
    place_env.reset(seed=seed, options={"target": cylinder})
    lying = p.getQuaternionFromEuler((np.pi / 2, 0.0, 0.3))
    place_in(place_env, "target", "receptacle", orientation=lying)
    info = settle(place_env, 12)
    task = place_env.unwrapped.task
    target = task.episode.roles["target"]
    floor = spec(place_env, "receptacle").floor_height
    assert abs(lowest_point(task, target) - floor) < 0.002
    client = task.world.sim.client
    orientation = client.getBasePositionAndOrientation(task.world.sim.bodies[target.body_name])[1]
    assert abs(client.getMatrixFromQuaternion(orientation)[8]) < 0.1  # its axis still lies flat
    assert info["is_success"] is True


# --- reset options and splits ---------------------------------------------------------------------
def _named_in_order(text: str, first: str, second: str) -> bool:
    """Whether colour ``first`` is named before the last mention of colour ``second``."""
    words = instruction_words(text)
    return first in words and second in words and words.index(first) < len(words) - 1 - words[::-1].index(second)


def test_role_options_rebind_target_and_receptacle(place_env):
    _, info = place_env.reset(seed=4)
    other_object = next(o for o in info["objects"] if o != info["target"])
    other_fixture = next(f for f in info["fixtures"] if f != info["roles"]["receptacle"])
    options = {"target": other_object["colour"], "receptacle": other_fixture["colour"]}
    _, rebound = place_env.reset(seed=4, options=options)
    assert rebound["target"] == other_object and rebound["roles"]["receptacle"] == other_fixture
    assert rebound["objects"] == info["objects"] and rebound["fixtures"] == info["fixtures"]
    assert _named_in_order(rebound["instruction"], other_object["colour"], other_fixture["colour"])


def test_absent_colour_is_refused_for_either_role(place_env):
    _, info = place_env.reset(seed=2)
    for role, present in (("target", info["objects"]), ("receptacle", info["fixtures"])):
        absent = next(c for c in COLOURS if c not in [s["colour"] for s in present])
        with pytest.raises(ValueError, match=f"{role}={absent!r}"):
            place_env.reset(seed=2, options={role: absent})


def test_sampled_scenes_follow_the_object_split():
    task = PlaceTask(None)
    for seed in range(60):
        num_objects = 2 + seed % 5
        for split in ("train", "test"):
            episode = task.sample_scene(np.random.default_rng(seed), num_objects, split)
            assert len(episode.objects) == num_objects and len(episode.fixtures) == NUM_RECEPTACLES
            assert {f.kind for f in episode.fixtures} <= set(RECEPTACLES)
            target = episode.spec_of(episode.roles["target"])
            receptacle = episode.spec_of(episode.roles["receptacle"])
            objects = {(o.colour, o.shape) for o in episode.objects}
            fixtures = {(f.colour, f.kind) for f in episode.fixtures}
            if split == "train":
                assert not objects & HELD_OUT_COMBINATIONS and not fixtures & HELD_OUT_RECEPTACLES
            else:
                assert (target.colour, target.shape) in HELD_OUT_COMBINATIONS
                assert (receptacle.colour, receptacle.kind) in HELD_OUT_RECEPTACLES


@pytest.mark.parametrize("split", ["train", "test"])
def test_instruction_names_target_then_receptacle(make_env, split):
    env = make_env(ENV_ID, image_size=TEST_IMAGE_SIZE, instruction_split=split)
    for seed in range(12):
        _, info = env.reset(seed=seed)
        assert _named_in_order(info["instruction"], info["target"]["colour"], info["roles"]["receptacle"]["colour"])
        words = set(instruction_words(info["instruction"]))
        assert words - set(COLOURS) <= PlaceTask.words(split)


def test_blind_expert_may_take_any_receptacle(place_env):
    place_env.reset(seed=0)
    candidates = place_env.unwrapped.task.blind_candidates("receptacle")
    assert candidates == [Role("fixture", i) for i in range(NUM_RECEPTACLES)]


# --- dense reward and the expert -----------------------------------------------------------------------
def test_expert_places_and_dense_reward_grows(make_env):
    env = make_env("VLAPlaceDense-v0", image_size=TEST_IMAGE_SIZE)
    for seed in range(5):
        env.reset(seed=seed)
        rewards, infos = run_expert(env, ScriptedExpert(env), PlaceTask.max_episode_steps)
        info = infos[-1]
        assert info["is_success"], f"seed {seed}: {info['instruction']}"
        assert rewards[-1] == 1.0 and all(0.0 <= r < 1.0 for r in rewards[:-1])
        assert rewards[-2] > 0.5 > rewards[0]
