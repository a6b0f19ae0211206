"""``stack``: put the named object on top of another named object (``VLAStack-v0``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from vla_gym.envs.experts.skills import Skill, stack_skills
from vla_gym.envs.language import FLAT_SHAPE_NOUNS, check_instruction_split, draw_noun
from vla_gym.envs.scene import OBJECT_HALF_SIZE, layout_scene, sample_object_kinds, train_shapes
from vla_gym.envs.tasks.base import Role, Task, TaskEpisode, fill_template

#: Shapes with a flat top and bottom: the stacked object and its base are cubes or cylinders
#: (a sphere rolls off, and nothing rests on one).
FLAT_SHAPES = ("cube", "cylinder")
#: The target rests on the base when its lowest point is within this distance (m) of the
#: base's top (contact penetration and a slight tilt stay well inside it; lying beside the
#: base, the target's bottom is a base's height, 0.05 m or more, below its top).
REST_TOLERANCE = 0.01
#: ... and its centre within this distance (m, x/y) of the base's centre: the base's half
#: size, so the target's centre of mass lies over the base's top face.
CENTRE_TOLERANCE = OBJECT_HALF_SIZE
#: The base counts as on the table while its lowest point is at most this high (m).
ON_TABLE_HEIGHT = 0.005
#: The expert carries the target with its lowest point this far (m) above the base's top,
#: so at least 0.09 m above the table: clear of every other object (0.06 m tall at most).
CARRY_CLEARANCE = 0.04
#: The expert lowers the target until its lowest point is this far (m) above the base's
#: top, then opens the gripper: the target drops that little onto the base.
DROP = -0.002
#: Dense reward weights (summing to 0.9, so a failure stays below 1) and the distance scale
#: (m) of the placing term.
REACH_WEIGHT = 0.2
GRASP_WEIGHT = 0.1
PLACE_WEIGHT = 0.4
ON_TOP_WEIGHT = 0.2
PLACE_SCALE = 0.1
#: Share of instructions naming an object by a generic noun ("object", "item"), drawn per object.
GENERIC_NOUN_RATE = 0.25


class StackTask(Task):
    """Stack the named object on top of another named object.

    ## Task Description
    A table holds ``num_objects`` objects (2 to 6); the instruction ("stack the red cube
    on the blue cube", "put the red block on top of the green cylinder") names the
    ``target``, to be moved, and the ``base`` it must end up resting on. Both are cubes or
    cylinders (flat tops); the others are distractors of any shape. The time limit, 80
    steps, is about twice the scripted expert's longest episode (41 steps over 600 unseen
    seeds); a noisy expert's replans (a target knocked over or dropped) use the rest.

    ## Randomizations
    Colours and shapes of the objects (under ``object_split``: in "test" scenes the target
    is a held-out colour-shape pair), which cube or cylinder is the target and which other
    one the base (when no other object has a flat top, one is given a seen flat shape), the
    layout (wide region, at least 0.10 m apart) and yaws, and the instruction's template,
    verb and nouns.

    ## Success Conditions
    The target rests on the base: its lowest point is within :data:`REST_TOLERANCE` =
    0.01 m of the base's top and its centre within :data:`CENTRE_TOLERANCE` = 0.025 m
    (x/y) of the base's centre; no finger touches the target (released); target and base
    are still (slower than 0.05 m/s); and the base's lowest point is at most
    :data:`ON_TABLE_HEIGHT` = 0.005 m above the table. The target on another object, or the
    base on the target, is not success.

    ## Dense reward
    0.2 for reaching the target (``1 - tanh(d / 0.1 m)``), 0.1 while a finger touches it
    (or it rests on the base), 0.4 for the closeness of its centre to its resting pose on
    the base (``1 - tanh(d / 0.1 m)``, counted while it is touched or rests on the base),
    0.2 while it rests on the base (held or not). At most 0.9 before success.
    """

    name = "stack"
    max_episode_steps = 80
    role_options = ("target", "base")
    templates = {
        "train": (
            "{verb} the {colour} {noun} on the {base_colour} {base_noun}",
            "{verb} the {colour} {noun} on top of the {base_colour} {base_noun}",
            "please {verb} the {colour} {noun} onto the {base_colour} {base_noun}",
            "robot, {verb} the {noun} that is {colour} on the {base_colour} {base_noun}",
        ),
        "test": (
            "{verb} the {colour} {noun} atop the {base_colour} {base_noun}",
            "could you {verb} the {colour} {noun} upon the {base_colour} {base_noun}?",
            "{verb} the {colour} {noun} so it sits atop the {base_colour} {base_noun}",
        ),
    }
    slots = {
        "train": {
            "verb": ("stack", "put", "place", "set"),
            "noun": tuple(n for nouns in FLAT_SHAPE_NOUNS["train"].values() for n in nouns),
        },
        "test": {
            "verb": ("pile", "rest", "balance"),
            "noun": tuple(n for nouns in FLAT_SHAPE_NOUNS["test"].values() for n in nouns),
        },
    }

    # --- sampling ----------------------------------------------------------------------------
    def sample_scene(self, rng: np.random.Generator, num_objects: int, object_split: str) -> TaskEpisode:
        if num_objects < 2:
            raise ValueError(f"the {self.name} task needs at least 2 objects (a target and a base), got {num_objects}")
        kinds, candidates = sample_object_kinds(rng, num_objects, object_split, FLAT_SHAPES)
        target = candidates[int(rng.integers(len(candidates)))]
        base, base_kind = _choose_base(rng, kinds, target)
        kinds[base] = base_kind
        objects, _ = layout_scene(rng, kinds)
        return TaskEpisode(objects, [], {"target": Role("object", target), "base": Role("object", base)})

    def apply_role_options(self, episode: TaskEpisode, options: dict[str, Any]) -> None:
        """As :meth:`Task.apply_role_options`; a sphere can be neither target nor base."""
        super().apply_role_options(episode, options)
        self.check_role_shapes(episode, self.role_options, FLAT_SHAPES, "stacks")

    def sample_instruction(self, rng: np.random.Generator, episode: TaskEpisode, split: str) -> str:
        check_instruction_split(split)
        target = episode.spec_of(episode.roles["target"])
        base = episode.spec_of(episode.roles["base"])
        templates = self.templates[split]
        template = templates[int(rng.integers(len(templates)))]
        nouns = [draw_noun(rng, FLAT_SHAPE_NOUNS[split], spec.shape, GENERIC_NOUN_RATE) for spec in (target, base)]
        verbs = {"verb": self.slots[split]["verb"]}
        return fill_template(
            rng, template, verbs, colour=target.colour, noun=nouns[0], base_colour=base.colour, base_noun=nouns[1]
        )

    # --- the live episode ----------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        target, base = self.episode.roles["target"], self.episode.roles["base"]
        base_low, base_high = self.world.sim.aabb(base.body_name)
        gap = self.bottom_height(target) - float(base_high[2])  # target's bottom above the base's top (m)
        offset = float(np.linalg.norm(self.position(target)[:2] - self.position(base)[:2]))
        on_top = abs(gap) <= REST_TOLERANCE and offset <= CENTRE_TOLERANCE
        base_on_table = float(base_low[2]) <= ON_TABLE_HEIGHT
        touched = self.touched(target)
        settled = not touched and self.still(target) and self.still(base)
        placed = on_top and base_on_table
        success = placed and settled
        return {
            "success": success,
            "subgoals_done": int(success),
            "num_subgoals": 1,
            "on_top": on_top,
            "base_on_table": base_on_table,
            "touched": touched,
            "gap": gap,
            "offset": offset,
        }

    def dense_reward(self, evaluation: dict[str, Any]) -> float:
        target, base = self.episode.roles["target"], self.episode.roles["base"]
        held, on_top = evaluation["touched"], evaluation["on_top"]
        distance = float(np.linalg.norm(self.position(target) - self.resting_pose()))
        place = 1.0 - np.tanh(distance / PLACE_SCALE) if held or on_top else 0.0
        return float(
            REACH_WEIGHT * self.reach_term(target)
            + GRASP_WEIGHT * (held or on_top)
            + PLACE_WEIGHT * place
            + ON_TOP_WEIGHT * on_top
        )

    def resting_pose(self) -> np.ndarray:
        """Where the target's centre rests on top of the base (m, (3,))."""
        target, base = self.episode.roles["target"], self.episode.roles["base"]
        pose = self.position(base).copy()
        pose[2] = float(self.world.sim.aabb(base.body_name)[1][2]) + self.episode.spec_of(target).half_height
        return pose

    def goal_points(self) -> np.ndarray:
        """The target, and its resting pose on top of the base."""
        return np.stack([self.position(self.episode.roles["target"]), self.resting_pose()]).astype(np.float32)

    def plan(self, roles: dict[str, Role]) -> list[Skill]:
        return stack_skills(roles["target"].body_name, roles["base"].body_name, CARRY_CLEARANCE, DROP)


def _choose_base(rng: np.random.Generator, kinds: list[tuple[str, str]], target: int) -> tuple[int, tuple[str, str]]:
    """The base's index among the objects other than ``target``, and its (colour, shape).

    A cube or cylinder is drawn among the others when there is one; otherwise any other
    object is drawn and given a flat shape seen with its colour in training. Draws two
    numbers whatever the scene.
    """
    others = [i for i in range(len(kinds)) if i != target]
    flat = [i for i in others if kinds[i][1] in FLAT_SHAPES]
    pool = flat or others
    base = pool[min(int(rng.random() * len(pool)), len(pool) - 1)]
    colour, shape = kinds[base]
    shapes = [s for s in train_shapes(colour) if s in FLAT_SHAPES]
    drawn = shapes[int(rng.integers(len(shapes)))]
    return base, (colour, shape if shape in FLAT_SHAPES else drawn)
