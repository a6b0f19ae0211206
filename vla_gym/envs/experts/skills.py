"""Shared skills the scripted experts compose: small reactive controllers that read the
simulator every step (privileged state) and say where the end effector should go.

A skill gives ``command(world) -> (goal, grip)``: a goal position (m, world) for the
end effector and a gripper command (+1 close, -1 open); ``done(world)`` says it has
finished, ``failed(world)`` that the plan must start again (a missed grasp, a dropped
object). :class:`~vla_gym.envs.experts.scripted.ScriptedExpert` runs them in order.
"""

from __future__ import annotations

import numpy as np

from vla_gym.envs.robot import FINGER_LINKS
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
SETTLED_SPEED = 0.02  # m/s: a held object slower than this no longer slides between the fingers
CLEAR_HEIGHT = 0.02  # m: LiftClear raises the fingertips this far above the released body's top ...
CLEAR_STEP = 0.02  # m: ... at most this much a step
MAX_HELD_TILT = np.radians(15.0)  # rad: a body carried this askew cannot be set down flat
SET_DOWN_GAP = 0.01  # m: LowerOnto slows down this far above its goal height ...
SET_DOWN_STEP = 0.005  # m: ... to at most this much a step, not to knock the base

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


class _SteersHeldCentre(Skill):
    """A skill moving the held body to ``xy`` (m) and ``height`` (its lowest point, m) by its
    held centre (:func:`held_centre`): steering the body itself, which slides to and fro
    between the fingers, can circle its goal for good. Fails when the body is dropped."""

    def __init__(self, body: str, xy, height: float) -> None:
        super().__init__(body)
        self.xy, self.height = np.asarray(xy, dtype=float), height

    def target(self, world: World) -> np.ndarray:
        return held_centre(world, self.body)

    def failed(self, world: World) -> bool:
        return self.dropped(world)


class CarryTo(_SteersHeldCentre):
    """Carry the held body, its lowest point at ``height`` (m), until it is above ``xy`` (m),
    steering its held centre (:class:`_SteersHeldCentre`)."""

    def command(self, world: World) -> tuple[np.ndarray, float]:
        ee, target = world.robot.ee_position(), self.target(world)
        ee_height = self.height + (ee[2] - self.bottom(world))  # the end effector's z for that clearance
        if self.bottom(world) < self.height - 2 * Z_TOLERANCE:
            return np.array([*ee[:2], ee_height]), CLOSE  # rise before moving sideways
        return np.array([*(ee[:2] + self.xy - target[:2]), ee_height]), CLOSE

    def done(self, world: World) -> bool:
        return _xy_error(self.target(world), self.xy) <= CARRY_XY_TOLERANCE


class Lower(_SteersHeldCentre):
    """Lower the held body, keeping its held centre (:func:`held_centre`) above ``xy``, until
    its lowest point is at ``height`` (m)."""

    def command(self, world: World) -> tuple[np.ndarray, float]:
        ee, target = world.robot.ee_position(), self.target(world)
        goal_z = ee[2] - (self.bottom(world) - self.height)
        return np.array([*(ee[:2] + self.xy - target[:2]), goal_z]), CLOSE

    def done(self, world: World) -> bool:
        return self.bottom(world) <= self.height + LOWER_TOLERANCE


class _FollowsBase(_SteersHeldCentre):
    """Base of the skills that steer a held body relative to another body, ``base``, read
    live before every command and check (the base may be nudged while the plan runs):
    ``xy`` is the base's centre, ``height`` the base's top plus ``above_top`` (m). Listed
    before :class:`CarryTo` or :class:`Lower`, whose command and check it then runs."""

    def __init__(self, body: str, base: str, above_top: float) -> None:
        super().__init__(body, (0.0, 0.0), above_top)
        self.base, self.above_top = base, above_top

    def _follow(self, world: World) -> None:
        self.xy = world.sim.base_position(self.base)[:2]
        self.height = float(world.sim.aabb(self.base)[1][2]) + self.above_top

    def command(self, world: World) -> tuple[np.ndarray, float]:
        self._follow(world)
        return super().command(world)

    def done(self, world: World) -> bool:
        self._follow(world)
        return super().done(world)


