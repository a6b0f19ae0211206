"""``place``: put the named object in or on the named receptacle (``VLAPlace-v0``).

:func:`placement` is the one placement predicate; :mod:`vla_gym.envs.tasks.rearrange`
chains it over several objects and receptacles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_gym.envs import language
from vla_gym.envs.experts.skills import OPEN, Skill, place_skills
from vla_gym.envs.scene import (
    OBJECT_HALF_SIZE,
    RECEPTACLES,
    FixtureSpec,
    ObjectSpec,
    layout_scene,
    sample_fixture_kinds,
    sample_object_kinds,
)
from vla_gym.envs.tasks.base import Role, Task, TaskEpisode, World

#: Receptacles per place scene: the goal and one distractor.
NUM_RECEPTACLES = 2
#: The target rests in the receptacle when its lowest point is at most this far (m) from
#: the receptacle's floor (``FixtureSpec.floor_height``): contact penetration and a slight
#: tilt stay well inside it, while an object caught on a rim (a plate's is 0.008 m above
#: its floor, a bowl's 0.029 m) or on another object is above it.
REST_TOLERANCE = 0.005
#: The expert carries the target with its lowest point this high (m) above the table: clear
#: of every rim (0.035 m at most) and every standing object (0.06 m tall at most).
CARRY_HEIGHT = 0.09
#: The expert lowers the target until its lowest point is this far (m) above the goal
#: receptacle's rim, then opens the gripper: the target drops the rest of the way (0.013 m
#: onto a plate, 0.034 m into a bowl), and the open fingers never go below the rim.
RIM_CLEARANCE = 0.005
#: Dense reward weights (summing to 0.9, so a failure stays below 1) and the distance scale
#: (m) of the carrying term.
REACH_WEIGHT = 0.2
GRASP_WEIGHT = 0.1
CARRY_WEIGHT = 0.4
INSIDE_WEIGHT = 0.2
CARRY_SCALE = 0.1
#: Share of instructions naming an object by a generic noun ("object", "item").
GENERIC_NOUN_RATE = 0.25

#: Object nouns per split and shape (pick's: :data:`vla_gym.envs.language.NOUNS`).
NOUNS = language.NOUNS
#: Receptacle nouns per split and kind.
RECEPTACLE_NOUNS: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {"bowl": ("bowl",), "plate": ("plate",)},
    "test": {"bowl": ("basin",), "plate": ("dish",)},
}
#: Relation words per split and receptacle kind: "in the bowl", "on the plate".
PREPOSITIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {"bowl": ("in", "into"), "plate": ("on", "onto")},
    "test": {"bowl": ("inside",), "plate": ("upon", "atop")},
}
VERBS: dict[str, tuple[str, ...]] = {"train": ("put", "place", "set"), "test": ("drop", "move", "deposit")}


@dataclass(frozen=True)
class Placement:
    """Where an object stands relative to a receptacle (:func:`placement`).

    Attributes:
        inside: its centre lies inside the receptacle's footprint (x/y).
        resting: inside, with its lowest point within :data:`REST_TOLERANCE` of the floor.
        touched: a gripper finger touches it.
        still: it moves slower than :data:`~vla_gym.envs.tasks.base.STILL_SPEED`.
        distance: from its centre to its resting pose in the receptacle (m, 3-D).
    """

    inside: bool
    resting: bool
    touched: bool
    still: bool
    distance: float

    @property
    def placed(self) -> bool:
        """The place predicate: resting in the receptacle, released and still."""
        return self.resting and not self.touched and self.still


def placement(task: Task, obj: Role | str, fixture: Role | str) -> Placement:
    """How object ``obj`` stands relative to receptacle ``fixture`` in the live episode.

    Args:
        task: a task with a live episode.
        obj, fixture: roles (or role names of ``task.episode.roles``).
    """
    roles = task.episode.roles
    obj = roles[obj] if isinstance(obj, str) else obj
    fixture = roles[fixture] if isinstance(fixture, str) else fixture
    spec: FixtureSpec = task.episode.spec_of(fixture)
    centre = task.position(obj)
    inside = spec.contains_xy(centre)
    resting = inside and abs(lowest_point(task, obj) - spec.floor_height) <= REST_TOLERANCE
    return Placement(
        inside=inside,
        resting=resting,
        touched=task.touched(obj),
        still=task.still(obj),
        distance=float(np.linalg.norm(centre - rest_pose(task, obj, fixture))),
    )


def rest_pose(task: Task, obj: Role, fixture: Role) -> np.ndarray:
    """Where object ``obj``'s centre rests (m, (3,)) upright on the floor of receptacle ``fixture``."""
    spec: FixtureSpec = task.episode.spec_of(fixture)
    return np.array([*spec.xy, spec.floor_height + task.episode.spec_of(obj).half_height])


