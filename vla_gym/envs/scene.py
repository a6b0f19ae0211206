"""The tabletop scene: a table and a few coloured objects at random, non-overlapping poses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pybullet as p

from vla_gym.envs.pybullet_sim import PyBulletSim

#: Named colour palette (RGBA). Hues are far apart so that no two names can be confused.
PALETTE: dict[str, tuple[float, float, float, float]] = {
    "red": (0.90, 0.10, 0.10, 1.0),
    "green": (0.10, 0.70, 0.15, 1.0),
    "blue": (0.10, 0.25, 0.95, 1.0),
    "yellow": (0.95, 0.85, 0.05, 1.0),
    "purple": (0.55, 0.15, 0.80, 1.0),
    "orange": (1.00, 0.50, 0.00, 1.0),
    "cyan": (0.00, 0.80, 0.85, 1.0),
}
COLOURS = tuple(PALETTE)
SHAPES = ("cube", "cylinder", "sphere")

OBJECT_HALF_SIZE = 0.025  # m: cube half-edge, cylinder and sphere radius
CYLINDER_HEIGHT = 0.06  # m
OBJECT_MASS = 0.08  # kg
OBJECT_FRICTION = 1.2
SPHERE_ROLLING_FRICTION = 0.002  # keeps spheres from rolling away when nudged

TABLE_HALF_EXTENTS = (0.35, 0.45, 0.02)  # m
TABLE_CENTRE = (0.55, 0.0)  # m, world x/y of the table centre; its top is at z = 0
TABLE_RGBA = (0.62, 0.50, 0.38, 1.0)
#: The robot stands on a pedestal beside the table; its top is flush with the table (z = 0).
PEDESTAL_HALF_EXTENTS = (0.12, 0.12, 0.38)  # m
PEDESTAL_CENTRE = (-0.02, 0.0)  # m, world x/y
PEDESTAL_RGBA = (0.30, 0.30, 0.33, 1.0)

#: Region (m, world x/y) where object centres are placed, inside the arm's reach.
SPAWN_LOW = np.array([0.40, -0.18])
SPAWN_HIGH = np.array([0.66, 0.18])
MIN_OBJECT_SPACING = 0.10  # m between object centres, so the open gripper fits between
MAX_PLACEMENT_TRIES = 1000  # random positions tried per layout
MAX_LAYOUTS = 50
MAX_YAW = np.pi / 6  # rad: objects are turned at most this far about z, so a cube fits the open gripper


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a scene: its colour name, shape and pose (m, rad)."""

    colour: str
    shape: str
    xy: tuple[float, float]
    yaw: float

    @property
    def half_height(self) -> float:
        """Half of the object's height (m): its centre rests this high above the table."""
        return CYLINDER_HEIGHT / 2 if self.shape == "cylinder" else OBJECT_HALF_SIZE

    def describe(self) -> dict[str, str]:
        return {"colour": self.colour, "shape": self.shape}


#: Object splits: "train" scenes hold only the seen colour-shape combinations; every
#: "test" scene holds at least one held-out combination, and its goal is one of them.
OBJECT_SPLITS = ("train", "test")
#: Colour-shape combinations held out of the "train" split, one per colour: colour ``i``
#: with shape ``i + 1`` (mod 3). Each shape is held out for two or three colours, so every
#: colour and every shape is seen in training, only never in these pairs ("red cube", the
#: canonical goal, stays in training).
HELD_OUT_COMBINATIONS: frozenset[tuple[str, str]] = frozenset(
    (colour, SHAPES[(i + 1) % len(SHAPES)]) for i, colour in enumerate(COLOURS)
)


def is_held_out(colour: str, shape: str) -> bool:
    """Whether the ``colour`` ``shape`` pair is one of :data:`HELD_OUT_COMBINATIONS`."""
    return (colour, shape) in HELD_OUT_COMBINATIONS


def train_shapes(colour: str) -> tuple[str, ...]:
    """The shapes a ``colour`` object can have in a "train" scene (all but its held-out one)."""
    return tuple(shape for shape in SHAPES if not is_held_out(colour, shape))


def held_out_shape(colour: str) -> str:
    """The one shape a ``colour`` object never has in a "train" scene."""
    return next(shape for shape in SHAPES if is_held_out(colour, shape))


def _check_object_split(split: str) -> None:
    if split not in OBJECT_SPLITS:
        raise ValueError(f"object_split={split!r} is not available; choose one of {OBJECT_SPLITS}")