class CarryAbove(_FollowsBase, CarryTo):
    """:class:`CarryTo` whose goal follows another body, ``base``, live (:class:`_FollowsBase`):
    above its centre, the carried body's lowest point ``clearance`` (m) above the base's top."""

    def __init__(self, body: str, base: str, clearance: float) -> None:
        super().__init__(body, base, clearance)

    def failed(self, world: World) -> bool:
        """Dropped, or held askew (knocked over before the grasp): a new plan lets it fall flat first."""
        return super().failed(world) or tilt(world, self.body) > MAX_HELD_TILT


class LowerOnto(_FollowsBase, Lower):
    """:class:`Lower` onto another body, ``base``, read live, steering the held centre
    (:func:`held_centre`) above the base's centre, until the held body's lowest point is
    ``drop`` (m) above the base's top. A small negative ``drop`` sets it down on the top,
    whose friction stops it sliding between the fingers. The last :data:`SET_DOWN_GAP` is
    covered at most :data:`SET_DOWN_STEP` a step, not to knock the base."""

    def __init__(self, body: str, base: str, drop: float) -> None:
        super().__init__(body, base, drop)

    def command(self, world: World) -> tuple[np.ndarray, float]:
        goal, grip = super().command(world)  # follows the base first
        ee_z, gap = world.robot.ee_position()[2], self.bottom(world) - self.height
        goal[2] = ee_z - min(gap, max(gap - SET_DOWN_GAP, SET_DOWN_STEP))
        return goal, grip

    def done(self, world: World) -> bool:
        """Low enough, above the base's centre, and at rest (no longer sliding in the grip)."""
        low = super().done(world)  # follows the base first
        centred = _xy_error(self.target(world), self.xy) <= CARRY_XY_TOLERANCE
        resting = float(np.linalg.norm(world.sim.base_velocity(self.body))) <= SETTLED_SPEED
        return low and centred and resting


def tilt(world: World, body: str) -> float:
    """Angle (rad) from the vertical of the body's frame axis nearest to it: 0 for a box
    on any face or an upright cylinder."""
    _, orientation = world.sim.client.getBasePositionAndOrientation(world.sim.bodies[body])
    axes = np.asarray(world.sim.client.getMatrixFromQuaternion(orientation)).reshape(3, 3)
    return float(np.arccos(np.clip(np.max(np.abs(axes[2])), 0.0, 1.0)))


def held_centre(world: World, body: str) -> np.ndarray:
    """Where a held body's centre (m, world, (3,)) would be with the fingers centred in the hand.

    Both fingers press with the same capped force, so the pair floats along their closing
    axis with whatever they hold: a held body slides to and fro by up to about 0.01 m
    when the hand speeds up or stops, and nothing damps it in the air. Its centre less the
    fingers' drift (their midpoint's offset from the end effector, x/y) moves rigidly with
    the hand, so skills steer that instead.
    """
    client, robot = world.sim.client, world.robot
    midpoint = np.mean([client.getLinkState(robot.body, link)[4] for link in FINGER_LINKS], axis=0)
    drift = np.asarray(midpoint[:2]) - robot.ee_position()[:2]
    centre = world.sim.base_position(body).copy()
    centre[:2] -= drift
    return centre


class Release(Skill):
    """Open the gripper where it is."""

    def command(self, world: World) -> tuple[np.ndarray, float]:
        return world.robot.ee_position(), OPEN

    def done(self, world: World) -> bool:
        return not world.robot.gripper_closed and world.robot.gripper_opening() >= OPEN_GRIP_OPENING


