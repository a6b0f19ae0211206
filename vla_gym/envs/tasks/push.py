"""``push``: push the named object into the named flat zone, without lifting it (``VLAPush-v0``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from vla_gym.envs.experts.skills import PUSH_APPROACH, PUSH_CONTACT, PUSH_HEIGHT, PushTo, Retreat, Skill
from vla_gym.envs.language import FLAT_SHAPE_NOUNS, check_instruction_split, draw_noun
from vla_gym.envs.scene import layout_scene, sample_fixture_kinds, sample_object_kinds
from vla_gym.envs.tasks.base import REACH_SCALE, Role, Task, TaskEpisode, fill_template

#: Shapes the pushed object may have: a sphere rolls away from a pusher (and on past the
#: zone), so only cubes and cylinders are pushed.
GOAL_SHAPES = ("cube", "cylinder")
#: Zones per scene: one or two (drawn uniformly).
NUM_ZONES = (1, 2)
#: The push fails for good once the target's lowest point has been higher than this (m)
#: above the table at any step since reset: it was carried, not pushed.
MAX_LIFT = 0.02
#: The target's centre starts at least this far (m, x/y) from the goal zone's centre, so
#: well outside it (the zone's corner is 0.085 m from its centre).
MIN_PUSH_DISTANCE = 0.15
#: Other objects' centres keep this far (m) from the push corridor, the segment from the
#: approach point behind the target to the zone's centre: a turned cube's half diagonal
#: (0.035) for the pushed object or the fingers' half width (0.027), plus the other
#: object's half diagonal (0.035), plus a margin.
CORRIDOR_HALF_WIDTH = 0.085
#: The approach point behind the target stays inside this box (m, world x/y), where the
#: arm reaches down to the table.
APPROACH_LOW = np.array([0.28, -0.30])
APPROACH_HIGH = np.array([0.76, 0.30])
#: Layouts drawn (each a fresh one from the rng) before giving up on a feasible push.
MAX_SCENE_TRIES = 200
#: The expert lifts the gripper this high (m) above the target after the push.
RETREAT_HEIGHT = 0.12
#: Dense reward: weights (summing to 1) of reaching the pushing pose and of the target's
#: closeness to the zone centre, and the distance scale (m) of the latter.
POSE_WEIGHT = 0.3
PUSH_WEIGHT = 0.7
PUSH_SCALE = 0.15
#: Share of instructions naming the target by a generic noun ("object", "item").
GENERIC_NOUN_RATE = 0.25


class PushTask(Task):
    """Push the named object into the named zone, keeping it on the table.

    ## Task Description
    A table holds ``num_objects`` objects and one or two flat coloured squares (zones,
    0.12 m wide, painted on the table, no collision). The instruction ("push the green
    cube into the yellow square") names the ``target`` (a cube or a cylinder: spheres
    roll) and the ``zone``. The target must slide there: carrying it is not a push.
    The time limit, 80 steps, is half again the scripted expert's longest push (about 53
    steps); a cylinder pushed high on its side (the fingers are widest at the top) or
    jostled up and down can tip over and roll, which the noisy expert sometimes does.

    ## Randomizations
    Colours and shapes of the objects (under ``object_split``; zones have no held-out
    colours), the number of zones, the layout (wide region, fixtures first) and object
    yaws, which object and zone are the goal, and the instruction's template, verb and
    nouns. Layouts are redrawn (from the episode's rng only) until the push is feasible:
    the target's centre starts at least :data:`MIN_PUSH_DISTANCE` = 0.15 m from the zone's
    centre, the approach point :data:`~vla_gym.envs.experts.skills.PUSH_APPROACH` behind
    the target (on the line to the zone) lies in the arm's low reach, and no other object's
    centre is within :data:`CORRIDOR_HALF_WIDTH` = 0.085 m of the segment from the approach
    point to the zone's centre. Role options pick other bodies of the seeded scene, for
    which the corridor is not checked (a sphere is refused as the target).

    ## Success Conditions
    The target's centre lies inside the zone's square, and its lowest point was never
    more than :data:`MAX_LIFT` = 0.02 m above the table at any step since reset.

    ## Dense reward
    0.3 for reaching the pushing pose (``1 - tanh(d / 0.1 m)``, d from the gripper to the
    point behind the target on its line to the zone) and 0.7 for the target's closeness to
    the zone centre (``1 - tanh(d / 0.15 m)``); nothing for the latter once the target was
    lifted too high.
    """

    name = "push"
    max_episode_steps = 80
    role_options = ("target", "zone")
    templates = {
        "train": (
            "{verb} the {colour} {noun} into the {zone_colour} {zone}",
            "{verb} the {colour} {noun} to the {zone_colour} {zone}",
            "please {verb} the {colour} {noun} into the {zone_colour} {zone}",
            "robot, {verb} the {noun} that is {colour} to the {zone_colour} {zone}",
        ),
        "test": (
            "{verb} the {colour} {noun} over to the {zone_colour} {zone}",
            "without lifting it, {verb} the {colour} {noun} across to the {zone_colour} {zone}",
            "could you {verb} the {colour} {noun} over to the {zone_colour} {zone}?",
        ),
    }
    slots = {
        "train": {
            "verb": ("push", "slide"),
            "noun": tuple(n for nouns in FLAT_SHAPE_NOUNS["train"].values() for n in nouns),
            "zone": ("square", "zone", "area"),
        },
        "test": {
            "verb": ("shove", "nudge", "scoot"),
            "noun": tuple(n for nouns in FLAT_SHAPE_NOUNS["test"].values() for n in nouns),
            "zone": ("patch", "tile"),
        },
    }

    def __init__(self, world) -> None:
        super().__init__(world)
        #: Highest lowest point (m) the target reached since reset.
        self.peak_bottom = 0.0

    # --- sampling ----------------------------------------------------------------------------
    def sample_scene(self, rng: np.random.Generator, num_objects: int, object_split: str) -> TaskEpisode:
        kinds, targets = sample_object_kinds(rng, num_objects, object_split, GOAL_SHAPES)
        num_zones = int(rng.integers(NUM_ZONES[0], NUM_ZONES[1] + 1))
        zone_kinds, zones = sample_fixture_kinds(rng, num_zones, object_split, kinds=("zone",))
        for _ in range(MAX_SCENE_TRIES):
            objects, fixtures = layout_scene(rng, kinds, zone_kinds)
            pairs = [(t, z) for t in targets for z in zones if push_feasible(objects, fixtures, t, z)]
            if pairs:
                target, zone = pairs[int(rng.integers(len(pairs)))]
                return TaskEpisode(objects, fixtures, {"target": Role("object", target), "zone": Role("fixture", zone)})
        raise RuntimeError(
            f"no feasible push among {MAX_SCENE_TRIES} layouts of {num_objects} objects and {num_zones} zones"
        )

    def apply_role_options(self, episode: TaskEpisode, options: dict[str, Any]) -> None:
        """As :meth:`Task.apply_role_options`; a sphere cannot be the target (it rolls)."""
        super().apply_role_options(episode, options)
        self.check_role_shapes(episode, ("target",), GOAL_SHAPES, "pushes")

    def sample_instruction(self, rng: np.random.Generator, episode: TaskEpisode, split: str) -> str:
        check_instruction_split(split)
        target = episode.spec_of(episode.roles["target"])
        zone = episode.spec_of(episode.roles["zone"])
        templates = self.templates[split]
        template = templates[int(rng.integers(len(templates)))]
        noun = draw_noun(rng, FLAT_SHAPE_NOUNS[split], target.shape, GENERIC_NOUN_RATE)
        choices = {slot: values for slot, values in self.slots[split].items() if slot != "noun"}
        return fill_template(rng, template, choices, colour=target.colour, noun=noun, zone_colour=zone.colour)

    # --- the live episode ----------------------------------------------------------------------
    def begin(self, episode: TaskEpisode) -> None:
        super().begin(episode)
        self.peak_bottom = self.bottom_height(episode.roles["target"])

    def after_step(self) -> None:
        self.peak_bottom = max(self.peak_bottom, self.bottom_height(self.episode.roles["target"]))

    def evaluate(self) -> dict[str, Any]:
        target, zone = self.episode.roles["target"], self.episode.roles["zone"]
        centre = self.position(target)
        zone_spec = self.episode.spec_of(zone)
        lifted = max(self.peak_bottom, self.bottom_height(target)) > MAX_LIFT
        inside = zone_spec.contains_xy(centre)
        success = inside and not lifted
        distance = float(np.linalg.norm(centre[:2] - np.asarray(zone_spec.xy)))
        return {
            "success": success,
            "subgoals_done": int(success),
            "num_subgoals": 1,
            "inside": inside,
            "lifted": lifted,
            "distance": distance,
        }

    def dense_reward(self, evaluation: dict[str, Any]) -> float:
        target = self.episode.roles["target"]
        centre = self.position(target)
        zone_xy = np.asarray(self.episode.spec_of(self.episode.roles["zone"]).xy)
        pose = pushing_pose(centre, self.bottom_height(target), zone_xy)
        pose_term = 1.0 - np.tanh(np.linalg.norm(self.world.robot.ee_position() - pose) / REACH_SCALE)
        push_term = 0.0 if evaluation["lifted"] else 1.0 - np.tanh(evaluation["distance"] / PUSH_SCALE)
        return float(POSE_WEIGHT * pose_term + PUSH_WEIGHT * push_term)

    def goal_points(self) -> np.ndarray:
        """The target, and the zone's centre at the target's height."""
        centre = self.position(self.episode.roles["target"])
        zone_xy = self.episode.spec_of(self.episode.roles["zone"]).xy
        return np.stack([centre, [*zone_xy, centre[2]]]).astype(np.float32)

    def plan(self, roles: dict[str, Role]) -> list[Skill]:
        body = roles["target"].body_name
        zone_xy = self.episode.spec_of(roles["zone"]).xy
        return [PushTo(body, zone_xy), Retreat(body, RETREAT_HEIGHT)]


def pushing_pose(centre: np.ndarray, bottom: float, goal_xy: np.ndarray) -> np.ndarray:
    """Where the end effector touches an object at ``centre`` (m, (3,)) whose lowest point
    is at ``bottom`` (m) to push it to ``goal_xy`` (m, (2,)): the expert's contact distance
    :data:`~vla_gym.envs.experts.skills.PUSH_CONTACT` behind the centre on the line to the
    goal, at its push height. Shape (3,)."""
    line = goal_xy - centre[:2]
    direction = line / max(float(np.linalg.norm(line)), 1e-9)
    return np.array([*(centre[:2] - PUSH_CONTACT * direction), bottom + PUSH_HEIGHT])


def push_feasible(objects: list, fixtures: list, target: int, zone: int) -> bool:
    """Whether object ``target`` can be pushed straight to fixture ``zone``'s centre: it
    starts at least :data:`MIN_PUSH_DISTANCE` away, its approach point lies in
    [:data:`APPROACH_LOW`, :data:`APPROACH_HIGH`], and every other object's centre is at
    least :data:`CORRIDOR_HALF_WIDTH` from the segment approach point -> zone centre (m)."""
    start = np.asarray(objects[target].xy)
    goal = np.asarray(fixtures[zone].xy)
    length = float(np.linalg.norm(goal - start))
    if length < MIN_PUSH_DISTANCE:
        return False
    approach = start - PUSH_APPROACH * (goal - start) / length
    if np.any(approach < APPROACH_LOW) or np.any(approach > APPROACH_HIGH):
        return False
    others = [np.asarray(spec.xy) for i, spec in enumerate(objects) if i != target]
    return all(_segment_distance(xy, approach, goal) >= CORRIDOR_HALF_WIDTH for xy in others)


def _segment_distance(point: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Distance (m) from ``point`` to the segment ``a``-``b`` (x/y, each shape (2,))."""
    ab = b - a
    t = float(np.clip((point - a) @ ab / float(ab @ ab), 0.0, 1.0))
    return float(np.linalg.norm(point - (a + t * ab)))