def _sample_poses(rng: np.random.Generator, num_objects: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Object centres (m, x/y) at least :data:`MIN_OBJECT_SPACING` apart, and yaws (rad)."""
    for _ in range(MAX_LAYOUTS):
        # Greedy placement can paint itself into a corner (about once in 3000 six-object
        # scenes): then the whole layout is drawn again.
        xys: list[np.ndarray] = []
        for _ in range(MAX_PLACEMENT_TRIES):
            xy = rng.uniform(SPAWN_LOW, SPAWN_HIGH)
            if all(np.linalg.norm(xy - other) >= MIN_OBJECT_SPACING for other in xys):
                xys.append(xy)
                if len(xys) == num_objects:
                    return xys, rng.uniform(-MAX_YAW, MAX_YAW, size=num_objects)
    raise RuntimeError(f"could not place {num_objects} objects {MIN_OBJECT_SPACING} m apart in {MAX_LAYOUTS} layouts")


def sample_scene(rng: np.random.Generator, num_objects: int, object_split: str = "train") -> tuple[list[ObjectSpec], int]:
    """Objects of one ``object_split`` scene and the index of its goal object.

    "train": every object's colour-shape pair is a seen one (not in
    :data:`HELD_OUT_COMBINATIONS`), the goal is any object. "test": shapes are drawn
    from all three, then one object (at random) is given its colour's held-out shape, and
    the goal is drawn among the held-out objects. Colours are distinct in both splits.
    All randomness comes from ``rng``.
    """
    _check_object_split(object_split)
    chosen = [COLOURS[c] for c in rng.choice(len(COLOURS), size=num_objects, replace=False)]
    if object_split == "train":
        kinds = rng.integers(len(SHAPES) - 1, size=num_objects)
        shapes = [train_shapes(colour)[k] for colour, k in zip(chosen, kinds)]
    else:
        shapes = [SHAPES[k] for k in rng.integers(len(SHAPES), size=num_objects)]
        forced = int(rng.integers(num_objects))
        shapes[forced] = held_out_shape(chosen[forced])
    xys, yaws = _sample_poses(rng, num_objects)
    specs = [
        ObjectSpec(colour, shape, (float(xy[0]), float(xy[1])), float(yaw))
        for colour, shape, xy, yaw in zip(chosen, shapes, xys, yaws)
    ]
    candidates = list(range(num_objects))
    if object_split == "test":
        candidates = [i for i, spec in enumerate(specs) if is_held_out(spec.colour, spec.shape)]
    return specs, candidates[int(rng.integers(len(candidates)))]


def index_of_colour(specs: list[ObjectSpec], colour: str) -> int:
    """Index of the object of ``colour`` in ``specs``; ``ValueError`` naming the colours present."""
    for i, spec in enumerate(specs):
        if spec.colour == colour:
            return i
    present = [s.colour for s in specs]
    raise ValueError(f"no {colour!r} object in this scene; colours present: {present}")


class Scene:
    """Builds the static table and the robot's pedestal once and (re)spawns the objects.

    There is no floor: it would only show in the image corners and costs ~10 % of a
    render; the background stays plain.
    """

    def __init__(self, sim: PyBulletSim) -> None:
        self.sim = sim
        self._shape_ids: dict[str, tuple[int, int]] = {}
        self._add_static_box("table", TABLE_HALF_EXTENTS, TABLE_CENTRE, TABLE_RGBA)
        self._add_static_box("pedestal", PEDESTAL_HALF_EXTENTS, PEDESTAL_CENTRE, PEDESTAL_RGBA)
        self.objects: list[ObjectSpec] = []

    def _add_static_box(self, name: str, half_extents, centre_xy, rgba) -> None:
        """A fixed box (m) whose top face lies at z = 0, centred on ``centre_xy``."""
        c = self.sim.client
        col = c.createCollisionShape(p.GEOM_BOX, halfExtents=half_extents)
        vis = c.createVisualShape(p.GEOM_BOX, halfExtents=half_extents, rgbaColor=rgba)
        self.sim.add_body(name, c.createMultiBody(0, col, vis, basePosition=(*centre_xy, -half_extents[2])))

    def _shape(self, shape: str) -> tuple[int, int]:
        """Collision and visual shape ids for ``shape``, created once per client."""
        if shape not in self._shape_ids:
            c, r = self.sim.client, OBJECT_HALF_SIZE
            if shape == "cube":
                ids = (
                    c.createCollisionShape(p.GEOM_BOX, halfExtents=[r] * 3),
                    c.createVisualShape(p.GEOM_BOX, halfExtents=[r] * 3),
                )
            elif shape == "cylinder":
                ids = (
                    c.createCollisionShape(p.GEOM_CYLINDER, radius=r, height=CYLINDER_HEIGHT),
                    c.createVisualShape(p.GEOM_CYLINDER, radius=r, length=CYLINDER_HEIGHT),
                )
            elif shape == "sphere":
                ids = (
                    c.createCollisionShape(p.GEOM_SPHERE, radius=r),
                    c.createVisualShape(p.GEOM_SPHERE, radius=r),
                )
            else:
                raise ValueError(f"unknown shape {shape!r}; known shapes: {SHAPES}")
            self._shape_ids[shape] = ids
        return self._shape_ids[shape]

    @staticmethod
    def body_name(index: int) -> str:
        return f"object_{index}"

    def clear(self) -> None:
        for i in range(len(self.objects)):
            self.sim.remove_body(self.body_name(i))
        self.objects = []

    def spawn(self, specs: list[ObjectSpec]) -> None:
        """Replace the current objects with ``specs``, resting on the table."""
        self.clear()
        c = self.sim.client
        for i, spec in enumerate(specs):
            col, vis = self._shape(spec.shape)
            quat = p.getQuaternionFromEuler((0.0, 0.0, spec.yaw))
            body = c.createMultiBody(
                OBJECT_MASS, col, vis, basePosition=(*spec.xy, spec.half_height), baseOrientation=quat
            )
            c.changeVisualShape(body, -1, rgbaColor=PALETTE[spec.colour])
            c.changeDynamics(
                body,
                -1,
                lateralFriction=OBJECT_FRICTION,
                rollingFriction=SPHERE_ROLLING_FRICTION,
                activationState=p.ACTIVATION_STATE_ENABLE_SLEEPING,
            )
            # Spawned exactly at rest, so start asleep: resting contacts then cost nothing
            # until the robot (or another woken object) touches the object and wakes it.
            c.changeDynamics(body, -1, activationState=p.ACTIVATION_STATE_SLEEP)
            self.sim.add_body(self.body_name(i), body)
        self.objects = list(specs)

    def index_of(self, colour: str) -> int:
        """Index of the current object of ``colour`` (``ValueError`` if there is none)."""
        return index_of_colour(self.objects, colour)