def lowest_point(task: Task, obj: Role) -> float:
    """Height (m) of an object's lowest point, exact for its shape and pose.

    PyBullet's bounding box of a cylinder can be loose (it reached 0.009 m below one lying
    on its side in a bowl, which then did not count as resting), so the bottom is computed
    from the body's orientation and shape instead.
    """
    spec: ObjectSpec = task.episode.spec_of(obj)
    client = task.world.sim.client
    position, orientation = client.getBasePositionAndOrientation(task.world.sim.bodies[obj.body_name])
    up = np.asarray(client.getMatrixFromQuaternion(orientation)).reshape(3, 3)[2]  # body axes' z components
    if spec.shape == "sphere":
        depth = OBJECT_HALF_SIZE
    elif spec.shape == "cube":
        depth = OBJECT_HALF_SIZE * float(np.sum(np.abs(up)))
    else:  # cylinder: its axis is the body's z axis
        axis_z = min(abs(float(up[2])), 1.0)
        depth = spec.half_height * axis_z + OBJECT_HALF_SIZE * float(np.sqrt(1.0 - axis_z**2))
    return float(position[2]) - depth


def object_in_receptacle(task: Task, obj: Role | str, fixture: Role | str) -> bool:
    """Whether object ``obj`` rests, released and still, in receptacle ``fixture`` (roles or role names)."""
    return placement(task, obj, fixture).placed


def placement_reward(task: Task, obj: Role, state: Placement) -> float:
    """Staged shaping in [0, 0.9] for moving ``obj`` into a receptacle: reaching it, holding
    it (or it being inside the footprint, falling in or resting), its closeness to its
    resting pose while held or inside, and resting inside (held or not)."""
    held_or_in = state.touched or state.inside
    carry = 1.0 - np.tanh(state.distance / CARRY_SCALE) if held_or_in else 0.0
    return float(
        REACH_WEIGHT * task.reach_term(obj)
        + GRASP_WEIGHT * held_or_in
        + CARRY_WEIGHT * carry
        + INSIDE_WEIGHT * state.resting
    )


class SettleIn(Skill):
    """Hold the open hand where it is until the released object rests, still, in the
    receptacle (done); once it lies still anywhere else (it bounced or rolled out, or was
    knocked out) the skill fails, so the expert plans again from there."""

    def __init__(self, task: Task, obj: Role, fixture: Role) -> None:
        super().__init__(obj.body_name)
        self.task, self.obj, self.fixture = task, obj, fixture

    def command(self, world: World) -> tuple[np.ndarray, float]:
        return world.robot.ee_position(), OPEN

    def done(self, world: World) -> bool:
        return placement(self.task, self.obj, self.fixture).placed

    def failed(self, world: World) -> bool:
        state = placement(self.task, self.obj, self.fixture)
        return state.still and not state.resting and not state.touched


