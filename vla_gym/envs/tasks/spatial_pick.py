"""``spatial_pick``: pick up the object a spatial relation picks out (``VLAPickSpatial-v0``)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_gym.envs import language
from vla_gym.envs.language import INSTRUCTION_SPLITS
from vla_gym.envs.scene import (
    OBJECT_CLEARANCE,
    ObjectSpec,
    index_of_colour,
    sample_layout,
    sample_object_kinds,
    sample_yaws,
)
from vla_gym.envs.tasks.base import Role, TaskEpisode
from vla_gym.envs.tasks.pick import PickTask

# --- the frame ------------------------------------------------------------------------------
#: World x/y (m) of the robot base: "closest to / farthest from the robot" compare the
#: distance of an object's centre (x/y) to this point.
ROBOT_BASE_XY = (0.0, 0.0)
#: Unit vector (world x/y) pointing "right" as seen in the agent camera's image (the camera
#: sits at x = 1.05 looking back at the robot): right is world +y, left is world -y.
RIGHT_DIRECTION = (0.0, 1.0)
#: Unit vector (world x/y) pointing "in front of": towards the camera, away from the robot
#: (world +x). "Behind" is the opposite, towards the robot.
FRONT_DIRECTION = (1.0, 0.0)
#: The relation picks out its object with this margin (m): see :class:`SpatialPickTask`.
MARGIN = 0.04

#: Superlatives (no anchor): the most left / right, the closest to / farthest from the robot.
SUPERLATIVES = ("leftmost", "rightmost", "closest", "farthest")
#: Relations to a named anchor object.
ANCHORED = ("left_of", "right_of", "behind", "in_front_of")
RELATIONS = SUPERLATIVES + ANCHORED
#: Noun classes: a shape, or "any" (a generic noun: "object", "thing", "item", "one").
NOUN_CLASSES = ("cube", "cylinder", "sphere", "any")
#: Layouts drawn (each a fresh one from the rng) before giving up on a description whose
#: relation is necessary (at least two objects match the noun).
MAX_LAYOUT_TRIES = 200
#: Share of instructions naming the anchor by a generic noun ("the green object").
ANCHOR_GENERIC_RATE = 0.25
#: Uniform numbers sample_instruction draws, whatever the relation: template, verb, phrase,
#: noun, generic anchor noun or not, anchor noun.
INSTRUCTION_DRAWS = 6

#: Relation phrases per split: ``{noun}`` is the target's noun, ``{anchor}`` the anchor's
#: colour and noun. Left/right (and function words) are shared by both splits; every other
#: relation word of the test split ("furthest", "most", "nearest", "arm", "hand", "side",
#: "nearer", "further", "than") is test-only.
PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "leftmost": ("leftmost {noun}", "{noun} on the far left"),
        "rightmost": ("rightmost {noun}", "{noun} on the far right"),
        "closest": ("{noun} closest to the robot",),
        "farthest": ("{noun} farthest from the robot",),
        "left_of": ("{noun} left of the {anchor}", "{noun} to the left of the {anchor}"),
        "right_of": ("{noun} right of the {anchor}", "{noun} to the right of the {anchor}"),
        "behind": ("{noun} behind the {anchor}",),
        "in_front_of": ("{noun} in front of the {anchor}",),
    },
    "test": {
        "leftmost": ("left-most {noun}", "{noun} furthest to the left"),
        "rightmost": ("right-most {noun}", "{noun} furthest to the right"),
        "closest": ("{noun} nearest the arm", "{noun} nearest to the arm"),
        "farthest": ("{noun} furthest from the arm",),
        "left_of": ("{noun} on the left-hand side of the {anchor}",),
        "right_of": ("{noun} on the right-hand side of the {anchor}",),
        "behind": ("{noun} nearer the arm than the {anchor}",),
        "in_front_of": ("{noun} further from the arm than the {anchor}",),
    },
}
TEMPLATES: dict[str, tuple[str, ...]] = {
    "train": (
        "{verb} the {object}",
        "please {verb} the {object}",
        "your goal is to {verb} the {object}",
    ),
    "test": (
        "could you {verb} the {object}?",
        "i want you to {verb} the {object} now",
        "find the {object} and {verb} it",
    ),
}
_PLACEHOLDER = re.compile(r"\{[a-z_0-9]+\}")


@dataclass(frozen=True)
class SpatialDescription:
    """Which object an instruction means: the ``target`` (object index), the ``relation``
    (one of :data:`RELATIONS`), the ``noun`` class (one of :data:`NOUN_CLASSES`) and the
    ``anchor`` (object index; None for a superlative)."""

    target: int
    relation: str
    noun: str
    anchor: int | None = None


def _features(spec: ObjectSpec) -> dict[str, float]:
    """An object's coordinates in the task's frame (m): ``right`` (along
    :data:`RIGHT_DIRECTION`), ``front`` (along :data:`FRONT_DIRECTION`) and ``distance`` (x/y,
    from :data:`ROBOT_BASE_XY`)."""
    xy = np.asarray(spec.xy, dtype=float)
    return {
        "right": float(xy @ np.asarray(RIGHT_DIRECTION)),
        "front": float(xy @ np.asarray(FRONT_DIRECTION)),
        "distance": float(np.linalg.norm(xy - np.asarray(ROBOT_BASE_XY))),
    }


def superlative_score(spec: ObjectSpec, relation: str) -> float:
    """How far (m) ``spec`` goes in a superlative's direction: the most-so object has the
    highest score (leftmost: -right; rightmost: right; closest: -distance; farthest: distance)."""
    f = _features(spec)
    scores = {"leftmost": -f["right"], "rightmost": f["right"], "closest": -f["distance"], "farthest": f["distance"]}
    return scores[relation]


def anchored_offsets(spec: ObjectSpec, anchor: ObjectSpec, relation: str) -> tuple[float, ...]:
    """Signed offsets (m) of ``spec`` from ``anchor``, positive where the relation holds.

    Left/right: the offset along :data:`RIGHT_DIRECTION`. Behind / in front of: both the
    offset along :data:`FRONT_DIRECTION` and the difference in distance from the robot base,
    so the relation holds in either reading ("nearer the arm than" the anchor).
    """
    f, a = _features(spec), _features(anchor)
    if relation in ("left_of", "right_of"):
        sign = -1.0 if relation == "left_of" else 1.0
        return (sign * (f["right"] - a["right"]),)
    sign = -1.0 if relation == "behind" else 1.0
    return (sign * (f["front"] - a["front"]), sign * (f["distance"] - a["distance"]))


def noun_matches(objects: list[ObjectSpec], noun: str, anchor: int | None = None) -> list[int]:
    """Indices of the objects a ``noun`` class names (the anchor excluded)."""
    return [i for i, o in enumerate(objects) if i != anchor and (noun == "any" or o.shape == noun)]


def picks_out(objects: list[ObjectSpec], description: SpatialDescription) -> bool:
    """Whether the description's relation picks out its target alone, with :data:`MARGIN`.

    Superlative: the target's score beats every other object of the noun by at least
    MARGIN. Anchored: every offset of the target is at least MARGIN, and every other object
    of the noun (the anchor aside) has every offset at most -MARGIN (clearly on the other side).
    """
    d = description
    matches = noun_matches(objects, d.noun, d.anchor)
    if d.target not in matches:
        return False
    others = [i for i in matches if i != d.target]
    if d.relation in SUPERLATIVES:
        best = superlative_score(objects[d.target], d.relation)
        return all(best - superlative_score(objects[i], d.relation) >= MARGIN for i in others)
    anchor = objects[d.anchor]
    if min(anchored_offsets(objects[d.target], anchor, d.relation)) < MARGIN:
        return False
    return all(max(anchored_offsets(objects[i], anchor, d.relation)) <= -MARGIN for i in others)


def relation_needed(objects: list[ObjectSpec], description: SpatialDescription) -> bool:
    """Whether at least two objects match the noun (the anchor aside): then the noun alone
    does not tell the target, the relation does."""
    return len(noun_matches(objects, description.noun, description.anchor)) >= 2


def descriptions(objects: list[ObjectSpec], targets: list[int]) -> list[SpatialDescription]:
    """Every description that picks out one of ``targets`` (see :func:`picks_out`), in a
    fixed order: by target, relation (:data:`RELATIONS`), noun (shape first), anchor."""
    found = []
    for target in targets:
        for relation in RELATIONS:
            for noun in (objects[target].shape, "any"):
                anchors = [None] if relation in SUPERLATIVES else [i for i in range(len(objects)) if i != target]
                for anchor in anchors:
                    description = SpatialDescription(target, relation, noun, anchor)
                    if picks_out(objects, description):
                        found.append(description)
    return found


class SpatialPickTask(PickTask):
    """Pick up the object a spatial relation picks out.

    ## Task Description
    A table holds ``num_objects`` objects (cube, cylinder or sphere), each a different
    colour, laid out like pick's. The instruction names the ``target`` by a relation, not
    by its colour: a superlative ("pick up the leftmost cube", "grab the object closest to
    the robot", "lift the thing farthest from the robot") or a relation to a named
    ``anchor`` object ("pick up the cube left of the green sphere", "... behind / in
    front of the red cube"). Episodes with an anchor have an ``anchor`` role.

    The frame (:data:`RIGHT_DIRECTION`, :data:`FRONT_DIRECTION`, :data:`ROBOT_BASE_XY`):
    left/right as seen in the agent camera's image (left = world -y, right = world +y);
    "closest to / farthest from the robot" by the distance (x/y) of the object's centre to
    the robot base at the origin; "behind" = nearer the robot (smaller x), "in front of" =
    nearer the camera (larger x); behind / in front of also hold for the distance to the
    robot base (so the test phrasing "nearer the arm than" is true either way).

    Exactly one object fits, with :data:`MARGIN` = 0.04 m (:func:`picks_out`): a
    superlative's target beats every other object of the noun by at least 0.04 m on its
    axis or distance; for "the X left of the C S" the target lies at least 0.04 m left of
    the anchor and every other X (the anchor aside) at least 0.04 m right of it (for behind
    / in front of, by both x and distance). The noun is a shape noun or a generic one
    ("object", "thing"); scenes are drawn until at least two objects match the noun, so the
    relation, not the shape alone, is needed (one-object scenes aside).

    ## Randomizations
    Colours and shapes (under ``object_split``; in "test" scenes the target is a held-out
    colour-shape pair), positions (pick's region, at least 0.10 m apart; redrawn up to
    :data:`MAX_LAYOUT_TRIES` times until a description with a necessary relation exists) and
    yaws (up to 30 degrees); the relation (uniform among those that have such a description,
    then uniform among its descriptions: target, noun class, anchor); the template, verb,
    phrase and nouns (the anchor by a generic noun in 25 % of instructions). The
    "test" instruction split uses pick's test verbs and nouns ("box", "tube", "orb",
    "item", "one"), its own templates and test-only relation words ("the box on the
    left-hand side of the red orb", "the item nearest the arm", "the left-most tube");
    "left" and "right" are shared with the train split. The ``target`` reset option
    rebinds the target and redescribes it (the first description in :func:`descriptions`'
    order, necessary relations first); ``ValueError`` when no relation picks it out.

    ## Success Conditions
    Exactly pick's: the target's lowest point is at least
    :data:`~vla_gym.envs.tasks.pick.LIFT_HEIGHT` = 0.05 m above the table while a finger
    touches it. Lifting another object is not success.

    ## Dense reward
    Pick's: 0.3 for reaching the target (``1 - tanh(d / 0.1 m)``), 0.2 while a finger
    touches it, 0.5 for its lift height towards 0.05 m while touched.
    """

    name = "spatial_pick"
    max_episode_steps = 50
    role_options = ("target",)
    templates = TEMPLATES
    slots = {
        split: {
            "verb": language.VERBS[split],
            "noun": tuple(noun for nouns in language.NOUNS[split].values() for noun in nouns),
            "relation": tuple(phrase for phrases in PHRASES[split].values() for phrase in phrases),
        }
        for split in INSTRUCTION_SPLITS
    }

    # --- sampling ----------------------------------------------------------------------------
    def sample_scene(self, rng: np.random.Generator, num_objects: int, object_split: str) -> TaskEpisode:
        kinds, targets = sample_object_kinds(rng, num_objects, object_split)
        fallback: tuple[list[ObjectSpec], list[SpatialDescription]] | None = None
        for _ in range(MAX_LAYOUT_TRIES):
            xys = sample_layout(rng, [OBJECT_CLEARANCE] * num_objects)
            yaws = sample_yaws(rng, num_objects)
            objects = [
                ObjectSpec(colour, shape, (float(xy[0]), float(xy[1])), float(yaw))
                for (colour, shape), xy, yaw in zip(kinds, xys, yaws)
            ]
            found = descriptions(objects, targets)
            needed = [d for d in found if relation_needed(objects, d)]
            if needed:
                return self._episode(objects, _draw(rng, needed))
            if found and fallback is None:
                fallback = (objects, found)
            if num_objects < 2 and fallback is not None:
                break  # one object: its relation can never be needed
        if fallback is None:
            raise RuntimeError(
                f"no layout of {num_objects} objects in {MAX_LAYOUT_TRIES} let a relation pick out a target"
            )
        return self._episode(fallback[0], _draw(rng, fallback[1]))

    @staticmethod
    def _episode(objects: list[ObjectSpec], description: SpatialDescription) -> TaskEpisode:
        episode = TaskEpisode(objects, [], {})
        _describe(episode, description)
        return episode

    def apply_role_options(self, episode: TaskEpisode, options: dict[str, Any]) -> None:
        """Rebind the target to the object of ``options["target"]`` (a colour) and describe it
        anew: the first of its descriptions, necessary relations first. ``ValueError`` when
        no object has that colour or no relation picks that object out uniquely."""
        colour = options.get("target")
        if colour is None:
            return
        try:
            index = index_of_colour(episode.objects, colour)
        except ValueError as err:
            raise ValueError(f"reset option target={colour!r}: {err}") from None
        if index == episode.roles["target"].index:
            return  # already the target: keep its description
        found = descriptions(episode.objects, [index])
        if not found:
            spec = episode.objects[index]
            raise ValueError(
                f"reset option target={colour!r}: no relation of the {self.name} task ({RELATIONS}) picks out the "
                f"{colour} {spec.shape} uniquely with a {MARGIN} m margin in this scene; choose another colour"
            )
        found.sort(key=lambda d: not relation_needed(episode.objects, d))  # stable: keeps the fixed order
        _describe(episode, found[0])

    def sample_instruction(self, rng: np.random.Generator, episode: TaskEpisode, split: str) -> str:
        """The episode's description in words from the ``split``'s templates and phrases;
        draws :data:`INSTRUCTION_DRAWS` uniform numbers whatever the description."""
        language.check_instruction_split(split)
        u = rng.random(INSTRUCTION_DRAWS)
        details = episode.details
        nouns = language.NOUNS[split]
        anchor_text = ""
        if details["anchor"] is not None:
            anchor = episode.objects[details["anchor"]]
            anchor_nouns = nouns["any" if u[4] < ANCHOR_GENERIC_RATE else anchor.shape]
            anchor_text = f"{anchor.colour} {_pick(anchor_nouns, u[5])}"
        phrase = _pick(PHRASES[split][details["relation"]], u[2])
        described = phrase.format(noun=_pick(nouns[details["noun"]], u[3]), anchor=anchor_text)
        return _pick(self.templates[split], u[0]).format(verb=_pick(language.VERBS[split], u[1]), object=described)

    @classmethod
    def words(cls, split: str) -> set[str]:
        """Every lower-case word of the ``split``'s templates, verbs, nouns and relation
        phrases (placeholders and colour words aside)."""
        language.check_instruction_split(split)
        texts = [*cls.templates[split], *(value for values in cls.slots[split].values() for value in values)]
        return {word for text in texts for word in re.findall(r"[a-z]+", _PLACEHOLDER.sub(" ", text.lower()))}


def _draw(rng: np.random.Generator, found: list[SpatialDescription]) -> SpatialDescription:
    """A relation uniformly among those in ``found``, then one of its descriptions uniformly."""
    relations = [r for r in RELATIONS if any(d.relation == r for d in found)]
    relation = relations[int(rng.integers(len(relations)))]
    of_relation = [d for d in found if d.relation == relation]
    return of_relation[int(rng.integers(len(of_relation)))]


def _describe(episode: TaskEpisode, description: SpatialDescription) -> None:
    """Set the episode's roles (target, and anchor if any) and details from ``description``."""
    episode.roles = {"target": Role("object", description.target)}
    if description.anchor is not None:
        episode.roles["anchor"] = Role("object", description.anchor)
    episode.details = {**dataclasses.asdict(description), "margin": MARGIN}


def _pick(values: tuple[str, ...], u: float) -> str:
    """The element of ``values`` a uniform number ``u`` in [0, 1) selects."""
    return values[min(int(u * len(values)), len(values) - 1)]