class ReleaseCentred(Release):
    """Open the gripper, then centre the hand over the body (x/y) until no finger touches it.
    The fingers float along their closing axis (:func:`held_centre`): a held body that slid
    to the end of one finger's travel stays pressed against that finger when the gripper
    merely opens, and a retreat would drag it along."""

    def command(self, world: World) -> tuple[np.ndarray, float]:
        ee, target = world.robot.ee_position(), self.target(world)
        if world.robot.gripper_opening() < OPEN_GRIP_OPENING:
            return ee, OPEN  # open in place first
        return np.array([*target[:2], ee[2]]), OPEN

    def done(self, world: World) -> bool:
        return super().done(world) and not any(world.robot.finger_contacts(self.body))


class LiftClear(Skill):
    """Raise the open hand, centred over the body it let go of, until the fingertips clear
    its top by :data:`CLEAR_HEIGHT`, in steps of at most :data:`CLEAR_STEP` (a slow, centred
    rise that does not brush the body off what it stands on)."""

    def command(self, world: World) -> tuple[np.ndarray, float]:
        ee, target = world.robot.ee_position(), self.target(world)
        return np.array([*target[:2], min(ee[2] + CLEAR_STEP, self._clear_z(world))]), OPEN

    def done(self, world: World) -> bool:
        return world.robot.ee_position()[2] >= self._clear_z(world) - Z_TOLERANCE

    def _clear_z(self, world: World) -> float:
        return float(world.sim.aabb(self.body)[1][2]) + CLEAR_HEIGHT


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


#: PushTo: end-effector height (m) above the body's lowest point while pushing: about a
#: cube's (0.025) or cylinder's (0.03) centre, the closed fingers' faces (0.005 below to
#: 0.035 above the end effector) on its side and the hand's underside (0.04 above the end
#: effector) clear of standing objects (0.06 tall). Lower pushes tip cylinders more often.
PUSH_HEIGHT = 0.03
#: PushTo: travel height (m) of the end effector between pushes (the fingertips, 0.005 m
#: below it, clear of every standing object).
PUSH_SAFE_HEIGHT = 0.11
#: PushTo: distance (m) from the body's centre to the end effector when the closed fingers
#: touch it: an object's radius 0.025 plus the fingers' half thickness (0.01, pushing
#: along x) to half width (up to 0.027, pushing along y), rounded down to 0.04.
PUSH_CONTACT = 0.04
#: PushTo: the descent starts this far (m) behind the body's centre, clear of a turned
#: cube's corner (0.035) and of the fingers' half width (0.027).
PUSH_APPROACH = 0.075
#: PushTo: before rising off the line, the end effector backs away to this distance (m,
#: x/y) from the body's centre, clear of it (the fingers' half width 0.027 plus a turned
#: cube's half diagonal 0.035).
PUSH_CLEARANCE = 0.065
#: PushTo: the pushing goal leads the end effector by at most this much (m) along the line
#: (the pushing speed per step), and the contact point by as much.
PUSH_ADVANCE = 0.015
#: PushTo: the end effector may stray this far (m) off the body's line to the goal while
#: pushing; beyond it the pusher rises and approaches again from behind.
PUSH_LATERAL_TOLERANCE = 0.015
#: PushTo: done when the body's centre is this close (m, x/y) to the goal point.
PUSH_TOLERANCE = 0.015