def placing_skills(task: Task, obj: Role, fixture: Role) -> list[Skill]:
    """The expert's skills moving object ``obj`` into receptacle ``fixture`` (any bodies of
    the episode): carried at :data:`CARRY_HEIGHT`, let go :data:`RIM_CLEARANCE` above the
    rim, then watched until it rests inside (:class:`SettleIn`)."""
    spec: FixtureSpec = task.episode.spec_of(fixture)
    drop = spec.rim_height - spec.floor_height + RIM_CLEARANCE
    skills = place_skills(obj.body_name, spec.xy, rest_height=spec.floor_height, carry_height=CARRY_HEIGHT, drop=drop)
    return [*skills, SettleIn(task, obj, fixture)]


def receptacle_candidates(task: Task, role_name: str) -> list[Role]:
    """Blind candidates for a receptacle role: every fixture (bowls and plates alike)."""
    return [Role("fixture", i) for i in range(len(task.episode.fixtures))]


@dataclass(frozen=True)
class PlaceWords:
    """The words one placement clause uses: verb, object noun, relation, receptacle noun."""

    verb: str
    noun: str
    prep: str
    receptacle: str


def draw_place_words(rng: np.random.Generator, split: str, obj: ObjectSpec, fixture: FixtureSpec) -> PlaceWords:
    """Words naming ``obj`` going into ``fixture`` from the ``split`` vocabulary. Draws five numbers."""
    verbs = VERBS[split]
    verb = verbs[int(rng.integers(len(verbs)))]
    noun = language.draw_noun(rng, NOUNS[split], obj.shape, GENERIC_NOUN_RATE)
    preps = PREPOSITIONS[split][fixture.kind]
    prep = preps[int(rng.integers(len(preps)))]
    receptacles = RECEPTACLE_NOUNS[split][fixture.kind]
    receptacle = receptacles[int(rng.integers(len(receptacles)))]
    return PlaceWords(verb, noun, prep, receptacle)


def sample_receptacles(
    rng: np.random.Generator, num_fixtures: int, object_split: str
) -> tuple[list[tuple[str, str]], list[int]]:
    """(colour, kind) of ``num_fixtures`` bowls and plates, and the goal candidates
    (:func:`~vla_gym.envs.scene.sample_fixture_kinds` with its split rules)."""
    return sample_fixture_kinds(rng, num_fixtures, object_split, kinds=RECEPTACLES)


