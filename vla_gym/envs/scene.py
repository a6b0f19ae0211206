"""The tabletop scene: a table, coloured objects, and fixtures (bowls, plates, zones) at
random, non-overlapping poses, with the colour-shape split rules every task shares."""

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
#: Half the spacing an object keeps from its neighbours (m): two objects stay
#: ``2 * OBJECT_CLEARANCE`` = :data:`MIN_OBJECT_SPACING` apart.
OBJECT_CLEARANCE = MIN_OBJECT_SPACING / 2

#: Region (m, world x/y) for scenes with fixtures (bowls, plates, zones): wider than
#: :data:`SPAWN_LOW`/:data:`SPAWN_HIGH`, still inside the arm's reach and the camera's view.
WIDE_SPAWN_LOW = np.array([0.36, -0.24])
WIDE_SPAWN_HIGH = np.array([0.68, 0.24])

#: Fixtures: static bodies a task puts objects into, onto or inside of.
RECEPTACLES = ("bowl", "plate")
FIXTURE_KINDS = (*RECEPTACLES, "zone")
#: Bowl: a floor disc and an octagonal wall (m).
BOWL_RADIUS = 0.058  # of the wall's centre line; an object's centre inside it counts as "in"
BOWL_WALL_HEIGHT = 0.035
BOWL_FLOOR = 0.006  # floor thickness: an object in the bowl rests this high
#: Plate: a wider, flat disc with a low rim that keeps a ball from rolling off (m).
PLATE_RADIUS = 0.072
PLATE_RIM_HEIGHT = 0.016
PLATE_FLOOR = 0.008
WALL_HALF_THICKNESS = 0.005  # m
WALL_SEGMENTS = 8
#: Zone: a flat coloured square painted on the table, no collision (m, half of its side).
ZONE_HALF_SIZE = 0.06
ZONE_THICKNESS = 0.001
#: Clearance radius (m) of each fixture kind, like :data:`OBJECT_CLEARANCE`: an object's
#: centre stays ``OBJECT_CLEARANCE + FIXTURE_CLEARANCE[kind]`` away, so the open gripper
#: reaches it without touching the fixture.
FIXTURE_CLEARANCE = {"bowl": 0.085, "plate": 0.095, "zone": 0.085}


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


@dataclass(frozen=True)
class FixtureSpec:
    """One static fixture: its colour name, kind (bowl, plate or zone) and centre (m)."""

    colour: str
    kind: str
    xy: tuple[float, float]

    @property
    def floor_height(self) -> float:
        """Height (m) of the surface an object rests on inside the fixture."""
        return {"bowl": BOWL_FLOOR, "plate": PLATE_FLOOR, "zone": 0.0}[self.kind]

    @property
    def rim_height(self) -> float:
        """Height (m) of the fixture's top edge (0 for a flat zone)."""
        return {"bowl": BOWL_WALL_HEIGHT, "plate": PLATE_RIM_HEIGHT, "zone": 0.0}[self.kind]

    @property
    def inner_radius(self) -> float:
        """Distance (m) from the centre within which an object's centre counts as inside."""
        return {"bowl": BOWL_RADIUS, "plate": PLATE_RADIUS, "zone": ZONE_HALF_SIZE}[self.kind] - (
            0.0 if self.kind == "zone" else WALL_HALF_THICKNESS
        )

    def contains_xy(self, xy) -> bool:
        """Whether a point (m, world x/y) lies inside the fixture's footprint."""
        offset = np.asarray(xy, dtype=float)[:2] - np.asarray(self.xy)
        if self.kind == "zone":
            return bool(np.all(np.abs(offset) <= ZONE_HALF_SIZE))
        return bool(np.linalg.norm(offset) <= self.inner_radius)

    def describe(self) -> dict[str, str]:
        return {"colour": self.colour, "kind": self.kind}


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


