"""The rearrange task: its scenes (2-3 steps, distinct objects and receptacles, crowded
six-object layouts), instructions (chained clauses within 128 bytes), the all-subgoals
predicate on hand-placed states, reset options, dense reward and the scripted rearranger."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.task_helpers import TEST_IMAGE_SIZE, place_in, run_expert, seed_with, settle, spec, task_env_fixture
from vla_gym.envs.experts.scripted import ScriptedExpert
from vla_gym.envs.language import MAX_INSTRUCTION_BYTES
from vla_gym.envs.scene import COLOURS, HELD_OUT_COMBINATIONS, HELD_OUT_RECEPTACLES
from vla_gym.envs.tasks.place import NOUNS, PREPOSITIONS, RECEPTACLE_NOUNS, VERBS, PlaceWords
from vla_gym.envs.tasks.rearrange import (
    CONNECTIVES,
    MAX_STEPS,
    NUM_RECEPTACLES,
    SUBGOAL_ROLES,
    RearrangeTask,
    compose_instruction,
)

ENV_ID = "VLARearrange-v0"
SETTLE_STEPS = 8

rearrange_env = task_env_fixture(ENV_ID)


# --- scenes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["train", "test"])
def test_scenes_have_distinct_steps_and_follow_the_object_split(split):
    task = RearrangeTask(None)
    steps_seen = set()
    for seed in range(40):
        for num_objects in (2, 6):  # six objects and three receptacles still fit the wide region
            episode = task.sample_scene(np.random.default_rng(seed), num_objects, split)
            steps = RearrangeTask.num_subgoals(episode)
            steps_seen.add(steps)
            assert 2 <= steps <= min(MAX_STEPS, num_objects)
            assert len(episode.objects) == num_objects and len(episode.fixtures) == NUM_RECEPTACLES
            assert list(episode.roles) == [role for pair in SUBGOAL_ROLES[:steps] for role in pair]
            bodies = list(episode.roles.values())
            assert len(set(bodies)) == len(bodies)  # each step its own object and its own receptacle
            objects = {(o.colour, o.shape) for o in episode.objects}
            fixtures = {(f.colour, f.kind) for f in episode.fixtures}
            if split == "train":
                assert not objects & HELD_OUT_COMBINATIONS and not fixtures & HELD_OUT_RECEPTACLES
            else:
                target = episode.spec_of(episode.roles["target"])
                receptacle = episode.spec_of(episode.roles["receptacle"])
                assert (target.colour, target.shape) in HELD_OUT_COMBINATIONS
                assert (receptacle.colour, receptacle.kind) in HELD_OUT_RECEPTACLES
    assert steps_seen == {2, 3}


# --- instructions ---------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["train", "test"])
def test_instructions_chain_every_step_in_order_within_128_bytes(split):
    task = RearrangeTask(None)
    test_only = RearrangeTask.words("test") - RearrangeTask.words("train")
    for seed in range(300):
        rng = np.random.default_rng(seed)
        episode = task.sample_scene(rng, 2 + seed % 5, "train")
        text = task.sample_instruction(rng, episode, split)
        assert len(text.encode("utf-8")) <= MAX_INSTRUCTION_BYTES, text
        words = re.findall(r"[a-z]+", text)
        assert set(words) - set(COLOURS) <= RearrangeTask.words(split), text
        assert bool(set(words) & test_only) == (split == "test"), text
        # Every role's colour is named, the steps in order (an object before its receptacle).
        position = 0
        for role in episode.roles:
            colour = episode.spec_of(episode.roles[role]).colour
            assert colour in words[position:], (text, role)
            position += words[position:].index(colour) + 1
        connectives = sum(text.count(c) for c in CONNECTIVES[split])  # none is part of another
        assert connectives == RearrangeTask.num_subgoals(episode) - 1, text


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_shortest_form_fits_the_longest_words(split):
    """The last, terse form of a three-step instruction fits 128 bytes with the longest word of every slot."""
    longest = lambda words: max(words, key=len)  # noqa: E731
    nouns = [n for group in NOUNS[split].values() for n in group]
    words = PlaceWords(
        longest(VERBS[split]),
        longest(nouns),
        longest([w for group in PREPOSITIONS[split].values() for w in group]),
        longest([w for group in RECEPTACLE_NOUNS[split].values() for w in group]),
    )
    colours = {"colour": longest(COLOURS), "receptacle_colour": longest(COLOURS)}
    connective = longest(CONNECTIVES[split])
    clauses, connectives = [(colours, words)] * MAX_STEPS, [connective] * (MAX_STEPS - 1)
    text = compose_instruction("{steps}", clauses, connectives, wrapped=False, every_verb=False, articles=False)
    assert len(text.encode("utf-8")) <= MAX_INSTRUCTION_BYTES, text


# --- success predicate ------------------------------------------------------------------------
def test_success_needs_every_step_placed(rearrange_env):
    seed, info = seed_with(rearrange_env, lambda i: i["num_subgoals"] == 3)
    pairs = SUBGOAL_ROLES[:3]
    for done, (obj_role, fixture_role) in enumerate(pairs[:-1], start=1):
        place_in(rearrange_env, obj_role, fixture_role)
        info = settle(rearrange_env, SETTLE_STEPS)
        assert info["is_success"] is False and info["subgoals_done"] == done and info["num_subgoals"] == 3
    place_in(rearrange_env, *pairs[-1])
    info = settle(rearrange_env, SETTLE_STEPS)
    assert info["is_success"] is True and info["subgoals_done"] == 3


def test_goal_points_move_on_to_the_next_step_once_one_is_placed(rearrange_env):
    seed_with(rearrange_env, lambda i: i["num_subgoals"] == 2)
    unwrapped = rearrange_env.unwrapped
    first = unwrapped.goal_points()
    np.testing.assert_allclose(first[0], unwrapped.role_position("target"), atol=1e-6)
    place_in(rearrange_env, "target", "receptacle")
    assert settle(rearrange_env, SETTLE_STEPS)["subgoals_done"] == 1
    second = unwrapped.goal_points()
    np.testing.assert_allclose(second[0], unwrapped.role_position("target_1"), atol=1e-6)
    assert spec(rearrange_env, "receptacle_1").contains_xy(second[1])
    place_in(rearrange_env, "target_1", "receptacle_1")
    assert settle(rearrange_env, SETTLE_STEPS)["is_success"] is True
    last = unwrapped.goal_points()  # all done: the last step's
    np.testing.assert_allclose(last[0], unwrapped.role_position("target_1"), atol=1e-6)
    np.testing.assert_allclose(last[1], second[1], atol=1e-6)


def test_objects_in_each_others_receptacles_count_for_nothing(rearrange_env):
    seed_with(rearrange_env, lambda i: i["num_subgoals"] == 2)
    place_in(rearrange_env, "target", "receptacle_1")
    place_in(rearrange_env, "target_1", "receptacle")
    info = settle(rearrange_env, SETTLE_STEPS)
    assert info["is_success"] is False and info["subgoals_done"] == 0


def test_a_knocked_out_step_no_longer_counts(rearrange_env):
    seed_with(rearrange_env, lambda i: i["num_subgoals"] == 2)
    place_in(rearrange_env, "target", "receptacle")
    assert settle(rearrange_env, SETTLE_STEPS)["subgoals_done"] == 1
    unwrapped = rearrange_env.unwrapped
    body = unwrapped.task.episode.roles["target"].body_name
    unwrapped.sim.set_base_position(body, [0.45, 0.0, 0.2])  # lifted out, falling
    assert unwrapped.task.evaluate()["subgoals_done"] == 0


# --- reset options ------------------------------------------------------------------------------------
def test_role_options_rebind_later_steps(rearrange_env):
    seed, info = seed_with(rearrange_env, lambda i: i["num_subgoals"] == 2 and len(i["objects"]) >= 3)
    spare_object = next(o for o in info["objects"] if o not in info["roles"].values())
    spare_fixture = next(f for f in info["fixtures"] if f not in info["roles"].values())
    options = {"target_1": spare_object["colour"], "receptacle_1": spare_fixture["colour"]}
    _, rebound = rearrange_env.reset(seed=seed, options=options)
    assert rebound["roles"]["target_1"] == spare_object and rebound["roles"]["receptacle_1"] == spare_fixture
    assert rebound["roles"]["target"] == info["roles"]["target"] and rebound["objects"] == info["objects"]
    assert spare_object["colour"] in rebound["instruction"] and spare_fixture["colour"] in rebound["instruction"]
    with pytest.raises(ValueError, match="target_2"):
        rearrange_env.reset(seed=seed, options={"target_2": spare_object["colour"]})  # a two-step episode
    absent = next(c for c in COLOURS if c not in [f["colour"] for f in info["fixtures"]])
    with pytest.raises(ValueError, match=f"receptacle_1={absent!r}"):
        rearrange_env.reset(seed=seed, options={"receptacle_1": absent})
    with pytest.raises(ValueError, match="same body"):
        rearrange_env.reset(seed=seed, options={"receptacle_1": info["roles"]["receptacle"]["colour"]})


# --- dense reward and the expert -----------------------------------------------------------------------
def test_expert_rearranges_and_dense_reward_grows(make_env):
    env = make_env("VLARearrangeDense-v0", image_size=TEST_IMAGE_SIZE)
    steps_seen = set()
    for seed in range(4):
        _, info = env.reset(seed=seed)
        steps_seen.add(info["num_subgoals"])
        rewards, infos = run_expert(env, ScriptedExpert(env), RearrangeTask.max_episode_steps)
        info, done = infos[-1], [0] + [i["subgoals_done"] for i in infos]
        assert info["is_success"], f"seed {seed}: {info['instruction']}"
        assert done == sorted(done) and done[-1] == info["num_subgoals"]  # one step after another
        assert rewards[-1] == 1.0 and all(0.0 <= r < 1.0 for r in rewards[:-1])
        assert rewards[-2] > 1.0 - 1.0 / info["num_subgoals"] > rewards[0]
    assert steps_seen == {2, 3}


def test_the_plan_skips_steps_already_done(rearrange_env):
    seed_with(rearrange_env, lambda i: i["num_subgoals"] == 2)
    task = rearrange_env.unwrapped.task
    full = task.plan(task.episode.roles)
    place_in(rearrange_env, "target", "receptacle")
    settle(rearrange_env, SETTLE_STEPS)
    rest = task.plan(task.episode.roles)
    assert len(rest) == len(full) // 2 and {s.body for s in rest} == {task.episode.roles["target_1"].body_name}
