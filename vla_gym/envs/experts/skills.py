"""Shared skills the scripted experts compose: small reactive controllers that read the
simulator every step (privileged state) and say where the end effector should go.

A skill gives ``command(world) -> (goal, grip)``: a goal position (m, world) for the
end effector and a gripper command (+1 close, -1 open); ``done(world)`` says it has
finished, ``failed(world)`` that the plan must start again (a missed grasp, a dropped
object). :class:`~vla_gym.envs.experts.scripted.ScriptedExpert` runs them in order.
"""

from __future__ import annotations

import numpy as np

from vla_gym.envs.tasks.base import World

HOVER_HEIGHT = 0.10  # m above the object's centre to line up before descending
XY_TOLERANCE = 0.008  # m: horizontal error at which the descent starts
DESCENT_XY_TOLERANCE = 0.025  # m: horizontal error tolerated while descending
Z_TOLERANCE = 0.008  # m: vertical error at which the gripper closes
EMPTY_GRIP_OPENING = 0.01  # m: a closed gripper this narrow holds nothing
OPEN_GRIP_OPENING = 0.07  # m: a gripper this wide has released what it held
STEP_UP = np.array([0.0, 0.0, 0.04])  # m: one full step upwards (MAX_EE_STEP)
CARRY_XY_TOLERANCE = 0.008  # m: a carried object this close above its goal may be lowered
LOWER_TOLERANCE = 0.004  # m: a lowered object's bottom this close to its goal height is there

OPEN, CLOSE = -1.0, 1.0


class Skill:
    """One reactive step of a plan, bound to the name of the body it acts on."""

    def __init__(self, body: str) -> None:
        self.body = body

    def command(self, world: World) -> tuple[np.ndarray, float]:
        raise NotImplementedError(f"{type(self).__name__} must implement command")

    def done(self, world: World) -> bool:
        raise NotImplementedError(f"{type(self).__name__} must implement done")

    def failed(self, world: World) -> bool:
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.body})"

    # --- readings ---------------------------------------------------------------------------
    def target(self, world: World) -> np.ndarray:
        return world.sim.base_position(self.body)

    def bottom(self, world: World) -> float:
        return float(world.sim.aabb(self.body)[0][2])

    def held(self, world: World) -> bool:
        """Both fingers on the body with the gripper closed."""
        return world.robot.gripper_closed and all(world.robot.finger_contacts(self.body))

    def dropped(self, world: World) -> bool:
        """The gripper closed on nothing, or no finger touches the body any more."""
        robot = world.robot
        return robot.gripper_opening() < EMPTY_GRIP_OPENING or not any(robot.finger_contacts(self.body))


class ReachAbove(Skill):
    """Open the gripper and line up above the body, rising first when too low to move sideways."""

    def command(self, world: World) -> tuple[np.ndarray, float]:
        ee, target = world.robot.ee_position(), self.target(world)
        hover = target[2] + HOVER_HEIGHT
        if world.robot.gripper_opening() < OPEN_GRIP_OPENING and world.robot.gripper_closed:
            return ee + STEP_UP, OPEN  # a missed grasp: open and back off
        if ee[2] < target[2] + HOVER_HEIGHT / 2 and _xy_error(ee, target) > XY_TOLERANCE:
            return np.array([*ee[:2], hover]), OPEN
        return np.array([*target[:2], max(ee[2], hover)]), OPEN

    def done(self, world: World) -> bool:
        ee = world.robot.ee_position()
        return not world.robot.gripper_closed and _xy_error(ee, self.target(world)) <= XY_TOLERANCE


class Descend(Skill):
    """Go down to the body's centre with the gripper open, correcting sideways drift."""

    def command(self, world: World) -> tuple[np.ndarray, float]:
        return self.target(world), OPEN

    def done(self, world: World) -> bool:
        ee, target = world.robot.ee_position(), self.target(world)
        return ee[2] - target[2] <= Z_TOLERANCE and _xy_error(ee, target) <= XY_TOLERANCE

    def failed(self, world: World) -> bool:
        return _xy_error(world.robot.ee_position(), self.target(world)) > DESCENT_XY_TOLERANCE