class PlaceTask(Task):
    """Put the named object in (or on) the named receptacle.

    ## Task Description
    A table holds ``num_objects`` objects (cube, cylinder or sphere) and two receptacles
    (bowls, 0.116 m across with 0.035 m walls, or plates, 0.144 m across with a 0.016 m
    rim), each in a colour. The instruction ("put the red cube in the blue bowl", "place
    the green ball on the yellow plate") names the ``target`` object and the
    ``receptacle``. The others are distractors. The time limit, 80 steps, is twice the
    scripted expert's longest episode (about 40 steps; 60 with action noise).

    ## Randomizations
    Colours and shapes of the objects (under ``object_split``: in "test" scenes the target
    is a held-out colour-shape pair), colours and kinds of the receptacles (in "test"
    scenes the goal receptacle is a held-out colour-kind pair,
    :data:`~vla_gym.envs.scene.HELD_OUT_RECEPTACLES`), which object and receptacle are the
    goal, the layout (wide region, receptacles first) and object yaws, and the
    instruction's template, verb, nouns and relation word.

    ## Success Conditions
    The target's centre lies inside the receptacle's footprint
    (:meth:`~vla_gym.envs.scene.FixtureSpec.contains_xy`), its lowest point is within
    :data:`REST_TOLERANCE` = 0.005 m of the receptacle's floor (resting on it, below the
    rim), no finger touches it (released) and it is still (slower than 0.05 m/s). The
    target in the other receptacle, or another object in the named one, is not success.

    ## Dense reward
    0.2 for reaching the target (``1 - tanh(d / 0.1 m)``), 0.1 while a finger touches it
    or its centre is inside the receptacle's footprint (so a released target falling in
    keeps it), 0.4 for the closeness of its centre to its resting pose in the receptacle
    (``1 - tanh(d / 0.1 m)``, counted while it is touched or inside), 0.2 while it rests
    inside (held or not). At most 0.9 before success.
    """

    name = "place"
    max_episode_steps = 80
    role_options = ("target", "receptacle")
    templates = {
        "train": (
            "{verb} the {colour} {noun} {prep} the {receptacle_colour} {receptacle}",
            "please {verb} the {colour} {noun} {prep} the {receptacle_colour} {receptacle}",
            "your goal is to {verb} the {colour} {noun} {prep} the {receptacle_colour} {receptacle}",
            "robot, {verb} the {noun} that is {colour} {prep} the {receptacle_colour} {receptacle}",
        ),
        "test": (
            "could you {verb} the {colour} {noun} {prep} the {receptacle_colour} {receptacle}?",
            "{verb} the {colour} {noun} so it sits {prep} the {receptacle_colour} {receptacle}",
            "i need you to {verb} the {colour} {noun} {prep} the {receptacle_colour} {receptacle}",
        ),
    }
    slots = {
        split: {
            "verb": VERBS[split],
            "noun": tuple(n for nouns in NOUNS[split].values() for n in nouns),
            "prep": tuple(w for words in PREPOSITIONS[split].values() for w in words),
            "receptacle": tuple(w for words in RECEPTACLE_NOUNS[split].values() for w in words),
        }
        for split in ("train", "test")
    }

    # --- sampling ----------------------------------------------------------------------------
    def sample_scene(self, rng: np.random.Generator, num_objects: int, object_split: str) -> TaskEpisode:
        kinds, targets = sample_object_kinds(rng, num_objects, object_split)
        fixture_kinds, goals = sample_receptacles(rng, NUM_RECEPTACLES, object_split)
        target = targets[int(rng.integers(len(targets)))]
        receptacle = goals[int(rng.integers(len(goals)))]
        objects, fixtures = layout_scene(rng, kinds, fixture_kinds)
        return TaskEpisode(
            objects, fixtures, {"target": Role("object", target), "receptacle": Role("fixture", receptacle)}
        )

    def sample_instruction(self, rng: np.random.Generator, episode: TaskEpisode, split: str) -> str:
        language.check_instruction_split(split)
        target = episode.spec_of(episode.roles["target"])
        receptacle = episode.spec_of(episode.roles["receptacle"])
        templates = self.templates[split]
        template = templates[int(rng.integers(len(templates)))]
        words = draw_place_words(rng, split, target, receptacle)
        return template.format(
            verb=words.verb,
            colour=target.colour,
            noun=words.noun,
            prep=words.prep,
            receptacle_colour=receptacle.colour,
            receptacle=words.receptacle,
        )

    # --- the live episode ----------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        state = placement(self, "target", "receptacle")
        success = state.placed
        return {
            "success": success,
            "subgoals_done": int(success),
            "num_subgoals": 1,
            "inside": state.inside,
            "resting": state.resting,
            "touched": state.touched,
            "distance": state.distance,
        }

    def dense_reward(self, evaluation: dict[str, Any]) -> float:
        target = self.episode.roles["target"]
        return placement_reward(self, target, placement(self, target, "receptacle"))

    def goal_points(self) -> np.ndarray:
        """The target, and its resting pose in the receptacle."""
        target, receptacle = self.episode.roles["target"], self.episode.roles["receptacle"]
        return np.stack([self.position(target), rest_pose(self, target, receptacle)]).astype(np.float32)

    def plan(self, roles: dict[str, Role]) -> list[Skill]:
        return placing_skills(self, roles["target"], roles["receptacle"])

    def blind_candidates(self, role_name: str) -> list[Role]:
        """As :meth:`Task.blind_candidates`, but a receptacle may be any fixture (bowl or plate)."""
        if role_name == "receptacle":
            return receptacle_candidates(self, role_name)
        return super().blind_candidates(role_name)