#: Colour-receptacle combinations held out of the "train" split, one per colour: colour
#: ``i`` with receptacle ``i`` (mod 2) ("red bowl", "green plate", ...). Zones have no
#: held-out colours.
HELD_OUT_RECEPTACLES: frozenset[tuple[str, str]] = frozenset(
    (colour, RECEPTACLES[i % len(RECEPTACLES)]) for i, colour in enumerate(COLOURS)
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


def sample_layout(
    rng: np.random.Generator, radii, low: np.ndarray = SPAWN_LOW, high: np.ndarray = SPAWN_HIGH
) -> list[np.ndarray]:
    """Centres (m, x/y) drawn uniformly in ``[low, high]``, one per clearance radius in
    ``radii`` (m), each pair at least the sum of their radii apart."""
    radii = [float(r) for r in radii]
    for _ in range(MAX_LAYOUTS):
        # Greedy placement can paint itself into a corner (about once in 3000 six-object
        # scenes): then the whole layout is drawn again.
        xys: list[np.ndarray] = []
        for _ in range(MAX_PLACEMENT_TRIES):
            xy = rng.uniform(low, high)
            r = radii[len(xys)]
            if all(np.linalg.norm(xy - other) >= r + radii[j] for j, other in enumerate(xys)):
                xys.append(xy)
                if len(xys) == len(radii):
                    return xys
    raise RuntimeError(f"could not place {len(radii)} bodies with clearances {radii} m in {MAX_LAYOUTS} layouts")


def _sample_poses(rng: np.random.Generator, num_objects: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Object centres (m, x/y) at least :data:`MIN_OBJECT_SPACING` apart, and yaws (rad)."""
    xys = sample_layout(rng, [OBJECT_CLEARANCE] * num_objects)
    return xys, sample_yaws(rng, num_objects)


def sample_yaws(rng: np.random.Generator, num_objects: int) -> np.ndarray:
    """Object yaws (rad), uniform in [-:data:`MAX_YAW`, :data:`MAX_YAW`]."""
    return rng.uniform(-MAX_YAW, MAX_YAW, size=num_objects)


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


def sample_object_kinds(
    rng: np.random.Generator, num_objects: int, object_split: str, goal_shapes: tuple[str, ...] = SHAPES
) -> tuple[list[tuple[str, str]], list[int]]:
    """Colour-shape pairs of ``num_objects`` objects with distinct colours, and the indices
    that may be a task's goal (their shape is in ``goal_shapes``).

    "train": only seen pairs. "test": one object (the first) is a held-out pair whose shape
    is in ``goal_shapes``, and only held-out objects may be the goal. The first object
    always has a goal shape, so there is at least one candidate.
    """
    _check_object_split(object_split)
    colours = [COLOURS[c] for c in rng.choice(len(COLOURS), size=num_objects, replace=False)]
    if object_split == "test":
        # The first object's colour is redrawn among those whose held-out shape can be a goal.
        _swap_fitting_first(colours, lambda c: held_out_shape(c) in goal_shapes)
        allowed = [c for c in COLOURS if held_out_shape(c) in goal_shapes and c not in colours[1:]]
        colours[0] = allowed[int(rng.integers(len(allowed)))]
        shapes = [held_out_shape(colours[0])] + [SHAPES[k] for k in rng.integers(len(SHAPES), size=num_objects - 1)]
        candidates = [i for i, (c, sh) in enumerate(zip(colours, shapes)) if is_held_out(c, sh) and sh in goal_shapes]
    else:
        # The first object's colour is redrawn among those with a seen pair of a goal shape.
        _swap_fitting_first(colours, lambda c: bool(set(train_shapes(c)) & set(goal_shapes)))
        allowed = [c for c in COLOURS if set(train_shapes(c)) & set(goal_shapes) and c not in colours[1:]]
        colours[0] = allowed[int(rng.integers(len(allowed)))]
        first = [sh for sh in train_shapes(colours[0]) if sh in goal_shapes]
        shapes = [first[int(rng.integers(len(first)))]]
        shapes += [train_shapes(c)[k] for c, k in zip(colours[1:], rng.integers(len(SHAPES) - 1, size=num_objects - 1))]
        candidates = [i for i, sh in enumerate(shapes) if sh in goal_shapes]
    return list(zip(colours, shapes)), candidates


def _swap_fitting_first(colours: list[str], fits) -> None:
    """When every colour that ``fits`` (a predicate) is taken by objects 1.., swap the first
    such object's colour with the first object's, so the first object's colour can be
    redrawn among fitting ones (six-object scenes with narrow ``goal_shapes``). Otherwise
    leaves ``colours`` as it is (and the random stream untouched)."""
    if any(fits(c) and c not in colours[1:] for c in COLOURS):
        return
    j = next(i for i in range(1, len(colours)) if fits(colours[i]))
    colours[0], colours[j] = colours[j], colours[0]


def sample_fixture_kinds(
    rng: np.random.Generator, num_fixtures: int, object_split: str, kinds: tuple[str, ...] = RECEPTACLES
) -> tuple[list[tuple[str, str]], list[int]]:
    """Colour-kind pairs of ``num_fixtures`` fixtures with distinct colours, and the indices
    that may be a task's goal fixture.

    Receptacles follow :data:`HELD_OUT_RECEPTACLES` like objects follow
    :data:`HELD_OUT_COMBINATIONS`: "train" scenes hold only seen pairs; in "test" scenes the
    first fixture is a held-out pair and only held-out fixtures may be the goal. Zones
    (``kinds=("zone",)``) have no held-out pairs: any may be the goal in either split.
    """
    _check_object_split(object_split)
    colours = [COLOURS[c] for c in rng.choice(len(COLOURS), size=num_fixtures, replace=False)]
    picks = [kinds[int(k)] for k in rng.integers(len(kinds), size=num_fixtures)]
    if kinds == ("zone",):
        return list(zip(colours, picks)), list(range(num_fixtures))
    held_out = dict(HELD_OUT_RECEPTACLES)  # colour -> its held-out receptacle
    if object_split == "train":
        picks = [k if held_out[c] != k else _other(kinds, k) for c, k in zip(colours, picks)]
        return list(zip(colours, picks)), list(range(num_fixtures))
    picks[0] = held_out[colours[0]]
    candidates = [i for i, (c, k) in enumerate(zip(colours, picks)) if held_out[c] == k]
    return list(zip(colours, picks)), candidates


def _other(kinds: tuple[str, ...], kind: str) -> str:
    """The receptacle kind after ``kind`` among :data:`RECEPTACLES` (both kinds exist in every split)."""
    return RECEPTACLES[(RECEPTACLES.index(kind) + 1) % len(RECEPTACLES)]


def layout_scene(
    rng: np.random.Generator, objects: list[tuple[str, str]], fixtures: list[tuple[str, str]] = ()
) -> tuple[list[ObjectSpec], list[FixtureSpec]]:
    """Place fixtures, then objects, in the wide region (:data:`WIDE_SPAWN_LOW` -
    :data:`WIDE_SPAWN_HIGH`) with their clearances, and draw the objects' yaws.

    Args:
        objects: (colour, shape) per object; fixtures: (colour, kind) per fixture.
    """
    radii = [FIXTURE_CLEARANCE[kind] for _, kind in fixtures] + [OBJECT_CLEARANCE] * len(objects)
    xys = sample_layout(rng, radii, WIDE_SPAWN_LOW, WIDE_SPAWN_HIGH)
    yaws = sample_yaws(rng, len(objects))
    fixture_specs = [FixtureSpec(c, k, (float(xy[0]), float(xy[1]))) for (c, k), xy in zip(fixtures, xys)]
    object_specs = [
        ObjectSpec(c, sh, (float(xy[0]), float(xy[1])), float(yaw))
        for (c, sh), xy, yaw in zip(objects, xys[len(fixtures) :], yaws)
    ]
    return object_specs, fixture_specs


def index_of_colour(specs: list[ObjectSpec], colour: str) -> int:
    """Index of the object of ``colour`` in ``specs``; ``ValueError`` naming the colours present."""
    for i, spec in enumerate(specs):
        if spec.colour == colour:
            return i
    present = [s.colour for s in specs]
    raise ValueError(f"no {colour!r} object in this scene; colours present: {present}")


class Scene:
    """Builds the static table and the robot's pedestal once and (re)spawns the objects
    and fixtures of each episode.

    Bodies are named ``object_<i>`` and ``fixture_<i>`` in the order of their specs.
    There is no floor: it would only show in the image corners and costs ~10 % of a
    render; the background stays plain.
    """

    def __init__(self, sim: PyBulletSim) -> None:
        self.sim = sim
        self.build()

    def build(self) -> None:
        """Create the static table and pedestal in the sim's client, with no objects or
        fixtures; shapes are created again on first use. Called on construction and after
        :meth:`PyBulletSim.reconnect`."""
        self._shape_ids: dict[str, tuple[int, int]] = {}
        self._add_static_box("table", TABLE_HALF_EXTENTS, TABLE_CENTRE, TABLE_RGBA)
        self._add_static_box("pedestal", PEDESTAL_HALF_EXTENTS, PEDESTAL_CENTRE, PEDESTAL_RGBA)
        self.objects: list[ObjectSpec] = []
        self.fixtures: list[FixtureSpec] = []

    def _add_static_box(self, name: str, half_extents, centre_xy, rgba) -> None:
        """A fixed box (m) whose top face lies at z = 0, centred on ``centre_xy``."""
        c = self.sim.client
        col = c.createCollisionShape(p.GEOM_BOX, halfExtents=half_extents)
        vis = c.createVisualShape(p.GEOM_BOX, halfExtents=half_extents, rgbaColor=rgba)
        self.sim.add_body(name, c.createMultiBody(0, col, vis, basePosition=(*centre_xy, -half_extents[2])))

    def _shape(self, shape: str) -> tuple[int, int]:
        """Collision and visual shape ids for ``shape`` (an object shape or a fixture kind),
        created once per client."""
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
            elif shape in RECEPTACLES:
                ids = self._receptacle_shape(shape)
            elif shape == "zone":
                half = (ZONE_HALF_SIZE, ZONE_HALF_SIZE, ZONE_THICKNESS / 2)
                ids = (-1, c.createVisualShape(p.GEOM_BOX, halfExtents=half))
            else:
                raise ValueError(f"unknown shape {shape!r}; known: {SHAPES + FIXTURE_KINDS}")
            self._shape_ids[shape] = ids
        return self._shape_ids[shape]

    def _receptacle_shape(self, kind: str) -> tuple[int, int]:
        """A floor disc and an octagonal wall of boxes (low-poly), as one compound shape."""
        radius, height, floor = (
            (BOWL_RADIUS, BOWL_WALL_HEIGHT, BOWL_FLOOR) if kind == "bowl" else (PLATE_RADIUS, PLATE_RIM_HEIGHT, PLATE_FLOOR)
        )
        n = WALL_SEGMENTS
        wall_half_length = radius * np.tan(np.pi / n) + WALL_HALF_THICKNESS
        angles = [2 * np.pi * k / n for k in range(n)]
        kwargs = dict(
            shapeTypes=[p.GEOM_CYLINDER] + [p.GEOM_BOX] * n,
            halfExtents=[[0.0, 0.0, 0.0]] + [[WALL_HALF_THICKNESS, wall_half_length, height / 2]] * n,
            radii=[radius] + [0.0] * n,
            lengths=[floor] + [0.0] * n,
        )
        positions = [[0.0, 0.0, floor / 2]] + [[radius * np.cos(a), radius * np.sin(a), height / 2] for a in angles]
        orientations = [[0.0, 0.0, 0.0, 1.0]] + [list(p.getQuaternionFromEuler((0.0, 0.0, a))) for a in angles]
        c = self.sim.client
        col = c.createCollisionShapeArray(
            **kwargs, collisionFramePositions=positions, collisionFrameOrientations=orientations
        )
        vis = c.createVisualShapeArray(**kwargs, visualFramePositions=positions, visualFrameOrientations=orientations)
        return col, vis

    @staticmethod
    def body_name(index: int) -> str:
        return f"object_{index}"

    @staticmethod
    def fixture_name(index: int) -> str:
        return f"fixture_{index}"

    def clear(self) -> None:
        for i in range(len(self.objects)):
            self.sim.remove_body(self.body_name(i))
        for i in range(len(self.fixtures)):
            self.sim.remove_body(self.fixture_name(i))
        self.objects = []
        self.fixtures = []

    def spawn(self, specs: list[ObjectSpec], fixtures: list[FixtureSpec] | tuple = ()) -> None:
        """Replace the current bodies with ``fixtures`` (static) and ``specs`` (objects
        resting on the table)."""
        self.clear()
        c = self.sim.client
        for i, fixture in enumerate(fixtures):
            col, vis = self._shape(fixture.kind)
            z = ZONE_THICKNESS / 2 if fixture.kind == "zone" else 0.0
            body = c.createMultiBody(0, col, vis, basePosition=(*fixture.xy, z))
            c.changeVisualShape(body, -1, rgbaColor=PALETTE[fixture.colour])
            self.sim.add_body(self.fixture_name(i), body)
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
        self.fixtures = list(fixtures)

    def index_of(self, colour: str) -> int:
        """Index of the current object of ``colour`` (``ValueError`` if there is none)."""
        return index_of_colour(self.objects, colour)