class Grasp(Skill):
    """Close the gripper where it is; done when both fingers hold the body."""

    def command(self, world: World) -> tuple[np.ndarray, float]:
        return world.robot.ee_position(), CLOSE

    def done(self, world: World) -> bool:
        return self.held(world)

    def failed(self, world: World) -> bool:
        return world.robot.gripper_closed and world.robot.gripper_opening() < EMPTY_GRIP_OPENING


class Lift(Skill):
    """Raise the held body until its lowest point is ``height`` (m) above the table."""

    def __init__(self, body: str, height: float) -> None:
        super().__init__(body)
        self.height = height

    def command(self, world: World) -> tuple[np.ndarray, float]:
        ee = world.robot.ee_position()
        if not all(world.robot.finger_contacts(self.body)):
            return ee, CLOSE  # fingers still settling: wait
        return ee + STEP_UP, CLOSE

    def done(self, world: World) -> bool:
        return self.bottom(world) >= self.height

    def failed(self, world: World) -> bool:
        return self.dropped(world)


class CarryTo(Skill):
    """Carry the held body, its lowest point at ``height`` (m), until it is above ``xy`` (m)."""

    def __init__(self, body: str, xy, height: float) -> None:
        super().__init__(body)
        self.xy, self.height = np.asarray(xy, dtype=float), height

    def command(self, world: World) -> tuple[np.ndarray, float]:
        ee, target = world.robot.ee_position(), self.target(world)
        ee_height = self.height + (ee[2] - self.bottom(world))  # the end effector's z for that clearance
        if self.bottom(world) < self.height - 2 * Z_TOLERANCE:
            return np.array([*ee[:2], ee_height]), CLOSE  # rise before moving sideways
        return np.array([*(ee[:2] + self.xy - target[:2]), ee_height]), CLOSE

    def done(self, world: World) -> bool:
        return _xy_error(self.target(world), self.xy) <= CARRY_XY_TOLERANCE

    def failed(self, world: World) -> bool:
        return self.dropped(world)


class Lower(Skill):
    """Lower the held body, keeping it above ``xy``, until its lowest point is at ``height`` (m)."""

    def __init__(self, body: str, xy, height: float) -> None:
        super().__init__(body)
        self.xy, self.height = np.asarray(xy, dtype=float), height

    def command(self, world: World) -> tuple[np.ndarray, float]:
        ee, target = world.robot.ee_position(), self.target(world)
        goal_z = ee[2] - (self.bottom(world) - self.height)
        return np.array([*(ee[:2] + self.xy - target[:2]), goal_z]), CLOSE

    def done(self, world: World) -> bool:
        return self.bottom(world) <= self.height + LOWER_TOLERANCE

    def failed(self, world: World) -> bool:
        return self.dropped(world)


class Release(Skill):
    """Open the gripper where it is."""

    def command(self, world: World) -> tuple[np.ndarray, float]:
        return world.robot.ee_position(), OPEN

    def done(self, world: World) -> bool:
        return not world.robot.gripper_closed and world.robot.gripper_opening() >= OPEN_GRIP_OPENING


class Retreat(Skill):
    """Move straight up with the gripper open until the end effector is ``height`` (m) above
    the body's centre."""

    def __init__(self, body: str, height: float = HOVER_HEIGHT) -> None:
        super().__init__(body)
        self.height = height

    def command(self, world: World) -> tuple[np.ndarray, float]:
        ee = world.robot.ee_position()
        return np.array([*ee[:2], self.target(world)[2] + self.height]), OPEN

    def done(self, world: World) -> bool:
        return world.robot.ee_position()[2] >= self.target(world)[2] + self.height - Z_TOLERANCE


def _xy_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a)[:2] - np.asarray(b)[:2]))


def pick_skills(body: str) -> list[Skill]:
    """Reach above the body, descend, grasp it (no lift): the start of every carrying plan."""
    return [ReachAbove(body), Descend(body), Grasp(body)]


def place_skills(body: str, xy, rest_height: float, carry_height: float, drop: float) -> list[Skill]:
    """Pick ``body`` up, carry it with its bottom at ``carry_height`` (m) to above ``xy``,
    lower it until its bottom is ``drop`` (m) above ``rest_height`` (m), release, retreat."""
    return [
        *pick_skills(body),
        CarryTo(body, xy, carry_height),
        Lower(body, xy, rest_height + drop),
        Release(body),
        Retreat(body),
    ]
