"""What a task is: its scene roles, instruction, success predicate, dense reward and the
expert's plan. One module per task under :mod:`vla_gym.envs.tasks`; the env class
(:class:`vla_gym.envs.tabletop_env.VLATabletopEnv`) hosts any of them.

A task never touches the env's random stream except through the ``rng`` it is handed, so
the same seed gives the same episode.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vla_gym.envs.language import check_instruction_split
from vla_gym.envs.scene import FixtureSpec, ObjectSpec, Scene

if TYPE_CHECKING:  # pragma: no cover
    from vla_gym.envs.experts.skills import Skill
    from vla_gym.envs.pybullet_sim import PyBulletSim
    from vla_gym.envs.robot import Panda

ROLE_KINDS = ("object", "fixture")
#: An object moving slower than this (m/s) counts as still (resting, not falling or rolling).
STILL_SPEED = 0.05
#: Dense shaping: distance (m) at which a reaching term has fallen to tanh(1) ~ 0.76.
REACH_SCALE = 0.1


@dataclass(frozen=True)
class Role:
    """Which body of the scene plays a role: an object or a fixture, by index."""

    kind: str
    index: int

    def __post_init__(self) -> None:
        if self.kind not in ROLE_KINDS:
            raise ValueError(f"role kind {self.kind!r} is not one of {ROLE_KINDS}")

    @property
    def body_name(self) -> str:
        return Scene.body_name(self.index) if self.kind == "object" else Scene.fixture_name(self.index)


@dataclass
class TaskEpisode:
    """One episode's scene and goal, as a task samples it (before the sim is touched).

    Attributes:
        objects: movable objects, spawned as ``object_<i>``.
        fixtures: static bowls, plates and zones, spawned as ``fixture_<i>``.
        roles: role name -> body, e.g. ``{"target": Role("object", 2), "receptacle": ...}``.
        instruction: the language goal.
        details: task-specific facts a predicate or the instruction needs (JSON-ready).
    """

    objects: list[ObjectSpec]
    fixtures: list[FixtureSpec]
    roles: dict[str, Role]
    instruction: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def spec_of(self, role: Role) -> ObjectSpec | FixtureSpec:
        return self.objects[role.index] if role.kind == "object" else self.fixtures[role.index]

    def colours(self, kind: str) -> list[str]:
        """Colours of the objects (``kind="object"``) or the fixtures, in spawn order."""
        return [spec.colour for spec in (self.objects if kind == "object" else self.fixtures)]

    def role_of_colour(self, kind: str, colour: str) -> Role | None:
        """The first body of ``kind`` with ``colour`` (None if there is none)."""
        colours = self.colours(kind)
        return Role(kind, colours.index(colour)) if colour in colours else None


@dataclass(frozen=True)
class World:
    """The live simulation a task reads: the sim, the robot and the scene."""

    sim: "PyBulletSim"
    robot: "Panda"
    scene: Scene


class Task:
    """Base class of a task. Subclasses set the class attributes and implement
    :meth:`sample_scene`, :meth:`sample_instruction`, :meth:`evaluate`,
    :meth:`dense_reward` and :meth:`plan`.

    Class attributes:
        name: the task's name in ``info["task"]`` and demo files.
        max_episode_steps: its time limit (steps).
        role_options: reset options that name a role's body by colour (besides
            ``"instruction"``), e.g. ``("target", "receptacle")``.
        templates / slots: per instruction split, the templates and the words each slot
            takes; :meth:`words` derives the vocabulary from them.
    """

    name: ClassVar[str] = ""
    max_episode_steps: ClassVar[int] = 50
    role_options: ClassVar[tuple[str, ...]] = ("target",)
    templates: ClassVar[dict[str, tuple[str, ...]]] = {}
    slots: ClassVar[dict[str, dict[str, tuple[str, ...]]]] = {}

    def __init__(self, world: World) -> None:
        self.world = world
        self.episode: TaskEpisode | None = None

    # --- sampling (pure: rng and specs only) ----------------------------------------------
    def sample_scene(self, rng: np.random.Generator, num_objects: int, object_split: str) -> TaskEpisode:
        """Objects, fixtures and roles of one episode (no instruction yet)."""
        raise NotImplementedError(f"{type(self).__name__} must implement sample_scene")

    def sample_instruction(self, rng: np.random.Generator, episode: TaskEpisode, split: str) -> str:
        """The instruction for ``episode``'s roles, from the ``split`` templates."""
        raise NotImplementedError(f"{type(self).__name__} must implement sample_instruction")

    def apply_role_options(self, episode: TaskEpisode, options: dict[str, Any]) -> None:
        """Rebind the roles named in ``options`` (by colour) to bodies of the sampled scene.

        ``ValueError`` names the colours present when none matches, and refuses two roles
        on one body.
        """
        for role_name in self.role_options:
            colour = options.get(role_name)
            if colour is None:
                continue
            kind = episode.roles[role_name].kind
            role = episode.role_of_colour(kind, colour)
            if role is None:
                raise ValueError(
                    f"reset option {role_name}={colour!r}: no {colour} {kind} in this {self.name} scene; "
                    f"colours present: {episode.colours(kind)}"
                )
            episode.roles[role_name] = role
        bodies = list(episode.roles.values())
        if len(set(bodies)) != len(bodies):
            raise ValueError(f"reset options {options} give two roles of the {self.name} task the same body")

    def check_role_shapes(
        self, episode: TaskEpisode, role_names: tuple[str, ...], shapes: tuple[str, ...], verb: str
    ) -> None:
        """``ValueError`` unless the objects playing ``role_names`` are of ``shapes``, naming
        the role, its colour and what the task does (``verb``, e.g. "pushes") to which shapes."""
        for role_name in role_names:
            spec = episode.spec_of(episode.roles[role_name])
            if spec.shape not in shapes:
                raise ValueError(
                    f"reset option {role_name}={spec.colour!r}: the {spec.colour} object is a {spec.shape}; "
                    f"the {self.name} task {verb} only {shapes}"
                )

    # --- the live episode -----------------------------------------------------------------
    def begin(self, episode: TaskEpisode) -> None:
        """Called once the episode's bodies are spawned; resets per-episode trackers."""
        self.episode = episode

    def after_step(self) -> None:
        """Called after every env step, before :meth:`evaluate` (for trackers such as a push's lift)."""

    def evaluate(self) -> dict[str, Any]:
        """``{"success": bool, "subgoals_done": int, "num_subgoals": int, ...flags}``: the one
        definition of success, read by the reward, ``info["is_success"]`` and termination."""
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate")

    def dense_reward(self, evaluation: dict[str, Any]) -> float:
        """Shaping in [0, 1) for a state that is not a success."""
        raise NotImplementedError(f"{type(self).__name__} must implement dense_reward")

    def reward(self, reward_type: str, evaluation: dict[str, Any]) -> float:
        """Sparse: 1.0 on success, else 0.0. Dense: 1.0 on success, else :meth:`dense_reward`."""
        if reward_type == "sparse" or evaluation["success"]:
            return float(evaluation["success"])
        return float(np.clip(self.dense_reward(evaluation), 0.0, 1.0))

    def plan(self, roles: dict[str, Role]) -> list["Skill"]:
        """The expert's skills, in order, for the given roles (the true ones, or others for
        an instruction-blind expert)."""
        raise NotImplementedError(f"{type(self).__name__} must implement plan")

    def goal_points(self) -> np.ndarray:
        """Privileged: where the live episode's current subgoal starts and ends, float32
        (2, 3) in metres: row 0 the centre of the object to move now, row 1 where that centre
        must go (a receptacle's resting pose, the top of a stack's base, the centre of a push
        zone, a lift above the table). For auxiliary losses and analysis; the policy never
        sees it. A multi-step task gives the first subgoal not yet done."""
        raise NotImplementedError(f"{type(self).__name__} must implement goal_points")

    def blind_candidates(self, role_name: str) -> list[Role]:
        """Bodies an instruction-blind expert may take for ``role_name``: every body of the
        role's kind (objects, or fixtures of the same kind), the true one included."""
        role = self.episode.roles[role_name]
        if role.kind == "object":
            return [Role("object", i) for i in range(len(self.episode.objects))]
        kind = self.episode.fixtures[role.index].kind
        return [Role("fixture", i) for i, f in enumerate(self.episode.fixtures) if f.kind == kind]

    # --- description ------------------------------------------------------------------------
    def roles_info(self) -> dict[str, dict[str, str]]:
        """``{role: {"colour", "shape" | "kind"}}`` of the current episode."""
        return {name: self.episode.spec_of(role).describe() for name, role in self.episode.roles.items()}

    @classmethod
    def words(cls, split: str) -> set[str]:
        """Every lower-case word the ``split``'s instructions can hold (colour words aside)."""
        check_instruction_split(split)
        texts = [re.sub(r"\{[a-z_0-9]+\}", " ", t) for t in cls.templates[split]]
        texts += [word for values in cls.slots[split].values() for word in values]
        return {word for text in texts for word in re.findall(r"[a-z]+", text.lower())}

    # --- helpers for subclasses ---------------------------------------------------------------
    def position(self, role: Role) -> np.ndarray:
        """World position (m) of a role's body, shape (3,)."""
        return self.world.sim.base_position(role.body_name)

    def bottom_height(self, role: Role) -> float:
        """Height (m) of a body's lowest point above the table top."""
        return float(self.world.sim.aabb(role.body_name)[0][2])

    def touched(self, role: Role) -> bool:
        """Whether a gripper finger touches the role's body."""
        return any(self.world.robot.finger_contacts(role.body_name))

    def still(self, role: Role) -> bool:
        return float(np.linalg.norm(self.world.sim.base_velocity(role.body_name))) < STILL_SPEED

    def reach_term(self, role: Role) -> float:
        """``1 - tanh(d / REACH_SCALE)`` for the distance d (m) from the gripper to the body."""
        distance = np.linalg.norm(self.world.robot.ee_position() - self.position(role))
        return float(1.0 - np.tanh(distance / REACH_SCALE))


def fill_template(rng: np.random.Generator, template: str, choices: dict[str, tuple[str, ...]], **fixed: str) -> str:
    """``template`` with each ``{slot}`` in ``fixed`` set, and each other slot drawn from ``choices``.

    Draws one number per slot in ``choices`` (in its order), whether the template uses it or not,
    so the random stream does not depend on the template.
    """
    drawn = {slot: values[int(rng.integers(len(values)))] for slot, values in choices.items()}
    return template.format(**{**drawn, **fixed})
