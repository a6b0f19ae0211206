"""Execution shifts (RL4VLA's third axis beside vision and semantics): the episode is
executed under conditions training never saw. Off by default (``execution_shift=()``).

- ``"start_pose"``: the arm starts with its gripper at a random point of
  :data:`START_LOW`-:data:`START_HIGH` instead of the home pose.
- ``"perturb"``: once, at a step drawn from :data:`PERTURB_STEPS`, the ``target`` object
  is pushed (moved at rest) by :data:`PERTURB_DISTANCE` in a random direction, if it
  rests on the table untouched and the new place is free; otherwise nothing happens.

Both draw from the env's stream after everything else, so a seed gives the same scene and
instruction with or without them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vla_gym.envs.scene import FIXTURE_CLEARANCE, OBJECT_CLEARANCE, WIDE_SPAWN_HIGH, WIDE_SPAWN_LOW
from vla_gym.envs.tasks.base import Role, TaskEpisode, World

EXECUTION_SHIFTS = ("start_pose", "perturb")
#: Box (m, world) the gripper's start point is drawn from under "start_pose".
START_LOW = np.array([0.35, -0.15, 0.15])
START_HIGH = np.array([0.60, 0.15, 0.35])
#: Steps (inclusive) among which the "perturb" push happens.
PERTURB_STEPS = (4, 12)
#: Range (m) of the push's length.
PERTURB_DISTANCE = (0.03, 0.06)
#: An object resting on the table has its lowest point below this height (m).
RESTING_HEIGHT = 0.01


def check_execution_shift(value: Any) -> tuple[str, ...]:
    """``execution_shift`` as a sorted tuple of names; "all" for every shift, () or "none" for none."""
    if value in ((), None, "none", []):
        return ()
    names = EXECUTION_SHIFTS if value == "all" else (value,) if isinstance(value, str) else value
    try:
        names = tuple(names)
    except TypeError:
        names = (value,)
    if not all(isinstance(n, str) and n in EXECUTION_SHIFTS for n in names):
        raise ValueError(
            f"execution_shift={value!r} must be (), 'none', 'all', or names from {EXECUTION_SHIFTS}"
        )
    return tuple(sorted(set(names)))


class ExecutionShift:
    """Applies the chosen execution shifts to each episode of one env."""

    def __init__(self, world: World, shifts: tuple[str, ...]) -> None:
        self.world = world
        self.shifts = shifts
        self.perturb_step: int | None = None
        self.perturb_offset = np.zeros(2)
        self.episode: TaskEpisode | None = None

    def begin(self, rng: np.random.Generator, episode: TaskEpisode) -> None:
        """Draw this episode's shifts (nothing when none is on) and move the arm if asked."""
        self.episode = episode
        self.perturb_step = None
        if "start_pose" in self.shifts:
            self.world.robot.reset_to(rng.uniform(START_LOW, START_HIGH))
        if "perturb" in self.shifts:
            self.perturb_step = int(rng.integers(PERTURB_STEPS[0], PERTURB_STEPS[1] + 1))
            angle = rng.uniform(0.0, 2 * np.pi)
            self.perturb_offset = rng.uniform(*PERTURB_DISTANCE) * np.array([np.cos(angle), np.sin(angle)])

    def after_step(self, step: int) -> None:
        if step != self.perturb_step:
            return
        target: Role = self.episode.roles["target"]
        sim, name = self.world.sim, target.body_name
        if any(self.world.robot.finger_contacts(name)) or sim.aabb(name)[0][2] > RESTING_HEIGHT:
            return
        position = sim.base_position(name)
        new_xy = position[:2] + self.perturb_offset
        if self._free(new_xy, target.index):
            sim.set_base_position(name, [*new_xy, position[2]])

    def _free(self, xy: np.ndarray, index: int) -> bool:
        """Whether an object centred at ``xy`` (m) stays on the table area and clear of the others."""
        if np.any(xy < WIDE_SPAWN_LOW) or np.any(xy > WIDE_SPAWN_HIGH):
            return False
        sim = self.world.sim
        for i in range(len(self.episode.objects)):
            other = sim.base_position(Role("object", i).body_name)[:2]
            if i != index and np.linalg.norm(xy - other) < 2 * OBJECT_CLEARANCE:
                return False
        for i, fixture in enumerate(self.episode.fixtures):
            if np.linalg.norm(xy - np.asarray(fixture.xy)) < OBJECT_CLEARANCE + FIXTURE_CLEARANCE[fixture.kind]:
                return False
        return True