class PushTo(Skill):
    """Push the body along the table until its centre is at ``xy`` (m), gripper closed.

    Reactive, from the state alone: on the line from the body's centre to ``xy``, the
    approach point lies :data:`PUSH_APPROACH` behind the body. Above the safe height the
    end effector travels to above the approach point, then descends there to the push
    height (:data:`PUSH_HEIGHT` above the body's lowest point); low and behind the body
    (within :data:`PUSH_LATERAL_TOLERANCE` of the line) it chases a point on the line at
    most :data:`PUSH_ADVANCE` ahead of itself, which steers the body back onto the line;
    low anywhere else (the body slid or turned off the line) it backs away from the body,
    rises and approaches again. Spheres roll off such a pusher: push cubes and cylinders.
    """

    def __init__(self, body: str, xy) -> None:
        super().__init__(body)
        self.xy = np.asarray(xy, dtype=float)

    def command(self, world: World) -> tuple[np.ndarray, float]:
        ee, centre = world.robot.ee_position(), self.target(world)
        line = self.xy - centre[:2]
        direction = line / max(float(np.linalg.norm(line)), 1e-9)
        push_z = max(self.bottom(world), 0.0) + PUSH_HEIGHT  # a tilted body's box dips below the table
        approach = centre[:2] - PUSH_APPROACH * direction
        if ee[2] >= PUSH_SAFE_HEIGHT - Z_TOLERANCE:  # high: line up above the approach point, then descend
            z = push_z if _xy_error(ee, approach) <= XY_TOLERANCE else PUSH_SAFE_HEIGHT
            return np.array([*approach, z]), CLOSE
        offset = ee[:2] - centre[:2]
        along = float(offset @ direction)  # negative behind the body
        lateral = float(np.linalg.norm(offset - along * direction))
        behind = -(PUSH_APPROACH + PUSH_LATERAL_TOLERANCE) <= along <= -PUSH_CONTACT + XY_TOLERANCE
        if lateral > PUSH_LATERAL_TOLERANCE or not behind:  # off the line: approach again
            away = offset / max(float(np.linalg.norm(offset)), 1e-9)
            if float(np.linalg.norm(offset)) < PUSH_CLEARANCE - XY_TOLERANCE:
                # Back off sideways first: a finger rising against the body could tip it over.
                return np.array([*(centre[:2] + PUSH_CLEARANCE * away), ee[2]]), CLOSE
            return np.array([*ee[:2], PUSH_SAFE_HEIGHT]), CLOSE
        if ee[2] > push_z + Z_TOLERANCE:  # still descending onto the approach point
            return np.array([*approach, push_z]), CLOSE
        # On the line, at most PUSH_ADVANCE ahead of the end effector: a gentle touch, then a steady push.
        lead = centre[:2] + min(along + PUSH_ADVANCE, PUSH_ADVANCE - PUSH_CONTACT) * direction
        return np.array([*lead, push_z]), CLOSE

    def done(self, world: World) -> bool:
        return _xy_error(self.target(world), self.xy) <= PUSH_TOLERANCE


def _xy_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a)[:2] - np.asarray(b)[:2]))


def pick_skills(body: str) -> list[Skill]:
    """Reach above the body, descend, grasp it (no lift): the start of every carrying plan."""
    return [ReachAbove(body), Descend(body), Grasp(body)]


def place_skills(body: str, xy, rest_height: float, carry_height: float, drop: float) -> list[Skill]:
    """Pick ``body`` up, carry it with its bottom at ``carry_height`` (m) to above ``xy``,
    lower it until its bottom is ``drop`` (m) above ``rest_height`` (m), release it in place,
    rise clear of it slowly, retreat. The slow rise (short steps, so a noisy expert's noise
    fades too) keeps the open fingers from brushing a ball off a plate."""
    return [
        *pick_skills(body),
        CarryTo(body, xy, carry_height),
        Lower(body, xy, rest_height + drop),
        Release(body),
        LiftClear(body),
        Retreat(body),
    ]


def stack_skills(body: str, base: str, clearance: float, drop: float) -> list[Skill]:
    """Like :func:`place_skills` onto another body ``base``, followed live: pick ``body`` up,
    carry it with its bottom ``clearance`` (m) above the base's top to above the base's
    centre, lower it until its bottom is ``drop`` (m) above the base's top, release, retreat."""
    return [
        *pick_skills(body),
        CarryAbove(body, base, clearance),
        LowerOnto(body, base, drop),
        ReleaseCentred(body),
        LiftClear(body),
        Retreat(body),
    ]
