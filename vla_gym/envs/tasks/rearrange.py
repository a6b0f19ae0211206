"""``rearrange``: two or three placements in a row, each object into its own receptacle
(``VLARearrange-v0``)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from vla_gym.envs.experts.skills import Skill
from vla_gym.envs.language import MAX_INSTRUCTION_BYTES, check_instruction_split
from vla_gym.envs.scene import layout_scene, sample_object_kinds
from vla_gym.envs.tasks.base import Role, Task, TaskEpisode
from vla_gym.envs.tasks.place import (
    PlaceTask,
    PlaceWords,
    draw_place_words,
    object_in_receptacle,
    placement,
    placement_reward,
    placing_skills,
    receptacle_candidates,
    rest_pose,
    sample_receptacles,
)

#: Subgoals per episode: drawn uniformly from this inclusive range, capped by the number of objects.
NUM_STEPS = (2, 3)
MAX_STEPS = NUM_STEPS[1]
#: Receptacles per scene: one per subgoal at most, so a two-step episode has a distractor.
#: Layouts with three plates (the widest) and six objects fit in 82 % of single draws, and
#: :func:`~vla_gym.envs.scene.layout_scene` draws up to 50, so every scene fits.
NUM_RECEPTACLES = MAX_STEPS
#: Role names of each subgoal, in order: (object role, receptacle role).
SUBGOAL_ROLES: tuple[tuple[str, str], ...] = (
    ("target", "receptacle"),
    ("target_1", "receptacle_1"),
    ("target_2", "receptacle_2"),
)

#: One placement clause; later clauses follow a connective.
CLAUSE = "{verb} the {colour} {noun} {prep} the {receptacle_colour} {receptacle}"
#: The same clause without its verb (later clauses of a long instruction share the first verb).
CLAUSE_NO_VERB = "the {colour} {noun} {prep} the {receptacle_colour} {receptacle}"
#: The same without articles, for three long clauses: at most 119 bytes in all (train) and
#: 127 (test) with the longest word of every slot.
CLAUSE_TERSE = "{colour} {noun} {prep} {receptacle_colour} {receptacle}"
#: Connectives between clauses. The train ones avoid "and", a test-only word of the pick
#: and spatial pick tasks.
CONNECTIVES: dict[str, tuple[str, ...]] = {"train": (", then", "; then"), "test": (", after that", ", and next")}


class RearrangeTask(Task):
    """Put two or three named objects into their named receptacles, in a row.

    ## Task Description
    A table holds ``num_objects`` objects and three receptacles (bowls or plates, as in
    :class:`~vla_gym.envs.tasks.place.PlaceTask`). The instruction chains two or three
    placements ("put the red cube in the blue bowl, then the green can on the yellow
    plate"), each naming its own object and its own receptacle: roles ``target`` /
    ``receptacle`` (the first), ``target_1`` / ``receptacle_1`` and, in three-step
    episodes, ``target_2`` / ``receptacle_2``. In a two-step episode one receptacle is a
    distractor. The time limit, 160 steps, is about half again the scripted expert's
    longest three-step episode (about 105 steps; 140 with action noise).

    ## Randomizations
    As :class:`~vla_gym.envs.tasks.place.PlaceTask` (in "test" object-split scenes the first
    object and the first receptacle are held-out pairs; the later ones are any), plus the
    number of steps (2 or 3, at most ``num_objects``) and which objects and receptacles the
    later steps name; the instruction's wrapper, verbs, nouns, relation words and
    connectives ("then" / test: "after that", "and next"). When the instruction would be
    longer than 128 bytes, later clauses drop their verbs, then the wrapper and articles
    ("put red cube in blue bowl, then green can on cyan plate, then ...").

    ## Success Conditions
    Every subgoal holds at once: each named object rests, released and still, in its named
    receptacle (the place predicate, :func:`~vla_gym.envs.tasks.place.placement`).
    ``subgoals_done`` counts the subgoals that hold; an object in another step's receptacle
    counts for neither.

    ## Dense reward
    ``(done + p) / num_subgoals``, where ``done`` counts the subgoals that hold and ``p``
    (at most 0.9) is the place task's shaping for the first subgoal in order that does
    not. Below 1 before success.
    """

    name = "rearrange"
    max_episode_steps = 160
    role_options = tuple(role for pair in SUBGOAL_ROLES for role in pair)
    templates = {
        "train": ("{steps}", "please {steps}", "robot, {steps}", "first {steps}"),
        "test": ("could you {steps}?", "i need you to {steps}"),
    }
    slots = {split: {**PlaceTask.slots[split], "connective": CONNECTIVES[split]} for split in ("train", "test")}

    @classmethod
    def words(cls, split: str) -> set[str]:
        """:meth:`Task.words` of the wrappers and slots, and the clauses' own words ("the")."""
        return super().words(split) | set(re.findall(r"[a-z]+", re.sub(r"\{[a-z_]+\}", " ", CLAUSE)))

    # --- sampling ----------------------------------------------------------------------------
    def sample_scene(self, rng: np.random.Generator, num_objects: int, object_split: str) -> TaskEpisode:
        num_steps = min(int(rng.integers(NUM_STEPS[0], NUM_STEPS[1] + 1)), num_objects)
        kinds, targets = sample_object_kinds(rng, num_objects, object_split)
        fixture_kinds, goals = sample_receptacles(rng, NUM_RECEPTACLES, object_split)
        objects = _ordered(rng, num_objects, targets)[:num_steps]
        fixtures = _ordered(rng, NUM_RECEPTACLES, goals)[:num_steps]
        object_specs, fixture_specs = layout_scene(rng, kinds, fixture_kinds)
        roles: dict[str, Role] = {}
        for (obj_role, fixture_role), obj, fixture in zip(SUBGOAL_ROLES, objects, fixtures):
            roles[obj_role], roles[fixture_role] = Role("object", obj), Role("fixture", fixture)
        return TaskEpisode(object_specs, fixture_specs, roles, details={"num_subgoals": num_steps})

    def apply_role_options(self, episode: TaskEpisode, options: dict[str, Any]) -> None:
        """As :meth:`Task.apply_role_options`; a role of a step this episode lacks is refused."""
        absent = [role for role in self.role_options if options.get(role) is not None and role not in episode.roles]
        if absent:
            raise ValueError(
                f"reset options {absent}: this {self.name} episode has {self.num_subgoals(episode)} steps, "
                f"with roles {list(episode.roles)}"
            )
        super().apply_role_options(episode, options)

    def sample_instruction(self, rng: np.random.Generator, episode: TaskEpisode, split: str) -> str:
        """Clauses joined by connectives in a wrapper, shortened until it fits in 128 bytes.

        Draws the same numbers for every episode: a wrapper, the words of :data:`MAX_STEPS`
        clauses and ``MAX_STEPS - 1`` connectives, whether the episode uses them or not.
        """
        check_instruction_split(split)
        wrappers = self.templates[split]
        wrapper = wrappers[int(rng.integers(len(wrappers)))]
        clauses: list[tuple[dict[str, str], PlaceWords]] = []
        for obj_role, fixture_role in SUBGOAL_ROLES:
            # A step the episode lacks draws words for its first step's bodies, unused.
            obj = episode.spec_of(episode.roles.get(obj_role, episode.roles["target"]))
            fixture = episode.spec_of(episode.roles.get(fixture_role, episode.roles["receptacle"]))
            words = draw_place_words(rng, split, obj, fixture)
            clauses.append(({"colour": obj.colour, "receptacle_colour": fixture.colour}, words))
        choices = CONNECTIVES[split]
        connectives = [choices[int(rng.integers(len(choices)))] for _ in range(MAX_STEPS - 1)]
        clauses = clauses[: self.num_subgoals(episode)]
        for form in INSTRUCTION_FORMS:
            text = compose_instruction(wrapper, clauses, connectives, *form)
            if len(text.encode("utf-8")) <= MAX_INSTRUCTION_BYTES:
                return text
        raise RuntimeError(f"no form of the {self.name} instruction fits in {MAX_INSTRUCTION_BYTES} bytes: {text!r}")

    @staticmethod
    def num_subgoals(episode: TaskEpisode) -> int:
        return int(episode.details["num_subgoals"])

    def subgoals(self, roles: dict[str, Role]) -> list[tuple[Role, Role]]:
        """(object, receptacle) of each step of the current episode, from ``roles``."""
        pairs = SUBGOAL_ROLES[: self.num_subgoals(self.episode)]
        return [(roles[obj_role], roles[fixture_role]) for obj_role, fixture_role in pairs]

    # --- the live episode ----------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        placed = [placement(self, obj, fixture).placed for obj, fixture in self.subgoals(self.episode.roles)]
        return {
            "success": all(placed),
            "subgoals_done": sum(placed),
            "num_subgoals": len(placed),
            "placed": placed,
        }

    def dense_reward(self, evaluation: dict[str, Any]) -> float:
        placed = evaluation["placed"]
        current = self.current_subgoal(placed)
        progress = 0.0 if current is None else placement_reward(self, current[0], placement(self, *current))
        return (sum(placed) + progress) / len(placed)

    def current_subgoal(self, placed: list[bool]) -> tuple[Role, Role] | None:
        """(object, receptacle) of the first step not yet ``placed``; None once all are."""
        return next((pair for pair, done in zip(self.subgoals(self.episode.roles), placed) if not done), None)

    def goal_points(self) -> np.ndarray:
        """The object of the first subgoal not yet done (the last once all are), and its
        resting pose in that subgoal's receptacle."""
        obj, fixture = self.current_subgoal(self.evaluate()["placed"]) or self.subgoals(self.episode.roles)[-1]
        return np.stack([self.position(obj), rest_pose(self, obj, fixture)]).astype(np.float32)

    def plan(self, roles: dict[str, Role]) -> list[Skill]:
        """Place skills for every step, in order, whose object is not yet in its receptacle."""
        skills: list[Skill] = []
        for obj, fixture in self.subgoals(roles):
            if not object_in_receptacle(self, obj, fixture):
                skills += placing_skills(self, obj, fixture)
        return skills

    def blind_candidates(self, role_name: str) -> list[Role]:
        """As :meth:`Task.blind_candidates`, but a receptacle may be any fixture (bowl or plate)."""
        if role_name.startswith("receptacle"):
            return receptacle_candidates(self, role_name)
        return super().blind_candidates(role_name)


def _ordered(rng: np.random.Generator, count: int, firsts: list[int]) -> list[int]:
    """All indices below ``count``: one drawn from ``firsts`` first, then the others in a
    random order. Draws an index and a permutation."""
    first = firsts[int(rng.integers(len(firsts)))]
    return [first, *(int(i) for i in rng.permutation(count) if i != first)]


#: Instruction forms, longest first: (wrapped, verb in every clause, articles).
INSTRUCTION_FORMS: tuple[tuple[bool, bool, bool], ...] = (
    (True, True, True),
    (True, False, True),
    (False, False, True),
    (False, False, False),
)


def compose_instruction(
    wrapper: str,
    clauses: list[tuple[dict[str, str], PlaceWords]],
    connectives: list[str],
    wrapped: bool,
    every_verb: bool,
    articles: bool,
) -> str:
    """One instruction form: clauses joined by connectives, in the wrapper when ``wrapped``."""
    first = CLAUSE if articles else f"{{verb}} {CLAUSE_TERSE}"
    later = (CLAUSE if every_verb else CLAUSE_NO_VERB) if articles else CLAUSE_TERSE
    parts = []
    for i, (colours, words) in enumerate(clauses):
        text = (later if i else first).format(
            verb=words.verb, noun=words.noun, prep=words.prep, receptacle=words.receptacle, **colours
        )
        parts.append(f"{connectives[i - 1]} {text}" if i else text)
    steps = "".join(parts)
    return wrapper.format(steps=steps) if wrapped else steps
